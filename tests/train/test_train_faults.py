"""Faults a run must survive: run folders with another run in them, divergence, a full disk,
damaged checkpoints, signals, and bad settings (SIGKILL at random moments: tests/e2e/test_e2e_faults.py)."""

import os
import signal
import zipfile

import pytest
import torch
from helpers import TINY, logged_steps, needs_fmnist

from annoboot import cli
from annoboot.errors import AnnobootError
from annoboot.models.encoder import build_encoder
from annoboot.recipe import load_config
from annoboot.train import Trainer
from annoboot.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from annoboot.train.trainer import RunInterrupted

pytestmark = needs_fmnist


def names(run_dir):
    return [p.name for p in list_checkpoints(run_dir)]


def flip_byte_in_a_tensor(path):
    """Overwrite one byte inside the first tensor record of a checkpoint archive."""
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64)
    with open(path, "r+b") as f:
        f.seek(record.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(record.header_offset + 30 + name_len + extra_len + record.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


# ------------------------------------------------------------------ run folders
def test_a_fresh_run_refuses_a_folder_that_holds_another_run(tiny_config, tmp_path):
    cfg = tiny_config("method.name=simclr", "train.steps=3", "train.ckpt_every=1", "train.log_every=1")
    Trainer(cfg).fit()
    run_dir = tmp_path / "run"
    before = names(run_dir)
    assert before == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    config_before = (run_dir / "config.yaml").read_text()

    again = tiny_config("method.name=simclr", "train.steps=1", "train.ckpt_every=1", "train.log_every=1")
    with pytest.raises(AnnobootError, match=r"already holds a run .*--resume.*another train\.out_dir.*--overwrite"):
        Trainer(again).fit()
    assert names(run_dir) == before and (run_dir / "config.yaml").read_text() == config_before

    # --overwrite moves the old run aside, whole, and starts afresh in the folder.
    Trainer(again, overwrite=True).fit()
    (aside,) = tmp_path.glob("run.replaced-*")
    assert names(aside) == before and (aside / "config.yaml").read_text() == config_before
    assert names(run_dir) == ["ckpt-00000001.pt"] and logged_steps(run_dir) == [1]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    # The case: a folder with ckpt-8 and ckpt-12 of an old run, a new run saving step 4.
    for step in (8, 12):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    path = save_checkpoint(tmp_path, 4, {"step": 4}, keep=2)
    assert path.exists()
    assert names(tmp_path) == ["ckpt-00000004.pt", "ckpt-00000008.pt", "ckpt-00000012.pt"]
    save_checkpoint(tmp_path, 5, {"step": 5}, keep=1)  # older ones up to step 5 go, later ones stay
    assert names(tmp_path) == ["ckpt-00000005.pt", "ckpt-00000008.pt", "ckpt-00000012.pt"]


def test_cli_refuses_resume_together_with_overwrite(capsys):
    assert cli.main(["pretrain", "--resume", "--overwrite", *TINY]) == 2
    assert "pass one" in capsys.readouterr().err


# ------------------------------------------------------------------ divergence
def test_divergence_is_named_at_its_step_and_only_finite_checkpoints_remain(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("method.name=simclr", "train.steps=12", "train.lr=1e6", "train.warmup_steps=0",
                      "train.log_every=5", "train.ckpt_every=1", "train.grad_clip=1.0")
    trainer = Trainer(cfg)
    losses = []
    compute = trainer.compute_gradients

    def recording():
        metrics = compute()
        losses.append(float(metrics["loss/total"]))
        return metrics

    monkeypatch.setattr(trainer, "compute_gradients", recording)
    with pytest.raises(AnnobootError) as caught:
        trainer.fit()
    first_bad = next(i for i, loss in enumerate(losses, 1) if not torch.isfinite(torch.tensor(loss)))
    message = str(caught.value)
    assert f"at step {first_bad}" in message or f"by step {first_bad}" in message, (losses, message)
    assert "train.grad_clip=1.0 is set" in message and "lower train.lr" in message
    # Every checkpoint left is finite and from before the divergence; the last good one is named.
    saved = list_checkpoints(tmp_path / "run")
    assert saved, message
    for path in saved:
        state = load_checkpoint(path)  # verifies finiteness
        assert state["step"] < first_bad
    assert saved[-1].name in message


# ------------------------------------------------------------------ disk full
def test_a_full_disk_during_a_checkpoint_names_the_folder_and_keeps_the_previous(tiny_config, tmp_path):
    cfg = tiny_config("method.name=simclr", "train.steps=4", "train.ckpt_every=1", "train.log_every=1")
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    # The temporary file of step 2 is /dev/full: every write to it fails with ENOSPC, as a full disk.
    os.symlink("/dev/full", folder / "ckpt-00000002.pt.tmp")
    with pytest.raises(AnnobootError) as caught:
        Trainer(cfg, resume=True).fit()
    message = str(caught.value)
    assert str(folder) in message and "MiB free" in message and "ckpt-00000001.pt is kept" in message, message
    assert not (folder / "ckpt-00000002.pt.tmp").exists()  # the partial file is removed
    assert names(tmp_path / "run") == ["ckpt-00000001.pt"]
    assert load_checkpoint(tmp_path / "run")["step"] == 1
    # Space again: the run resumes from step 1 and finishes.
    Trainer(cfg, resume=True).fit()
    assert load_checkpoint(tmp_path / "run")["step"] == 4


# ------------------------------------------------------------------ damaged checkpoints
def test_a_changed_byte_is_found_and_resume_falls_back_to_the_newest_valid(tiny_config, tmp_path, caplog):
    cfg = tiny_config("method.name=simclr", "train.steps=3", "train.ckpt_every=1", "train.log_every=1", "train.keep_checkpoints=3")
    Trainer(cfg).fit()
    run_dir = tmp_path / "run"
    flip_byte_in_a_tensor(checkpoint_path(run_dir, 3))
    with pytest.raises(AnnobootError, match=r"ckpt-00000003\.pt is damaged: record .* fails its CRC-32"):
        load_checkpoint(checkpoint_path(run_dir, 3))
    # A truncated file, as a crash during a copy leaves it.
    data = checkpoint_path(run_dir, 2).read_bytes()
    checkpoint_path(run_dir, 2).write_bytes(data[: len(data) // 3])

    trainer = Trainer(cfg, resume=True)
    assert trainer.step == 1
    log = caplog.text
    assert "ckpt-00000003.pt is damaged" in log and "ckpt-00000002.pt is damaged" in log
    assert "ckpt-00000001.pt, the newest valid checkpoint (2 newer skipped)" in log
    trainer.fit()
    assert load_checkpoint(run_dir)["step"] == 3


def test_nonfinite_weights_in_a_checkpoint_are_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"step": 1, "method": {"w": torch.tensor([1.0, float("nan")])}})
    with pytest.raises(AnnobootError, match=r"non-finite weights \(1 tensors, e\.g\. w\)"):
        load_checkpoint(path)


# ------------------------------------------------------------------ signals
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_then_exits_with_the_shells_code(tmp_path, monkeypatch, signum, code, capsys):
    run_dir = tmp_path / "run"
    argv = ["pretrain", *TINY, "method.name=simclr", "train.steps=50", "train.ckpt_every=50", f"train.out_dir={run_dir}"]
    step = Trainer.train_step

    def signalled_at_step_2(self):
        out = step(self)
        if self.step == 2:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(Trainer, "train_step", signalled_at_step_2)
    assert cli.main(argv) == code
    assert f"stopped by {signal.Signals(signum).name} at step 2" in capsys.readouterr().err
    assert names(run_dir) == ["ckpt-00000002.pt"]
    assert RunInterrupted(signum, 2, run_dir).exit_code == code


def test_metrics_after_a_resume_hold_each_step_once(tiny_config, tmp_path):
    cfg = tiny_config("method.name=simclr", "train.steps=6", "train.ckpt_every=3", "train.log_every=1", "train.keep_checkpoints=3")
    Trainer(cfg).fit()
    run_dir = tmp_path / "run"
    checkpoint_path(run_dir, 6).unlink()  # killed after logging steps 4-6, before their checkpoint
    Trainer(cfg, resume=True).fit()
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ bad settings and unknown backbones
@pytest.mark.parametrize("key", ["train.ckpt_every", "train.log_every"])
def test_zero_intervals_are_refused_by_name(key):
    with pytest.raises(AnnobootError, match=rf"'{key}' is 0; out of range: it must be >= 1"):
        load_config(None, TINY + [f"{key}=0"])


def test_an_unknown_backbone_names_close_matches_or_says_where_to_look():
    with pytest.raises(AnnobootError, match=r"similar names: vit_tiny_patch16_224"):
        build_encoder("vit_tiny_patch16_22", 32, {})
    with pytest.raises(AnnobootError) as caught:
        build_encoder("qqqqzzzz", 32, {})
    assert "similar names" not in str(caught.value) and "timm.list_models" in str(caught.value)
