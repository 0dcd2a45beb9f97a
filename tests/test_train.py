"""End-to-end training on real Fashion-MNIST images: learning, resume, signals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from annoboot.data import build_source
from annoboot.eval.features import extract_features
from annoboot.eval.knn import knn_accuracy
from annoboot.methods import build_method
from annoboot.train import Trainer
from annoboot.train import trainer as trainer_module
from annoboot.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, load_latest_valid
from annoboot.train.ema import make_target
from annoboot.views import Normalize
from conftest import TINY, TINY_TEXT, needs_fmnist

pytestmark = needs_fmnist


def knn_of(encoder, cfg) -> float:
    normalize = Normalize(cfg.views.mean, cfg.views.std)
    train = extract_features(encoder, build_source(cfg.eval.train), cfg.views.img_size, normalize)
    test = extract_features(encoder, build_source(cfg.eval.test), cfg.views.img_size, normalize)
    return knn_accuracy(train.pooled, train.labels, test.pooled, test.labels, num_classes=10, k=20, temperature=0.07)


def logged_losses(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "ab_simclr"])
def test_short_run_learns(tiny_config, method):
    # ABSimCLR keeps the full base batch for its SimCLR loss here (the published split halves
    # it), so that 60 CPU steps move the encoder as far as SimCLR's do; 4 bootstrap images (16 crops).
    extra = ["method.annotation_fraction=1.0", "method.bootstrap_fraction=0.0625"] if method == "ab_simclr" else []
    cfg = tiny_config(f"method.name={method}", "train.steps=60", "train.log_every=10", "train.precision=auto", *extra)
    trainer = Trainer(cfg)
    knn_before = knn_of(trainer.method.encoder, cfg)
    last = trainer.fit()
    losses = logged_losses(trainer.run_dir, "loss/total")
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.3, losses
    knn_after = knn_of(trainer.method.encoder, cfg)
    assert knn_after > knn_before + 2.0, (knn_before, knn_after)
    if method == "ab_simclr":
        boot = logged_losses(trainer.run_dir, "loss/bootstrap")
        assert boot[-1] < boot[0], boot
        assert any(k.startswith("ab_agreement/iou_") for k in last)
        assert last["schedule/ema_momentum"] > 0.996


@pytest.mark.parametrize("method", ["simclr", "ab_simclr"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_config, tmp_path, method):
    overrides = [f"method.name={method}", "train.steps=6", "train.ckpt_every=3", "train.keep_checkpoints=5", "train.log_every=3"]
    straight = tiny_config(*overrides)
    Trainer(straight).fit()
    final = load_checkpoint(checkpoint_path(straight.train.out_dir, 6))

    # A second run that was "killed" after step 3: only the step-3 checkpoint survives.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint_path(straight.train.out_dir, 3), resumed_dir / "checkpoints")
    resumed = tiny_config(*overrides, f"train.out_dir={resumed_dir}")
    trainer = Trainer(resumed, resume=True)
    assert trainer.step == 3
    trainer.fit()
    again = load_checkpoint(checkpoint_path(resumed_dir, 6))

    for key, value in final["method"].items():
        assert torch.equal(value, again["method"][key]), key
    if method == "ab_simclr":
        for key, value in final["target"].items():
            assert torch.equal(value, again["target"][key]), key
    assert final["streams"] == again["streams"]


def test_resume_restores_rng_states_as_cpu_tensors_on_any_device(tiny_config, monkeypatch):
    # On a GPU, loading the checkpoint onto the device handed torch.set_rng_state a CUDA tensor
    # (TypeError). The meta device stands in for the GPU: the RNG states land wherever the
    # trainer asks the checkpoint to be loaded; the weights stay on the CPU, as a GPU model
    # would copy them across devices (meta weights cannot be copied at all).
    cfg = tiny_config("method.name=simclr", "train.steps=2", "train.ckpt_every=2", "train.log_every=2")
    Trainer(cfg).fit()
    saved = load_checkpoint(checkpoint_path(cfg.train.out_dir, 2))["rng"][0]["torch"]

    def load_rng_states_onto_map_location(run_dir, map_location="cpu"):
        path, state = load_latest_valid(run_dir)
        state["rng"] = [{name: s.to(map_location) for name, s in rng.items()} for rng in state["rng"]]
        return path, state

    monkeypatch.setattr(trainer_module, "load_latest_valid", load_rng_states_onto_map_location)
    trainer = Trainer(cfg)
    trainer.device = torch.device("meta")
    trainer._resume()
    assert trainer.step == 2
    assert torch.equal(torch.get_rng_state(), saved)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "annoboot.cli", "pretrain", *TINY, "method.name=simclr", "train.steps=100000",
           "train.ckpt_every=100000", f"train.out_dir={run_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # wait for the first logged interval (train.log_every=20 steps)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output  # 128 + SIGTERM: a scheduler sees the run did not finish
    assert "stopped by SIGTERM" in output and "--resume" in output, output
    saved = list_checkpoints(run_dir)
    assert len(saved) == 1, output
    step = load_checkpoint(saved[0])["step"]
    assert step >= 1

    # Resume with a reachable budget: it continues from the saved step, not from 0.
    done = subprocess.run(cmd[:-3] + [f"train.steps={step + 2}", "train.ckpt_every=1000", f"train.out_dir={run_dir}", "--resume"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run_dir)["step"] == step + 2


def _write_photos(folder, count, size=(40, 36)):
    from PIL import Image

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=g)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:03d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


@pytest.mark.parametrize(
    "variant",
    [
        ["method.gamma=0.5", "method.aggregate=mean"],
        ["method.gamma=0.5", "method.aggregate=max", "method.drop_self_pairs=true"],
        ["model.backbone=resnet18", "model.backbone_kwargs={}"],
        ["views.bootstrap_views=2", "method.bootstrap_fraction=0.25"],
    ],
    ids=["gamma_mean", "gamma_max_no_self", "cnn_backbone", "two_views"],
)
def test_ab_simclr_variants_train(tiny_config, variant):
    cfg = tiny_config("method.name=ab_simclr", "train.steps=3", "train.log_every=3", *variant)
    last = Trainer(cfg).fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values()), last
    assert last["loss/bootstrap"] > 0


def test_decoupled_bootstrap_batch_reads_its_own_source(tiny_config, tmp_path):
    # Base loss on Fashion-MNIST, bootstrapping on a folder of other images (one corrupt).
    folder = tmp_path / "scenes"
    _write_photos(folder, 24)
    cfg = tiny_config("method.name=ab_simclr", "train.steps=3", "train.log_every=3", "data.bootstrap.kind=image_folder",
                      f"data.bootstrap.root={folder}", "data.bootstrap.num_workers=0")
    trainer = Trainer(cfg)
    assert trainer.streams["bootstrap"].source.name != trainer.streams["annotation"].source.name
    last = trainer.fit()
    assert last["data/skipped_images"] >= 1  # the corrupt file was met, counted and skipped
    assert torch.isfinite(torch.tensor(last["loss/total"]))


def test_only_streams_that_decode_share_the_cores_as_workers(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    folder = tmp_path / "photos"
    _write_photos(folder, 24)
    bootstrap = f"data.bootstrap={{kind: image_folder, root: {folder}, cache_mb: 0}}"  # decoded from files
    trainer = Trainer(tiny_config("method.name=ab_simclr", bootstrap))
    assert trainer.streams["annotation"].num_workers == 0  # Fashion-MNIST, in memory
    assert trainer.streams["bootstrap"].num_workers == 7  # the one decoding stream: all cores but the loop's


@pytest.mark.parametrize("base,extra", [("simclr", []), ("dino", ["views.local_views=2", "model.dino_prototypes=64"]),
                                        ("clip", TINY_TEXT)])
def test_an_ab_step_renders_as_many_views_as_its_base_step(tiny_config, base, extra):
    views = {name: build_method(tiny_config(f"method.name={name}", *extra)).views_per_step() for name in (base, f"ab_{base}")}
    assert views[base] == views[f"ab_{base}"], views
    # The published 1/8 split is still there to be asked for (ABSimCLR: 25% fewer views).
    if base == "simclr":
        published = build_method(tiny_config("method.name=ab_simclr", "method.bootstrap_fraction=0.125"))
        assert published.views_per_step() == 0.75 * views["simclr"]


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
