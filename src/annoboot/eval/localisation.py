"""Does the value function know where an annotation is? A score on scenes with known boxes.

For a scene x and one of its items, the agent may move from the whole scene to any box of a
G x G grid; the value function says how likely each move is to show the item's annotation,
Q(l_item | x, a). Rank the moves by that value. A move is *in the box* when its box's centre
lies inside the item's box. Reported, over items:

- ``hit_rate``: how often the top-ranked move is in the box; ``chance_hit_rate``: the same for
  a random ranking (the share of in-box moves, averaged over items);
- ``mean_best_rank``: the mean rank (1 = best) of the best-ranked in-box move;
  ``chance_mean_best_rank``: its value for a random ranking, (K + 1) / (m + 1) with K moves of
  which m are in the box.

With image annotations (ABSimCLR) two more tell knowing the scene from knowing where its items
are: ``scene_share``, the share of Q, averaged over every move, on the annotations of the
scene's own items (``chance_scene_share``: their share of the annotation set), and
``item_in_scene_hit_rate``, over the moves into an item's box, how often that item is the most
likely of its scene's items (``chance_item_in_scene_hit_rate``: one over the scene's items). A
value function that knows which scene it sees but not where its items are scores a high scene
share and the chance item rate. ``reward_item_in_scene_hit_rate`` asks the same of the reward
rather than of Q, for methods whose reward is an embedding's similarity (ABSimCLR's projector): a
crop around each item (its box enlarged by ``_AROUND``, as a target crop about an item's size
holds some of what surrounds it), compared with the crops of its scene's items, tops at its own
item how often. Q learns the reward, so where that rate is at chance no Q can score the item
rate above it: the annotations themselves do not tell a scene's items apart.

Ties are scored by their expectation under random tie-breaking, so a value function that is
constant over moves (a run without action tokens) scores exactly the chance rates.

Annotations, per method: ABSimCLR's annotation of an item is the item's crop of the scene
(keys psi_AB of the crops of the items of ``block`` scenes, as training scores against an
annotation batch); ABCLIP's is a caption naming the item's class (one prompt per class), so
its in-box moves are those in any item of that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from annoboot.errors import AnnobootError

# Scenes whose items share one annotation set, about the annotation batch of the CPU recipe.
_SCENES_PER_SET = 48
# A target-like crop around an item: its box scaled about its centre (clipped to the image).
_AROUND = 1.25


@dataclass
class ItemScore:
    hit: float  # expected 0/1: the top move is in the box
    best_rank: float  # expected rank (1-based) of the best in-box move
    chance_hit: float
    chance_best_rank: float


def score_moves(scores: torch.Tensor, in_box: torch.Tensor) -> Optional[ItemScore]:
    """One item: ``scores`` (K,) value per move, ``in_box`` (K,) bool. None if no move is in the box."""
    k, m = scores.numel(), int(in_box.sum())
    if m == 0:
        return None
    top = scores.max()
    at_top = scores == top
    hit = float((at_top & in_box).sum()) / float(at_top.sum())  # random tie-breaking among the top
    best_in = scores[in_box].max()
    above = int((scores > best_in).sum())
    tied, tied_in = int((scores == best_in).sum()), int(((scores == best_in) & in_box).sum())
    # The first of tied_in in-box moves among `tied` tied moves, in random order: (t + 1) / (m_t + 1).
    best_rank = above + (tied + 1) / (tied_in + 1)
    return ItemScore(hit, best_rank, m / k, (k + 1) / (m + 1))


def centres_inside(move_boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(K, 4) move boxes, (4,) item box (normalised xyxy) -> (K,) bool: centre inside the box."""
    cx = (move_boxes[:, 0] + move_boxes[:, 2]) / 2
    cy = (move_boxes[:, 1] + move_boxes[:, 3]) / 2
    return (cx >= box[0]) & (cx <= box[2]) & (cy >= box[1]) & (cy <= box[3])


def scene_share(probs: torch.Tensor, own: List[int]) -> float:
    """probs (K, L) Q over annotations for each move; own: the columns of the scene's items ->
    the mean share of Q on them."""
    return float(probs[:, own].sum(1).mean())


def item_tops_its_scene(in_box_probs: torch.Tensor, own: List[int], column: int) -> float:
    """in_box_probs (m, L) Q at the moves into the item's box -> the share of those moves at
    which the item's column is the largest of the scene's own columns."""
    return float((in_box_probs[:, own].argmax(1) == own.index(column)).float().mean())


def enlarged_boxes(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """(K, 4) normalised xyxy boxes scaled by ``factor`` about their centres, clipped to [0, 1]."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * factor / 2
    return torch.cat([centre - half, centre + half], 1).clamp(0.0, 1.0)


def reward_tops_its_scene(around: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """around, items (k, d) reward embeddings of the crops around a scene's k items and of the
    items' own crops -> (k,) float: 1 where the crop around item i is most similar (cosine, the
    order of the reward's softmax) to item i's crop among the scene's items."""
    similarity = torch.nn.functional.normalize(around.float(), dim=-1) @ torch.nn.functional.normalize(
        items.float(), dim=-1).T
    return (similarity.argmax(1) == torch.arange(len(items), device=similarity.device)).float()


def summarise(items: List[ItemScore]) -> Dict[str, float]:
    if not items:
        raise AnnobootError("localisation: no scene item covers the centre of any grid box; use a finer --grid")
    n = len(items)
    return {
        "items": n,
        "hit_rate": 100.0 * sum(i.hit for i in items) / n,
        "chance_hit_rate": 100.0 * sum(i.chance_hit for i in items) / n,
        "mean_best_rank": sum(i.best_rank for i in items) / n,
        "chance_mean_best_rank": sum(i.chance_best_rank for i in items) / n,
    }


@torch.no_grad()
def localisation_score(method, source, grid: int = 8, box_scale: Optional[float] = None, scenes: int = 240) -> Dict[str, float]:
    """The score of ``method`` (an AB run whose annotations are images or captions:
    ``annotation_kind``) on the first ``scenes`` scenes of ``source`` (a scene source:
    ``item_boxes``, ``item_labels``). Percentages and ranks.

    Image annotations: the crops of every item of a block of scenes, each item scored by its own
    crop; caption annotations: one prompt per class name, each class of a scene scored once."""
    from annoboot.eval.value_maps import default_box_scale, grid_boxes, load_image, value_probabilities
    from annoboot.views import render_views

    name, kind = method.cfg.method.name, getattr(method, "annotation_kind", None)
    if getattr(method, "value_function", None) is None or kind not in ("image", "caption"):
        from annoboot.methods import METHODS

        fitting = ", ".join(n for n, c in METHODS.items() if c.annotation_kind in ("image", "caption"))
        raise AnnobootError(
            f"localisation needs an AB run whose annotations are images or captions ({fitting}: a value "
            f"function with item annotations); this run is {name}"
        )
    if not hasattr(source, "item_boxes"):
        raise AnnobootError(f"localisation needs scenes with known item boxes (kind fmnist_scenes); {source.name} has none")
    boxes = grid_boxes(grid, default_box_scale(method, grid) if box_scale is None else box_scale)
    flat_boxes = boxes.reshape(-1, 4)
    device = method.normalize.mean.device
    img_size = method.cfg.views.img_size
    was_training = method.training
    method.eval()
    items: List[ItemScore] = []
    shares: List[tuple] = []  # (scene share, chance) per scene; image annotations only
    tops: List[tuple] = []  # (item tops its scene, chance) per item with an in-box move
    reward_tops: List[tuple] = []  # (the reward around an item tops it among its scene's items, chance) per item
    try:
        count = min(scenes, len(source))
        class_keys = _class_caption_keys(method, source) if kind == "caption" else None
        for start in range(0, count, _SCENES_PER_SET):
            block = range(start, min(start + _SCENES_PER_SET, count))
            batches = [load_image(source, i, device).batch for i in block]
            if class_keys is None:  # image annotations: the crops of every item of the block
                crops = [render_views(b, source.item_boxes[i].to(device)[None], img_size) for b, i in zip(batches, block)]
                keys = method.annotation_keys(torch.cat(crops))
                offsets = torch.tensor([0] + [len(source.item_boxes[i]) for i in block]).cumsum(0).tolist()
                if hasattr(method, "projector"):  # the reward's own embedding of those crops and around them
                    around = [render_views(b, enlarged_boxes(source.item_boxes[i].to(device), _AROUND)[None], img_size)
                              for b, i in zip(batches, block)]
                    embed = lambda views: method.projector(method.encoder(method.normalize(views)).pooled)  # noqa: E731
                    item_z, around_z = embed(torch.cat(crops)), embed(torch.cat(around))
                    for j in range(len(batches)):
                        own_rows = slice(offsets[j], offsets[j + 1])
                        hits = reward_tops_its_scene(around_z[own_rows], item_z[own_rows])
                        reward_tops.extend((float(h), 1 / len(hits)) for h in hits)
            else:
                keys = class_keys
            for j, (batch, i) in enumerate(zip(batches, block)):
                probs = value_probabilities(method, batch, keys, boxes).reshape(-1, keys.shape[0])
                own = list(range(offsets[j], offsets[j + 1])) if class_keys is None else []
                if own:
                    shares.append((scene_share(probs, own), len(own) / keys.shape[0]))
                for k, (box, label) in enumerate(zip(source.item_boxes[i], source.item_labels[i])):
                    if class_keys is None:
                        column, in_box = offsets[j] + k, centres_inside(flat_boxes, box)
                    else:  # a caption names a class: any item of that class is where it is
                        column = int(label)
                        same = source.item_boxes[i][source.item_labels[i] == label]
                        in_box = torch.stack([centres_inside(flat_boxes, b) for b in same]).any(0)
                        if k != int((source.item_labels[i] == label).nonzero()[0]):
                            continue  # each class of a scene once
                    scored = score_moves(probs[:, column], in_box)
                    if scored is not None:
                        items.append(scored)
                        if own:
                            tops.append((item_tops_its_scene(probs[in_box], own, column), 1 / len(own)))
    finally:
        method.train(was_training)
    summary = summarise(items)
    if shares and tops:
        summary.update({
            "scene_share": 100.0 * sum(s for s, _ in shares) / len(shares),
            "chance_scene_share": 100.0 * sum(c for _, c in shares) / len(shares),
            "item_in_scene_hit_rate": 100.0 * sum(t for t, _ in tops) / len(tops),
            "chance_item_in_scene_hit_rate": 100.0 * sum(c for _, c in tops) / len(tops),
        })
    if reward_tops:
        summary.update({
            "reward_item_in_scene_hit_rate": 100.0 * sum(t for t, _ in reward_tops) / len(reward_tops),
            "chance_reward_item_in_scene_hit_rate": 100.0 * sum(c for _, c in reward_tops) / len(reward_tops),
        })
    return summary


def _class_caption_keys(method, source) -> torch.Tensor:
    template = method.cfg.eval.zero_shot_templates[0]
    return method.annotation_keys([template.format(n) for n in source.class_names])


__all__ = ["ItemScore", "centres_inside", "item_tops_its_scene", "localisation_score", "scene_share", "score_moves",
           "summarise"]
