"""Two options of ABSimCLR's asymmetric moves: views.bootstrap_source_size (the source views
rendered at a side of their own, read by the value function at that side's token grid, the target
crops left at views.img_size) and views.bootstrap_move_jitter (each move names a shifted box, the
target crop and its reward unchanged)."""

import pytest
import torch
from helpers import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import annoboot.methods.ab_simclr as ab_simclr_module
from annoboot.batch import ImageBatch
from annoboot.errors import AnnobootError
from annoboot.methods import build_method
from annoboot.recipe import load_config
from annoboot.train import Trainer
from annoboot.views import render_views

ASYMMETRIC_TARGETS = ["method.name=ab_simclr", "views.bootstrap_views=4", "views.bootstrap_source_views=1",
                      "views.bootstrap_source_scale=[0.6, 1.0]", "views.bootstrap_scale=[0.05, 0.2]",
                      "method.target_network=online", "method.bootstrap_annotations=targets"]
PATCH = 8  # TINY's ViT


def test_larger_source_views_are_the_source_crops_at_their_side_and_the_value_function_reads_their_grid(
        tiny_config, monkeypatch):
    """With the side 2 x img_size: the encoder gets the source crops rendered at that side from
    their own boxes, the target crops at img_size, and the value function reads (2 x 32 / 8)^2
    tokens per source view. Caught breaks: sources at img_size, the targets enlarged instead,
    source views cut from the targets' boxes, the value function handed the targets' tokens."""
    method = build_method(tiny_config(*ASYMMETRIC_TARGETS, "views.bootstrap_source_size=64"))
    img_size = method.cfg.views.img_size
    sizes = method.batch_sizes()
    torch.manual_seed(0)
    images = lambda n: ImageBatch(torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8),  # noqa: E731
                                  torch.full((n, 2), 48))
    batches = {"annotation": images(sizes["annotation"]), "bootstrap": images(sizes["bootstrap"])}
    made, encoded, read = [], [], []
    real_views = ab_simclr_module.sized_asymmetric_views
    monkeypatch.setattr(ab_simclr_module, "sized_asymmetric_views",
                        lambda *a, **k: made.append(real_views(*a, **k)) or made[-1])
    real_encoder, real_logits = method.encoder.forward, method.value_function.logits
    monkeypatch.setattr(method.encoder, "forward", lambda x: encoded.append(x.detach()) or real_encoder(x))
    monkeypatch.setattr(method.value_function, "logits",
                        lambda tokens, *a: read.append(tokens.detach()) or real_logits(tokens, *a))
    method.training_step(batches, None)

    (sources, targets, boxes), = made
    images_n = sizes["bootstrap"]
    expected = method.normalize(render_views(batches["bootstrap"], boxes[:, :1], 64))
    assert sources.shape == (images_n, 3, 64, 64) and torch.allclose(sources, expected)
    assert targets.shape == (images_n * 3, 3, img_size, img_size)
    assert [x.shape[-1] for x in encoded] == [img_size, 64, img_size]  # annotation views, sources, targets
    assert torch.equal(encoded[1], sources)
    assert read[0].shape[:2] == (images_n, (64 // PATCH) ** 2)


def test_larger_source_views_train(tiny_config):
    cfg = tiny_config(*ASYMMETRIC_TARGETS, "views.bootstrap_source_size=48", "train.steps=3", "train.log_every=3")
    last = Trainer(cfg).fit()
    assert torch.isfinite(torch.tensor(last["loss/total"])) and last["loss/bootstrap"] > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(side=st.integers(1, 160))
def test_a_source_side_is_refused_exactly_when_the_patches_cannot_tile_it(side):
    """Any side is accepted when the ViT's patches tile it and refused, naming the key and the
    side, when they do not; at img_size the encoder is the one every other config builds."""
    cfg = load_config(None, [*TINY, *ASYMMETRIC_TARGETS, f"views.bootstrap_source_size={side}"])
    if side % PATCH:
        with pytest.raises(AnnobootError, match=rf"'views.bootstrap_source_size' is {side}, .*patch size {PATCH}"):
            build_method(cfg)
        return
    method = build_method(cfg)
    assert method.source_size == side
    assert method.encoder.backbone.dynamic_img_size == (side != cfg.views.img_size)


def test_a_source_side_without_source_views_is_refused():
    with pytest.raises(AnnobootError, match=r"'views.bootstrap_source_size' is 64, which needs asymmetric moves"):
        load_config(None, [*TINY, "method.name=ab_simclr", "views.bootstrap_source_size=64"])


def test_value_maps_read_the_whole_image_at_the_source_side(tiny_config, monkeypatch):
    """Q from the whole image (value maps, benchmarks/localisation.py) is read from the source
    view as training rendered it: at views.bootstrap_source_size, not img_size."""
    from annoboot.eval.value_maps import value_probabilities

    method = build_method(tiny_config(*ASYMMETRIC_TARGETS, "views.bootstrap_source_size=64")).eval()
    encoded = []
    real_encoder = method.encoder.forward
    monkeypatch.setattr(method.encoder, "forward", lambda x: encoded.append(x.shape) or real_encoder(x))
    image = ImageBatch(torch.randint(0, 256, (1, 1, 48, 48), dtype=torch.uint8), torch.full((1, 2), 48))
    keys = torch.randn(5, method.cfg.model.proj_dim)
    probs = value_probabilities(method, image, keys, torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    assert encoded == [torch.Size([1, 3, 64, 64])]
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(-1), torch.ones(2))


@settings(max_examples=30, deadline=None)
@given(fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_shifted_boxes_move_each_box_within_the_fraction_of_its_side_and_keep_its_size(fraction, seed):
    from annoboot.actions import shifted_boxes

    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(64, 2, generator=generator)
    boxes = torch.cat([corner, corner + 0.05 + torch.rand(64, 2, generator=generator) * 0.5], -1)
    moved = shifted_boxes(boxes, fraction)
    size = boxes[:, 2:] - boxes[:, :2]
    assert torch.allclose(moved[:, 2:] - moved[:, :2], size, atol=1e-6)
    assert ((moved[:, :2] - boxes[:, :2]).abs() <= fraction * size + 1e-6).all()
    if fraction > 0.05:  # not one offset for all: the boxes move apart, each along both axes
        offsets = (moved[:, :2] - boxes[:, :2]) / size
        assert offsets[:, 0].std() > fraction / 10 and offsets[:, 1].std() > fraction / 10
        assert not torch.allclose(offsets[:, 0], offsets[:, 1])


def test_move_jitter_shifts_the_moves_and_leaves_the_targets(tiny_config, monkeypatch):
    """views.bootstrap_move_jitter: the moves the value function reads name shifted target boxes
    (their tokens differ from the true moves'), while the target crops, their reward and the boxes
    the agreement metrics read stay the crops' own. Caught breaks: nothing shifted, the target
    crops shifted too, the sources' boxes shifted."""
    from helpers import capture_bootstrap_objective

    def step(jitter):
        torch.manual_seed(2)  # the same weights for both
        method = build_method(tiny_config(*ASYMMETRIC_TARGETS, f"views.bootstrap_move_jitter={jitter}"))
        moves = []
        real_moves = method.value_function.moves_between
        monkeypatch.setattr(method.value_function, "moves_between",
                            lambda s, t: moves.append((s.clone(), t.clone())) or real_moves(s, t))
        calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
        sizes = method.batch_sizes()
        torch.manual_seed(0)
        images = lambda n: ImageBatch(torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8),  # noqa: E731
                                      torch.full((n, 2), 48))
        batches = {"annotation": images(sizes["annotation"]), "bootstrap": images(sizes["bootstrap"])}
        torch.manual_seed(1)
        method.training_step(batches, None)
        return moves[0], calls[0]

    (plain_sources, plain_targets), plain = step(0.0)
    (sources, targets, ), shifted = step(0.3)
    true_targets = shifted["target_boxes"]
    assert torch.equal(sources, shifted["boxes"]) and torch.equal(plain_sources, sources)  # same draws
    assert torch.equal(plain_targets, true_targets)  # unshifted, the moves name the target boxes
    offset = (targets - true_targets)[..., :2] / (true_targets[..., 2:] - true_targets[..., :2])
    assert offset.abs().max() <= 0.3 + 1e-5 and offset.abs().mean() > 0.05
    assert torch.allclose(targets[..., 2:] - targets[..., :2], true_targets[..., 2:] - true_targets[..., :2])
    assert torch.allclose(plain["targets"], shifted["targets"])  # the reward: the crops' own
