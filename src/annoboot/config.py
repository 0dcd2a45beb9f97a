"""Typed run configuration: dataclasses, YAML recipes and ``key=value`` overrides.

One config system (OmegaConf structured configs): a recipe YAML is merged onto the dataclass
defaults, then command-line overrides onto that. Unknown keys and values of the wrong type are
rejected with an :class:`AnnobootError` naming the key, the value and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from annoboot.errors import AnnobootError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass
class ScenesConfig:
    """fmnist_scenes: canvases of several Fashion-MNIST items with weak captions (data/scenes.py).

    A scene of split s (``SourceConfig.split``) draws its items and clutter from the Fashion-MNIST
    split s only. Scene i depends only on (seed, split, i): a limit keeps a prefix of the same set.
    """

    num_scenes: int = 20000
    canvas: int = 96  # side of the square canvas in pixels
    items: List[int] = field(default_factory=lambda: [2, 5])  # items per scene, inclusive range
    item_size: List[int] = field(default_factory=lambda: [20, 56])  # side of a pasted item in px
    max_overlap: float = 0.2  # largest share of the smaller of two item boxes they may share
    clutter: int = 6  # background patches of other items per scene: uniform in [0, clutter]
    clutter_contrast: float = 0.3  # their brightness relative to a pasted item
    single_fraction: float = 0.0  # share of canvases holding one whole item (a mixed source)
    seed: int = 0
    pool_limit: Optional[int] = None  # use only the first N Fashion-MNIST images of the split


@dataclass
class SourceConfig:
    """Where images come from. Sources are decode-only: crops happen later, on the device."""

    # fashion_mnist | image_folder | webdataset | video_folder; captioned (image + text):
    # captioned_folder (<image>.txt twins) | openclipart | tuxpaint (Debian packages)
    # | fmnist_scenes (generated, see ``scenes``)
    kind: str = "fashion_mnist"
    # None: the source's default location. webdataset: a shard pattern, e.g.
    # /data/cc12m/{000000..001242}.tar (several joined with '::').
    root: Optional[str] = None
    # fashion_mnist: train | test. Captioned folders: train | test | all, a fixed 90/10 split by
    # a hash of each file's relative path (stable when files are added).
    split: str = "train"
    labels_from_subfolders: bool = False  # image_folder: class = first sub-folder (evaluation)
    limit: Optional[int] = None  # use only the first N images (smoke runs, tests)
    max_short_side: int = 256  # decoded images are downscaled so their short side is at most this
    frame_stride: int = 1  # video_folder: keep every n-th frame
    # CPU decode workers for file-backed sources; None: this process's share of the cores,
    # split over its streams (data/workers.py)
    num_workers: Optional[int] = None
    # Training: a file-backed indexable source (image folder, captioned set, video frames) whose
    # decoded images fit in this many MB is decoded once and kept in memory, one copy per process
    # (data/cache.py); 0 decodes every epoch.
    cache_mb: int = 2048
    scenes: ScenesConfig = field(default_factory=ScenesConfig)  # fmnist_scenes only
    # webdataset: one weight per '::'-joined pattern; each pattern is then its own source and a
    # sample comes from pattern i with probability w_i / sum(w). None: all shards pooled.
    mix_weights: Optional[List[float]] = None
    # Stop with an error when more than this fraction of the images tried (checked from 256 on)
    # cannot be used; 1.0 stops only when nothing decodes (1,024 unusable images in a row, or an
    # epoch's worth if fewer).
    max_bad_fraction: float = 0.5
    # webdataset: cpu (workers decode) | device (workers read bytes; JPEGs are decoded in a
    # batch on the training device with torchvision/nvjpeg; other formats in the workers).
    decode_on: str = "cpu"


@dataclass
class DataConfig:
    # Annotation batch: the base method's images (labelled/curated in the decoupled setting).
    annotation: SourceConfig = field(default_factory=SourceConfig)
    # Bootstrap batch: unlabeled images for the value function. None: same source as annotation.
    bootstrap: Optional[SourceConfig] = None


@dataclass
class ModelConfig:
    backbone: str = "vit_tiny_patch16_224"  # any timm model name
    # Passed to timm.create_model (e.g. patch_size, depth, embed_dim). img_size is set from views.
    backbone_kwargs: Dict[str, Any] = field(default_factory=lambda: {"patch_size": 4})
    proj_hidden_dim: int = 1024
    proj_dim: int = 128
    # BatchNorm in the projectors (SyncBatchNorm under DDP on GPUs; per-process on CPU).
    projector_bn: bool = True
    decoder_depth: int = 4
    decoder_dim: Optional[int] = None  # None: the encoder's width
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    # Text encoder (clip, ab_clip): a causal transformer over CLIP BPE tokens (paper: size "S").
    text_width: int = 512
    text_depth: int = 6
    text_heads: int = 8
    context_length: int = 32  # tokens per caption, start/end included; longer ones are cut
    embed_dim: int = 512  # joint image-text embedding (CLIP) and the AB text head's output
    # DINO head (dino, ab_dino): MLP in -> hidden -> hidden -> bottleneck, then K prototypes.
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256  # also the width of ABDINO's own prototype embeddings psi_AB
    dino_prototypes: int = 4096  # K; the paper's 65,536 is sized for ImageNet, see the recipes


@dataclass
class ViewsConfig:
    img_size: int = 32  # side of every rendered view (and of evaluation images)
    # SimCLR annotation views: RandomResizedCrop + flip + colour jitter + grayscale.
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 0.5  # SimCLR's s: brightness/contrast/saturation 0.8s, hue 0.2s
    grayscale_prob: float = 0.2
    # Bootstrap views: plain crops, no flip or colour (method.md section 3).
    bootstrap_views: int = 4
    bootstrap_scale: List[float] = field(default_factory=lambda: [0.05, 1.0])
    # DINO multi-crop (dino, ab_dino): 2 global crops at img_size, local crops at local_size.
    global_scale: List[float] = field(default_factory=lambda: [0.4, 1.0])
    local_views: int = 6
    local_scale: List[float] = field(default_factory=lambda: [0.05, 0.4])
    local_size: int = 16  # DINO: 96 px locals for 224 px globals; keep the same ratio (~0.4-0.5)
    # CLIP views: one crop per image from this scale range, no colour (open_clip's default).
    clip_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])
    # Mean/std used to normalise rendered views (the same at evaluation).
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class MethodConfig:
    name: str = "ab_simclr"  # simclr | ab_simclr | dino | ab_dino | clip | ab_clip
    temperature: float = 0.1  # SimCLR softmax temperature (reward uses the same)
    # Annotation bootstrapping (ab_* methods).
    ab_weight: float = 1.0
    ab_weight_warmup: float = 0.0  # linear ramp of ab_weight from 0 over this fraction of train.steps
    gamma: float = 0.0  # 0: the published recipe (reward only); > 0 bootstraps through Q_ema
    aggregate: str = "mean"  # mean | max (max renormalised over annotations)
    drop_self_pairs: bool = False
    # Split of the base batch B: annotation images = B * annotation_fraction (published: 1/2);
    # bootstrap images = B * bootstrap_fraction, or with None as many as make an AB step render as
    # many views as its base method's step (ABSimCLR: B/4 x 4 views; the published B/8 gives 25%
    # fewer views than SimCLR at the same B; ABDINO: B x 4; ABCLIP: B/8 x 4, as published).
    annotation_fraction: float = 0.5
    bootstrap_fraction: Optional[float] = None
    action_bins: int = 128
    action_range: float = 6.0  # R: relative coordinates are clipped to [-R, R] before binning
    # false (ablation): the value decoder sees one constant move, so it can only predict the
    # average over moves (invariance); the paper's "no action tokens" row.
    action_tokens: bool = True
    ab_init_scale: float = 10.0  # initial t_AB
    # EMA target: momentum m per step (time constant 1/(1 - m) steps), cosine-annealed from
    # ema_momentum to ema_momentum_end (set them equal for a constant rate). Published: 0.996
    # (250 steps, 0.25% of a 100k-step run), annealed to 1 (ABSimCLR, ABDINO) or constant (ABCLIP).
    ema_momentum: float = 0.996
    ema_momentum_end: float = 1.0
    # Cap on the starting time constant as a fraction of train.steps, so that short runs bootstrap
    # from a target that follows the online network (method.md section 4); None: the rate as given.
    ema_horizon: Optional[float] = 0.02
    # ema: the reward (and Q for gamma > 0) come from the EMA target network, a second forward
    # of the target views, as published. online: from the online network's own forward of those
    # views, without gradient: the limit of momentum 0 (the target equals the online weights of
    # this step), which saves the second forward and the EMA copy (ab_simclr, ab_clip only).
    target_network: str = "ema"
    # DINO (dino, ab_dino; ABDINO's reward uses the same teacher distribution).
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # reached after the warm-up, then held
    teacher_temp_warmup: float = 0.04  # starting value: a sharper teacher early avoids collapse
    teacher_temp_warmup_steps: int = 1000  # linear warm-up length
    center_momentum: float = 0.9  # EMA of the teacher's batch-mean logits
    freeze_last_layer_steps: int = 100  # DINO: the first epoch; prototypes get no update meanwhile
    # CLIP (clip, ab_clip): learned logit scale (inverse temperature), capped at 100.
    clip_init_temperature: float = 0.07


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256  # base batch (images); ab_* methods split it, see MethodConfig
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
    # Image-text evaluation of clip/ab_clip runs: zero-shot classification of eval.test from its
    # class names in these prompts, and image<->text retrieval on a captioned source.
    zero_shot_templates: List[str] = field(
        default_factory=lambda: ["a photo of a {}.", "a picture of a {}.", "an image of the {}.", "a {}."]
    )
    retrieval: Optional[SourceConfig] = None  # e.g. kind=openclipart split=test limit=1000
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


_CHOICES = {
    "data.annotation.kind": ("fashion_mnist", "image_folder", "webdataset", "video_folder", "captioned_folder", "openclipart", "tuxpaint", "fmnist_scenes"),
    "data.bootstrap.kind": ("fashion_mnist", "image_folder", "webdataset", "video_folder", "captioned_folder", "openclipart", "tuxpaint", "fmnist_scenes"),
    "method.name": ("simclr", "ab_simclr", "dino", "ab_dino", "clip", "ab_clip"),
    "method.aggregate": ("mean", "max"),
    "method.target_network": ("ema", "online"),
    "train.precision": ("auto", "bf16", "fp32"),
}


def _explain(exc: OmegaConfBaseException, origin: str) -> AnnobootError:
    key = getattr(exc, "full_key", None) or "?"
    msg = (getattr(exc, "msg", None) or str(exc)).strip().splitlines()[0]
    return AnnobootError(f"bad config in {origin}: key '{key}': {msg}")


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Config:
    """Defaults <- recipe YAML at ``path`` <- ``key=value`` overrides; validated and typed."""
    cfg = OmegaConf.structured(Config)
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
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
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
    """Checks that types alone cannot express; raises AnnobootError naming the key."""
    values = {
        "data.annotation.kind": cfg.data.annotation.kind,
        "method.name": cfg.method.name,
        "method.aggregate": cfg.method.aggregate,
        "method.target_network": cfg.method.target_network,
        "train.precision": cfg.train.precision,
    }
    if cfg.data.bootstrap is not None:
        values["data.bootstrap.kind"] = cfg.data.bootstrap.kind
    for key, value in values.items():
        allowed = _CHOICES[key]
        if value not in allowed:
            raise AnnobootError(f"bad config: key '{key}' is '{value}'; choose one of {', '.join(allowed)}")
    scene_sources = {"data.annotation": cfg.data.annotation, "data.bootstrap": cfg.data.bootstrap,
                     "eval.train": cfg.eval.train, "eval.test": cfg.eval.test, "eval.retrieval": cfg.eval.retrieval}
    for key, source in scene_sources.items():
        if source is not None and source.kind == "fmnist_scenes":
            check_scenes(source.scenes, f"{key}.scenes")
    if "decoder" in cfg.eval.probes:  # checked now, not after a run of pre-training
        from annoboot.eval.decoder_probe import check_decoder_options

        check_decoder_options(cfg.eval)
    for key, pair in [
        ("views.crop_scale", cfg.views.crop_scale),
        ("views.crop_ratio", cfg.views.crop_ratio),
        ("views.bootstrap_scale", cfg.views.bootstrap_scale),
        ("views.global_scale", cfg.views.global_scale),
        ("views.local_scale", cfg.views.local_scale),
        ("views.clip_scale", cfg.views.clip_scale),
    ]:
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise AnnobootError(f"bad config: key '{key}' must be [low, high] with 0 < low <= high, got {pair}")
    for stream, src in [("annotation", cfg.data.annotation), ("bootstrap", cfg.data.bootstrap)]:
        if src is not None:
            _validate_stream_source(f"data.{stream}", src)
    v = cfg.views
    if max(v.crop_scale[1], v.bootstrap_scale[1], v.global_scale[1], v.local_scale[1]) > 1:
        raise AnnobootError("bad config: crop scales are fractions of the image area and must be <= 1")
    if not 0 <= cfg.method.gamma < 1:
        raise AnnobootError(f"bad config: key 'method.gamma' must be in [0, 1), got {cfg.method.gamma}")
    for key in ("steps", "batch_size", "ckpt_every", "log_every"):
        if getattr(cfg.train, key) <= 0:
            raise AnnobootError(f"bad config: key 'train.{key}' must be a positive integer, got {getattr(cfg.train, key)}")
    if cfg.method.name.startswith("ab_") and cfg.views.bootstrap_views < 2:
        raise AnnobootError("bad config: 'views.bootstrap_views' must be >= 2 for annotation bootstrapping")
    if cfg.method.name.endswith("dino") and not (v.local_views >= 1 and 0 < v.local_size <= v.img_size):
        raise AnnobootError(
            f"bad config: DINO needs 'views.local_views' >= 1 (got {v.local_views}) and "
            f"0 < 'views.local_size' <= 'views.img_size' (got {v.local_size} and {v.img_size})"
        )


def check_mix_weights(key: str, root: Optional[str], weights: List[float]) -> None:
    """AnnobootError naming ``key`` unless ``weights`` fit the '::'-joined patterns of ``root``."""
    patterns = (root or "").split("::")
    if len(weights) != len(patterns):
        raise AnnobootError(
            f"bad config: key '{key}' has {len(weights)} weight(s) but the root joins {len(patterns)} "
            "shard pattern(s) with '::'; give one weight per pattern"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise AnnobootError(f"bad config: key '{key}' must be >= 0 with a positive sum, got {list(weights)}")


def _validate_stream_source(key: str, src: SourceConfig) -> None:
    if src.decode_on not in ("cpu", "device"):
        raise AnnobootError(f"bad config: key '{key}.decode_on' is '{src.decode_on}'; choose one of cpu, device")
    if src.kind != "webdataset" and (src.decode_on != "cpu" or src.mix_weights is not None):
        raise AnnobootError(
            f"bad config: '{key}.decode_on' and '{key}.mix_weights' apply to kind=webdataset only, not {src.kind}"
        )
    if src.mix_weights is not None:
        check_mix_weights(f"{key}.mix_weights", src.root, src.mix_weights)
    if not 0 < src.max_bad_fraction <= 1:
        raise AnnobootError(f"bad config: key '{key}.max_bad_fraction' must be in (0, 1], got {src.max_bad_fraction}")


def check_scenes(scenes: ScenesConfig, key: str = "scenes") -> None:
    """AnnobootError naming ``key``.<option> when a scene setting cannot work."""
    bad = None
    if scenes.num_scenes < 1:
        bad = f"'{key}.num_scenes' must be >= 1, got {scenes.num_scenes}"
    elif scenes.canvas < 8:
        bad = f"'{key}.canvas' must be >= 8 pixels, got {scenes.canvas}"
    elif len(scenes.items) != 2 or not 1 <= scenes.items[0] <= scenes.items[1]:
        bad = f"'{key}.items' must be [low, high] with 1 <= low <= high, got {scenes.items}"
    elif len(scenes.item_size) != 2 or not 4 <= scenes.item_size[0] <= scenes.item_size[1] <= scenes.canvas:
        bad = f"'{key}.item_size' must be [low, high] with 4 <= low <= high <= canvas ({scenes.canvas}), got {scenes.item_size}"
    elif not 0 <= scenes.max_overlap <= 1:
        bad = f"'{key}.max_overlap' must be in [0, 1], got {scenes.max_overlap}"
    elif scenes.clutter < 0 or not 0 <= scenes.clutter_contrast <= 1:
        bad = f"'{key}.clutter' must be >= 0 and '{key}.clutter_contrast' in [0, 1], got {scenes.clutter} and {scenes.clutter_contrast}"
    elif scenes.clutter and scenes.canvas < 16:
        bad = f"'{key}.clutter' needs '{key}.canvas' >= 16 (clutter patches are up to 16 px), got {scenes.canvas}"
    elif not 0 <= scenes.single_fraction <= 1:
        bad = f"'{key}.single_fraction' must be in [0, 1], got {scenes.single_fraction}"
    elif scenes.pool_limit is not None and scenes.pool_limit < 1:
        bad = f"'{key}.pool_limit' must be a positive number of images, got {scenes.pool_limit}"
    if bad:
        raise AnnobootError(f"bad config: key {bad}")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]
