"""The trainer on real Fashion-MNIST images: exact resume, RNG states, decoupled bootstrap
sources, decode workers (the learning runs and SIGTERM are in tests/e2e/test_e2e_train.py)."""

import os
import shutil

import pytest
import torch
from helpers import needs_fmnist

from annoboot.train import Trainer
from annoboot.train import trainer as trainer_module
from annoboot.train.checkpoint import checkpoint_path, load_checkpoint, load_latest_valid

pytestmark = needs_fmnist


# ab_simclr_levers: the issue-30 options whose state lives in the run (an annotation queue
# filled over the steps, asymmetric moves, the online target).
LEVERS = ["method.target_network=online", "method.annotation_queue=40", "views.bootstrap_source_views=1"]


@pytest.mark.parametrize("method, extra", [pytest.param("simclr", [], marks=pytest.mark.slow),  # within ab_simclr's
                                            ("ab_simclr", []), ("ab_simclr", LEVERS)],
                         ids=["simclr", "ab_simclr", "ab_simclr_levers"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_config, tmp_path, method, extra):
    overrides = [f"method.name={method}", "train.steps=6", "train.ckpt_every=3", "train.keep_checkpoints=5", "train.log_every=3",
                 *extra]
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
    if method == "ab_simclr" and not extra:
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


def _write_photos(folder, count, size=(40, 36)):
    from PIL import Image

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=g)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:03d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


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


def test_moves_past_the_action_range_on_wide_images_stop_the_run_at_its_first_log(tiny_config, tmp_path):
    """Bootstrap images of 10:1: their crops are narrow along the long side, so moves reach past
    method.action_range = 6 (clipped into the edge bins; 4 images x 4 crops a step reach past 6
    with probability 0.7). The run refuses at its first log step, naming the option and the
    range needed; with R = 17 (above the bound 1 / sqrt(0.05 / (4/3 x 10)) = 16.3) it trains.
    Caught break: the trainer's check removed (the run goes on with clipped moves)."""
    from annoboot.errors import AnnobootError

    folder = tmp_path / "wide"
    _write_photos(folder, 24, size=(160, 16))
    source = f"{{kind: image_folder, root: {folder}, num_workers: 0}}"
    wide = [f"data.annotation={source}", f"data.bootstrap={source}", "train.batch_size=16",
            "train.steps=2", "train.log_every=2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: a second thread only spins on a busy machine
    try:
        with pytest.raises(AnnobootError, match=r"'method\.action_range' is 6, but moves .* set method\.action_range=\d"):
            Trainer(tiny_config("method.name=ab_simclr", *wide)).fit()
        last = Trainer(tiny_config("method.name=ab_simclr", *wide, "method.action_range=17"), overwrite=True).fit()
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(torch.tensor(last["loss/total"]))
