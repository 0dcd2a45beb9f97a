"""Image-text evaluation of CLIP-style models: zero-shot classification and retrieval.

Works with any method that has ``encoder``, ``embed_images(pooled)``, ``embed_texts(tokens)``
and ``tokenizer`` (``Method.embeds_text``): :func:`has_text_tower` says whether a method qualifies.

- zero-shot: each class is the mean of its prompts' normalised text embeddings ("a photo of a
  {}." ...); an image is assigned the class of highest cosine similarity;
- retrieval: recall@k from images to their own caption and from captions to their own image,
  over a captioned source (exact pairs only: a duplicate caption elsewhere counts as a miss).
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from annoboot.data import iter_eval_batches
from annoboot.data.base import ImageSource
from annoboot.errors import AnnobootError
from annoboot.views import Normalize, render_full_images


def has_text_tower(method: torch.nn.Module) -> bool:
    return bool(getattr(method, "embeds_text", False))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.inference_mode()
def embed_texts(method, texts: Sequence[str], device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """(len(texts), D) L2-normalised text embeddings, float32 on CPU."""
    was_training = method.training
    method.eval()
    try:
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = method.tokenizer(list(texts[start : start + batch_size])).to(device)
            with _autocast(device):
                parts.append(F.normalize(method.embed_texts(tokens).float(), dim=-1).cpu())
    finally:
        method.train(was_training)
    return torch.cat(parts)


@torch.inference_mode()
def embed_images(
    method, source: ImageSource, img_size: int, normalize: Normalize, device: torch.device, batch_size: int = 512, num_workers: int = 0
) -> Tuple[torch.Tensor, torch.Tensor | None, List[str] | None]:
    """Every decodable image of ``source``, whole and resized to ``img_size``.

    Returns (embeddings (N, D) L2-normalised float32 on CPU, labels (N,) or None, captions
    (N strings) or None), aligned row by row (undecodable files are left out of all three).
    """
    normalize = normalize.to(device)
    was_training = method.training
    method.eval()
    embeddings, labels, captions = [], [], []
    try:
        for batch in iter_eval_batches(source, batch_size, num_workers):
            images = render_full_images(batch.to(device), img_size, normalize)
            with _autocast(device):
                emb = method.embed_images(method.encoder(images).pooled)
            embeddings.append(F.normalize(emb.float(), dim=-1).cpu())
            if batch.labels is not None:
                labels.append(batch.labels)
            if batch.captions is not None:
                captions.extend(batch.captions)
    finally:
        method.train(was_training)
    return torch.cat(embeddings), (torch.cat(labels) if labels else None), (captions or None)


def class_prompt_name(name: str) -> str:
    """'signs_and_symbols' -> 'signs and symbols'; 'T-shirt/top' -> 'T-shirt or top'."""
    return name.replace("_", " ").replace("/", " or ").strip()


def zero_shot_classifier(method, class_names: Sequence[str], templates: Sequence[str], device: torch.device) -> torch.Tensor:
    """(C, D) one normalised text embedding per class: the mean over its prompts."""
    if not templates or any("{}" not in t for t in templates):
        raise AnnobootError(f"eval.zero_shot_templates must each contain '{{}}' for the class name, got {list(templates)}")
    prompts = [t.format(class_prompt_name(name)) for name in class_names for t in templates]
    text = embed_texts(method, prompts, device).view(len(class_names), len(templates), -1)
    return F.normalize(text.mean(dim=1), dim=-1)


def zero_shot_accuracy(image_emb: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> float:
    """Top-1 % of images whose most similar class embedding is their label."""
    predictions = (image_emb @ classifier.T).argmax(dim=1)
    return 100.0 * (predictions == labels).float().mean().item()


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Recall@k % for image->text and text->image, where row i of each is a matched pair.

    Returns {"image_to_text_r1": ..., "text_to_image_r1": ..., ...} for each k.
    """
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"retrieval needs matched pairs: {image_emb.shape[0]} images vs {text_emb.shape[0]} texts")
    sims = image_emb @ text_emb.T
    own = torch.arange(sims.shape[0])
    results = {}
    for direction, scores in (("image_to_text", sims), ("text_to_image", sims.T)):
        # Rank of the matched item = how many others score strictly higher.
        rank = (scores > scores[own, own][:, None]).sum(dim=1)
        for k in ks:
            results[f"{direction}_r{k}"] = 100.0 * (rank < k).float().mean().item()
    return results


def evaluate_image_text(
    method,
    test_source: ImageSource,
    retrieval_source: ImageSource | None,
    templates: Sequence[str],
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    batch_size: int = 512,
) -> Dict[str, object]:
    """{"zero_shot": % on ``test_source`` (when it has class names), "retrieval": {recall@1/5 both
    ways, "num_pairs"} on ``retrieval_source`` (when given)} plus chance levels for reference."""
    device = torch.device(device)
    results: Dict[str, object] = {}
    if test_source.class_names:
        images, labels, _ = embed_images(method, test_source, img_size, normalize, device, batch_size)
        classifier = zero_shot_classifier(method, test_source.class_names, templates, device)
        results["zero_shot"] = zero_shot_accuracy(images, labels, classifier)
        results["zero_shot_chance"] = 100.0 / len(test_source.class_names)
    if retrieval_source is not None:
        if retrieval_source.captions is None:
            raise AnnobootError(f"eval.retrieval source '{retrieval_source.name}' has no captions; use a captioned source")
        images, _, captions = embed_images(method, retrieval_source, img_size, normalize, device, batch_size)
        texts = embed_texts(method, captions, device)
        recall = retrieval_recall(images, texts)
        results["retrieval"] = {**recall, "num_pairs": len(captions), "chance_r1": 100.0 / len(captions)}
    return results
