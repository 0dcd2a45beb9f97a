"""The action space: crop boxes as tensors, relative boxes between crops, and action tokens.

A view is a crop of an image, written as a box ``(x0, y0, x1, y1)`` in the image's normalised
frame ([0, 1] on both axes). An *action* is the move from a source view to a target view: the
target's box written in the source crop's own normalised frame (:func:`relative_box`), where
values outside [0, 1] mean zoom-out or pan. The value decoder reads an action as 4 tokens, one
per coordinate, each a bin index over [-R, R] (:func:`action_tokens`). :func:`box_token_mask`
says which tokens of a view's grid lie inside a box of that view's frame.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

_RRC_TRIES = 10  # torchvision's RandomResizedCrop also gives up after 10 tries


def sample_crop_boxes(
    sizes_hw: torch.Tensor,
    num_views: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandomResizedCrop boxes for every image, vectorised.

    sizes_hw: (B, 2) image heights and widths in pixels (any numeric dtype).
    scale: (low, high) fraction of the image area; ratio: (low, high) width/height in pixels.
    Returns boxes_xyxy_norm: (B, num_views, 4) float32 in [0, 1], on ``sizes_hw``'s device.

    Like torchvision's sampler: area fraction uniform in ``scale``, log-aspect uniform in
    ``ratio``, retried until the box fits; images where no try fits get the largest centred box
    with the ratio clamped to ``ratio``.
    """
    device = sizes_hw.device
    batch = sizes_hw.shape[0]
    h = sizes_hw[:, 0].float().view(batch, 1, 1)
    w = sizes_hw[:, 1].float().view(batch, 1, 1)
    shape = (batch, num_views, _RRC_TRIES)
    uniform = lambda: torch.rand(shape, device=device, generator=generator)  # noqa: E731
    area = scale[0] + (scale[1] - scale[0]) * uniform()
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform()
    aspect = torch.exp(log_r)
    # Box width/height as fractions of the image: (bw*W)/(bh*H) = aspect and bw*bh = area.
    bw = torch.sqrt(area * aspect * h / w)
    bh = torch.sqrt(area * w / (aspect * h))
    fits = (bw <= 1) & (bh <= 1)
    first = torch.argmax(fits.int(), dim=-1, keepdim=True)  # first try that fits (0 if none)
    bw = bw.gather(-1, first).squeeze(-1)
    bh = bh.gather(-1, first).squeeze(-1)
    any_fit = fits.any(-1)
    # Fallback: whole image, aspect clamped into the ratio range (torchvision's centre crop).
    img_aspect = (w / h).view(batch, 1).expand(batch, num_views)
    clamped = img_aspect.clamp(ratio[0], ratio[1])
    fb_w = torch.where(img_aspect > clamped, clamped / img_aspect, torch.ones_like(clamped))
    fb_h = torch.where(img_aspect < clamped, img_aspect / clamped, torch.ones_like(clamped))
    bw = torch.where(any_fit, bw, fb_w)
    bh = torch.where(any_fit, bh, fb_h)
    pos = torch.rand((batch, num_views, 2), device=device, generator=generator)
    x0 = torch.where(any_fit, pos[..., 0] * (1 - bw), (1 - bw) / 2)
    y0 = torch.where(any_fit, pos[..., 1] * (1 - bh), (1 - bh) / 2)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=-1)


def shifted_boxes(boxes_xyxy: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each box moved by its own uniform random offset of up to ``fraction`` of its width along x
    and of its height along y; size unchanged. (..., 4) -> (..., 4), on the boxes' device."""
    if fraction == 0:
        return boxes_xyxy
    size = boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]
    offset = (torch.rand(size.shape, device=boxes_xyxy.device) * 2 - 1) * fraction * size
    return boxes_xyxy + offset.tile(2)  # (dx, dy) to both corners


def relative_box(source_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """The target box in the source crop's normalised frame.

    source_xyxy, target_xyxy: (..., 4) boxes in a common frame; broadcastable.
    Returns (..., 4): (0, 0, 1, 1) means "the same crop"; values outside [0, 1] reach outside
    the source crop.
    """
    sx0, sy0, sx1, sy1 = source_xyxy.unbind(-1)
    tx0, ty0, tx1, ty1 = target_xyxy.unbind(-1)
    sw = sx1 - sx0
    sh = sy1 - sy0
    return torch.stack([(tx0 - sx0) / sw, (ty0 - sy0) / sh, (tx1 - sx0) / sw, (ty1 - sy0) / sh], -1)


def pairwise_relative_boxes(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """All source->target moves between the views of each image.

    boxes_xyxy: (B, V, 4). Returns (B, V_source, V_target, 4).
    """
    return relative_box(boxes_xyxy[:, :, None, :], boxes_xyxy[:, None, :, :])


def box_intersection(a_xyxy: torch.Tensor, b_xyxy: torch.Tensor) -> torch.Tensor:
    """Area of the overlap of broadcastable (..., 4) boxes; returns (...)."""
    ix = (torch.minimum(a_xyxy[..., 2], b_xyxy[..., 2]) - torch.maximum(a_xyxy[..., 0], b_xyxy[..., 0])).clamp(min=0)
    iy = (torch.minimum(a_xyxy[..., 3], b_xyxy[..., 3]) - torch.maximum(a_xyxy[..., 1], b_xyxy[..., 1])).clamp(min=0)
    return ix * iy


def box_iou(a_xyxy: torch.Tensor, b_xyxy: torch.Tensor) -> torch.Tensor:
    """Intersection over union of broadcastable (..., 4) boxes; returns (...)."""
    inter = box_intersection(a_xyxy, b_xyxy)
    area_a = (a_xyxy[..., 2] - a_xyxy[..., 0]) * (a_xyxy[..., 3] - a_xyxy[..., 1])
    area_b = (b_xyxy[..., 2] - b_xyxy[..., 0]) * (b_xyxy[..., 3] - b_xyxy[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def action_tokens(relative_xyxy: torch.Tensor, num_bins: int, value_range: float) -> torch.Tensor:
    """Quantise relative boxes into token ids: 4 per box, one per coordinate.

    relative_xyxy: (..., 4) from :func:`relative_box`. Values are clipped to [-R, R] and split
    into ``num_bins`` equal bins. Returns (..., 4) int64 in [0, num_bins).
    """
    scaled = (relative_xyxy.clamp(-value_range, value_range) + value_range) / (2 * value_range)
    return (scaled * num_bins).long().clamp_(0, num_bins - 1)


def action_box(tokens: torch.Tensor, num_bins: int, value_range: float) -> torch.Tensor:
    """The box a move's tokens name: (..., 4) token ids -> (..., 4) bin centres in the source
    frame, the inverse of :func:`action_tokens` up to half a bin (2R / num_bins / 2)."""
    return (tokens.float() + 0.5) / num_bins * (2 * value_range) - value_range


def move_region_mask(regions_xyxy: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Which of a source view's tokens a move leads to: regions (M, 4) in the source frame ->
    (M, h * w) bool. The part of the region inside the view, by :func:`box_token_mask`; a region
    wholly outside the view (a pan or zoom away from it) marks every token."""
    clipped = regions_xyxy.float().clamp(0.0, 1.0)
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    return box_token_mask(clipped, grid) | outside[:, None]


def token_range_needed(scale: Sequence[float], ratio: Sequence[float], max_image_aspect: float = 1.0) -> float:
    """The smallest R for which no relative coordinate between two sampled crops is clipped.

    A relative coordinate is at most 1 / (smallest crop side) in magnitude. The smallest
    side fraction comes from the smallest area at the most extreme aspect; ``max_image_aspect``
    (long side / short side of the images, 1 for squares) widens it for non-square images.
    """
    extreme = max(1 / ratio[0], ratio[1]) * max_image_aspect
    smallest_side = math.sqrt(scale[0] / extreme)
    return 1.0 / smallest_side


def box_token_mask(boxes_xyxy: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Boxes (M, 4) normalised xyxy -> (M, h * w) bool, row-major like the tokens: the tokens
    whose centre lies in the box (x0 <= cx < x1, y0 <= cy < y1); a box holding no centre gets
    the one token under its own centre."""
    rows, cols = grid
    cy = (torch.arange(rows, dtype=torch.float32, device=boxes_xyxy.device) + 0.5) / rows
    cx = (torch.arange(cols, dtype=torch.float32, device=boxes_xyxy.device) + 0.5) / cols
    x0, y0, x1, y1 = (boxes_xyxy[:, i, None].float() for i in range(4))
    inside_y = (cy[None] >= y0) & (cy[None] < y1)  # (M, rows)
    inside_x = (cx[None] >= x0) & (cx[None] < x1)  # (M, cols)
    mask = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1)
    # The fallback for every box, taken where the box holds no centre: no host sync, so the
    # value decoder's masks (model.decoder_attention=target_box) cost none per step.
    centre_x = ((x0 + x1)[:, 0] / 2 * cols).long().clamp(0, cols - 1)
    centre_y = ((y0 + y1)[:, 0] / 2 * rows).long().clamp(0, rows - 1)
    under_centre = F.one_hot(centre_y * cols + centre_x, rows * cols).bool()
    return torch.where(mask.any(dim=1, keepdim=True), mask, under_centre)
