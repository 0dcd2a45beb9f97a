"""Text search and zero-shot labels with a caption model (CLIP, ABCLIP): an embedded folder
ranked by a sentence (``annoboot similar EMB --text``), a folder's images labelled from a list
(``annoboot zero-shot``). The text tower itself: :mod:`annoboot.text_tower`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from annoboot.checked_files import read_text
from annoboot.config import EvalConfig
from annoboot.embedding import folder_batches
from annoboot.pretrained import load_encoder
from annoboot.similar import nearest, read_embeddings_file
from annoboot.errors import AnnobootError
from annoboot.eval.image_text import zero_shot_classifier
from annoboot.text_tower import no_text_tower

# The prompts of the probes' zero-shot (eval.zero_shot_templates' default).
DEFAULT_TEMPLATES = tuple(EvalConfig().zero_shot_templates)


# ------------------------------------------------------------------ search and labels
@dataclass
class Match:
    name: str
    score: float


def find_by_text(embeddings_path: str | Path, text: str, k: int = 8, encoder=None) -> Tuple[List[Match], Dict]:
    """The ``k`` images of an embeddings file (``annoboot embed`` of a caption model) closest to
    ``text`` in the joint space, best first; (matches, the file's meta)."""
    names, _, meta, joint = read_embeddings_file(embeddings_path)
    joint = _joint_or_error(embeddings_path, joint)
    if encoder is None:
        encoder = load_encoder(meta["encoder"], meta["weights"] if meta["weights"] != "exported" else "online", "cpu")
    query = encoder.embed_text([text])[0]
    if query.shape[0] != joint.shape[1]:
        raise AnnobootError(f"{embeddings_path}: its joint embeddings have {joint.shape[1]} dimensions, the text tower of "
                            f"{meta['encoder']} gives {query.shape[0]} (embedded by another model?)")
    scores, order = nearest(joint, query, k)
    return [Match(names[i], float(s)) for s, i in zip(scores.tolist(), order.tolist())], meta


def load_joint_embeddings(path: str | Path) -> torch.Tensor:
    """The joint-space image features of an ``annoboot embed`` file of a caption model."""
    return _joint_or_error(path, read_embeddings_file(path)[3])


def _joint_or_error(path: str | Path, joint: Optional[torch.Tensor]) -> torch.Tensor:
    if joint is None:
        raise AnnobootError(f"{path} holds image features only (its encoder has no text tower): embed the folder "
                            "with a CLIP or ABCLIP run to search it by text")
    return joint


def parse_labels(labels: Optional[str], labels_file: Optional[str]) -> List[str]:
    """Labels from "a,b,c" or a file of one label per line (blank lines and # comments skipped)."""
    if (labels is None) == (labels_file is None):
        raise AnnobootError("zero-shot: give the labels with --labels a,b,c or --labels-file FILE (one of them)")
    if labels_file is not None:
        lines = read_text(labels_file, "--labels-file").splitlines()
        names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        origin = f"--labels-file {labels_file}"
    else:
        names = [name.strip() for name in labels.split(",") if name.strip()]
        origin = "--labels"
    if len(names) < 2:
        raise AnnobootError(f"{origin}: zero-shot needs at least 2 labels, got {names}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AnnobootError(f"{origin}: labels given twice: {', '.join(map(repr, repeated))}")
    return names


def zero_shot_folder(encoder, folder: str | Path, labels: Sequence[str], top: int = 3,
                     templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256) -> Dict:
    """Each decodable image under ``folder`` with its ``top`` labels and their probabilities
    (CLIP's rule: softmax over the labels of 100 x cosine similarity); undecodable files are
    counted under "skipped" by reason."""
    from annoboot.data.image_folder import ImageFolderSource

    if encoder.text is None:
        raise no_text_tower(encoder.source)
    if top < 1:
        raise AnnobootError(f"--top must be at least 1, got {top}")
    classifier = zero_shot_classifier(encoder.text, list(labels), list(templates), encoder.device)
    source = ImageFolderSource(folder, max_short_side=max(encoder.img_size, 32))
    root = Path(source.root)
    images: List[Dict] = []
    skipped: Dict[str, int] = {}
    for batch, good, bad in folder_batches(source, range(len(source.paths)), batch_size):
        for _, reason in bad:
            skipped[reason or "unreadable"] = skipped.get(reason or "unreadable", 0) + 1
        if batch is None:
            continue
        # CLIP's zero-shot rule: softmax over the labels of 100 x cosine similarity.
        probs = (100.0 * encoder.embed_joint_batch(batch) @ classifier.T).softmax(dim=1)
        best = probs.topk(min(top, len(labels)), dim=1)
        for row, index in enumerate(good):
            images.append({"image": str(Path(source.paths[index]).relative_to(root)),
                           "labels": [{"label": labels[j], "score": float(p)}
                                      for p, j in zip(best.values[row].tolist(), best.indices[row].tolist())]})
    if not images:
        raise AnnobootError(f"no image under {root} could be decoded ({skipped})")
    return {"folder": str(root.resolve()), "encoder": encoder.source, "labels": list(labels),
            "templates": list(templates), "skipped": skipped, "images": images}


__all__ = ["DEFAULT_TEMPLATES", "Match", "find_by_text", "load_joint_embeddings", "parse_labels", "zero_shot_folder"]
