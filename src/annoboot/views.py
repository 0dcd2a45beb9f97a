"""Rendering views on the batch's device from crop boxes, and the annotation-view augmentations.

Views are cut straight from the decoded uint8 images with ``roi_align`` (bilinear, averaging
several samples per output pixel when shrinking), so the box a view came from is exact: the
value decoder is told the true relative boxes. Colour augmentation uses kornia, per view.
"""

from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
from torch import nn
from torchvision.ops import roi_align

from annoboot.batch import ImageBatch


def render_views(batch: ImageBatch, boxes_xyxy_norm: torch.Tensor, out_size: int, rgb: bool = True) -> torch.Tensor:
    """Crop and resize every box of every image.

    batch: uint8 images with per-image valid sizes (B, 2): padded (B, C, H, W), or packed in
        one canvas at ``batch.origins`` (see :class:`ImageBatch`).
    boxes_xyxy_norm: (B, V, 4) boxes in each image's own normalised frame.
    Returns (B * V, C', out_size, out_size) float32 in [0, 1], image-major (image 0's V views
    first). Grayscale images are repeated to 3 channels after rendering (cheaper than before);
    with ``rgb=False`` they stay 1-channel (for :class:`SimCLRAugment`, which expands them).
    """
    images = batch.images.float().div_(255)
    num_images, num_views = boxes_xyxy_norm.shape[:2]
    h = batch.sizes[:, 0].to(images.dtype).view(num_images, 1)
    w = batch.sizes[:, 1].to(images.dtype).view(num_images, 1)
    boxes = boxes_xyxy_norm.to(images.dtype)
    pixel_boxes = torch.stack(
        [boxes[..., 0] * w, boxes[..., 1] * h, boxes[..., 2] * w, boxes[..., 3] * h], dim=-1
    )
    if batch.origins is None:  # image i is row i of the batch, at its top left
        index = torch.arange(num_images, device=images.device, dtype=images.dtype)
    else:  # every image in canvas 0, at its origin
        index = torch.zeros(num_images, device=images.device, dtype=images.dtype)
        y0, x0 = batch.origins.to(images.dtype).unbind(1)
        pixel_boxes = pixel_boxes + torch.stack([x0, y0, x0, y0], dim=-1).view(num_images, 1, 4)
    rois = torch.cat([index.view(-1, 1, 1).expand(-1, num_views, 1), pixel_boxes], dim=-1)
    views = roi_align(images, rois.view(-1, 5), output_size=out_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if views.shape[1] == 1 and rgb:
        views = views.expand(-1, 3, -1, -1)
    return views


def render_view_major(batch: ImageBatch, boxes_xyxy_norm: torch.Tensor, out_size: int) -> torch.Tensor:
    """Views (V*B, C, S, S) of the boxes (B, V, 4), view-major: rows [0, B) are every image's
    first view (the layout contrastive losses pair), channels as the batch's (rgb=False)."""
    views = render_views(batch, boxes_xyxy_norm, out_size, rgb=False)  # image-major (B*V)
    return views.view(len(batch), boxes_xyxy_norm.shape[1], *views.shape[1:]).transpose(0, 1).flatten(0, 1)


def full_image_boxes(num_images: int, num_views: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, V, 4) boxes covering each whole image."""
    return torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).expand(num_images, num_views, 4).contiguous()


def quarter_turned(views: torch.Tensor) -> torch.Tensor:
    """Each square view (M, C, S, S) turned by its own random multiple of 90 degrees (global RNG;
    picked by indexing, no host sync)."""
    turns = torch.randint(0, 4, (views.shape[0],), device=views.device)
    every_turn = torch.stack([torch.rot90(views, k, (2, 3)) for k in range(4)])  # (4, M, C, S, S)
    return every_turn[turns, torch.arange(views.shape[0], device=views.device)]


class Normalize(nn.Module):
    """[0, 1] RGB -> (x - mean) / std, the input convention of the encoder."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return (views - self.mean) / self.std


def render_full_images(batch: ImageBatch, out_size: int, normalize: Normalize) -> torch.Tensor:
    """Evaluation input: each whole image resized to (3, out_size, out_size), normalised."""
    boxes = full_image_boxes(len(batch), 1, batch.images.device)
    return normalize(render_views(batch, boxes, out_size))


class SimCLRAugment(nn.Module):
    """SimCLR's photometric augmentations, applied per view on the device.

    Flip (p=flip_prob), colour jitter with strength s (brightness/contrast/saturation 0.8s,
    hue 0.2s; p=jitter_prob) and grayscale (p=grayscale_prob). Input: (N, C, S, S) in [0, 1]
    with C = 3, or C = 1 for grayscale views; output (N, 3, S, S). Geometry (the crop) is not
    done here: it comes from the sampled boxes.

    Grayscale views take a 1-channel path: saturation, hue and grayscale leave a gray image
    unchanged, so flip + brightness/contrast on one channel, repeated to three afterwards, is
    the same augmentation at about a twentieth of the cost (kornia's hue goes through HSV).
    """

    def __init__(self, flip_prob: float, jitter_prob: float, jitter_strength: float, grayscale_prob: float):
        super().__init__()
        s = jitter_strength
        ops: list[nn.Module] = []
        gray_ops: list[nn.Module] = []
        if flip_prob > 0:
            ops.append(K.RandomHorizontalFlip(p=flip_prob))
            gray_ops.append(K.RandomHorizontalFlip(p=flip_prob))
        if jitter_prob > 0 and s > 0:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=jitter_prob))
            gray_ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.0, 0.0, p=jitter_prob))
        if grayscale_prob > 0:
            ops.append(K.RandomGrayscale(p=grayscale_prob))
        self.ops = nn.Sequential(*ops)
        self.gray_ops = nn.Sequential(*gray_ops)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.shape[1] == 1:
            return self.gray_ops(views).clamp_(0, 1).expand(-1, 3, -1, -1)
        return self.ops(views).clamp_(0, 1)
