"""DINO: teacher temperature, multi-crop views, frozen prototypes, exact resume, and compiled graphs
(the learning runs are in tests/e2e/test_e2e_dino.py)."""

import shutil

import pytest
import torch
from helpers import DINO_TINY, needs_fmnist, random_images

from annoboot.batch import ImageBatch
from annoboot.methods import build_method
from annoboot.methods.dino import teacher_temperature
from annoboot.objectives.dino import teacher_distribution
from annoboot.train import Trainer
from annoboot.train.checkpoint import checkpoint_path, load_checkpoint
from annoboot.train.ema import make_target


def test_teacher_temperature_warms_up_linearly_then_holds():
    values = [teacher_temperature(s, start=0.04, end=0.07, warmup_steps=10) for s in (0, 5, 10, 50)]
    assert values == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert teacher_temperature(0, 0.04, 0.07, warmup_steps=0) == 0.07


def test_dino_vit_encodes_global_and_local_crop_sizes(tiny_config):
    method = build_method(tiny_config("method.name=dino", *DINO_TINY))
    assert method.encoder.create_kwargs["dynamic_img_size"]
    views = method.multicrop_views(random_images(3))
    assert views[0].shape == (6, 3, 32, 32) and views[1].shape == (6, 3, 16, 16)
    for crops in views:
        assert method.encoder(crops).pooled.shape == (6, method.encoder.width)


@needs_fmnist
def test_teacher_gets_no_gradient_and_prototypes_stay_frozen_at_first(tiny_config):
    cfg = tiny_config("method.name=dino", "method.freeze_last_layer_steps=1", "train.batch_size=16", *DINO_TINY)
    trainer = Trainer(cfg)
    online, teacher = trainer.method, trainer.target_network
    prototypes = online.head.last_layer.parametrizations.weight.original1
    before = prototypes.detach().clone()
    trainer.train_step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert prototypes.grad is None and torch.equal(prototypes, before)  # frozen: no gradient, no decay
    assert all(p.grad is not None for p in online.encoder.parameters())
    assert online.center.abs().sum() > 0 and torch.equal(teacher.center, online.center)  # buffer copied
    trainer.train_step()
    assert prototypes.grad is not None and not torch.equal(prototypes, before)


@needs_fmnist
def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_config, tmp_path):
    # Step 0 has frozen prototypes, step 1 not: the resumed step must know which.
    overrides = ["method.name=dino", "train.steps=2", "train.ckpt_every=1", "train.keep_checkpoints=5",
                 "train.log_every=1", "train.batch_size=32", "method.freeze_last_layer_steps=1", *DINO_TINY]
    straight = tiny_config(*overrides)
    Trainer(straight).fit()
    final = load_checkpoint(checkpoint_path(straight.train.out_dir, 2))

    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint_path(straight.train.out_dir, 1), resumed_dir / "checkpoints")
    trainer = Trainer(tiny_config(*overrides, f"train.out_dir={resumed_dir}"), resume=True)
    assert trainer.step == 1
    trainer.fit()
    again = load_checkpoint(checkpoint_path(resumed_dir, 2))

    assert final["method"]["center"].abs().sum() > 0
    for part in ("method", "target"):
        for key, value in final[part].items():
            assert torch.equal(value, again[part][key]), (part, key)


class _GraphRecorder:
    """A torch.compile backend that runs graphs eagerly and records, per graph, whether dynamo
    traced it with symbolic (dynamic) shapes."""

    def __init__(self):
        self.dynamic: list = []

    def __call__(self, graph, example_inputs):
        def symbolic(value):
            if isinstance(value, torch.SymInt):
                return True
            return isinstance(value, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in value.shape)

        self.dynamic.append(any(symbolic(value) for value in example_inputs))
        return graph.forward


@pytest.mark.slow  # torch.compile
@needs_fmnist
def test_compiled_dino_specialises_each_crop_size_once_and_probes_run_eager(tiny_config, monkeypatch):
    # DINO's two crop sizes: one static graph each, compiled once. Probing the compiled encoder
    # afterwards (new batch sizes) used to compile a dynamic-shape graph on top (measured before
    # the fix: a 4th graph, dynamic); it must run eagerly and compile nothing.
    from annoboot.commands import evaluate_method

    recorder = _GraphRecorder()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, **{**kwargs, "backend": recorder}))
    torch._dynamo.reset()
    cfg = tiny_config("method.name=dino", "train.compile=true", "train.steps=3", "train.log_every=3",
                      "train.batch_size=16", "eval.train.limit=300", "eval.test.limit=100", "eval.batch_size=128",
                      "eval.probes=[knn]", *DINO_TINY)
    trainer = Trainer(cfg)
    trainer.fit()
    # Student: one graph per crop size; teacher: the global crops only.
    assert recorder.dynamic == [False, False, False], recorder.dynamic
    results = evaluate_method(trainer.method, cfg, trainer.device)
    assert results["knn"] > 0
    assert len(recorder.dynamic) == 3, ("probing compiled new graphs", recorder.dynamic)
    torch._dynamo.reset()


def _constant_images(values, side=28):
    """One gray image per value, every pixel that value: every crop of image b shows the same."""
    images = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, side, side).contiguous()
    return ImageBatch(images, torch.full((len(values), 2), side))


def _logits_of(method, value, size):
    """The head's logits for one image of ``value`` at crop ``size``, rendered alone (a batch
    of one cannot be reordered): what each view of that image must be given."""
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    with torch.no_grad():
        return method.head(method.encoder(method._augmented_views(_constant_images([value]), boxes, size)).pooled)[0]


@pytest.mark.parametrize("name", ["dino", "ab_dino"])
def test_the_dino_loss_pairs_each_students_view_with_the_teachers_views_of_its_own_image(tiny_config, monkeypatch, name):
    """Views are rendered view-major and the loss reads them as (views, images, K): student view
    v of image b must meet the teacher's two global views of image b. Each image here is one
    constant grey, so every view of image b gives that image's logits (colour jitter off), known
    from a batch of one. Caught breaks: image-major rendering of the crops, and the loss reading
    the rows as (images, views)."""
    import annoboot.methods.dino as dino_module

    cfg = tiny_config(f"method.name={name}", *DINO_TINY, "train.batch_size=8", "views.jitter_prob=0",
                      "views.grayscale_prob=0", "method.bootstrap_fraction=0.25")
    torch.manual_seed(0)
    method = build_method(cfg)
    teacher = make_target(method)
    seen = {}
    real = dino_module.dino_loss

    def spy(student_logits, teacher_probs, student_temp):
        seen["student"], seen["teacher"] = student_logits.detach(), teacher_probs
        return real(student_logits, teacher_probs, student_temp)

    monkeypatch.setattr(dino_module, "dino_loss", spy)
    sizes = method.batch_sizes()
    values = torch.linspace(10, 240, sizes["annotation"]).round().int().tolist()
    batches = {"annotation": _constant_images(values)}
    if "bootstrap" in sizes:
        batches["bootstrap"] = _constant_images(torch.linspace(35, 215, sizes["bootstrap"]).round().int().tolist())
    method.training_step(batches, teacher, 0)

    v = cfg.views
    student, teacher_probs = seen["student"], seen["teacher"]
    assert student.shape[:2] == (2 + v.local_views, len(values))
    for b, value in enumerate(values):
        global_logits, local_logits = _logits_of(method, value, v.img_size), _logits_of(method, value, v.local_size)
        for view in range(student.shape[0]):
            expected = global_logits if view < 2 else local_logits
            torch.testing.assert_close(student[view, b], expected, atol=2e-4, rtol=1e-4)
        expected_probs = teacher_distribution(global_logits, torch.zeros_like(global_logits), method.current_teacher_temp(0))
        for view in range(2):
            torch.testing.assert_close(teacher_probs[view, b], expected_probs, atol=2e-4, rtol=1e-4)
    # The images differ enough that a mix-up would show.
    assert (_logits_of(method, values[0], v.img_size) - _logits_of(method, values[1], v.img_size)).abs().max() > 1e-2
