"""Boxes, relative boxes and action tokens."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from annoboot.actions import (
    action_box,
    action_tokens,
    box_iou,
    move_region_mask,
    pairwise_relative_boxes,
    relative_box,
    sample_crop_boxes,
    token_range_needed,
)
from annoboot.recipe import load_config


@pytest.mark.parametrize("size_hw", [(32, 32), (120, 300), (300, 90)])
def test_sampled_boxes_respect_scale_and_ratio(size_hw):
    torch.manual_seed(0)
    sizes = torch.tensor([size_hw] * 500)
    boxes = sample_crop_boxes(sizes, 4, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    assert boxes.shape == (500, 4, 4)
    assert boxes.min() >= 0 and boxes.max() <= 1 + 1e-6
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    area = w * h
    aspect_px = (w * size_hw[1]) / (h * size_hw[0])
    assert area.min() >= 0.08 - 1e-5 and area.max() <= 1 + 1e-5
    assert aspect_px.min() >= 3 / 4 - 1e-4 and aspect_px.max() <= 4 / 3 + 1e-4
    # Positions really vary (not always centred).
    assert boxes[..., 0].std() > 0.05


def test_sampler_falls_back_to_centre_crop_when_nothing_fits():
    # Scale 1.0 with a ratio that excludes the image's own aspect never fits: centred fallback.
    boxes = sample_crop_boxes(torch.tensor([[100, 400]]), 3, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    expected = torch.tensor([0.375, 0.0, 0.625, 1.0])
    assert torch.allclose(boxes[0], expected.expand(3, 4), atol=1e-6)


def test_relative_box_known_values_and_round_trip():
    source = torch.tensor([0.2, 0.2, 0.6, 0.6])
    assert torch.allclose(relative_box(source, source), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    target = torch.tensor([0.4, 0.4, 0.8, 0.8])
    assert torch.allclose(relative_box(source, target), torch.tensor([0.5, 0.5, 1.5, 1.5]))
    # Zoom out to the whole image: coordinates outside [0, 1].
    assert torch.allclose(relative_box(source, torch.tensor([0.0, 0.0, 1.0, 1.0])), torch.tensor([-0.5, -0.5, 2.0, 2.0]))
    # Round trip: absolute = source origin + relative * source size.
    torch.manual_seed(1)
    boxes = sample_crop_boxes(torch.tensor([[64, 64]] * 10), 2, (0.05, 1.0), (3 / 4, 4 / 3))
    rel = relative_box(boxes[:, 0], boxes[:, 1])
    s = boxes[:, 0]
    sw, sh = s[:, 2] - s[:, 0], s[:, 3] - s[:, 1]
    back = torch.stack([s[:, 0] + rel[:, 0] * sw, s[:, 1] + rel[:, 1] * sh, s[:, 0] + rel[:, 2] * sw, s[:, 1] + rel[:, 3] * sh], 1)
    assert torch.allclose(back, boxes[:, 1], atol=1e-6)


def test_pairwise_relative_boxes_shape_and_diagonal():
    boxes = sample_crop_boxes(torch.tensor([[32, 32]] * 3), 4, (0.05, 1.0), (3 / 4, 4 / 3))
    moves = pairwise_relative_boxes(boxes)
    assert moves.shape == (3, 4, 4, 4)
    diag = moves[:, torch.arange(4), torch.arange(4)]
    assert torch.allclose(diag, torch.tensor([0.0, 0.0, 1.0, 1.0]).expand_as(diag), atol=1e-6)
    assert torch.allclose(moves[1, 2, 3], relative_box(boxes[1, 2], boxes[1, 3]))


def test_default_token_range_covers_the_bootstrap_sampler():
    defaults = load_config(None)
    views, method = defaults.views, defaults.method
    needed = token_range_needed(views.bootstrap_scale, views.crop_ratio)
    assert needed == pytest.approx(1 / math.sqrt(0.05 * 0.75))
    assert method.action_range >= needed
    # Empirically: no relative coordinate of many sampled pairs reaches the clipping range.
    torch.manual_seed(0)
    boxes = sample_crop_boxes(torch.tensor([[32, 32]] * 4000), 4, views.bootstrap_scale, views.crop_ratio)
    assert pairwise_relative_boxes(boxes).abs().max() < needed + 1e-4


def test_action_tokens_bins_and_clipping():
    rel = torch.tensor([[-100.0, -6.0, 0.0, 5.999], [6.0, 100.0, -0.01, 0.01]])
    tokens = action_tokens(rel, num_bins=12, value_range=6.0)
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[0, 0, 6, 11], [11, 11, 5, 6]]
    # Monotone in the coordinate.
    grid = torch.linspace(-7, 7, 200).view(-1, 1).expand(-1, 4)
    t = action_tokens(grid, 128, 6.0)[:, 0]
    assert (t[1:] >= t[:-1]).all() and t.min() == 0 and t.max() == 127


def test_box_iou():
    a = torch.tensor([0.0, 0.0, 0.5, 1.0])
    b = torch.tensor([0.25, 0.0, 0.75, 1.0])
    assert box_iou(a, b).item() == pytest.approx(0.25 / 0.75)
    assert box_iou(a, a).item() == pytest.approx(1.0)
    assert box_iou(a, torch.tensor([0.6, 0.0, 1.0, 1.0])).item() == 0.0


@pytest.mark.parametrize("size_hw, scale, ratio", [((1200, 3000), (0.08, 1.0), (3 / 4, 4 / 3)),
                                                   ((3000, 900), (0.2, 0.6), (0.5, 1.5)),
                                                   ((2000, 2000), (0.05, 0.3), (0.8, 2.0))])
def test_sampled_boxes_follow_torchvisions_random_resized_crop(size_hw, scale, ratio):
    """The vectorised sampler draws what torchvision's RandomResizedCrop draws: the quantiles of
    the area, the aspect, the position and the corners of 4,000 boxes each agree."""
    from torchvision.transforms import RandomResizedCrop

    height, width = size_hw
    torch.manual_seed(0)
    ours = sample_crop_boxes(torch.tensor([size_hw] * 2000), 2, scale, ratio).view(-1, 4)
    image = torch.zeros(1, height, width)
    theirs = []
    for _ in range(4000):
        top, left, h, w = RandomResizedCrop.get_params(image, list(scale), list(ratio))
        theirs.append([left / width, top / height, (left + w) / width, (top + h) / height])
    theirs = torch.tensor(theirs)

    def statistics(boxes):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return {"area": w * h, "log aspect": torch.log(w * width / (h * height)), "x0": boxes[:, 0], "y0": boxes[:, 1],
                "x1": boxes[:, 2], "y1": boxes[:, 3]}

    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    for (name, a), b in zip(statistics(ours).items(), statistics(theirs).values()):
        assert torch.allclose(torch.quantile(a, levels), torch.quantile(b, levels), atol=0.035), name


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=8, max_size=8))
def test_box_iou_equals_torchvisions(corners):
    from torchvision.ops import box_iou as reference

    a = torch.tensor([min(corners[0], corners[2]), min(corners[1], corners[3]), max(corners[0], corners[2]) + 1e-3,
                      max(corners[1], corners[3]) + 1e-3])
    b = torch.tensor([min(corners[4], corners[6]), min(corners[5], corners[7]), max(corners[4], corners[6]) + 1e-3,
                      max(corners[5], corners[7]) + 1e-3])
    assert box_iou(a, b).item() == pytest.approx(reference(a[None], b[None]).item(), rel=1e-4, abs=1e-6)
    assert box_iou(a, b).item() == pytest.approx(box_iou(b, a).item(), rel=1e-6, abs=1e-9)  # symmetric


def test_a_tall_image_falls_back_to_its_clamped_aspect_centred_vertically():
    """A 400 x 100 px (h x w) image, whole-area crops with ratio [0.5, 2]: none fits, so the
    fallback is the full width at the nearest allowed aspect 0.5, height 0.5 of the image,
    centred: (0, 0.25, 1, 0.75). Caught breaks: the aspect clamped to the wrong bound, the height
    fraction multiplied instead of divided, the box not centred."""
    boxes = sample_crop_boxes(torch.tensor([[400, 100]]), 2, scale=(1.0, 1.0), ratio=(0.5, 2.0))
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0.25, 1.0, 0.75]).expand(2, 4), atol=1e-6)


def test_crop_positions_are_drawn_independently_in_x_and_y():
    """Small square crops of a square image: x0 and y0 are uniform on [0, 1 - side] and
    uncorrelated. Caught break: one random number placing the crop along both axes (crops only
    on the diagonal)."""
    torch.manual_seed(0)
    boxes = sample_crop_boxes(torch.tensor([[64, 64]] * 5000), 4, scale=(0.1, 0.1), ratio=(1.0, 1.0)).view(-1, 4)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    assert abs(torch.corrcoef(torch.stack([x0, y0]))[0, 1].item()) < 0.05
    side = math.sqrt(0.1)
    assert x0.max().item() == pytest.approx(1 - side, abs=0.01) and y0.max().item() == pytest.approx(1 - side, abs=0.01)


def test_token_range_needed_worked_by_hand_for_wide_images_and_lopsided_ratios():
    """scale 0.05, ratio [1/4, 2] on images up to 2:1: the most extreme crop aspect is 4 (from the
    low bound), doubled by the image to 8, so the smallest side is sqrt(0.05 / 8) of the image and
    R = sqrt(160). Caught breaks: the image aspect dividing, 1 / low bound read as low or as 1 / high."""
    assert token_range_needed((0.05, 1.0), (0.25, 2.0), max_image_aspect=2.0) == pytest.approx(math.sqrt(160))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-8.0, 8.0, allow_nan=False), min_size=4, max_size=4),
       st.integers(2, 512), st.floats(0.5, 10.0))
def test_action_box_names_the_tokens_box_within_half_a_bin(coords, num_bins, value_range):
    """action_box inverts action_tokens up to half a bin, for coordinates inside [-R, R] (outside,
    the clipped value). Caught breaks: the bin's lower edge instead of its centre (off by half a
    bin), the range read as [0, R] or [-R/2, R/2]."""
    box = torch.tensor(coords)
    back = action_box(action_tokens(box, num_bins, value_range), num_bins, value_range)
    half_bin = value_range / num_bins
    assert ((back - box.clamp(-value_range, value_range)).abs() <= half_bin + 1e-5).all()


def test_move_region_mask_worked_by_hand_on_a_4x4_grid():
    """Token centres at 1/8, 3/8, 5/8, 7/8. A region inside the view marks the tokens whose centre
    it holds; one partly outside, the tokens of its visible part; one wholly outside (a pan away
    from the view), every token. Caught breaks: a region wholly outside marking the one edge token
    nearest it (box_token_mask's fallback) instead of every token; rows and columns swapped (the
    second region is a row, not a column)."""
    regions = torch.tensor([
        [0.0, 0.0, 0.5, 0.5],     # top-left quarter: tokens 0, 1, 4, 5
        [0.6, -1.0, 2.0, 0.3],    # right half of the top row, reaching out: tokens 2 (5/8) and 3
        [-1.0, 0.7, 0.1, 2.0],    # bottom-left corner, holds no centre: the token under its visible part's centre
        [1.5, 1.5, 2.5, 2.5],     # wholly outside: every token
    ])
    mask = move_region_mask(regions, (4, 4)).view(4, 4, 4).int()
    assert mask[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert mask[1].tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert mask[2].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert mask[3].all()
