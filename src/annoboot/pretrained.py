"""A trained encoder, ready to use: :func:`load_encoder` reads a run folder, a checkpoint, an
exported ``.safetensors`` or an exported folder (``annoboot export``) into a
:class:`PretrainedEncoder`, whose ``embed`` gives the pooled features of images, L2-normalised,
computed on each whole image resized to the training view size exactly as the probes see it
(``embed_text`` / ``embed_joint`` for caption models).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from annoboot.batch import ImageBatch
from annoboot.checked_files import check_keys, read_json_object, read_safetensors
from annoboot.data.batching import LoaderItem, pad_collate
from annoboot.data.decode import decode_image
from annoboot.errors import AnnobootError
from annoboot.export import CONFIG_FILE, WEIGHTS_FILE, is_exported_folder
from annoboot.models.encoder import Encoder
from annoboot.runtime import autocast_context, resolve_device
from annoboot.views import Normalize, render_full_images

if TYPE_CHECKING:  # imported where used: the text half needs open_clip's tokenizer
    from annoboot.text_tower import TextTower

log = logging.getLogger(__name__)

ImageLike = Union[str, Path, Image.Image, torch.Tensor]


@dataclass
class PretrainedEncoder:
    """A trained encoder with the input convention it was trained with.

    ``model``: the timm backbone (eval mode; ``model(x)`` gives pooled features for inputs
    made by ``transform``). ``embed(images)``: (N, D) L2-normalised features of paths, PIL
    images or (3, H, W) uint8 tensors.
    """

    encoder: Encoder
    img_size: int
    normalize: Normalize
    device: torch.device
    source: str  # the run, checkpoint or .safetensors file it came from
    weights: str = "online"
    backbone: str = ""
    create_kwargs: Dict = field(default_factory=dict)
    text: Optional["TextTower"] = None  # caption models (CLIP, ABCLIP): the text half of the joint space

    @property
    def model(self) -> torch.nn.Module:
        return self.encoder.backbone

    @torch.no_grad()  # not inference_mode: the result may feed a model being fine-tuned
    def transform(self, image: ImageLike) -> torch.Tensor:
        """One image -> (3, S, S) normalised float32 on ``device``: the probes' input."""
        return self._render([_as_uint8(image, self.img_size)])[0]

    def _render(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        batch, _ = pad_collate([LoaderItem(image) for image in images])
        return render_full_images(batch.to(self.device), self.img_size, self.normalize)

    @torch.inference_mode()
    def embed_batch(self, batch: ImageBatch) -> torch.Tensor:
        return self._pooled(batch)[0]

    @torch.inference_mode()
    def _pooled(self, batch: ImageBatch, joint: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(L2-normalised pooled features, and with ``joint`` their joint-space embeddings), CPU."""
        with autocast_context(self.device, "auto"):
            pooled = self.encoder(render_full_images(batch.to(self.device), self.img_size, self.normalize)).pooled
        projected = self.text.project(pooled) if joint and self.text is not None else None
        return F.normalize(pooled.float(), dim=1).cpu(), projected

    def embed_joint_batch(self, batch: ImageBatch) -> torch.Tensor:
        """(B, embed_dim) L2-normalised joint-space embeddings (caption models only)."""
        if self.text is None:
            from annoboot.text_tower import no_text_tower

            raise no_text_tower(self.source)
        return self._pooled(batch, joint=True)[1]

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, embed_dim) L2-normalised embeddings of sentences in the joint space, comparable
        with :meth:`embed_joint` of images (CLIP and ABCLIP runs; a one-line error otherwise)."""
        if self.text is None:
            from annoboot.text_tower import no_text_tower

            raise no_text_tower(self.source)
        return self.text.embed_text(texts)

    def embed_joint(self, images: Sequence[ImageLike], batch_size: int = 256) -> torch.Tensor:
        """(N, embed_dim) L2-normalised joint-space embeddings of images (caption models only)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch, _ = pad_collate([LoaderItem(_as_uint8(image, self.img_size)) for image in images[start : start + batch_size]])
            out.append(self.embed_joint_batch(batch))
        return torch.cat(out) if out else torch.empty(0, self.text.settings["embed_dim"] if self.text else 0)

    def embed(self, images: Sequence[ImageLike], batch_size: int = 256) -> torch.Tensor:
        """(N, D) float32 L2-normalised embeddings of ``images``, in order (a bad file raises)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch, _ = pad_collate([LoaderItem(_as_uint8(image, self.img_size)) for image in images[start : start + batch_size]])
            out.append(self.embed_batch(batch))
        return torch.cat(out) if out else torch.empty(0, self.encoder.width)


def _as_uint8(image: ImageLike, img_size: int) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise AnnobootError(f"images given as tensors must be (C, H, W) uint8, got {tuple(image.shape)} {image.dtype}")
        return image
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    try:
        return decode_image(str(image), max_short_side=max(img_size, 32))
    except FileNotFoundError:
        raise AnnobootError(f"image not found: {image}") from None
    except Exception as exc:
        raise AnnobootError(f"cannot decode image {image}: {type(exc).__name__}: {exc}") from None


def load_encoder(path: str | Path, weights: str = "online", device: str | None = None) -> PretrainedEncoder:
    """A run directory, a checkpoint file, an exported ``.safetensors`` or an exported folder
    (``annoboot export RUN --out FOLDER``) -> PretrainedEncoder.

    ``weights``: 'online' or 'ema' (runs and checkpoints only). ``device``: e.g. 'cpu', 'cuda';
    default: the run's ``train.device`` ('auto': a GPU when there is one).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_exported(path, device)
    if is_exported_folder(path):
        return _load_exported_folder(path, device)
    from annoboot.saved_run import load_run  # the methods' imports, only when a run is loaded

    overrides = [] if device is None else [f"train.device={device}"]
    from annoboot.text_tower import text_tower_of

    cfg, method, resolved = load_run(path, weights, overrides)
    encoder = method.encoder.eval()
    return PretrainedEncoder(encoder, cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std).to(resolved), resolved,
                             str(path), weights, encoder.backbone_name, dict(encoder.create_kwargs), text_tower_of(method))


# Keys an export's .json may hold beside backbone and create_kwargs, and their types.
EXPORT_OPTIONAL = {"img_size": int, "num_features": int}  # mean and std: _check_channel_triple


def _check_channel_triple(values, where: str) -> None:
    """None, or the 3 numbers of a per-channel mean or std."""
    if values is None:
        return
    if (not isinstance(values, (list, tuple)) or len(values) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise AnnobootError(f"{where} should be 3 numbers (one per colour channel), found {str(values)[:60]!r}")


def _load_exported(path: Path, device: str | None) -> PretrainedEncoder:
    import timm

    from annoboot.config import ViewsConfig
    from annoboot.export import metadata_path

    meta_file = metadata_path(path)
    if not path.is_file():
        raise AnnobootError(f"weights not found: {path}")
    if not meta_file.is_file():
        raise AnnobootError(f"{path} has no {meta_file.name} beside it (annoboot export writes one): cannot tell its model")
    what = "the model description annoboot export writes beside its weights"
    meta = read_json_object(meta_file, what, {"backbone": str, "create_kwargs": dict})
    check_keys(meta, {key: kind for key, kind in EXPORT_OPTIONAL.items() if meta.get(key) is not None}, str(meta_file), what)
    for key in ("mean", "std"):
        _check_channel_triple(meta.get(key), f"{meta_file}: '{key}'")
    kwargs = dict(meta["create_kwargs"])
    defaults = ViewsConfig()
    state, _ = read_safetensors(path, "exported backbone weights")
    try:
        # Built bare and filled from the file: nothing is looked up on a model hub.
        backbone = timm.create_model(meta["backbone"], pretrained=False, num_classes=0, **kwargs)
        backbone.load_state_dict(state)
    except Exception as exc:
        raise AnnobootError(f"cannot load {path} as timm '{meta['backbone']}' with {kwargs} (from {meta_file.name}): "
                            f"{str(exc).splitlines()[0]}") from None
    img_size = int(meta.get("img_size") or kwargs.get("img_size") or defaults.img_size)  # timm took kwargs' img_size
    resolved = resolve_device(device or "auto")
    encoder = Encoder(backbone, meta["backbone"], kwargs).to(resolved).eval()
    normalize = Normalize(meta.get("mean", defaults.mean), meta.get("std", defaults.std)).to(resolved)
    return PretrainedEncoder(encoder, img_size, normalize, resolved, str(path), "exported", meta["backbone"], kwargs)


def _load_exported_folder(path: Path, device: str | None) -> PretrainedEncoder:
    """A folder in the model hub's layout, read by timm itself (local-dir:), fed as its
    pretrained_cfg says."""
    import timm

    from annoboot.config import ViewsConfig

    what = "an exported folder's model description"
    config = read_json_object(path / CONFIG_FILE, what, {"architecture": str})
    check_keys(config, {key: dict for key in ("model_args", "pretrained_cfg") if key in config}, str(path / CONFIG_FILE), what)
    read_safetensors(path / WEIGHTS_FILE, "exported backbone weights")  # its checksum, before timm reads it unchecked
    try:
        backbone = timm.create_model(f"local-dir:{path}", pretrained=True)
    except Exception as exc:
        raise AnnobootError(f"cannot load the exported folder {path} with timm ({CONFIG_FILE}, {WEIGHTS_FILE}): "
                            f"{str(exc).splitlines()[0]}") from None
    cfg = backbone.pretrained_cfg
    input_size = cfg.get("input_size") or (3, 224, 224)
    if (not isinstance(input_size, (list, tuple)) or len(input_size) != 3
            or not all(isinstance(v, int) and v > 0 for v in input_size)):
        raise AnnobootError(f"{path / CONFIG_FILE}: pretrained_cfg.input_size should be 3 positive integers, "
                            f"found {str(input_size)[:60]!r}")
    for key in ("mean", "std"):
        _check_channel_triple(cfg.get(key), f"{path / CONFIG_FILE}: pretrained_cfg.{key}")
    if input_size[1] != input_size[2] or cfg.get("crop_mode", "squash") != "squash":
        log.warning("%s: its transform (input %s, crop %s) is not annoboot's square resize; embed resizes to %d px squares",
                    path, input_size, cfg.get("crop_mode"), input_size[1])
    kwargs = dict(config.get("model_args", {}))
    kwargs.pop("num_classes", None)
    resolved = resolve_device(device or "auto")
    name = cfg.get("architecture", "")
    encoder = Encoder(backbone, name, kwargs).to(resolved).eval()
    defaults = ViewsConfig()
    normalize = Normalize(cfg.get("mean") or defaults.mean, cfg.get("std") or defaults.std).to(resolved)
    from annoboot.text_tower import load_text_tower

    return PretrainedEncoder(encoder, int(input_size[1]), normalize, resolved, str(path), "exported", name, kwargs,
                             load_text_tower(path, resolved))


__all__ = ["ImageLike", "PretrainedEncoder", "load_encoder"]
