"""ABCLIP: values over the annotation captions, and training on caption shards."""

import torch
from helpers import TINY, TINY_TEXT, TUXPAINT_ROOT, capture_bootstrap_objective, needs_fmnist, needs_tuxpaint

import annoboot.methods.ab_clip as ab_clip_module
from annoboot.batch import ImageBatch
from annoboot.methods import ABCLIP, build_method
from annoboot.recipe import load_config


@needs_fmnist
def test_abclip_values_range_over_the_annotation_captions(tiny_config, monkeypatch):
    cfg = tiny_config(*TINY_TEXT, "method.name=ab_clip", "train.batch_size=16", "views.bootstrap_views=3")
    method = build_method(cfg)
    target = build_method(cfg)
    target.load_state_dict(method.state_dict())
    calls = capture_bootstrap_objective(monkeypatch, ab_clip_module)
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    sizes = torch.full((10, 2), 28)
    annotation = ImageBatch(images[:8], sizes[:8], captions=[f"caption {i}" for i in range(8)])
    bootstrap = ImageBatch(images[8:], sizes[8:])  # uncaptioned: decoupled training
    out = method.training_step({"annotation": annotation, "bootstrap": bootstrap}, target, 0)
    assert isinstance(method, ABCLIP) and torch.isfinite(out.loss)
    (seen,) = calls
    # (bootstrap images, source views, target views, annotation captions)
    assert seen["logits"].shape == (2, 3, 3, 8)
    assert seen["targets"].shape == (2, 3, 8) and torch.allclose(seen["targets"].sum(-1), torch.ones(2, 3))
    out.loss.backward()
    assert method.ab_text_head.net[0].weight.grad is not None  # psi_AB is trained through L_AB
    assert all(p.grad is None for p in target.parameters())


@needs_tuxpaint
@needs_fmnist
def test_abclip_trains_on_caption_shards_with_an_uncaptioned_bootstrap_source(tmp_path):
    from annoboot.cli import main
    from annoboot.train.trainer import Trainer

    assert main(["data", "write-shards", str(TUXPAINT_ROOT), str(tmp_path / "tux-%03d.tar"), "--captions", "tuxpaint",
                 "--max-count", "400"]) == 0
    cfg = load_config(
        None,
        TINY + TINY_TEXT + [
            "method.name=ab_clip",
            "data.annotation.kind=webdataset",
            f"data.annotation.root={tmp_path}/tux-{{000..001}}.tar",
            "data.annotation.num_workers=1",
            "data.bootstrap={kind: fashion_mnist, limit: 1000}",  # decoupled: uncaptioned images
            "train.batch_size=32",
            "train.steps=4",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    trainer = Trainer(cfg)
    metrics = trainer.train_step()
    assert torch.isfinite(metrics["loss/total"]) and "loss/bootstrap" in metrics
    batch = next(trainer.streams["annotation"])
    assert batch.captions is not None and all(batch.captions)
    assert torch.equal(batch.caption_tokens, trainer.method.tokenizer(batch.captions))  # made by the workers
    assert next(trainer.streams["bootstrap"]).captions is None


@needs_fmnist
def test_abclip_online_targets_equal_an_ema_target_of_momentum_zero(tiny_config, monkeypatch):
    from annoboot.train.ema import make_target

    cfg = tiny_config(*TINY_TEXT, "method.name=ab_clip", "method.target_network=online", "train.batch_size=16",
                      "views.bootstrap_views=3")
    torch.manual_seed(0)
    method = build_method(cfg)
    assert not method.uses_target
    twin, target = make_target(method), make_target(method)
    calls = capture_bootstrap_objective(monkeypatch, ab_clip_module)
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    sizes = torch.full((10, 2), 28)
    batches = {"annotation": ImageBatch(images[:8], sizes[:8], captions=[f"caption {i}" for i in range(8)]),
               "bootstrap": ImageBatch(images[8:], sizes[8:])}
    for model, step_target in ((method, None), (twin, target)):
        torch.manual_seed(1)
        assert torch.isfinite(model.training_step(batches, step_target, 0).loss)
    online, ema = (call["targets"] for call in calls)
    assert online.shape == (2, 3, 8) and torch.allclose(online, ema, atol=1e-5), (online - ema).abs().max()


def test_psi_of_a_caption_does_not_depend_on_the_other_captions_of_its_batch(tiny_config):
    """psi_AB's text head has no BatchNorm: in training mode a caption's key is its own, so
    value maps and the step score it alike whatever it is batched with."""
    method = build_method(tiny_config(*TINY_TEXT, "method.name=ab_clip")).train()
    with torch.no_grad():
        alone = method.annotation_keys(["a red shirt", "two shoes"])
        batched = method.annotation_keys(["a red shirt", "a bag on a chair", "a dress"])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    assert (alone[0] - alone[1]).abs().max() > 1e-3
