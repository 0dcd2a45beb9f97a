"""Similar images (``annoboot similar``): read an embeddings file that ``annoboot embed`` wrote,
the nearest neighbours of an image in it (exact cosine), and a contact sheet of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from PIL import Image

from annoboot.checked_files import check_keys, read_npz
from annoboot.errors import AnnobootError
from annoboot.pretrained import PretrainedEncoder, load_encoder


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


__all__ = ["Neighbour", "contact_sheet", "find_similar", "load_embeddings", "nearest", "read_embeddings_file"]
