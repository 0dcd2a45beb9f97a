"""Each AB method's step wired as its equations say (docs/method.md section 2), worked on views
handed to it: the TD target (gamma 0) is the method's own annotation distribution of each target
view over this step's annotations; Q reads psi_AB of the same annotations, in the same order,
with the moves of the boxes the views were cut from; gamma > 0 bootstraps through psi_AB of those
annotations; the annotation queue stores what its reward and Q read, after this step's own.

The expected values are computed apart from the step, from the same views and weights (before
the step, whose base loss moves BatchNorm statistics), with the pure functions the objectives'
own tests pin to their formulas. Each test names the wiring breaks it was seen to catch."""

import copy

import pytest
import torch
from helpers import DINO_TINY, TINY_TEXT, capture_bootstrap_objective, one_thread  # noqa: F401 (autouse fixture)

import annoboot.methods.ab_clip as ab_clip_module
import annoboot.methods.ab_dino as ab_dino_module
import annoboot.methods.ab_simclr as ab_simclr_module
from annoboot.batch import ImageBatch
from annoboot.methods import build_method
from annoboot.methods.bootstrapping import frozen_statistics
from annoboot.objectives import (
    annotation_distribution,
    caption_distribution,
    clip_loss,
    nt_xent,
    td_target,
    teacher_distribution,
)
from annoboot.train.ema import make_target

ATOL = 2e-5


def _blank(n: int) -> ImageBatch:
    return ImageBatch(torch.zeros(n, 1, 28, 28, dtype=torch.uint8), torch.full((n, 2), 28))


def _fixed_bootstrap(monkeypatch, module, method, cfg):
    """Random bootstrap views and distinct boxes handed to the step (N*V, 3, S, S), (N, V, 4)."""
    images, views = method.batch_sizes()["bootstrap"], cfg.views.bootstrap_views
    boot_views = torch.randn(images * views, 3, cfg.views.img_size, cfg.views.img_size)
    corner = torch.rand(images, views, 2) * 0.5
    boxes = torch.cat([corner, corner + 0.2 + 0.3 * torch.rand(images, views, 2)], -1)
    monkeypatch.setattr(module, "bootstrap_views", lambda *args, **kwargs: (boot_views, boxes))
    return boot_views, boxes


def _spy_value_logits(monkeypatch, method):
    """Record each call of the value function's logits: its move tokens and annotation keys."""
    calls = []
    real = method.value_function.logits

    def spy(tokens, moves, keys):
        calls.append({"moves": moves, "keys": keys.detach().clone()})
        return real(tokens, moves, keys)

    monkeypatch.setattr(method.value_function, "logits", spy)
    return calls


def _spy_ema_target_keys(monkeypatch, module):
    """Record psi_AB as ema_targets reads it (gamma > 0) in ``module``."""
    seen = []
    real = module.ema_targets

    def spy(cfg, reward, value_function, tokens, moves, annotation_keys):
        def keys():
            seen.append(annotation_keys().detach().clone())
            return seen[-1]
        return real(cfg, reward, value_function, tokens, moves, keys)

    monkeypatch.setattr(module, "ema_targets", spy)
    return seen


def _absimclr(tiny_config, monkeypatch, *overrides):
    cfg = tiny_config("method.name=ab_simclr", "train.batch_size=8", "method.target_network=online", *overrides)
    torch.manual_seed(0)
    method = build_method(cfg)
    count = method.batch_sizes()["annotation"]
    annotation_views = torch.randn(2 * count, 3, cfg.views.img_size, cfg.views.img_size)  # view 1 of all, then view 2
    monkeypatch.setattr(method, "annotation_views", lambda batch: annotation_views)
    boot_views, boxes = _fixed_bootstrap(monkeypatch, ab_simclr_module, method, cfg)
    return cfg, method, count, annotation_views, boot_views, boxes


def _absimclr_expected(method, cfg, annotation_views, boot_views, count):
    """The reward of the online target (projector on running statistics) and psi_AB of view 1."""
    with torch.no_grad():
        with frozen_statistics(method):
            z_annotations = method.projector(method.encoder(annotation_views[:count]).pooled)
            z_targets = method.projector(method.encoder(boot_views).pooled)
            frozen_keys = method.ab_annotation_head(method.encoder(annotation_views[:count]).pooled)
        # Batch statistics, as trained; on copies, whose running statistics this call moves.
        keys = copy.deepcopy(method.ab_annotation_head)(method.encoder(annotation_views[:count]).pooled)
        z1, z2 = copy.deepcopy(method.projector)(method.encoder(annotation_views).pooled).chunk(2)
    reward = annotation_distribution(z_targets, z_annotations, cfg.method.temperature)
    return {"z_annotations": z_annotations, "reward": reward, "keys": keys, "frozen_keys": frozen_keys,
            "simclr": nt_xent(z1, z2, cfg.method.temperature)}


def test_absimclr_rewards_view_1_at_its_temperature_and_q_reads_psi_of_the_same_annotations(tiny_config, monkeypatch):
    """gamma 0: y(l_i | x_t) = softmax_i(cos(z(x_t), z(view 1 of image i)) / T); Q's keys are
    psi_AB(view 1 of image i) in the same order; the moves are those of the boxes; the base loss
    pairs view 1 with view 2 of each image. Caught breaks: the reward at temperature 1; psi_AB of
    view 2; the keys reordered; the moves transposed; NT-Xent against a shifted view."""
    cfg, method, count, annotation_views, boot_views, boxes = _absimclr(tiny_config, monkeypatch)
    expected = _absimclr_expected(method, cfg, annotation_views, boot_views, count)
    bootstrap = capture_bootstrap_objective(monkeypatch, ab_simclr_module)
    q_calls = _spy_value_logits(monkeypatch, method)
    out = method.training_step({"annotation": _blank(count), "bootstrap": _blank(boxes.shape[0])}, None, 0)

    images, views = boxes.shape[:2]
    torch.testing.assert_close(bootstrap[0]["targets"], expected["reward"].view(images, views, count), atol=ATOL, rtol=0)
    torch.testing.assert_close(q_calls[0]["keys"], expected["keys"], atol=ATOL, rtol=1e-4)
    assert torch.equal(q_calls[0]["moves"], method.value_function.moves(boxes))
    torch.testing.assert_close(out.metrics["loss/simclr"], expected["simclr"], atol=1e-4, rtol=1e-4)
    # The annotations differ enough that a mix-up shows.
    assert (expected["keys"][0] - expected["keys"][1]).abs().max() > 1e-3


def test_absimclr_bootstraps_through_psi_of_view_1(tiny_config, monkeypatch):
    """gamma 0.5, online target: the Q of the target views is taken over psi_AB(view 1), computed
    as the target would (running statistics). Caught break: psi_AB of another view or order."""
    cfg, method, count, annotation_views, boot_views, boxes = _absimclr(tiny_config, monkeypatch, "method.gamma=0.5")
    expected = _absimclr_expected(method, cfg, annotation_views, boot_views, count)
    seen = _spy_ema_target_keys(monkeypatch, ab_simclr_module)
    method.training_step({"annotation": _blank(count), "bootstrap": _blank(boxes.shape[0])}, None, 0)
    torch.testing.assert_close(seen[0], expected["frozen_keys"], atol=ATOL, rtol=1e-4)


def test_value_maps_score_annotation_images_with_the_psi_the_step_bootstraps_through(tiny_config, monkeypatch):
    """annotation_keys, which value maps score annotation images with (eval/value_maps.py), is
    psi_AB as the step's gamma > 0 target computes it: the same head, on the normalised image,
    in order. Caught breaks: the annotation images unnormalised; another head; a chunk dropped."""
    cfg, method, count, annotation_views, boot_views, boxes = _absimclr(tiny_config, monkeypatch, "method.gamma=0.5")
    images = torch.rand(count, 3, cfg.views.img_size, cfg.views.img_size)
    views = torch.cat([method.normalize(images), annotation_views[count:]])
    monkeypatch.setattr(method, "annotation_views", lambda batch: views)
    with torch.no_grad(), frozen_statistics(method):  # as value maps read it: running statistics
        keys = method.annotation_keys(images)
        many = method.annotation_keys(images.repeat(300 // count + 1, 1, 1, 1)[:300])  # two chunks of 256
    seen = _spy_ema_target_keys(monkeypatch, ab_simclr_module)
    method.training_step({"annotation": _blank(count), "bootstrap": _blank(boxes.shape[0])}, None, 0)
    torch.testing.assert_close(seen[0], keys, atol=ATOL, rtol=1e-4)
    assert many.shape[0] == 300
    torch.testing.assert_close(many[256 : 256 + count], keys[[(256 + i) % count for i in range(count)]], atol=ATOL, rtol=1e-4)


def test_the_annotation_queue_holds_the_rewards_embeddings_and_q_keys_after_this_steps(tiny_config, monkeypatch):
    """Queue of 8, 4 annotations a step: after step 0 the queue holds step 0's reward embeddings
    z(view 1) and its psi_AB keys; at step 1 the reward's annotations and Q's keys are this
    step's first, then the queued ones, in the same order. Caught breaks: psi_AB queued as reward
    embeddings; the queued annotations placed before this step's."""
    cfg, method, count, annotation_views, boot_views, boxes = _absimclr(tiny_config, monkeypatch, "method.annotation_queue=8")
    expected = _absimclr_expected(method, cfg, annotation_views, boot_views, count)
    q_calls = _spy_value_logits(monkeypatch, method)
    batches = {"annotation": _blank(count), "bootstrap": _blank(boxes.shape[0])}
    method.training_step(batches, None, 0)
    method.after_backward(0)
    torch.testing.assert_close(method.queue_embeddings[:count], expected["z_annotations"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(method.queue_keys[:count], q_calls[0]["keys"], atol=ATOL, rtol=0)

    rewards = []
    real = ab_simclr_module.annotation_distribution
    monkeypatch.setattr(ab_simclr_module, "annotation_distribution",
                        lambda z, annotations, t: rewards.append(annotations.clone()) or real(z, annotations, t))
    queued_embeddings, queued_keys = method.queue_embeddings[:count].clone(), method.queue_keys[:count].clone()
    method.training_step(batches, None, 1)
    assert rewards[0].shape[0] == q_calls[1]["keys"].shape[0] == 2 * count
    torch.testing.assert_close(rewards[0][count:], queued_embeddings, atol=0, rtol=0)
    torch.testing.assert_close(q_calls[1]["keys"][count:], queued_keys, atol=0, rtol=0)


def test_abdino_rewards_with_the_teachers_centre_and_q_reads_its_own_prototypes(tiny_config, monkeypatch):
    """gamma 0: y = softmax((g_ema(x_t) - c_ema) / T_teacher), the EMA teacher's centred
    distribution; Q's keys are ABDINO's prototypes psi_AB in order, also when bootstrapping
    (gamma 0.5); the moves are the boxes'. The teacher's centre is set away from 0 so that it
    shows. Caught breaks: the reward uncentred; Q's moves transposed; the prototypes reordered
    for the bootstrapped Q."""
    cfg = tiny_config("method.name=ab_dino", *DINO_TINY, "train.batch_size=8", "method.bootstrap_fraction=0.25",
                      "method.gamma=0.5")
    torch.manual_seed(0)
    method = build_method(cfg)
    target = make_target(method)
    with torch.no_grad():
        target.center.copy_(torch.randn_like(target.center) * 2)
    count, v = method.batch_sizes()["annotation"], cfg.views
    global_views = torch.randn(2 * count, 3, v.img_size, v.img_size)
    local_views = torch.randn(v.local_views * count, 3, v.local_size, v.local_size)
    monkeypatch.setattr(method, "multicrop_views", lambda batch: (global_views, local_views))
    boot_views, boxes = _fixed_bootstrap(monkeypatch, ab_dino_module, method, cfg)
    with torch.no_grad():
        reward = teacher_distribution(target.head(target.encoder(boot_views).pooled), target.center,
                                      method.current_teacher_temp(0))
    bootstrap = capture_bootstrap_objective(monkeypatch, ab_dino_module)
    q_calls = _spy_value_logits(monkeypatch, method)
    seen = _spy_ema_target_keys(monkeypatch, ab_dino_module)
    with torch.no_grad():  # Q of the targets is uniform, so y = (1 - gamma) p + gamma / K
        target.value_function.decoder.head.weight.zero_()
        target.value_function.decoder.head.bias.zero_()
    method.training_step({"annotation": _blank(count), "bootstrap": _blank(boxes.shape[0])}, target, 0)

    images, views = boxes.shape[:2]
    prototypes = reward.shape[-1]
    expected = 0.5 * reward.view(images, views, prototypes) + 0.5 / prototypes
    torch.testing.assert_close(bootstrap[0]["targets"], expected, atol=ATOL, rtol=0)
    assert torch.equal(q_calls[0]["keys"], method.ab_prototypes.detach())
    assert torch.equal(q_calls[0]["moves"], method.value_function.moves(boxes))
    assert torch.equal(seen[0], target.ab_prototypes)


def test_abclip_rewards_with_the_caption_distribution_and_q_reads_psi_of_the_captions(tiny_config, monkeypatch):
    """gamma 0: y = softmax_l(s * cos(f(x_t), g(caption l))) with CLIP's own projections and
    logit scale; Q's keys are psi_AB of the same captions in order (also for gamma 0.5); the
    base loss pairs image i with caption i; the moves are the boxes'. Caught breaks: the reward
    at scale 1; the reward over psi_AB instead of CLIP's text embedding; the keys reordered; the
    moves transposed; CLIP against shifted captions."""
    cfg = tiny_config(*TINY_TEXT, "method.name=ab_clip", "train.batch_size=8", "method.target_network=online",
                      "method.gamma=0.5")
    torch.manual_seed(0)
    method = build_method(cfg)
    count = method.batch_sizes()["annotation"]
    captions = ["a red shirt", "two shoes", "a bag on a chair", "a dress and a coat"][:count]
    clip_views = torch.randn(count, 3, cfg.views.img_size, cfg.views.img_size)
    monkeypatch.setattr(method, "image_views", lambda batch: clip_views)
    boot_views, boxes = _fixed_bootstrap(monkeypatch, ab_clip_module, method, cfg)
    tokens = method.tokenizer(captions)
    with torch.no_grad():
        text = method.text_encoder(tokens)
        keys = method.ab_text_head(text)
        reward = caption_distribution(method.embed_images(method.encoder(boot_views).pooled),
                                      method.text_projection(text), method.logit_scale())
        base = clip_loss(method.embed_images(method.encoder(clip_views).pooled), method.text_projection(text),
                         method.logit_scale())
        q_online = method.value_function.logits(method.encoder(boot_views).tokens, method.value_function.moves(boxes), keys)
        assert torch.equal(method.annotation_keys(captions), keys)  # what value maps score captions with
    bootstrap = capture_bootstrap_objective(monkeypatch, ab_clip_module)
    q_calls = _spy_value_logits(monkeypatch, method)
    seen = _spy_ema_target_keys(monkeypatch, ab_clip_module)
    annotation = ImageBatch(torch.zeros(count, 1, 28, 28, dtype=torch.uint8), torch.full((count, 2), 28), captions=captions)
    out = method.training_step({"annotation": annotation, "bootstrap": _blank(boxes.shape[0])}, None, 0)

    images, views = boxes.shape[:2]
    expected = td_target(reward.view(images, views, count), torch.softmax(q_online.float(), -1), 0.5, "mean")
    torch.testing.assert_close(bootstrap[0]["targets"], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(q_calls[0]["keys"], keys, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(seen[0], keys, atol=ATOL, rtol=1e-4)
    assert torch.equal(q_calls[0]["moves"], method.value_function.moves(boxes))
    torch.testing.assert_close(out.metrics["loss/clip"], base, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, extra", [
    ("ab_simclr", ["views.bootstrap_views=4", "views.bootstrap_source_views=1", "method.drop_self_pairs=false"]),
    ("ab_dino", [*DINO_TINY, "method.drop_self_pairs=true"]),
    ("ab_clip", [*TINY_TEXT, "method.drop_self_pairs=true"]),
], ids=["ab_simclr_asymmetric", "ab_dino", "ab_clip"])
def test_each_step_hands_its_options_to_the_loss_and_ramps_the_bootstrap_weight(tiny_config, name, extra, monkeypatch):
    """L = L_base + ab_weight * min(1, step / (ab_weight_warmup * steps)) * L_AB: with weight 2
    over a 4-step ramp, step 2 adds L_AB once and step 0 not at all; drop_self_pairs reaches
    the objective as set. Caught breaks: the step not handed to the weight; drop_self_pairs
    left out of the bootstrap objective (asymmetric moves refuse it: no pair is a self-pair)."""
    module = {"ab_simclr": ab_simclr_module, "ab_dino": ab_dino_module, "ab_clip": ab_clip_module}[name]
    cfg = tiny_config(*extra, f"method.name={name}", "train.batch_size=8", "train.steps=8",
                      "method.ab_weight=2.0", "method.ab_weight_warmup=0.5")
    torch.manual_seed(0)
    method = build_method(cfg)
    target = make_target(method) if method.uses_target else None
    sizes = method.batch_sizes()
    annotation = _blank(sizes["annotation"])
    if name == "ab_clip":
        annotation = ImageBatch(annotation.images, annotation.sizes, captions=["a red shirt"] * sizes["annotation"])
    calls = capture_bootstrap_objective(monkeypatch, module)
    base = {"ab_simclr": "loss/simclr", "ab_dino": "loss/dino", "ab_clip": "loss/clip"}[name]
    for step, weight in [(0, 0.0), (2, 1.0)]:
        out = method.training_step({"annotation": annotation, "bootstrap": _blank(sizes["bootstrap"])}, target, step)
        assert calls[-1]["drop_self_pairs"] is cfg.method.drop_self_pairs
        expected = out.metrics[base] + weight * out.metrics["loss/bootstrap"]
        torch.testing.assert_close(out.loss.detach(), expected, atol=1e-5, rtol=1e-5)
        assert out.metrics["loss/bootstrap"] > 0.01  # so that the weight shows
