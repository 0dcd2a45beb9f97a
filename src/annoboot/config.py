"""Typed run configuration: dataclasses, YAML recipes and ``key=value`` overrides.

One config system (OmegaConf structured configs): a recipe YAML is merged onto the dataclass
defaults, then command-line overrides onto that. Unknown keys and values of the wrong type are
rejected with an :class:`AnnobootError` naming the key, the value and where it came from.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from annoboot.data.registry import SOURCE_REGISTRY, source_option_classes  # imports annoboot.data: every kind registers
from annoboot.errors import AnnobootError

@dataclass
class SourceCoreConfig:
    """Where images come from: the options every kind reads. Each kind adds the options only it
    reads (a dataclass next to its code, data/registry.py); ``SourceConfig`` holds both. Sources
    are decode-only: crops happen later, on the device."""

    kind: str = "fashion_mnist"  # a registered kind: annoboot.data.SOURCE_KINDS
    # None: the source's default location. webdataset: a shard pattern, e.g.
    # /data/cc12m/{000000..001242}.tar (several joined with '::').
    root: Optional[str] = None
    # fashion_mnist: train | test. Captioned folders: train | test | all, a fixed 90/10 split by
    # a hash of each file's relative path (stable when files are added).
    split: str = "train"
    limit: Optional[int] = None  # use only the first N images (smoke runs, tests)
    max_short_side: int = 256  # decoded images are downscaled so their short side is at most this
    # CPU decode workers for file-backed sources; None: this process's share of the cores,
    # split over its streams (data/workers.py)
    num_workers: Optional[int] = None
    # Training: a file-backed indexable source (image folder, captioned set, video frames) whose
    # decoded images fit in this many MB is decoded once and kept in memory, one copy per process
    # (data/cache.py); 0 decodes every epoch.
    cache_mb: int = 2048
    # Stop with an error when more than this fraction of the images tried (checked from 256 on)
    # cannot be used; 1.0 stops only when nothing decodes (1,024 unusable images in a row, or an
    # epoch's worth if fewer).
    max_bad_fraction: float = 0.5


def _copy_field(f: Any) -> Any:
    return field(default_factory=f.default_factory) if f.default is MISSING else field(default=f.default)


def _columns(option_class: type, owners: Dict[str, type], section: str) -> List[tuple]:
    """(name, type, field) of ``option_class``'s options; an option another class declares is refused."""
    hints = get_type_hints(option_class)
    columns = []
    for f in fields(option_class):
        owner = owners.setdefault(f.name, option_class)
        if owner is not option_class:
            raise AnnobootError(f"option '{section}.{f.name}' is declared by both {owner.__name__} and {option_class.__name__}")
        columns.append((f.name, hints[f.name], _copy_field(f)))
    return columns


def _compose_source_config() -> type:
    owners: Dict[str, type] = {}
    columns = _columns(SourceCoreConfig, owners, "<source>")
    for option_class in source_option_classes():
        columns += _columns(option_class, owners, "<source>")
    cls = make_dataclass("SourceConfig", columns)
    cls.__module__ = __name__
    cls.__doc__ = SourceCoreConfig.__doc__
    return cls


SourceConfig = _compose_source_config()


@dataclass
class DataConfig:
    # Annotation batch: the base method's images (labelled/curated in the decoupled setting).
    annotation: SourceConfig = field(default_factory=SourceConfig)
    # Bootstrap batch: unlabeled images for the value function. None: same source as annotation.
    bootstrap: Optional[SourceConfig] = None


@dataclass
class ModelConfig:
    """model.*: the encoder. Each method adds the options of its heads (its ``config_options``)."""

    backbone: str = "vit_tiny_patch16_224"  # any timm model name
    # Passed to timm.create_model (e.g. patch_size, depth, embed_dim). img_size is set from views.
    backbone_kwargs: Dict[str, Any] = field(default_factory=lambda: {"patch_size": 4})


@dataclass
class ViewsConfig:
    """views.*: size, augmentation and normalisation of every view. Each method adds the options
    of its own views (bootstrap crops, multi-crop, ...: its ``config_options``)."""

    img_size: int = 32  # side of every rendered view (and of evaluation images)
    # Augmented views: RandomResizedCrop + flip + colour jitter + grayscale (SimCLR's).
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 0.5  # SimCLR's s: brightness/contrast/saturation 0.8s, hue 0.2s
    grayscale_prob: float = 0.2
    # Mean/std used to normalise rendered views (the same at evaluation).
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class MethodConfig:
    """method.*: which method (annoboot.methods.METHODS); the method adds its own options."""

    name: str = ""  # the schema's default is annoboot.methods.DEFAULT_METHOD


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256  # base batch (images); annotation-bootstrapping methods split it
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: Optional[float] = 3.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/default"
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 20
    progress: bool = True


@dataclass
class EvalConfig:
    train: SourceConfig = field(
        default_factory=lambda: SourceConfig(kind="fashion_mnist", split="train")
    )
    test: SourceConfig = field(default_factory=lambda: SourceConfig(kind="fashion_mnist", split="test"))
    batch_size: int = 512
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_epochs: int = 30
    # Trained in one pass; standardised features: the best rate was at the top of [1e-3, 1e-2]
    # for short-trained encoders (val accuracy still rising), hence the wider grid.
    linear_lrs: List[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    map_epochs: int = 10
    map_lrs: List[float] = field(default_factory=lambda: [3e-4, 1e-3])
    # Decoder probe (eval/decoder_probe.py), run when probes lists "decoder": layers of
    # self-attention over learned queries, cross-attention to the tokens and an MLP. Not a default
    # probe: on 2 CPU cores it adds about 40 s per 20k train images (MAP's 10 epochs: 57 s), a
    # third more evaluation time, and the recipes' documented runtimes and tables would change.
    # Depth 1 was 0.8 points worse and 4 queries no better but 1.7x slower (random-init ViT-Tiny).
    decoder_probe_depth: int = 2
    decoder_probe_queries: int = 1
    # Decoder width, capped at the token width; null: the token width. Narrower, the tokens are
    # projected down first: that bounds the cost for wide encoders (a CNN's 2048 channels), and at
    # ViT-Tiny's 192 it takes 2/3 of the time for 0.9 points less.
    decoder_probe_dim: Optional[int] = 128
    decoder_probe_epochs: int = 5
    decoder_probe_lrs: List[float] = field(default_factory=lambda: [3e-4, 1e-3])
    val_fraction: float = 0.1  # held out of the probe's train split to choose the learning rate
    probes: List[str] = field(default_factory=lambda: ["knn", "linear", "map"])
    # Image-text evaluation of methods with a text tower: zero-shot classification of eval.test from its
    # class names in these prompts, and image<->text retrieval on a captioned source.
    zero_shot_templates: List[str] = field(
        default_factory=lambda: ["a photo of a {}.", "a picture of a {}.", "an image of the {}.", "a {}."]
    )
    retrieval: Optional[SourceConfig] = None  # e.g. kind=openclipart split=test limit=1000
    # When eval.train and eval.test are fmnist_scenes sources, these probe families also run
    # (eval/scene_suite.py): in_context (the item in a box read from the whole scene's tokens),
    # scenes_in_context (the classes a scene holds, at its own resolution), boxes (box crops),
    # multilabel (scenes resized), items (Fashion-MNIST items); [] for none.
    scene_probes: List[str] = field(default_factory=lambda: ["in_context", "scenes_in_context"])
    scene_probe_train_items: Optional[int] = 15000  # train items of the box families (null: all)
    at_end: bool = True  # run the probes when pre-training finishes
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


PRECISIONS = ("auto", "bf16", "fp32")  # train.precision
# Sections a method can add options to, with their core dataclass.
_EXTENSIBLE = {"model": ModelConfig, "views": ViewsConfig, "method": MethodConfig}
_SCHEMA: Dict[str, type] = {}  # the composed dataclasses, built on first use (config_schema)


def forget_schema() -> None:
    """Drop the composed schema: a method registered since gets its options into the next one."""
    _SCHEMA.clear()


def method_option_classes() -> Dict[str, Dict[str, tuple]]:
    """method name -> section -> its option dataclasses (imports the registered methods)."""
    from annoboot.methods import METHODS

    return {name: dict(cls.config_options) for name, cls in METHODS.items()}


def _unique_option_classes(per_method: Dict[str, Dict[str, tuple]]) -> List[tuple]:
    """(section, option class) of every registered method, each class once, in registration order."""
    seen: Dict[type, str] = {}
    for options in per_method.values():
        for section, classes in options.items():
            for option_class in classes:
                seen.setdefault(option_class, section)
    return [(section, option_class) for option_class, section in seen.items()]


def config_schema() -> type:
    """The Config dataclass of this installation: the core sections, with the options of every
    registered method added to the model, views and method sections. One flat namespace per
    section, so recipes, overrides, saved configs and run hashes read as before."""
    if not _SCHEMA:
        from annoboot.methods import DEFAULT_METHOD

        columns = {section: [(f.name, get_type_hints(core)[f.name], _copy_field(f)) for f in fields(core)]
                   for section, core in _EXTENSIBLE.items()}
        owners = {section: {f.name: core for f in fields(core)} for section, core in _EXTENSIBLE.items()}
        for section, option_class in _unique_option_classes(method_option_classes()):
            columns[section] += _columns(option_class, owners[section], section)
        columns["method"][0] = ("name", str, field(default=DEFAULT_METHOD))
        for section, core in _EXTENSIBLE.items():
            _SCHEMA[section] = _schema_class(f"Composed{core.__name__}", columns[section], core)
        _SCHEMA["config"] = _schema_class(
            "ComposedConfig", [(name, _SCHEMA[name], field(default_factory=_SCHEMA[name])) for name in _EXTENSIBLE], Config
        )
    return _SCHEMA["config"]


def _schema_class(name: str, columns: List[tuple], base: type) -> type:
    cls = make_dataclass(name, columns, bases=(base,))
    cls.__module__ = __name__  # picklable by name: the module's __getattr__ returns it
    return cls


def __getattr__(name: str) -> type:
    if name.startswith("Composed"):
        config_schema()
        for cls in _SCHEMA.values():
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_scale(key: str, pair: List[float]) -> None:
    """AnnobootError naming ``key`` unless ``pair`` is [low, high], fractions of the image area."""
    if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
        raise AnnobootError(f"bad config: key '{key}' must be [low, high] with 0 < low <= high, got {pair}")
    if pair[1] > 1:
        raise AnnobootError("bad config: crop scales are fractions of the image area and must be <= 1")


def _explain(exc: OmegaConfBaseException, origin: str) -> AnnobootError:
    key = getattr(exc, "full_key", None) or "?"
    msg = (getattr(exc, "msg", None) or str(exc)).strip().splitlines()[0]
    return AnnobootError(f"bad config in {origin}: key '{key}': {msg}")


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Config:
    """Defaults <- recipe YAML at ``path`` <- ``key=value`` overrides; validated and typed."""
    cfg = OmegaConf.structured(config_schema())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AnnobootError(f"config file not found: {path}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as exc:
            raise _explain(exc, str(path)) from None
        except Exception as exc:  # YAML syntax errors
            raise AnnobootError(f"cannot parse config file {path}: {exc}") from None
    return _finish(_apply_overrides(cfg, overrides))


def config_from_saved(saved: Dict[str, Any], overrides: Optional[List[str]] = None, origin: str = "a saved config") -> Config:
    """The config stored in a checkpoint, with ``key=value`` overrides (e.g. for evaluation)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(config_schema()), saved)
    except OmegaConfBaseException as exc:
        # Typically a key a newer or older annoboot wrote; name it rather than fail deep inside.
        raise _explain(exc, f"{origin} (written by another annoboot version?)") from None
    return _finish(_apply_overrides(cfg, overrides))


def _apply_overrides(cfg: DictConfig, overrides: Optional[List[str]]) -> DictConfig:
    for item in overrides or []:
        if "=" not in item:
            raise AnnobootError(f"override '{item}' is not of the form key=value (e.g. train.steps=100)")
    try:
        for item in overrides or []:
            parsed = OmegaConf.from_dotlist([item])
            key = item.split("=", 1)[0]
            value = OmegaConf.select(parsed, key)
            if isinstance(value, ListConfig) or (isinstance(value, DictConfig) and not _is_structured(cfg, key)):
                # Set, not merge: `model.backbone_kwargs={}` must replace the recipe's dict.
                OmegaConf.update(cfg, key, value, merge=False)
            else:
                cfg = OmegaConf.merge(cfg, parsed)
    except OmegaConfBaseException as exc:
        raise _explain(exc, "command-line overrides") from None
    return cfg


def _is_structured(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is a dataclass field (e.g. ``eval.retrieval``), which a dict merges into."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return False
    node = parent._get_node(leaf)
    return is_dataclass(node._metadata.ref_type) or is_dataclass(OmegaConf.get_type(node))


def _finish(cfg: DictConfig) -> Config:
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(config)
    return config


def validate(cfg: Config) -> None:
    """Checks that types alone cannot express; raises AnnobootError naming the key. The options
    of every registered method are checked by their own ``check`` (``selected``: whether the
    configured method uses them) and ``CHOICES``."""
    per_method = method_option_classes()
    if cfg.train.precision not in PRECISIONS:
        raise AnnobootError(f"bad config: key 'train.precision' is '{cfg.train.precision}'; choose one of {', '.join(PRECISIONS)}")
    if cfg.method.name not in per_method:
        raise AnnobootError(f"bad config: key 'method.name' is '{cfg.method.name}'; choose one of {', '.join(per_method)}")
    sources = {"data.annotation": cfg.data.annotation, "data.bootstrap": cfg.data.bootstrap,
               "eval.train": cfg.eval.train, "eval.test": cfg.eval.test, "eval.retrieval": cfg.eval.retrieval}
    for key, source in sources.items():
        if source is not None:
            check_source(source, key)
    from annoboot.eval.probes import check_probe_config  # the probe registry: checked now, not after pre-training

    check_probe_config(cfg.eval)
    check_scale("views.crop_scale", cfg.views.crop_scale)
    ratio = cfg.views.crop_ratio
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise AnnobootError(f"bad config: key 'views.crop_ratio' must be [low, high] with 0 < low <= high, got {ratio}")
    for key in ("steps", "batch_size", "ckpt_every", "log_every"):
        if getattr(cfg.train, key) <= 0:
            raise AnnobootError(f"bad config: key 'train.{key}' must be a positive integer, got {getattr(cfg.train, key)}")
    selected = {c for classes in per_method[cfg.method.name].values() for c in classes}
    for section, option_class in _unique_option_classes(per_method):
        for key, allowed in getattr(option_class, "CHOICES", {}).items():
            value = getattr(getattr(cfg, section), key)
            if value not in allowed:
                raise AnnobootError(f"bad config: key '{section}.{key}' is '{value}'; choose one of {', '.join(allowed)}")
        if hasattr(option_class, "check"):
            option_class.check(cfg, option_class in selected)


def check_source(src: SourceConfig, key: str) -> None:
    """AnnobootError naming ``key``.<option>: an unregistered kind, or a value its options refuse
    (each registered kind's option class checks its own, told whether ``src.kind`` reads them)."""
    if src.kind not in SOURCE_REGISTRY:
        raise AnnobootError(f"bad config: key '{key}.kind' is '{src.kind}'; choose one of {', '.join(SOURCE_REGISTRY)}")
    if not 0 < src.max_bad_fraction <= 1:
        raise AnnobootError(f"bad config: key '{key}.max_bad_fraction' must be in (0, 1], got {src.max_bad_fraction}")
    for option_class in source_option_classes():
        if hasattr(option_class, "check"):
            option_class.check(src, key, option_class is SOURCE_REGISTRY[src.kind].options)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]
