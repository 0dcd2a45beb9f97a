"""Where each AB method's TD targets come from: the reward and Q of the EMA target network,
and annotation and bootstrap views in the order the losses pair them. Small steps of the real
methods, with the target network altered so the right answer is known by hand."""

import pytest
import torch
from helpers import DINO_TINY, TINY_TEXT, capture_bootstrap_objective, one_thread  # noqa: F401 (autouse fixture)

import annoboot.methods.ab_clip as ab_clip_module
import annoboot.methods.ab_dino as ab_dino_module
import annoboot.methods.ab_simclr as ab_simclr_module
from annoboot.batch import ImageBatch
from annoboot.methods import build_method
from annoboot.train.ema import make_target

# method name, its module (for the spy), options; each with batch 8: 4 annotation images.
AB_METHODS = {
    "ab_simclr": (ab_simclr_module, []),
    "ab_dino": (ab_dino_module, [*DINO_TINY, "method.bootstrap_fraction=0.25"]),
    "ab_clip": (ab_clip_module, [*TINY_TEXT]),
}


def _zero(*linears):
    with torch.no_grad():
        for layer in linears:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def _zero_the_reward(name, target):
    """Make the target's reward p(l | x') uniform: the embedding it compares with the
    annotations becomes 0, so every similarity (cosine, after normalising 0 to 0) is 0."""
    if name == "ab_simclr":
        _zero(target.projector.net[-1])  # z = 0
    elif name == "ab_dino":
        _zero(target.head.mlp[-1])  # bottleneck 0 -> prototype logits 0; the centre starts at 0
    else:
        _zero(target.image_projection)  # image embedding 0


def _step(name, tiny_config, monkeypatch, *overrides):
    """A method ``name``, its EMA target with a uniform reward (tests alter it further), a
    step's batches and the spy on the TD loss's inputs."""
    module, options = AB_METHODS[name]
    cfg = tiny_config(f"method.name={name}", "train.batch_size=8", *options, *overrides)
    torch.manual_seed(0)
    method = build_method(cfg)
    target = make_target(method)
    _zero_the_reward(name, target)
    sizes = method.batch_sizes()
    images = torch.randint(0, 255, (sum(sizes.values()), 1, 28, 28), dtype=torch.uint8)
    count = sizes["annotation"]
    captions = [f"caption {i}" for i in range(count)] if name == "ab_clip" else None
    batches = {"annotation": ImageBatch(images[:count], torch.full((count, 2), 28), captions=captions),
               "bootstrap": ImageBatch(images[count:], torch.full((sizes["bootstrap"], 2), 28))}
    calls = capture_bootstrap_objective(monkeypatch, module)
    return method, target, batches, calls


@pytest.mark.parametrize("name", sorted(AB_METHODS))
def test_the_reward_comes_from_the_ema_target_network(name, tiny_config, monkeypatch):
    """gamma 0: the target is the EMA network's reward alone. That network's reward is made
    uniform (1/L for L annotations); the online network's is not. Caught break: the targets
    computed by the online network (``self.td_targets`` / ``self.teacher_outputs`` for the target's)."""
    method, target, batches, calls = _step(name, tiny_config, monkeypatch, "method.gamma=0")
    method.training_step(batches, target, 0)
    targets = calls[0]["targets"]
    annotations = targets.shape[-1]
    assert torch.allclose(targets, torch.full_like(targets, 1 / annotations), atol=1e-6)


@pytest.mark.parametrize("name", sorted(AB_METHODS))
def test_q_of_the_bootstrapped_target_comes_from_the_ema_value_function(name, tiny_config, monkeypatch):
    """gamma 0.5: y = 0.5 p_ema + 0.5 mean Q_ema. The EMA network's reward and its Q (value
    decoder output 0, so Q = softmax(0)) are both uniform, hence y = 1/L exactly; the online
    value function's Q is not uniform, so taking Q from it moves y. Caught break: ema_targets
    handed the online network's value function."""
    method, target, batches, calls = _step(name, tiny_config, monkeypatch, "method.gamma=0.5")
    _zero(target.value_function.decoder.head)
    method.training_step(batches, target, 0)
    targets = calls[0]["targets"]
    assert torch.allclose(targets, torch.full_like(targets, 1 / targets.shape[-1]), atol=1e-6)
    # The online value function is not uniform: the check above can tell the two apart.
    logits = calls[0]["logits"]
    assert (logits - logits.mean(-1, keepdim=True)).abs().max() > 1e-3


def test_absimclr_rewards_bootstrap_views_against_view_1_of_each_annotation_image(tiny_config, monkeypatch):
    """Annotation views are view-major (rows [0, A) are view 1 of each image, [A, 2A) view 2);
    bootstrap views image-major (row n * V + v is view v of image n). Bootstrap views that are
    copies of view 1 of annotation images must be rewarded with those annotations, in place.
    Caught breaks: the annotations read as view 2 (rows [A, 2A)), or image-major (rows 0, 2, ...)."""
    cfg = tiny_config("method.name=ab_simclr", "train.batch_size=8")
    torch.manual_seed(0)
    method = build_method(cfg)
    target = make_target(method)
    sizes = method.batch_sizes()
    count, images, views = sizes["annotation"], sizes["bootstrap"], cfg.views.bootstrap_views
    assert (count, images, views) == (4, 2, 4)
    annotation_views = torch.randn(2 * count, 3, 32, 32)  # view 1 and view 2 of an image differ
    monkeypatch.setattr(method, "annotation_views", lambda batch: annotation_views)
    copied = torch.tensor([[2, 0, 3, 1], [1, 1, 0, 2]])  # bootstrap image n's view v copies annotation copied[n, v]
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.2, 0.2, 0.9, 0.9]])
    monkeypatch.setattr(ab_simclr_module, "bootstrap_views",
                        lambda *args, **kwargs: (annotation_views[copied.flatten()], boxes.expand(images, 4, 4)))
    calls = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    batch = lambda n: ImageBatch(torch.zeros(n, 1, 28, 28, dtype=torch.uint8), torch.full((n, 2), 28))  # noqa: E731
    method.training_step({"annotation": batch(count), "bootstrap": batch(images)}, target, 0)
    assert torch.equal(calls[0]["targets"].argmax(-1), copied)
