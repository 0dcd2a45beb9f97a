"""ABSimCLR: its variants train, EMA rewards are per view, and the bootstrap split is checked."""

import pytest
import torch
from helpers import TINY, TINY_TEXT, capture_bootstrap_objective, needs_fmnist

import annoboot.methods.ab_simclr as ab_simclr_module
from annoboot.errors import AnnobootError
from annoboot.methods import build_method
from annoboot.recipe import load_config
from annoboot.train import Trainer
from annoboot.train.ema import make_target

pytestmark = needs_fmnist


@pytest.mark.parametrize(
    "variant",
    [
        ["method.gamma=0.5", "method.aggregate=mean"],
        ["method.gamma=0.5", "method.aggregate=max", "method.drop_self_pairs=true"],
        ["model.backbone=test_resnet", "model.backbone_kwargs={}"],  # timm's smallest ResNet
        ["views.bootstrap_views=2", "method.bootstrap_fraction=0.25"],
    ],
    ids=["gamma_mean", "gamma_max_no_self", "cnn_backbone", "two_views"],
)
def test_ab_simclr_variants_train(tiny_config, variant, monkeypatch):
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    cfg = tiny_config("method.name=ab_simclr", "train.steps=3", "train.log_every=3", *variant)
    trainer = Trainer(cfg)
    last = trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values()), last
    assert last["loss/bootstrap"] > 0
    # The variant shaped the step: every move between the bootstrap views of every bootstrap image.
    images, views = trainer.method.batch_sizes()["bootstrap"], cfg.views.bootstrap_views
    assert len(calls) == 3 and calls[0]["logits"].shape[:3] == (images, views, views)
    assert calls[0]["targets"].shape[:2] == (images, views)
    if cfg.method.gamma > 0:
        # Same seed with gamma 0: the reward alone. The gamma target is (1 - gamma) reward +
        # gamma AGG_a' Q, so what it adds to the reward must itself be a distribution, and not the reward.
        reward_calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
        Trainer(tiny_config("method.name=ab_simclr", "train.steps=1", *variant, "method.gamma=0"), overwrite=True).fit()
        reward, target = reward_calls[0]["targets"], calls[0]["targets"]
        bootstrapped = (target - (1 - cfg.method.gamma) * reward) / cfg.method.gamma
        assert bootstrapped.min() > -1e-5 and torch.allclose(bootstrapped.sum(-1), torch.ones(()), atol=1e-4)
        assert not torch.allclose(bootstrapped, reward, atol=1e-3)


def test_the_ema_reward_of_a_view_does_not_depend_on_the_other_bootstrap_views(tiny_config):
    torch.manual_seed(0)
    method = build_method(tiny_config("method.name=ab_simclr", "model.projector_bn=true"))
    target = make_target(method)
    annotations, views, moves = torch.randn(6, 3, 32, 32), torch.randn(8, 3, 32, 32), torch.zeros(2, 4, 4, 4, dtype=torch.long)
    others = views.clone()
    others[4:] = torch.randn(4, 3, 32, 32)  # image 1's views change, image 0's do not

    def rewards(batch_statistics: bool) -> tuple:
        target.train(batch_statistics)
        with torch.no_grad():
            return target.td_targets(annotations, views, moves)[0], target.td_targets(annotations, others, moves)[0]

    target.train(method.target_batch_statistics)  # what the trainer does each step
    assert not method.target_batch_statistics
    same, changed = rewards(method.target_batch_statistics)
    assert torch.allclose(same, changed, atol=1e-6)
    # With the batch's own statistics the reward of image 0 would move with image 1's views.
    same, changed = rewards(True)
    assert (same - changed).abs().max() > 1e-3


def test_an_empty_bootstrap_split_is_refused():
    cfg = load_config(None, TINY + ["method.name=ab_simclr", "train.batch_size=4", "method.bootstrap_fraction=0.1"])
    with pytest.raises(AnnobootError, match=r"4 x 0\.1 gives 0 bootstrap images"):
        build_method(cfg)
    cfg = load_config(None, TINY + ["method.name=ab_simclr", "train.batch_size=3"])  # 2 annotation images, 0.5 bootstrap
    with pytest.raises(AnnobootError, match=r"equal views .* at train\.batch_size 3 gives 0 bootstrap images"):
        build_method(cfg)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_online_targets_equal_an_ema_target_of_momentum_zero(tiny_config, monkeypatch, gamma):
    """method.target_network=online takes the TD targets from the online forward: the same as
    a target network holding this step's online weights (momentum 0), without a second forward."""
    from annoboot.batch import ImageBatch

    cfg = tiny_config("method.name=ab_simclr", "method.target_network=online", f"method.gamma={gamma}",
                      "model.projector_bn=true", "train.batch_size=16")
    torch.manual_seed(0)
    method = build_method(cfg)
    assert not method.uses_target  # the trainer builds no EMA copy
    twin = make_target(method)  # the same weights and statistics, trained with an EMA target
    twin.train()
    target = make_target(method)  # momentum 0: this step's online weights
    target.train(method.target_batch_statistics)
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    sizes = method.batch_sizes()
    images = torch.randint(0, 255, (sum(sizes.values()), 1, 28, 28), dtype=torch.uint8)
    batches = {"annotation": ImageBatch(images[: sizes["annotation"]], torch.full((sizes["annotation"], 2), 28)),
               "bootstrap": ImageBatch(images[sizes["annotation"] :], torch.full((sizes["bootstrap"], 2), 28))}
    for model, step_target in ((method, None), (twin, target)):
        torch.manual_seed(1)  # the same views both times
        out = model.training_step(batches, step_target, 0)
        assert torch.isfinite(out.loss)
    online, ema = (call["targets"] for call in calls)
    assert online.shape == ema.shape == (sizes["bootstrap"], cfg.views.bootstrap_views, sizes["annotation"])
    assert torch.allclose(online, ema, atol=1e-5), (online - ema).abs().max()
    assert all(m.training for m in method.modules())  # eval mode only inside the target computation


def test_online_targets_are_refused_where_the_target_network_belongs_to_the_base_method(tiny_config):
    with pytest.raises(AnnobootError, match=r"method\.target_network=online applies to ab_clip, ab_simclr, not ab_dino"):
        build_method(tiny_config("method.name=ab_dino", "method.target_network=online"))


def test_an_online_target_run_trains_without_an_ema_copy(tiny_config):
    cfg = tiny_config("method.name=ab_simclr", "method.target_network=online", "train.steps=3", "train.log_every=3")
    trainer = Trainer(cfg)
    assert trainer.target_network is None
    last = trainer.fit()
    assert last["loss/bootstrap"] > 0 and "ema/target_online_distance" not in last


def test_the_target_network_option_decides_whether_an_ema_copy_is_kept(tiny_config):
    assert Trainer(tiny_config("method.name=ab_simclr", "method.target_network=ema")).target_network is not None
    for name in ("ab_simclr", "ab_clip"):
        extra = TINY_TEXT if name == "ab_clip" else []
        assert build_method(tiny_config(*extra, f"method.name={name}", "method.target_network=ema")).uses_target is True
        assert build_method(tiny_config(*extra, f"method.name={name}", "method.target_network=online")).uses_target is False


def test_psi_ab_follows_projector_bn_and_a_step_without_a_queue_enqueues_nothing(tiny_config):
    for projector_bn in (True, False):
        method = build_method(tiny_config("method.name=ab_simclr", f"model.projector_bn={str(projector_bn).lower()}"))
        has_bn = any(isinstance(m, torch.nn.BatchNorm1d) for m in method.ab_annotation_head.modules())
        assert has_bn is projector_bn
    method.after_backward(0)  # no queue: nothing to write, and no error
    assert not hasattr(method, "queue_keys")


ASYMMETRIC = ["method.name=ab_simclr", "views.bootstrap_views=4", "views.bootstrap_source_views=1",
              "views.bootstrap_source_scale=[0.6, 1.0]", "views.bootstrap_scale=[0.05, 0.2]"]


@pytest.mark.parametrize("target_network", ["ema", "online"])
def test_asymmetric_moves_lead_from_wide_source_views_to_small_target_views(tiny_config, monkeypatch, target_network):
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    cfg = tiny_config(*ASYMMETRIC, f"method.target_network={target_network}", "train.steps=2", "train.log_every=2")
    trainer = Trainer(cfg)
    last = trainer.fit()
    assert torch.isfinite(torch.tensor(last["loss/total"])) and last["loss/bootstrap"] > 0
    images, annotations = trainer.method.batch_sizes()["bootstrap"], trainer.method.batch_sizes()["annotation"]
    step = calls[0]
    assert step["logits"].shape == (images, 1, 3, annotations)  # 1 source x 3 targets per image
    assert step["targets"].shape == (images, 3, annotations)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    assert step["boxes"].shape == (images, 1, 4) and step["target_boxes"].shape == (images, 3, 4)
    assert area(step["boxes"]).min() >= 0.6 - 1e-4 and area(step["target_boxes"]).max() <= 0.2 + 1e-4


def test_target_box_attention_trains_and_changes_only_the_value_prediction(tiny_config, monkeypatch):
    """model.decoder_attention=target_box on the asymmetric recipe: the same seed gives the same
    first-step targets (the reward does not read the decoder) and other Q logits (each move reads
    its region's tokens alone); two steps train to a finite loss."""
    def first_step(attention: str) -> dict:
        calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
        cfg = tiny_config(*ASYMMETRIC, "method.target_network=online", f"model.decoder_attention={attention}",
                          "train.steps=2", "train.log_every=2")
        last = Trainer(cfg, overwrite=True).fit()
        assert torch.isfinite(torch.tensor(last["loss/total"])) and last["loss/bootstrap"] > 0
        return calls[0]

    every_token, region = first_step("all"), first_step("target_box")
    assert torch.equal(every_token["targets"], region["targets"])
    assert not torch.allclose(every_token["logits"], region["logits"], atol=1e-3)


def test_asymmetric_rewards_are_those_of_the_target_views(tiny_config, monkeypatch):
    """Target views that are copies of annotation views must be rewarded with those annotations:
    the reward is computed on the target views, in their order, not on the source views."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    cfg = tiny_config(*ASYMMETRIC, "method.target_network=online")
    method = build_method(cfg)
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    annotation_views = torch.randn(2 * count, 3, 32, 32)
    monkeypatch.setattr(method, "annotation_views", lambda batch: annotation_views)
    copied = torch.stack([(torch.arange(3) + n) % count for n in range(images)])  # image n's targets: annotations n, n+1, n+2
    views = torch.cat([torch.randn(images, 1, 3, 32, 32), annotation_views[copied]], 1).flatten(0, 1)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] + [[0.1, 0.1, 0.4, 0.4]] * 3).expand(images, 4, 4)
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views", lambda *args, **kwargs: (views, boxes))
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    assert torch.equal(calls[0]["targets"].argmax(-1), copied)


TARGET_ANNOTATIONS = ["method.target_network=online", "method.bootstrap_annotations=targets"]


def test_annotations_from_the_targets_reward_each_target_crop_as_itself_among_all_crops(tiny_config, monkeypatch):
    """method.bootstrap_annotations=targets: the annotations are the step's N x 3 target crops, so
    the reward of each crop is a distribution over all of them, largest on the crop itself (its
    SimCLR similarity to itself is the largest there is), and Q scores every move against them.
    Caught breaks: the rewards of the annotation batch kept (L would be the annotation count), the
    crops read view-major (the argmax would not be the crop's own index)."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    method = build_method(tiny_config(*ASYMMETRIC, *TARGET_ANNOTATIONS))
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    assert images * 3 != count
    monkeypatch.setattr(method, "annotation_views", lambda batch: torch.randn(2 * count, 3, 32, 32))
    views = torch.randn(images * 4, 3, 32, 32)  # image-major: 1 source and 3 distinct target crops each
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.9, 0.4], [0.0, 0.5, 0.4, 0.9]])
    boxes = boxes.expand(images, 4, 4)
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views", lambda *args, **kwargs: (views, boxes))
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    out = method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    targets, logits = calls[0]["targets"], calls[0]["logits"]
    assert targets.shape == (images, 3, images * 3) and logits.shape == (images, 1, 3, images * 3)
    assert torch.equal(targets.argmax(-1), torch.arange(images * 3).view(images, 3))
    assert torch.allclose(targets.sum(-1), torch.ones(()), atol=1e-5)
    out.loss.backward()  # the keys train psi_AB; the crops themselves are encoded without gradient
    assert next(method.ab_annotation_head.parameters()).grad.abs().sum() > 0


@pytest.mark.parametrize("annotations", ["targets", "image_targets", "other_targets"])
def test_the_reward_temperature_rescales_the_rewards_log_odds_and_nothing_else(tiny_config, monkeypatch, annotations):
    """method.reward_temperature T': the reward is the same softmax at T' instead of SimCLR's T, so
    for the same weights and crops each log-reward changes to T / T' times the old one up to its
    normaliser, and Q's logits do not move. Caught breaks: the option read nowhere (rewards equal),
    read by the base loss or Q instead (logits move), a softmax at another temperature."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    method = build_method(tiny_config(*ASYMMETRIC, "method.target_network=online",
                                      f"method.bootstrap_annotations={annotations}"))
    method.eval()  # dropout-free, so two forwards of the same crops agree
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    annotation_views = torch.randn(2 * count, 3, 32, 32)
    monkeypatch.setattr(method, "annotation_views", lambda batch: annotation_views)
    views = torch.randn(images * 4, 3, 32, 32)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.9, 0.4], [0.0, 0.5, 0.4, 0.9]])
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views", lambda *a, **k: (views, boxes.expand(images, 4, 4)))
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    for temperature in (None, 0.5):
        method.cfg.method.reward_temperature = temperature
        with torch.no_grad():
            method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    (simclr_t, higher) = calls
    ratio = 0.5 / method.cfg.method.temperature
    kept = simclr_t["targets"] > 0  # other_targets: each move's own image's crops are 0 at any temperature
    assert torch.equal(kept, higher["targets"] > 0)
    log_old = simclr_t["targets"].clamp_min(1e-30).log()
    rescaled = torch.where(kept, log_old / ratio, torch.full_like(log_old, float("-inf"))).log_softmax(-1)
    assert torch.allclose(rescaled.exp(), higher["targets"], atol=1e-4)
    assert not torch.allclose(simclr_t["targets"], higher["targets"], atol=1e-3)
    assert torch.allclose(simclr_t["logits"], higher["logits"])


def test_annotations_from_the_own_image_targets_score_each_move_against_its_image_crops_only(tiny_config, monkeypatch):
    """method.bootstrap_annotations=image_targets: each image's 3 moves are scored against that
    image's 3 target crops only, with the reward renormalised over them; what the other images
    show changes nothing of an image's reward or Q. Caught breaks: the whole step's crops kept
    (L = N x 3), the block of another image taken (a changed crop of image 1 would move image 0's
    figures), the reward not renormalised."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    method = build_method(tiny_config(*ASYMMETRIC, "method.target_network=online",
                                      "method.bootstrap_annotations=image_targets"))
    method.eval()  # dropout-free, so two forwards of the same image agree
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    monkeypatch.setattr(method, "annotation_views", lambda batch: torch.randn(2 * count, 3, 32, 32))
    views = torch.randn(images * 4, 3, 32, 32)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.9, 0.4], [0.0, 0.5, 0.4, 0.9]])
    boxes = boxes.expand(images, 4, 4)
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    for rendered in (views, torch.cat([views[:4], torch.randn_like(views[4:])])):  # images 1.. redrawn
        monkeypatch.setattr(ab_simclr_module, "bootstrap_views", lambda *a, r=rendered, **k: (r, boxes))
        with torch.no_grad():
            method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    (first, second) = calls
    assert first["targets"].shape == (images, 3, 3) and first["logits"].shape == (images, 1, 3, 3)
    assert torch.equal(first["targets"].argmax(-1), torch.arange(3).expand(images, 3))
    assert torch.allclose(first["targets"].sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(first["targets"][0], second["targets"][0], atol=1e-5)
    assert torch.allclose(first["logits"][0], second["logits"][0], atol=1e-4)
    assert not torch.allclose(first["logits"][1], second["logits"][1], atol=1e-4)


def test_annotations_from_the_other_targets_leave_out_each_moves_own_image(tiny_config, monkeypatch):
    """method.bootstrap_annotations=other_targets: each move is scored against the target crops
    of every other image, never its own image's 3 crops (reward 0, Q's probability 0), and the
    reward is the targets softmax over the rest: a crop that is a copy of another image's crop
    puts its largest reward there. Caught breaks: no mask (the argmax would be the crop itself),
    the mask on the wrong image's columns, a mask that leaves the reward unnormalised, Q unmasked."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    method = build_method(tiny_config(*ASYMMETRIC, "method.target_network=online",
                                      "method.bootstrap_annotations=other_targets"))
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    monkeypatch.setattr(method, "annotation_views", lambda batch: torch.randn(2 * count, 3, 32, 32))
    per_image = torch.randn(images, 4, 3, 32, 32)
    assert images % 2 == 0
    per_image[1::2, 1:] = per_image[0::2, 1:]  # images 2j and 2j + 1 have the same target crops
    views = per_image.flatten(0, 1)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.9, 0.4], [0.0, 0.5, 0.4, 0.9]])
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views", lambda *a, **k: (views, boxes.expand(images, 4, 4)))
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    out = method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    targets, logits = calls[0]["targets"], calls[0]["logits"]
    assert targets.shape == (images, 3, images * 3) and logits.shape == (images, 1, 3, images * 3)
    # own[n, k, l]: column l is one of image n's crops
    own = (torch.arange(images * 3) // 3 == torch.arange(images)[:, None]).unsqueeze(1).expand(images, 3, images * 3)
    assert targets[own].abs().max() == 0 and torch.allclose(targets.sum(-1), torch.ones(()), atol=1e-5)
    assert logits.softmax(-1)[own[:, None]].max() < 1e-6
    twin = torch.arange(images) ^ 1  # 2j <-> 2j + 1
    assert torch.equal(targets.argmax(-1), twin[:, None] * 3 + torch.arange(3))  # each crop's copy in its twin
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert next(method.ab_annotation_head.parameters()).grad.abs().sum() > 0


@pytest.mark.parametrize("centred", [False, True])
def test_centred_annotations_reward_what_differs_within_an_image(tiny_config, monkeypatch, centred):
    """method.centred_annotations: each target crop's reward embedding is centred on its image's
    crops. Crops whose embeddings are a large per-image component (a background) plus one of 3
    small item directions: centred, the reward of a crop over the other images' crops is largest
    on a crop of the same item; uncentred, the backgrounds decide it (the control that shows the
    test can fail). Caught breaks: no centring, centring over the whole step or over the wrong
    axis (the item directions would be removed or the backgrounds kept)."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    method = build_method(tiny_config(*ASYMMETRIC, "method.target_network=online",
                                      "method.bootstrap_annotations=other_targets",
                                      f"method.centred_annotations={str(centred).lower()}"))
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    assert 2 * count != images * 3
    dim = method.cfg.model.proj_dim
    items = torch.stack([torch.randperm(3) for _ in range(images)])  # image n's crop k shows item items[n, k]
    embeddings = 4.0 * torch.randn(images, 1, dim) + torch.eye(dim)[:3][items]  # background + item
    real_projector = method.projector.forward
    monkeypatch.setattr(method.projector, "forward",
                        lambda x: embeddings.flatten(0, 1) if x.shape[0] == images * 3 else real_projector(x))
    monkeypatch.setattr(method, "annotation_views", lambda batch: torch.randn(2 * count, 3, 32, 32))
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.9, 0.4], [0.0, 0.5, 0.4, 0.9]])
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views",
                        lambda *a, **k: (torch.randn(images * 4, 3, 32, 32), boxes.expand(images, 4, 4)))
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    rewarded_item = items.flatten()[calls[0]["targets"].argmax(-1)]  # the item of each crop's most rewarded crop
    same_item = (rewarded_item == items).float().mean()
    assert same_item == 1.0 if centred else same_item < 0.6


@pytest.mark.parametrize("split", [["train.batch_size=8", "method.bootstrap_fraction=0.125"],
                                   ["train.batch_size=4", "method.annotation_fraction=0.5"]])  # equal views: 1 image
def test_annotations_from_the_other_targets_are_refused_with_one_bootstrap_image(split):
    cfg = load_config(None, [*TINY, "method.name=ab_simclr", "views.bootstrap_views=4", "views.bootstrap_source_views=1",
                             "method.target_network=online", "method.bootstrap_annotations=other_targets", *split])
    with pytest.raises(AnnobootError, match=r"gives 1 bootstrap images per step; ab_simclr with "
                                            r"method.bootstrap_annotations=other_targets needs at least 2"):
        build_method(cfg)


def test_target_rotation_turns_each_target_view_and_leaves_the_sources(tiny_config, monkeypatch):
    """views.bootstrap_target_rotation: the target crops the reward reads are the rendered crops,
    each turned by a multiple of 90 degrees (all four turns occur over a step's crops); the source
    views the value decoder reads are not turned. Caught breaks: nothing turned, the sources
    turned, one turn for the whole batch."""
    from annoboot.batch import ImageBatch

    torch.manual_seed(0)
    method = build_method(tiny_config(*ASYMMETRIC, *TARGET_ANNOTATIONS, "views.bootstrap_target_rotation=true"))
    sizes = method.batch_sizes()
    count, images = sizes["annotation"], sizes["bootstrap"]
    monkeypatch.setattr(method, "annotation_views", lambda batch: torch.randn(2 * count, 3, 32, 32))
    views = torch.randn(images * 4, 3, 32, 32)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.9, 0.4], [0.0, 0.5, 0.4, 0.9]])
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views", lambda *a, **k: (views, boxes.expand(images, 4, 4)))
    seen = []
    real_encoder = method.encoder.forward
    monkeypatch.setattr(method.encoder, "forward", lambda x: seen.append(x.detach()) or real_encoder(x))
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 32, 32, dtype=torch.uint8), torch.full((n, 2), 32))  # noqa: E731
    method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, None)
    per_image = views.view(images, 4, 3, 32, 32)
    assert torch.equal(seen[0][2 * count:], per_image[:, 0])  # the sources, as rendered
    turned, rendered = seen[1], per_image[:, 1:].flatten(0, 1)
    turns = [next(k for k in range(4) if torch.equal(t, torch.rot90(r, k, (1, 2)))) for t, r in zip(turned, rendered)]
    assert set(turns) == {0, 1, 2, 3}


@pytest.mark.parametrize("override", [["method.bootstrap_annotations=batch"],
                                      ["method.bootstrap_annotations=targets", "views.bootstrap_views=2"]])
def test_centred_annotations_are_refused_without_target_crops_to_centre_on(override):
    with pytest.raises(AnnobootError, match=r"method.centred_annotations' is true, which needs"):
        load_config(None, [*TINY, "method.name=ab_simclr", "views.bootstrap_views=4", "views.bootstrap_source_views=1",
                           "method.target_network=online", "method.centred_annotations=true", *override])


def test_target_rotation_is_refused_without_target_views():
    with pytest.raises(AnnobootError, match=r"views.bootstrap_target_rotation.*asymmetric moves"):
        load_config(None, [*TINY, "method.name=ab_simclr", "views.bootstrap_target_rotation=true"])


@pytest.mark.parametrize("annotations", ["targets", "image_targets", "other_targets", "other_targets centred"])
def test_annotations_from_the_targets_train(tiny_config, annotations):
    annotations, *centred = annotations.split()
    cfg = tiny_config(*ASYMMETRIC, "method.target_network=online", f"method.bootstrap_annotations={annotations}",
                      f"method.centred_annotations={str(bool(centred)).lower()}", "train.steps=2", "train.log_every=2")
    last = Trainer(cfg).fit()
    assert torch.isfinite(torch.tensor(last["loss/total"])) and last["loss/bootstrap"] > 0


@pytest.mark.parametrize("annotations", ["targets", "image_targets", "other_targets"])
@pytest.mark.parametrize("override", [[], ["views.bootstrap_source_views=1", "method.target_network=ema"],
                                      ["views.bootstrap_source_views=1", "method.target_network=online",
                                       "method.annotation_queue=4096"]])
def test_annotations_from_the_targets_are_refused_where_there_are_no_target_crops_of_this_step(override, annotations):
    message = rf"bootstrap_annotations' is '{annotations}', which needs asymmetric moves"
    with pytest.raises(AnnobootError, match=message):
        load_config(None, [*TINY, "method.name=ab_simclr", "views.bootstrap_views=4",
                           f"method.bootstrap_annotations={annotations}", *override])


@pytest.mark.parametrize("override, message", [
    (["views.bootstrap_source_views=4"], r"bootstrap_source_views.*\[1, 3\], got 4"),
    (["views.bootstrap_source_views=1", "views.bootstrap_source_scale=[0.9, 0.5]"], "views.bootstrap_source_scale"),
    (["views.bootstrap_source_views=1", "method.gamma=0.5"], "gamma"),
    (["views.bootstrap_source_views=1", "views.bootstrap_source_scale=[0.5, 1.5]"], r"bootstrap_source_scale.*\(0, 1\]"),
])
def test_asymmetric_settings_that_cannot_work_are_refused_at_load(override, message):
    with pytest.raises(AnnobootError, match=message):
        load_config(None, [*TINY, "method.name=ab_simclr", "views.bootstrap_views=4", *override])


QUEUE = ["method.name=ab_simclr", "method.target_network=online", "method.annotation_queue=48"]


def test_the_annotation_queue_fills_with_past_annotations_and_widens_the_reward(tiny_config, monkeypatch):
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    cfg = tiny_config(*QUEUE, "train.steps=4", "train.log_every=4")
    trainer = Trainer(cfg)
    per_step = trainer.method.batch_sizes()["annotation"]
    assert per_step * 3 > 48 > per_step  # the queue fills within the run and then wraps
    trainer.fit()
    # Step t rewards the step's annotations and min(48, t * A) queued ones.
    widths = [call["targets"].shape[-1] for call in calls]
    assert widths == [per_step + min(48, t * per_step) for t in range(4)]
    assert all(call["logits"].shape[-1] == width for call, width in zip(calls, widths))
    queue = trainer.method.queue_keys
    assert bool((queue.norm(dim=1) > 0).all())  # every row written


def test_the_queued_rows_are_the_latest_annotations_in_ring_order(tiny_config):
    # 48 rows and 16 a step would not tell the step's count from the embedding width (64 = 16 mod 48).
    method = build_method(tiny_config(*QUEUE, "method.annotation_queue=40"))
    per_step = method.batch_sizes()["annotation"]
    assert method.queue_keys.shape[1] % 40 != per_step % 40
    for step in range(4):  # each step enqueues A rows of its own value
        method._to_enqueue = (torch.full((per_step, method.queue_embeddings.shape[1]), float(step + 1)),
                              torch.full((per_step, method.queue_keys.shape[1]), float(-(step + 1))))
        method.after_backward(step)
    expected = torch.tensor([(step * per_step + i) for step in range(4) for i in range(per_step)]) % 40
    latest = torch.zeros(40)
    for position, row in enumerate(expected.tolist()):
        latest[row] = position // per_step + 1
    assert torch.equal(method.queue_embeddings[:, 0], latest) and torch.equal(method.queue_keys[:, 0], -latest)


@pytest.mark.parametrize("override, message", [
    (["method.annotation_queue=-1"], "annotation_queue"),
    (["method.annotation_queue=4096", "method.target_network=ema"], "target_network=online"),
    (["method.annotation_queue=2", "method.target_network=online"], "at least one step"),
    (["method.annotation_queue=1", "method.target_network=online"], "at least one step"),
])
def test_queue_settings_that_cannot_work_are_refused_at_load(override, message):
    with pytest.raises(AnnobootError, match=message):
        load_config(None, [*TINY, "method.name=ab_simclr", *override])


def test_a_queue_of_exactly_one_steps_annotations_is_accepted():
    per_step = build_method(load_config(None, [*TINY, "method.name=ab_simclr"])).batch_sizes()["annotation"]
    assert per_step > 2
    load_config(None, [*TINY, "method.name=ab_simclr", "method.target_network=online", f"method.annotation_queue={per_step}"])
    with pytest.raises(AnnobootError, match=f"at least one step's annotation images \\({per_step}\\), got {per_step - 1}"):
        load_config(None, [*TINY, "method.name=ab_simclr", "method.target_network=online",
                           f"method.annotation_queue={per_step - 1}"])
