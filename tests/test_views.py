"""Rendering views from boxes."""

import torch

from annoboot.batch import ImageBatch
from annoboot.views import Normalize, SimCLRAugment, render_full_images, render_views


def test_pixel_aligned_box_renders_the_exact_crop():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    batch = ImageBatch(images, torch.tensor([[8, 8], [8, 8]]))
    boxes = torch.tensor([[[2 / 8, 2 / 8, 6 / 8, 6 / 8]], [[0.0, 0.0, 0.5, 0.5]]])
    views = render_views(batch, boxes, out_size=4)
    assert views.shape == (2, 3, 4, 4)
    assert torch.allclose(views[0], images[0, :, 2:6, 2:6].float() / 255, atol=1e-6)
    assert torch.allclose(views[1], images[1, :, 0:4, 0:4].float() / 255, atol=1e-6)


def test_boxes_are_relative_to_each_images_valid_region():
    # Image 1 is 4x4 padded into an 8x8 batch: its full box must not see the padding.
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    images[0] = 200
    images[1, :, :4, :4] = 100
    batch = ImageBatch(images, torch.tensor([[8, 8], [4, 4]]))
    views = render_views(batch, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]] * 2), out_size=4)
    assert views.shape == (2, 3, 4, 4)  # grayscale repeated to RGB
    assert torch.allclose(views[1], torch.full((3, 4, 4), 100 / 255))
    assert torch.allclose(views[0], torch.full((3, 4, 4), 200 / 255))


def test_views_are_image_major():
    images = torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (10, 20)])
    batch = ImageBatch(images, torch.tensor([[4, 4], [4, 4]]))
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 3, 4)
    views = render_views(batch, boxes, 2)
    assert views[:3].mul(255).round().eq(10).all() and views[3:].mul(255).round().eq(20).all()


def test_full_image_render_is_normalised():
    images = torch.full((1, 3, 6, 6), 255, dtype=torch.uint8)
    x = render_full_images(ImageBatch(images, torch.tensor([[6, 6]])), 4, Normalize([0.5] * 3, [0.5] * 3))
    assert torch.allclose(x, torch.ones(1, 3, 4, 4))


def test_simclr_augment_changes_views_but_keeps_range():
    torch.manual_seed(0)
    views = torch.rand(64, 3, 8, 8)
    out = SimCLRAugment(flip_prob=0.5, jitter_prob=0.8, jitter_strength=0.5, grayscale_prob=0.2)(views.clone())
    assert out.shape == views.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - views).abs().flatten(1).amax(1) > 1e-3
    assert 0.5 < changed.float().mean() <= 1.0
    # With every probability at zero it is the identity.
    assert torch.equal(SimCLRAugment(0, 0, 0.5, 0)(views.clone()), views)


def test_grayscale_views_take_the_one_channel_path_and_come_out_rgb():
    torch.manual_seed(0)
    gray = torch.rand(64, 1, 8, 8)
    augment = SimCLRAugment(flip_prob=0.5, jitter_prob=1.0, jitter_strength=0.5, grayscale_prob=0.2)
    out = augment(gray.clone())
    assert out.shape == (64, 3, 8, 8)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert ((out[:, :1] - gray).abs().flatten(1).amax(1) > 1e-3).float().mean() > 0.9
    # Why the shortcut is exact: the full colour path keeps a gray image gray (saturation,
    # hue and grayscale do nothing to it), so only flip, brightness and contrast remain.
    colour = augment(gray.expand(-1, 3, -1, -1).clone())
    assert (colour[:, 0] - colour[:, 1]).abs().max() < 1e-5 and (colour[:, 0] - colour[:, 2]).abs().max() < 1e-5
