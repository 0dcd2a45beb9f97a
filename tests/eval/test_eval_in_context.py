"""annoboot.eval.in_context: the item in a given box read from the whole scene's tokens."""

from __future__ import annotations

import pytest
import torch
from helpers import NORMALIZE, PatchCentreClass, one_thread  # noqa: F401  (one_thread: an autouse fixture)
from helpers import flat_scenes as scenes

from annoboot.config import EvalConfig
from annoboot.data.scenes import SceneSource
from annoboot.eval.in_context import (
    any_size_encoder,
    box_token_mask,
    in_context_features,
    in_context_probe,
    scene_probe_in_context,
)
from annoboot.models.encoder import build_encoder


def overlapping(source: SceneSource) -> torch.Tensor:
    """(M,) bool: items whose box meets another box of their scene (the generator's placement
    falls back to the least overlap when no try fits)."""
    flat = source.scenes
    boxes, scene = flat.item_boxes, flat.item_scene
    low, high = torch.maximum(boxes[:, None, :2], boxes[None, :, :2]), torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    meets = ((high - low) > 0).all(-1) & (scene[:, None] == scene[None, :])
    meets.fill_diagonal_(False)
    return meets.any(1)


def test_box_token_mask_takes_the_tokens_whose_centre_lies_in_the_box():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5],   # the top-left quarter: 2 x 2 of a 4 x 4 grid
                          [0.5, 0.0, 1.0, 0.25],  # top row, right half
                          [0.30, 0.30, 0.33, 0.33]])  # holds no centre: the token under its centre
    mask = box_token_mask(boxes, (4, 4)).view(3, 4, 4).int()
    assert mask[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert mask[1].tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert mask[2].tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    wide = box_token_mask(torch.tensor([[0.0, 0.5, 1.0, 1.0]]), (2, 4)).view(2, 4).int()  # a 2 x 4 grid, rows first
    assert wide.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]


def test_pooling_the_box_tokens_of_a_hand_made_feature_map_reads_every_item_exactly():
    test = scenes("test", 30)
    assert not overlapping(test).any()
    features = in_context_features(PatchCentreClass(), test, NORMALIZE, batch_size=7, keep_tokens=True)
    assert len(features) == test.scenes.item_labels.numel()
    assert torch.equal(features.pooled.argmax(1), features.labels)  # every box pools its own item only
    assert torch.allclose(features.pooled.max(1).values, torch.ones(len(features)))  # nothing else mixed in
    sizes = features.token_mask.sum(1)
    assert int(sizes.min()) >= 1 and features.tokens.shape[1] == int(sizes.max())
    read = (features.tokens.float() * features.token_mask[..., None]).sum(1) / sizes[:, None]
    assert torch.allclose(read, features.pooled, atol=1e-3)  # the sets hold exactly the pooled tokens


def test_the_in_context_probe_scores_100_on_features_that_carry_the_label_in_the_box():
    cfg = EvalConfig(probes=["knn", "linear", "map"], knn_k=5, linear_epochs=30, map_epochs=40,
                     linear_lrs=[1e-1], map_lrs=[1e-2], batch_size=16)
    results = in_context_probe(PatchCentreClass(), scenes("train", 60), scenes("test", 30), cfg, NORMALIZE, "cpu")
    assert results["knn"] == 100.0 and results["linear"] == 100.0 and results["map"] == 100.0
    assert results["context"] == {"resolution": 64, "max_box_tokens": results["context"]["max_box_tokens"]}
    assert results["num_test"] == scenes("test", 30).scenes.item_labels.numel()


def test_a_probe_that_read_the_wrong_tokens_would_not_score_100():
    # The same scenes with every box mirrored left-right: the tokens read are another place's.
    test = scenes("test", 30)
    test.scenes.item_boxes[:, [0, 2]] = 1 - test.scenes.item_boxes[:, [2, 0]]
    features = in_context_features(PatchCentreClass(), test, NORMALIZE)
    assert (features.pooled.argmax(1) == features.labels).float().mean() < 0.5


def test_any_size_encoder_keeps_the_weights_and_reads_larger_scenes():
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16_224", 16, {"patch_size": 8, "depth": 1, "global_pool": "avg"}).eval()
    flexible = any_size_encoder(encoder)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(encoder(images).tokens, flexible(images).tokens, atol=1e-5)
        assert flexible(torch.randn(2, 3, 64, 64)).tokens.shape == (2, 64, encoder.width)
    cnn = build_encoder("resnet18", 32)
    assert any_size_encoder(cnn) is cnn


def test_in_context_probes_run_on_a_random_vit_at_the_scene_resolution():
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 1})
    cfg = EvalConfig(probes=["knn", "linear", "map", "decoder"], knn_k=5, linear_epochs=2, map_epochs=1,
                     decoder_probe_epochs=1, linear_lrs=[1e-2], map_lrs=[1e-3], decoder_probe_lrs=[1e-3], batch_size=16)
    train, test = scenes("train", 40, background="grating"), scenes("test", 20, background="grating")
    boxes = in_context_probe(encoder, train, test, cfg, NORMALIZE, "cpu", max_train_items=100)
    whole = scene_probe_in_context(encoder, train, test, cfg, NORMALIZE, "cpu")
    assert boxes["num_train"] == 100 and whole["context"]["resolution"] == 64
    for result in (boxes, whole):
        assert all(0.0 <= result[probe] <= 100.0 for probe in ("knn", "linear", "map", "decoder"))
    assert whole["metric"] == "mAP"


def test_a_scene_source_without_items_is_named():
    test = scenes("test", 3)
    with pytest.raises(Exception, match="no items"):
        in_context_features(PatchCentreClass(), test, NORMALIZE, max_items=0)


def test_box_token_mask_reads_boxes_as_x0_y0_x1_y1_worked_by_hand():
    """A 2 x 4 token grid (rows x cols), row-major: token centres at y = 0.25, 0.75 and
    x = 0.125, 0.375, 0.625, 0.875. Box (0, 0, 0.5, 1) is the left half: tokens 0, 1, 4, 5;
    box (0.5, 0.5, 1, 1) the bottom-right quarter: tokens 6, 7. Caught break: the coordinates
    read as (y0, x0, y1, x1) (the left half becomes the top row, tokens 0-3)."""
    from annoboot.eval.in_context import box_token_mask

    mask = box_token_mask(torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]]), (2, 4))
    assert mask.nonzero()[:, 1][mask.nonzero()[:, 0] == 0].tolist() == [0, 1, 4, 5]
    assert mask.nonzero()[:, 1][mask.nonzero()[:, 0] == 1].tolist() == [6, 7]
