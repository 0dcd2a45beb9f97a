"""annoboot: visual pre-training on unlabeled images by annotation bootstrapping.

The Python surface, for notebooks (the CLI is a thin layer over the same functions)::

    import annoboot

    cfg = annoboot.load_config("configs/quickstart.yaml", ["train.steps=200"])
    summary = annoboot.pretrain(cfg)                       # trains, then probes if eval.at_end
    encoder = annoboot.load_encoder(summary["run_dir"])    # or a checkpoint, or exported .safetensors
    vectors = encoder.embed(["a.jpg", "b.png"])            # (N, D) L2-normalised features
    x = encoder.transform("a.jpg")                         # (3, S, S): what encoder.model (timm) takes
    annoboot.embed_folder(encoder, "photos/", "photos.npz")
    query, neighbours, _ = annoboot.find_similar("photos.npz", "photos/cat.jpg", k=8)
    results = annoboot.evaluate(summary["run_dir"])        # the probes of cfg.eval (kNN, linear, MAP, decoder)
    annoboot.export_encoder(summary["run_dir"], "backbone.safetensors")  # timm-loadable

Names are imported on first use, so ``import annoboot`` stays fast.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": ("annoboot.recipe", "load_config"),
    "pretrain": ("annoboot.commands", "pretrain"),
    "evaluate": ("annoboot.commands", "evaluate_run"),
    "export_encoder": ("annoboot.commands", "export_run"),  # not "export": the name of a submodule
    "load_run": ("annoboot.saved_run", "load_run"),
    "load_encoder": ("annoboot.pretrained", "load_encoder"),
    "embed_folder": ("annoboot.embedding", "embed_folder"),
    "find_similar": ("annoboot.similar", "find_similar"),
    "load_embeddings": ("annoboot.similar", "load_embeddings"),
    "AnnobootError": ("annoboot.errors", "AnnobootError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'annoboot' has no attribute '{name}'")
    import importlib

    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
