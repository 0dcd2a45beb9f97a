"""docs/gpu.md's smoke script, in its CPU mode: every check runs and passes (compile left out:
inductor's 30 s compile would double the test; benchmarks/throughput.py --compile runs it).
The methods check trains the two AB methods only: each AB step runs its base method's loss and
the same training loop, and every recipe loads in tests/test_config.py (the six methods took
a third of this test's time)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_fmnist

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_smoke.py"


@needs_fmnist
@pytest.mark.slow
def test_gpu_smoke_script_passes_every_check_in_cpu_mode(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--only", "methods", "resume", "ddp", "decode", "--methods", "ab_simclr", "ab_dino",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    expected = {
        "methods/ab_simclr",
        "methods/ab_dino",
        "resume",
        "ddp/gradients",
        "ddp/pretrain+resume",
        "decode",
    }
    assert expected <= set(checks), sorted(checks)
    assert {name for name in checks if name.startswith("methods/")} == {"methods/ab_simclr", "methods/ab_dino"}  # --methods
    assert all(c["passed"] is not False for c in checks.values())
    assert checks["resume"]["figures"]["difference"] == 0
    assert checks["ddp/gradients"]["figures"]["worst_grad_rel_diff"] < 1e-3
