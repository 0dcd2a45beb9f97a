"""One live owner per run folder (train/run_lock.py), with real processes: while one trains, a
second pretrain (fresh, --resume, --overwrite) stops at once naming it; eval reads the live
run's newest checkpoint and says so; a SIGKILLed owner leaves no stale lock."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY, needs_fmnist

from annoboot.cli import main
from annoboot.train.run_lock import LOCK_FILE, hold_run_lock, live_holder

RUN = TINY + ["method.name=simclr", "train.batch_size=16", "data.annotation.limit=500", "train.log_every=1",
              "train.ckpt_every=2", "data.annotation.num_workers=0"]


def start_owner(run_dir):
    """`annoboot pretrain` of a run far longer than the test, in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    owner = subprocess.Popen([sys.executable, "-m", "annoboot.cli", "pretrain", *RUN, "train.steps=100000",
                              f"train.out_dir={run_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        holder = live_holder(run_dir) if (run_dir / LOCK_FILE).exists() else None
        if holder and holder.get("pid") == owner.pid and list((run_dir / "checkpoints").glob("ckpt-*.pt")):
            return owner
        if owner.poll() is not None:
            pytest.fail(f"the owner exited early: {owner.stderr.read()}")
        time.sleep(0.5)
    owner.kill()
    pytest.fail("the owner never wrote a checkpoint")


@pytest.mark.slow  # a second process trains throughout
@needs_fmnist
def test_a_second_process_on_a_live_run_stops_at_once_naming_the_owner(tmp_path, capsys, caplog):
    run_dir = tmp_path / "run"
    owner = start_owner(run_dir)
    try:
        for flags in ([], ["--resume"], ["--overwrite"]):
            started = time.monotonic()
            assert main(["pretrain", *RUN, "train.steps=3", f"train.out_dir={run_dir}", *flags]) == 2
            err = capsys.readouterr().err
            assert f"pid {owner.pid}" in err and "is in use" in err and len(err.strip().splitlines()) == 1, (flags, err)
            assert time.monotonic() - started < 10  # before any model is built
        assert owner.poll() is None  # the owner trains on, its files untouched
        assert not list(tmp_path.glob("run.replaced-*"))

        # A reader of the live run takes its newest complete checkpoint and says so.
        assert main(["eval", str(run_dir), "--out", str(tmp_path / "eval.json"), "eval.probes=[knn]",
                     "eval.train.limit=200", "eval.test.limit=100"]) == 0
        assert f"is still training (pid {owner.pid}" in caplog.text
        assert "knn" in json.loads((tmp_path / "eval.json").read_text())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=60)

    # The kernel dropped the lock with the process: the run resumes at once, no stale lock.
    assert live_holder(run_dir) is None
    step = max(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert main(["pretrain", *RUN, f"train.steps={step + 2}", f"train.out_dir={run_dir}", "--resume"]) == 0
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()  # it says who held it last


# Another process holding a folder's lock the way run_lock.py does (flock, then who holds it),
# without importing annoboot: a fresh interpreter with torch would cost seconds.
HOLDER = """
import fcntl, json, os, sys
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.truncate(0)
handle.write(json.dumps({"pid": os.getpid(), "host": "elsewhere"}))
handle.flush()
print("held", flush=True)
sys.stdin.read()
"""

TRY_LOCK = "import sys, fcntl; fcntl.flock(open(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)"


def test_the_lock_is_reentrant_in_its_process_and_exclusive_across_processes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with hold_run_lock(run_dir):
        with hold_run_lock(run_dir):  # pretrain holds it, then the trainer again
            pass
        assert live_holder(run_dir) is None  # this process's own lock is not "another"
        other = subprocess.run([sys.executable, "-c", TRY_LOCK, str(run_dir / LOCK_FILE)], capture_output=True,
                               text=True, timeout=60)
        assert other.returncode != 0 and "BlockingIOError" in other.stderr, other.stderr
    # Released on leaving the block: another process may take it.
    other = subprocess.run([sys.executable, "-c", TRY_LOCK, str(run_dir / LOCK_FILE)], capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 0, other.stderr

    # Held by another process: pretrain stops before building anything, naming it.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir / LOCK_FILE)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert live_holder(run_dir) == {"pid": holder.pid, "host": "elsewhere"}
        assert main(["pretrain", "train.steps=1", f"train.out_dir={run_dir}"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}, on elsewhere" in err and "is in use" in err, err
        assert not (run_dir / "config.yaml").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert live_holder(run_dir) is None  # gone with its process
