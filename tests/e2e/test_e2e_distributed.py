"""torchrun with 2 CPU processes (gloo) trains like 1 process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_TEXT, needs_fmnist, needs_tuxpaint

pytestmark = [needs_fmnist, pytest.mark.slow]

WORKER = Path(__file__).with_name("distributed_worker.py")

# Views that do not depend on the random stream (full-image crops, no photometric change), so
# that 1 and 2 processes see identical pixels; no BatchNorm (per-process on CPU); float32, since
# bf16 rounds the two layouts' matrix products differently (0.25% apart in the gradients).
DETERMINISTIC = [
    "train.precision=fp32",
    "views.crop_scale=[1.0,1.0]",
    "views.crop_ratio=[1.0,1.0]",
    "views.bootstrap_scale=[1.0,1.0]",
    "views.flip_prob=0.0",
    "views.jitter_prob=0.0",
    "views.grayscale_prob=0.0",
    "model.projector_bn=false",
    "train.batch_size=16",
    "data.annotation.limit=256",
]

# CLIP family: captioned real images (Tux Paint), whole-image views, a tiny text tower.
CAPTIONED = TINY_TEXT + ["data.annotation.kind=tuxpaint", "data.annotation.num_workers=0", "views.clip_scale=[1.0,1.0]"]


# ABSimCLR whose annotations are the other images' target crops: each rank must leave out the
# columns of its own images in the gathered crops (rank-major), so a wrong rank offset shows.
OTHER_TARGETS = ["views.bootstrap_views=4", "views.bootstrap_source_views=1", "views.bootstrap_source_scale=[1.0,1.0]",
                 "method.target_network=online", "method.bootstrap_annotations=other_targets"]


def run_worker(tmp_path, method, nproc, extra=()):
    out = tmp_path / f"{method}_{nproc}.pt"
    extra = (CAPTIONED if method.endswith("clip") else []) + list(extra)
    overrides = TINY + DETERMINISTIC + extra + [f"train.out_dir={tmp_path / f'run{nproc}'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), str(out), method, *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


# The AB methods only: their loss adds the base method's own (NT-Xent, CLIP's), gathered across
# processes the same way, to the bootstrap loss, so the total and every gradient compared here
# cover SimCLR's and CLIP's distributed paths too (the plain runs took 43 of the suite's seconds).
@pytest.mark.parametrize("method, extra", [("ab_simclr", []), ("ab_simclr", OTHER_TARGETS),
                                           pytest.param("ab_clip", [], marks=needs_tuxpaint)],
                         ids=["ab_simclr", "ab_simclr_other_targets", "ab_clip"])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path, method, extra):
    one = run_worker(tmp_path, method, 1, extra)
    two = run_worker(tmp_path, method, 2, extra)
    assert two["world_size"] == 2
    assert torch.allclose(one["loss"], two["loss"], rtol=1e-4, atol=1e-5), (one["loss"], two["loss"])
    assert one["grads"].keys() == two["grads"].keys()
    worst = max(
        ((one["grads"][k] - two["grads"][k]).norm() / one["grads"][k].norm().clamp_min(1e-12)).item() for k in one["grads"]
    )
    assert worst < 1e-3, worst
