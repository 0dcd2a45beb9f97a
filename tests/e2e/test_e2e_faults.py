"""SIGKILL at random moments: a run resumes to the same weights as one never killed."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import TINY, logged_steps, needs_fmnist

from annoboot.train.checkpoint import list_checkpoints, load_checkpoint

pytestmark = needs_fmnist


@pytest.mark.slow
def test_runs_killed_at_ten_random_moments_resume_to_the_same_weights(tmp_path):
    """SIGKILL at 10 seeded random moments of one run (in steps, in checkpoint writes, between
    them); each time it resumes from what survived. The final weights and the logged steps
    equal those of a run never killed."""
    steps = 60
    args = [*TINY, "method.name=ab_simclr", "train.batch_size=16", f"train.steps={steps}", "train.ckpt_every=1",
            "train.log_every=4", "data.annotation.limit=1000"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def command(run_dir, *extra):
        return [sys.executable, "-m", "annoboot.cli", "pretrain", *args, f"train.out_dir={run_dir}", *extra]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), env=env, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    rng = random.Random(0)
    kills, during_write, kill_steps = 0, 0, []
    while kills < 10:
        proc = subprocess.Popen(command(killed, "--resume"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = len(list_checkpoints(killed)) and list_checkpoints(killed)[-1].name
        deadline = time.time() + 120
        # Once this process has written a checkpoint it is training: kill it a random moment later.
        while proc.poll() is None and time.time() < deadline:
            latest = list_checkpoints(killed)
            if latest and latest[-1].name != start:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.2))  # a step and its checkpoint take about 0.1-0.5 s here
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()
            break  # finished before the kill: the run is done
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        left = list_checkpoints(killed)
        during_write += any((killed / "checkpoints").glob("*.tmp"))
        kill_steps.append(int(left[-1].name[5:13]) if left else 0)
    subprocess.run(command(killed, "--resume"), env=env, check=True, capture_output=True, timeout=300)
    print(f"\nSIGKILL {kills} times (newest checkpoint then: steps {kill_steps}; {during_write} during a "
          f"checkpoint write), resumed {kills + 1} times; final weights equal to the unkilled run's")

    assert kills >= 5, kills  # most kill moments fell inside the run
    final, again = load_checkpoint(straight), load_checkpoint(killed)
    assert again["step"] == steps
    for part in ("method", "target"):
        for key, value in final[part].items():
            assert torch.equal(value, again[part][key]), (part, key)
    assert final["streams"] == again["streams"]
    assert logged_steps(killed) == logged_steps(straight) == list(range(4, steps + 1, 4))
    assert len(set(kill_steps)) >= 5, kill_steps  # the kills fell at different points of the run
