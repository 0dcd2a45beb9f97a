"""The typed run configuration: the core sections' dataclasses and the checks of their values.

What each method, source kind and probe adds lives next to its code (its option dataclasses
and their checks); annoboot/recipe.py composes this schema with theirs, reads YAML recipes and
``key=value`` overrides, and validates (one config system: OmegaConf structured configs).
``SourceConfig`` is composed here from the source registry (data/registry.py, a leaf), so that
the core sections can name it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, get_type_hints

from omegaconf import OmegaConf

from annoboot.data.registry import SOURCE_REGISTRY, source_option_classes  # imports annoboot.data: every kind registers
from annoboot.data.decode import MAX_IMAGE_PIXELS
from annoboot.errors import AnnobootError
from annoboot.option_ranges import ANY, BELOW_ONE, COUNT, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, Range, option


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
    limit: Optional[int] = option(None, COUNT)  # use only the first N images (smoke runs, tests)
    max_short_side: int = option(256, COUNT)  # decoded images are downscaled so their short side is at most this
    # CPU decode workers for file-backed sources; None: this process's share of the cores,
    # split over its streams (data/workers.py)
    num_workers: Optional[int] = option(None, NON_NEGATIVE)
    # Training: a file-backed indexable source (image folder, captioned set, video frames) whose
    # decoded images fit in this many MB is decoded once and kept in memory, one copy per process
    # (data/cache.py); 0 decodes every epoch.
    cache_mb: int = option(2048, NON_NEGATIVE)
    # Stop with an error when more than this fraction of the images tried (checked from 256 on)
    # cannot be used; 1.0 stops only when nothing decodes (1,024 unusable images in a row, or an
    # epoch's worth if fewer).
    max_bad_fraction: float = option(0.5, FRACTION)
    # An image whose header declares more pixels than this is skipped (counted as over the cap)
    # before any decoding: a decompression bomb never reaches memory. 8192 x 8192 by default.
    max_pixels: int = option(MAX_IMAGE_PIXELS, COUNT)
    # A read of one image file taking longer than this many seconds stops the run with an error
    # naming the file (a hung network file system would otherwise stall it forever); 0 waits.
    # Image files of image_folder and captioned sources, and local webdataset shards (each read
    # of a shard: 1 MiB); video files are read without it.
    read_timeout: float = option(300.0, NON_NEGATIVE)


def _copy_field(f: Any) -> Any:
    """The field for a composed class: its default and its metadata (an option's range)."""
    if f.default is MISSING:
        return field(default_factory=f.default_factory, metadata=f.metadata)
    return field(default=f.default, metadata=f.metadata)


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

    img_size: int = option(32, COUNT)  # side of every rendered view (and of evaluation images)
    # Augmented views: RandomResizedCrop + flip + colour jitter + grayscale (SimCLR's).
    crop_scale: List[float] = option(factory=lambda: [0.08, 1.0], range=FRACTION)
    crop_ratio: List[float] = option(factory=lambda: [3 / 4, 4 / 3], range=POSITIVE)
    flip_prob: float = option(0.5, PROBABILITY)
    jitter_prob: float = option(0.8, PROBABILITY)
    jitter_strength: float = option(0.5, NON_NEGATIVE)  # SimCLR's s: brightness/contrast/saturation 0.8s, hue 0.2s
    grayscale_prob: float = option(0.2, PROBABILITY)
    # Mean/std used to normalise rendered views (the same at evaluation).
    mean: List[float] = option(factory=lambda: [0.5, 0.5, 0.5], range=ANY)
    std: List[float] = option(factory=lambda: [0.5, 0.5, 0.5], range=POSITIVE)


@dataclass
class MethodConfig:
    """method.*: which method (annoboot.methods.METHODS); the method adds its own options."""

    name: str = ""  # the schema's default is annoboot.methods.DEFAULT_METHOD


@dataclass
class TrainConfig:
    steps: int = option(1000, COUNT)
    batch_size: int = option(256, COUNT)  # base batch (images); annotation-bootstrapping methods split it
    lr: float = option(1e-3, POSITIVE)
    min_lr: float = option(1e-6, NON_NEGATIVE)
    warmup_steps: int = option(100, NON_NEGATIVE)
    weight_decay: float = option(0.04, NON_NEGATIVE)
    weight_decay_end: float = option(0.4, NON_NEGATIVE)
    betas: List[float] = option(factory=lambda: [0.9, 0.999], range=BELOW_ONE)
    grad_clip: Optional[float] = option(3.0, POSITIVE)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    seed: int = option(0, NON_NEGATIVE)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/default"
    ckpt_every: int = option(500, COUNT)
    keep_checkpoints: int = option(2, COUNT)
    log_every: int = option(20, COUNT)
    progress: bool = True


@dataclass
class EvalConfig:
    train: SourceConfig = field(
        default_factory=lambda: SourceConfig(kind="fashion_mnist", split="train")
    )
    test: SourceConfig = field(default_factory=lambda: SourceConfig(kind="fashion_mnist", split="test"))
    batch_size: int = option(512, COUNT)
    knn_k: int = option(20, COUNT)
    knn_temperature: float = option(0.07, POSITIVE)
    linear_epochs: int = option(30, COUNT)
    # Trained in one pass; standardised features: the best rate was at the top of [1e-3, 1e-2]
    # for short-trained encoders (val accuracy still rising), hence the wider grid.
    linear_lrs: List[float] = option(factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], range=POSITIVE)
    map_epochs: int = option(10, COUNT)
    map_lrs: List[float] = option(factory=lambda: [3e-4, 1e-3], range=POSITIVE)
    # Decoder probe (eval/decoder_probe.py), run when probes lists "decoder": layers of
    # self-attention over learned queries, cross-attention to the tokens and an MLP. Not a default
    # probe: it adds about a third to the evaluation time, and the recipes' documented runtimes
    # and tables would change; its cost and the depth / query / width choices below are measured
    # in docs/experiments/speed.md ("The decoder probe's cost").
    decoder_probe_depth: int = option(2, COUNT)
    decoder_probe_queries: int = option(1, COUNT)
    # Decoder width, capped at the token width; null: the token width. Narrower, the tokens are
    # projected down first: that bounds the cost for wide encoders (a CNN's 2048 channels).
    decoder_probe_dim: Optional[int] = option(128, COUNT)
    decoder_probe_epochs: int = option(5, COUNT)
    decoder_probe_lrs: List[float] = option(factory=lambda: [3e-4, 1e-3], range=POSITIVE)
    val_fraction: float = option(0.1, Range(0, 1, low_open=True, high_open=True))  # held out of the probe's train split to choose the learning rate
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
    scene_probe_train_items: Optional[int] = option(15000, COUNT)  # train items of the box families (null: all)
    at_end: bool = True  # run the probes when pre-training finishes
    seed: int = option(0, NON_NEGATIVE)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


PRECISIONS = ("auto", "bf16", "fp32")  # train.precision


def check_scale(key: str, pair: List[float]) -> None:
    """AnnobootError naming ``key`` unless ``pair`` is [low, high], fractions of the image area."""
    if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
        raise AnnobootError(f"bad config: key '{key}' must be [low, high] with 0 < low <= high, got {pair}")
    if pair[1] > 1:
        raise AnnobootError("bad config: crop scales are fractions of the image area and must be <= 1")


def check_core(cfg: Config) -> None:
    """The checks of the core sections' values that types and declared ranges (option_ranges.py)
    cannot express (AnnobootError naming the key). Options of methods, sources and probes are checked by their owners
    (annoboot.recipe.validate calls every check)."""
    if cfg.train.precision not in PRECISIONS:
        raise AnnobootError(f"bad config: key 'train.precision' is '{cfg.train.precision}'; choose one of {', '.join(PRECISIONS)}")
    check_scale("views.crop_scale", cfg.views.crop_scale)
    ratio = cfg.views.crop_ratio
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise AnnobootError(f"bad config: key 'views.crop_ratio' must be [low, high] with 0 < low <= high, got {ratio}")


def check_source(src: SourceConfig, key: str) -> None:
    """AnnobootError naming ``key``.<option>: an unregistered kind, or a value its options refuse
    (each registered kind's option class checks its own, told whether ``src.kind`` reads them)."""
    if src.kind not in SOURCE_REGISTRY:
        raise AnnobootError(f"bad config: key '{key}.kind' is '{src.kind}'; choose one of {', '.join(SOURCE_REGISTRY)}")
    for option_class in source_option_classes():
        if hasattr(option_class, "check"):
            option_class.check(src, key, option_class is SOURCE_REGISTRY[src.kind].options)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# The sections methods add options to, with the core class each extends.
_METHOD_SECTIONS = {"model": ModelConfig, "views": ViewsConfig, "method": MethodConfig}


def saved_settings(cfg: Config, method_options: Mapping[str, Sequence[type]]) -> Dict[str, Any]:
    """The config as a run saves it (config.yaml, checkpoints): every section, but in model, views
    and method only the core keys and the options of the run's own method (``method_options``:
    its ``config_options``), not every registered method's. Loading it back
    (annoboot.recipe.config_from_saved) fills the rest with their defaults: the same config."""
    settings = to_dict(cfg)
    for section, core in _METHOD_SECTIONS.items():
        kept = {f.name for f in fields(core)}
        kept.update(f.name for option_class in method_options.get(section, ()) for f in fields(option_class))
        settings[section] = {key: value for key, value in settings[section].items() if key in kept}
    return settings


def to_dict(cfg: Config) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]
