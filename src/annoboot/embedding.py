"""Use a trained encoder: load it, embed images or a whole folder, find similar images.

Embeddings are the encoder's pooled features, L2-normalised, computed on each whole image
resized to the training view size, exactly as the probes see it. A folder is embedded in chunks
of ``chunk_size`` files, each written to ``<out>.parts/`` as it completes, so a killed run of a
large folder resumes at its first missing chunk; unreadable files are skipped and counted by
reason. The result is one ``.npz``: ``names`` (paths relative to the folder), ``embeddings``
(N, D) float32 and ``meta`` (a JSON string: encoder, weights, image size, folder, skips).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from annoboot.batch import ImageBatch
from annoboot.checked_files import check_keys, read_json_object, read_npz, read_safetensors
from annoboot.data.decode import decode_image
from annoboot.data.image_folder import ImageFolderSource
from annoboot.data.stream import pad_collate
from annoboot.data.workers import decode_workers
from annoboot.errors import AnnobootError
from annoboot.export import CONFIG_FILE, WEIGHTS_FILE, is_exported_folder
from annoboot.models.encoder import Encoder
from annoboot.train.runtime import autocast_context, resolve_device
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
        batch, _ = pad_collate([(image, None) for image in images])
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
            batch, _ = pad_collate([(_as_uint8(image, self.img_size), None) for image in images[start : start + batch_size]])
            out.append(self.embed_joint_batch(batch))
        return torch.cat(out) if out else torch.empty(0, self.text.settings["embed_dim"] if self.text else 0)

    def embed(self, images: Sequence[ImageLike], batch_size: int = 256) -> torch.Tensor:
        """(N, D) float32 L2-normalised embeddings of ``images``, in order (a bad file raises)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch, _ = pad_collate([(_as_uint8(image, self.img_size), None) for image in images[start : start + batch_size]])
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
    from annoboot.commands import load_run  # the trainer's imports, only when a run is loaded

    overrides = [] if device is None else [f"train.device={device}"]
    from annoboot.text_tower import text_tower_of

    cfg, method, resolved = load_run(path, weights, overrides)
    encoder = method.encoder.eval()
    return PretrainedEncoder(encoder, cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std).to(resolved), resolved,
                             str(path), weights, encoder.backbone_name, dict(encoder.create_kwargs), text_tower_of(method))


# Keys an export's .json may hold beside backbone and create_kwargs, and their types.
EXPORT_OPTIONAL = {"img_size": int, "mean": list, "std": list, "num_features": int}


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


# ------------------------------------------------------------------ a folder
@dataclass
class EmbedReport:
    out: Path
    embedded: int
    skipped: Dict[str, int]
    seconds: float
    chunks_reused: int

    def __str__(self) -> str:
        skipped = sum(self.skipped.values())
        why = f" ({', '.join(f'{n} {r}' for r, n in sorted(self.skipped.items()))})" if skipped else ""
        reused = f"; {self.chunks_reused} chunk(s) reused from an earlier run" if self.chunks_reused else ""
        return (f"wrote {self.out}: {self.embedded} images embedded, {skipped} skipped{why}, "
                f"{self.seconds:.1f} s{reused}")


class _FolderFiles(Dataset):
    def __init__(self, source: ImageFolderSource, indices: range):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[Optional[torch.Tensor], Optional[str], int]:
        index = self.indices[i]
        image, reason = self.source.load(index)
        return image, reason, index


def folder_batches(source: ImageFolderSource, indices: range, batch_size: int, workers: int = 0):
    """(batch or None, indices of its images, [(index, reason) of the undecodable]) per batch."""
    return DataLoader(_FolderFiles(source, indices), batch_size=batch_size, num_workers=workers, collate_fn=_collate)


def _collate(items):
    good = [(image, None) for image, _, _ in items if image is not None]
    batch = pad_collate(good)[0] if good else None
    return batch, [index for image, _, index in items if image is not None], [(index, reason) for image, reason, index in items if image is None]


def embed_folder(encoder: PretrainedEncoder, folder: str | Path, out: str | Path, batch_size: int = 256,
                 chunk_size: int = 4096, num_workers: Optional[int] = None, progress: bool = True) -> EmbedReport:
    """Embed every image under ``folder`` (recursively, sorted) into ``out`` (.npz); resumable."""
    started = time.perf_counter()
    out = Path(out)
    if out.suffix != ".npz":
        raise AnnobootError(f"--out must end in .npz, got {out}")
    source = ImageFolderSource(folder, max_short_side=max(encoder.img_size, 32))
    root = Path(source.root)
    names = [str(Path(p).relative_to(root)) for p in source.paths]
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    workers = decode_workers(num_workers)
    chunks = math.ceil(len(names) / chunk_size)
    from tqdm.auto import tqdm

    reused = 0
    # A context: an error closes the bar first, so its message starts a line of its own.
    with tqdm(total=len(names), unit="img", desc=f"embed {root.name}", disable=not progress) as bar:
        for c in range(chunks):
            indices = range(c * chunk_size, min((c + 1) * chunk_size, len(names)))
            part = parts / f"part-{c:06d}.npz"
            if _part_matches(part, names[indices.start : indices.stop], joint=encoder.text is not None):
                reused += 1
            else:
                _embed_chunk(encoder, source, indices, names, part, batch_size, workers)
            bar.update(len(indices))

    embeddings, joint, kept, skipped = [], [], [], Counter()
    for c in range(chunks):
        part = _read_part(parts / f"part-{c:06d}.npz", joint=encoder.text is not None)
        embeddings.append(part["embeddings"])
        if encoder.text is not None:
            joint.append(part["joint"])
        kept.extend(part["names"][part["kept"]].tolist())
        skipped.update(json.loads(str(part["skipped"])))
    if not kept:
        raise AnnobootError(f"no image under {root} could be decoded ({dict(skipped)})")
    meta = {"encoder": encoder.source, "weights": encoder.weights, "img_size": encoder.img_size,
            "folder": str(root.resolve()), "skipped": dict(skipped)}
    tmp = out.with_name(out.name + ".tmp.npz")
    arrays = {"joint": np.concatenate(joint)} if joint else {}  # caption models: the joint space, for text search
    np.savez(tmp, names=np.array(kept), embeddings=np.concatenate(embeddings), meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(out)
    shutil.rmtree(parts)
    return EmbedReport(out, len(kept), dict(skipped), time.perf_counter() - started, reused)


# A resumable part of `annoboot embed`: one chunk's names, which of them decoded (kept), their
# features (and joint-space features for caption models) and the skip reasons as JSON.
PART_ARRAYS = {"names": ("U", 1), "kept": ("b", 1), "embeddings": ("f", 2), "skipped": ("U", 0), "joint": ("f", 2)}


def _read_part(part: Path, joint: bool) -> Dict[str, np.ndarray]:
    arrays = read_npz(part, "part of an unfinished `annoboot embed`", PART_ARRAYS, optional=() if joint else ("joint",))
    rows = {len(arrays["names"]), len(arrays["kept"])}
    kept = int(arrays["kept"].sum())
    if len(rows) > 1 or arrays["embeddings"].shape[0] != kept or (joint and arrays["joint"].shape[0] != kept):
        raise AnnobootError(f"{part}: its arrays disagree on the number of images (part of an unfinished `annoboot embed`)")
    return arrays


def _part_matches(part: Path, names: List[str], joint: bool = False) -> bool:
    """Whether ``part`` is an intact part for these names (else it is computed again)."""
    if part.exists() and not part.is_file():
        raise AnnobootError(f"{part}: not a file, where `annoboot embed` keeps a part of its work: move it away")
    if not part.is_file():
        return False
    try:
        return _read_part(part, joint)["names"].tolist() == names
    except AnnobootError:  # cut short by a kill, or damaged: computed again
        return False


def _embed_chunk(encoder: PretrainedEncoder, source: ImageFolderSource, indices: range, names: List[str], part: Path,
                 batch_size: int, workers: int) -> None:
    vectors: List[torch.Tensor] = [torch.empty(0, encoder.encoder.width)]
    joint: List[torch.Tensor] = [torch.empty(0, encoder.text.settings["embed_dim"])] if encoder.text is not None else []
    kept: List[int] = []
    reasons: Counter = Counter()
    for batch, good, bad in folder_batches(source, indices, batch_size, workers):
        for index, reason in bad:
            log.debug("skipping %s: %s", names[index], reason)
            reasons[reason or "unreadable"] += 1
        if batch is not None:
            pooled, projected = encoder._pooled(batch, joint=encoder.text is not None)
            vectors.append(pooled)
            if projected is not None:
                joint.append(projected)
            kept.extend(good)
    mask = np.zeros(len(indices), dtype=bool)
    mask[[i - indices.start for i in kept]] = True
    tmp = part.with_name(part.name + ".tmp.npz")
    arrays = {"joint": torch.cat(joint).numpy()} if joint else {}
    np.savez(tmp, names=np.array(names[indices.start : indices.stop]), kept=mask, embeddings=torch.cat(vectors).numpy(),
             skipped=np.array(json.dumps(dict(reasons))), **arrays)
    tmp.replace(part)


# ------------------------------------------------------------------ similar images
@dataclass
class Neighbour:
    name: str
    score: float


# What `annoboot embed` writes: names (N,), embeddings (N, D), meta (a JSON object), and for
# caption models joint (N, E), the image features in the joint space.
EMBEDDINGS_ARRAYS = {"names": ("U", 1), "embeddings": ("f", 2), "meta": ("U", 0), "joint": ("f", 2)}
EMBEDDINGS_META = {"encoder": str, "weights": str, "folder": str}


def read_embeddings_file(path: str | Path) -> Tuple[List[str], torch.Tensor, Dict, Optional[torch.Tensor]]:
    """(names, embeddings, meta, joint or None) of an ``annoboot embed`` file, checked: one
    AnnobootError line naming the file when it is damaged or not such a file."""
    path = Path(path)
    if not path.exists():
        raise AnnobootError(f"embeddings not found: {path} (write them with `annoboot embed`)")
    what = "annoboot embeddings file"
    arrays = read_npz(path, what, EMBEDDINGS_ARRAYS, optional=("joint",))
    names, vectors = arrays["names"], arrays["embeddings"]
    rows = {"names": len(names), "embeddings": vectors.shape[0]}
    if "joint" in arrays:
        rows["joint"] = arrays["joint"].shape[0]
    if len(set(rows.values())) > 1:
        raise AnnobootError(f"{path}: its arrays disagree on the number of images ({rows}; {what})")
    try:
        meta = json.loads(str(arrays["meta"]))
    except (ValueError, RecursionError) as exc:
        raise AnnobootError(f"{path}: its 'meta' is not JSON ({str(exc).splitlines()[0]}; {what})") from None
    if not isinstance(meta, dict):
        raise AnnobootError(f"{path}: its 'meta' is not a JSON object ({what})")
    check_keys(meta, EMBEDDINGS_META, f"{path}: meta", what)
    joint = torch.from_numpy(arrays["joint"]) if "joint" in arrays else None
    return names.tolist(), torch.from_numpy(vectors), meta, joint


def load_embeddings(path: str | Path) -> Tuple[List[str], torch.Tensor, Dict]:
    """(names, L2-normalised embeddings, meta) of an ``annoboot embed`` file."""
    names, vectors, meta, _ = read_embeddings_file(path)
    return names, vectors, meta


def nearest(embeddings: torch.Tensor, query: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of unit vectors by one matrix product, top ``k``: exact; its cost per
    folder size is measured by benchmarks/similar_search.py (docs/results.md)."""
    scores = embeddings @ query
    return torch.topk(scores, min(k, scores.numel()))


def find_similar(embeddings_path: str | Path, image: str | Path, k: int = 8,
                 encoder: Optional[PretrainedEncoder] = None) -> Tuple[str, List[Neighbour], Dict]:
    """The ``k`` images most like ``image``: a file of the embedded folder (its stored vector)
    or any other image (embedded now with the encoder that wrote the file, or ``encoder``).
    Returns (query path, neighbours best first, the file's meta)."""
    names, vectors, meta = load_embeddings(embeddings_path)
    folder = Path(meta["folder"])
    image = Path(image)
    relative = _relative_to(image, folder)
    if relative is not None and relative in names:
        query = vectors[names.index(relative)]
        query_path = folder / relative
    else:
        if encoder is None:
            encoder = load_encoder(meta["encoder"], meta["weights"] if meta["weights"] != "exported" else "online", "cpu")
        query = encoder.embed([image])[0]
        query_path = image
    scores, order = nearest(vectors, query.float(), k)
    return str(query_path), [Neighbour(names[i], float(s)) for s, i in zip(scores.tolist(), order.tolist())], meta


def _relative_to(image: Path, folder: Path) -> Optional[str]:
    if not image.is_absolute() and not image.exists():
        return str(image)  # given as a name inside the folder
    try:
        return str(image.resolve().relative_to(folder))
    except ValueError:
        return None


def contact_sheet(query: str, neighbours: List[Neighbour], folder: str | Path, out: str | Path, thumb: int = 112) -> Path:
    """A PNG row: the query (an image path, or "text: <sentence>" drawn as words), then each
    neighbour with its cosine similarity."""
    import textwrap

    from PIL import ImageDraw

    folder, out = Path(folder), Path(out)
    label_h = 16
    tiles = [(Path(query), "query")] + [(folder / n.name, f"{n.score:.3f}") for n in neighbours]
    sheet = Image.new("RGB", (thumb * len(tiles), thumb + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, label) in enumerate(tiles):
        if i == 0 and query.startswith("text: "):
            words = textwrap.wrap(query[len("text: "):], width=max(8, thumb // 7))
            draw.multiline_text((4, 4), "\n".join(words[: max(1, thumb // 14)]), fill="black")
            draw.text((4, thumb + 2), "query (text)", fill="black")
            continue
        try:
            with Image.open(path) as im:
                tile = im.convert("RGB")
                tile.thumbnail((thumb, thumb))
        except Exception:
            tile = Image.new("RGB", (thumb, thumb), "gray")
        sheet.paste(tile, (i * thumb + (thumb - tile.width) // 2, (thumb - tile.height) // 2))
        draw.text((i * thumb + 4, thumb + 2), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


__all__ = ["EmbedReport", "Neighbour", "PretrainedEncoder", "contact_sheet", "embed_folder", "find_similar", "load_embeddings",
           "load_encoder", "nearest"]
