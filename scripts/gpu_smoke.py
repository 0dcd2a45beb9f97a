"""The first thing to run on a GPU: every CUDA-only path of annoboot, once, with figures.

No GPU has ever run annoboot's CUDA paths (docs/gpu.md lists them and how each is tested on the
CPU). This script exercises each on the machine it runs on and prints one table: a row per check,
PASS or FAIL, the figures measured and what they should be. Paste the table into an issue.

    python scripts/gpu_smoke.py                        # a GPU machine: about 15 minutes
    python scripts/gpu_smoke.py --only methods resume  # some checks
    python scripts/gpu_smoke.py --only methods --methods ab_clip  # one method
    python scripts/gpu_smoke.py --cpu                  # the same checks on the CPU, tiny: ~1.5 min

Checks:
- methods: each method trains on its recipe (configs/, GPU size; --cpu: a tiny model) for
  --seconds (GPU) or a few steps (--cpu); loss finite and lower at the end than at the start,
  views/s, peak GPU memory, and a kNN probe of the encoder against the same encoder untrained.
- compile: ABSimCLR with train.compile=true: compile time and views/s against eager.
- resume: the step after a checkpoint equals the step an uninterrupted run takes (RNG states,
  data position, optimizer and EMA restored onto the device).
- ddp: 2 processes (NCCL; --cpu: gloo) compute the loss and gradients 1 process computes on the
  same global batch, with a CNN whose BatchNorm becomes SyncBatchNorm on CUDA; then a short
  torchrun pre-train that checkpoints and resumes. Needs 2 GPUs (skipped with fewer).
- decode: JPEG shards decoded on the device (nvjpeg) match the CPU decoder; images/s both ways;
  a short ABSimCLR run reading them with decode_on=device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from annoboot import distributed  # noqa: E402
from annoboot.commands import evaluate_encoder  # noqa: E402
from annoboot.config import Config  # noqa: E402
from annoboot.data import ShardStream  # noqa: E402
from annoboot.data.fashion_mnist import FashionMNISTSource  # noqa: E402
from annoboot.data.tools import folder_to_shards  # noqa: E402
from annoboot.recipe import load_config  # noqa: E402
from annoboot.train import Trainer  # noqa: E402

RECIPES = {
    "simclr": "configs/fmnist_simclr.yaml",
    "ab_simclr": "configs/fmnist_ab_simclr.yaml",
    "dino": "configs/fmnist_dino.yaml",
    "ab_dino": "configs/fmnist_ab_dino.yaml",
    "clip": "configs/openclipart_clip.yaml",
    "ab_clip": "configs/openclipart_ab_clip.yaml",
}

# --cpu: the recipes shrunk to a few seconds a method (the figures then show the paths run, not
# that they learn much).
TINY_CPU = [
    "train.device=cpu",
    "model.backbone_kwargs={patch_size: 8, depth: 2}",
    "model.decoder_depth=1",
    "model.proj_hidden_dim=256",
    "model.dino_hidden_dim=256",
    "model.dino_bottleneck_dim=64",
    "model.dino_prototypes=256",
    "views.local_views=2",
    "model.text_width=64",
    "model.text_depth=2",
    "model.text_heads=2",
    "model.embed_dim=64",
    "model.context_length=24",
    "train.batch_size=64",
    "train.warmup_steps=2",
    "data.annotation.limit=2000",
    "data.annotation.num_workers=0",
]
# The probe: kNN on part of the recipe's evaluation split.
PROBE = ["eval.probes=[knn]", "eval.train.limit=10000", "eval.test.limit=2000", "eval.at_end=false"]
PROBE_CPU = ["eval.probes=[knn]", "eval.train.limit=1000", "eval.test.limit=250", "eval.at_end=false"]

# Views that do not depend on the random stream, so 1 and 2 processes see identical pixels.
DETERMINISTIC = [
    "train.precision=fp32",
    "views.crop_scale=[1.0,1.0]",
    "views.crop_ratio=[1.0,1.0]",
    "views.bootstrap_scale=[1.0,1.0]",
    "views.flip_prob=0.0",
    "views.jitter_prob=0.0",
    "views.grayscale_prob=0.0",
    "train.batch_size=32",
    "data.annotation.limit=512",
]


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    figures: Dict[str, object] = field(default_factory=dict)
    expected: str = ""


class Smoke:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.cpu, self.seconds, self.work = args.cpu, args.seconds, work
        self.method_names = args.methods
        self.device = "cpu" if args.cpu else "cuda"
        self.gpus = 0 if args.cpu else torch.cuda.device_count()

    # -- helpers ----------------------------------------------------------------------------

    def config(self, method: str, *overrides: str, name: str = "") -> Config:
        size = TINY_CPU if self.cpu else [f"train.device={self.device}"]
        probe = PROBE_CPU if self.cpu else PROBE
        out = self.work / (name or method)
        return load_config(
            str(ROOT / RECIPES[method]), [*size, *probe, "train.progress=false", f"train.out_dir={out}", *overrides]
        )

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def train_for(self, trainer: Trainer, max_steps: int, seconds: float) -> Dict[str, float]:
        """Steps until ``max_steps`` or ``seconds``: losses of the first and last 5, views/s after 3 warm-up steps."""
        losses: List[float] = []
        started, warm_at, warm_step = time.perf_counter(), None, 0
        while trainer.step < max_steps and time.perf_counter() - started < seconds:
            losses.append(float(trainer.train_step()["loss/total"]))  # a host sync per step: fine here
            if len(losses) == 3:
                self.synchronize()
                warm_at, warm_step = time.perf_counter(), trainer.step
        self.synchronize()
        elapsed = time.perf_counter() - (warm_at or started)
        views = (trainer.step - warm_step) * trainer.method.views_per_step()
        k = min(5, max(1, len(losses) // 2))
        return {
            "steps": trainer.step,
            "loss_start": sum(losses[:k]) / k,
            "loss_end": sum(losses[-k:]) / k,
            "finite": all(math.isfinite(x) for x in losses),
            "views_per_s": round(views / max(elapsed, 1e-9)),
        }

    # -- checks -----------------------------------------------------------------------------

    def methods(self) -> List[Check]:
        checks = []
        for method in self.method_names:
            if method.endswith("clip") and not Path("/usr/share/openclipart").is_dir():
                checks.append(Check(f"methods/{method}", None, {"why": "Open Clip Art not installed"}))
                continue
            # Open Clip Art decodes slowly on 2 cores: fewer images for the tiny CPU run.
            small = ["data.annotation.limit=256", "eval.train.limit=300", "eval.test.limit=100"]
            cfg = self.config(method, *(small if self.cpu and method.endswith("clip") else []))
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            trainer = Trainer(cfg)
            untrained = evaluate_encoder(trainer.method.encoder, cfg, trainer.device)["knn"]
            figures: Dict[str, object] = self.train_for(trainer, 12 if self.cpu else cfg.train.steps, self.seconds)
            figures["knn_untrained"] = round(untrained, 2)
            figures["knn"] = round(evaluate_encoder(trainer.method.encoder, cfg, trainer.device)["knn"], 2)
            if self.device == "cuda":
                figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            figures["seconds"] = round(time.perf_counter() - started, 1)
            passed = bool(figures["finite"]) and figures["loss_end"] < figures["loss_start"]
            if not self.cpu:  # 12 CPU steps of a tiny model need not learn; minutes on a GPU must
                passed = passed and figures["knn"] > figures["knn_untrained"]
            expected = "finite loss, lower at the end" + ("" if self.cpu else "; knn above knn_untrained")
            checks.append(Check(f"methods/{method}", passed, figures, expected))
        return checks

    def compile(self) -> List[Check]:
        steps = 12 if self.cpu else 200
        figures: Dict[str, object] = {}
        for mode in ("eager", "compiled"):
            cfg = self.config("ab_simclr", f"train.compile={mode == 'compiled'}", name=f"compile_{mode}")
            started = time.perf_counter()
            trainer = Trainer(cfg)
            trainer.train_step()  # the first step compiles
            self.synchronize()
            figures[f"{mode}_first_step_s"] = round(time.perf_counter() - started, 1)
            run = self.train_for(trainer, steps, float("inf"))
            figures[f"{mode}_views_per_s"], figures[f"{mode}_finite"] = run["views_per_s"], run["finite"]
        passed = bool(figures["eager_finite"] and figures["compiled_finite"])
        return [Check("compile", passed, figures, "both finite; compiled views/s at least eager's after compiling")]

    def resume(self) -> List[Check]:
        overrides = ["train.steps=12", "train.ckpt_every=6", "train.log_every=3", "train.keep_checkpoints=5"]
        straight = Trainer(self.config("ab_simclr", *overrides, name="resume"))
        self.train_for(straight, 6, float("inf"))
        straight.save()
        next_loss = float(straight.train_step()["loss/total"])
        resumed = Trainer(self.config("ab_simclr", *overrides, name="resume"), resume=True)
        resumed_loss = float(resumed.train_step()["loss/total"])
        difference = abs(next_loss - resumed_loss)
        # bf16 on the GPU may pick different kernels after a restart; the CPU run is exact.
        tolerance = 0.0 if self.cpu else 1e-3 * abs(next_loss)
        figures = {
            "step": resumed.step,
            "loss_uninterrupted": next_loss,
            "loss_resumed": resumed_loss,
            "difference": difference,
        }
        return [
            Check("resume", resumed.step == 7 and difference <= tolerance, figures, f"difference <= {tolerance:.2g}")
        ]

    def ddp(self) -> List[Check]:
        if not self.cpu and self.gpus < 2:
            return [Check("ddp", None, {"why": f"{self.gpus} GPU(s); DDP needs 2"})]
        # A CNN: on CUDA its BatchNorm becomes SyncBatchNorm, so 2 processes normalise the global
        # batch as 1 does. The CPU (gloo) has no SyncBatchNorm: a ViT without BatchNorm there.
        model = ["model.projector_bn=false"] if self.cpu else ["model.backbone=resnet18", "model.backbone_kwargs={}"]
        overrides = [*DETERMINISTIC, *model, "data.annotation.num_workers=0"]
        results = {n: self.torchrun(n, ["--ddp-worker", str(self.work / f"ddp{n}.pt"), *overrides]) for n in (1, 2)}
        one, two = (torch.load(self.work / f"ddp{n}.pt") for n in (1, 2))
        worst = max(
            ((one["grads"][k] - two["grads"][k]).norm() / one["grads"][k].norm().clamp_min(1e-12)).item()
            for k in one["grads"]
        )
        # cuDNN convolutions use TF32 by default: the two layouts round differently.
        tolerance = 1e-3 if self.cpu else 2e-2
        figures = {
            "loss_1": float(one["loss"]),
            "loss_2": float(two["loss"]),
            "worst_grad_rel_diff": worst,
            "world_size": two["world_size"],
        }
        same = abs(figures["loss_1"] - figures["loss_2"]) <= 1e-4 * abs(figures["loss_1"]) + 1e-5 and worst < tolerance
        checks = [
            Check(
                "ddp/gradients",
                all(r == 0 for r in results.values()) and same,
                figures,
                f"losses equal, worst < {tolerance:g}",
            )
        ]

        run = self.work / "ddp_run"
        common = [
            "pretrain",
            "--config",
            str(ROOT / RECIPES["ab_simclr"]),
            *(TINY_CPU if self.cpu else []),
            f"train.device={self.device}",
            "train.progress=false",
            "eval.at_end=false",
            f"train.out_dir={run}",
            "train.ckpt_every=10",
            "train.log_every=5",
        ]
        first = self.torchrun(2, ["--cli", *common, "train.steps=10"])
        second = self.torchrun(2, ["--cli", *common, "train.steps=20", "--resume"])
        lines = (
            [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            if (run / "metrics.jsonl").exists()
            else []
        )
        steps = [line.get("step") for line in lines]
        figures = {"exit_codes": [first, second], "logged_steps": steps}
        passed = (
            first == 0 and second == 0 and steps[-1:] == [20] and (run / "checkpoints" / "ckpt-00000020.pt").exists()
        )
        checks.append(
            Check("ddp/pretrain+resume", passed, figures, "exit 0 twice; steps logged up to 20; ckpt-00000020.pt")
        )
        return checks

    def torchrun(self, nproc: int, args: List[str]) -> int:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port: two runs at once (or another job's rendezvous) never clash
            "--nproc_per_node",
            str(nproc),
            str(Path(__file__).resolve()),
            *args,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
        return done.returncode

    def decode(self) -> List[Check]:
        folder = self.work / "jpegs"
        folder.mkdir(exist_ok=True)
        items = FashionMNISTSource(split="train", limit=512)
        from PIL import Image

        for i in range(len(items)):
            pixels = items[i].expand(3, -1, -1).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).resize((96, 96), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=90)
        pattern = str(self.work / "shards" / "s-%06d.tar")
        (self.work / "shards").mkdir(exist_ok=True)
        folder_to_shards(str(folder), pattern, max_count=128)
        urls = str(self.work / "shards" / "s-{000000..000003}.tar")

        common = {"batch_size": 128, "seed": 0, "num_workers": 2, "max_short_side": 96}
        on_cpu = ShardStream(urls, decode_on="cpu", **common)
        on_device = ShardStream(urls, device=self.device, decode_on="device", **common)
        worst, rates = 0.0, {}
        for name, stream in (("cpu", on_cpu), ("device", on_device)):
            next(stream)  # workers start
            self.synchronize()
            started = time.perf_counter()
            for _ in range(8):
                batch = next(stream)
            self.synchronize()
            rates[name] = round(8 * len(batch) / (time.perf_counter() - started))
        for _ in range(3):  # same seed, same samples: compare pixels
            a, b = next(on_cpu), next(on_device)
            worst = max(worst, (a.images.float() - b.images.cpu().float()).abs().mean().item())
        figures: Dict[str, object] = {
            "cpu_images_per_s": rates["cpu"],
            "device_images_per_s": rates["device"],
            "mean_abs_pixel_diff": round(worst, 3),
        }
        cfg = self.config(
            "ab_simclr",
            "data.annotation.kind=webdataset",
            f"data.annotation.root={urls}",
            "data.annotation.decode_on=device",
            "data.annotation.limit=null",
            name="decode_run",
        )
        run = self.train_for(Trainer(cfg), 10 if self.cpu else 100, float("inf"))
        figures.update(
            {"train_steps": run["steps"], "train_finite": run["finite"], "train_views_per_s": run["views_per_s"]}
        )
        passed = worst < 4 and bool(run["finite"])
        return [Check("decode", passed, figures, "mean abs pixel diff < 4 (nvjpeg vs libjpeg); training finite")]


def ddp_worker(out: str, overrides: List[str]) -> None:
    """Under torchrun: one forward/backward of ABSimCLR; rank 0 writes loss and gradients."""
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(
        str(ROOT / RECIPES["ab_simclr"]),
        [
            *(TINY_CPU if device == "cpu" else []),
            f"train.device={device}",
            "train.progress=false",
            f"train.out_dir={out}.run",
            *overrides,
        ],
    )
    trainer = Trainer(cfg)
    metrics = trainer.compute_gradients()
    loss = distributed.all_reduce_mean(metrics["loss/total"])
    if distributed.rank() == 0:
        grads = {n: p.grad.detach().cpu().clone() for n, p in trainer.method.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.cpu(), "grads": grads, "world_size": distributed.world_size()}, out)
    distributed.barrier()
    distributed.shutdown()


def print_table(checks: List[Check], header: str) -> None:
    print(f"\n{header}\n")
    print("| check | result | figures | expected |\n|---|---|---|---|")
    for c in checks:
        result = "skipped" if c.passed is None else ("PASS" if c.passed else "FAIL")
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.figures.items())
        print(f"| {c.name} | {result} | {figures} | {c.expected} |")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--ddp-worker":
        ddp_worker(sys.argv[2], sys.argv[3:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--cli":
        from annoboot.cli import main as cli_main

        return cli_main(sys.argv[2:])
    names: Dict[str, Callable[[Smoke], List[Check]]] = {
        "methods": Smoke.methods,
        "compile": Smoke.compile,
        "resume": Smoke.resume,
        "ddp": Smoke.ddp,
        "decode": Smoke.decode,
    }
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run every check on the CPU with tiny models")
    parser.add_argument("--only", nargs="+", choices=list(names), default=list(names))
    parser.add_argument("--methods", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                        help="the methods the 'methods' check trains")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per method on a GPU")
    parser.add_argument("--out", type=Path, help="also write the checks as JSON here")
    parser.add_argument("--work-dir", type=Path, help="keep runs and shards here (default: a temporary folder)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: this script checks the GPU paths; --cpu runs the same checks on the CPU")

    from annoboot.runtime import describe

    device = torch.device("cpu" if args.cpu else "cuda")
    header = f"annoboot GPU smoke: {describe(device, 'auto', False)}; torch {torch.__version__}"
    checks: List[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        smoke = Smoke(args, args.work_dir or Path(tmp))
        smoke.work.mkdir(parents=True, exist_ok=True)
        for name in args.only:
            started = time.perf_counter()
            try:
                found = names[name](smoke)
            except Exception:  # one broken path must not hide the others' figures
                found = [Check(name, False, {"error": traceback.format_exc(limit=3).strip().splitlines()[-1]})]
            for check in found:
                check.figures.setdefault("seconds", round(time.perf_counter() - started, 1))
            checks += found
            print_table(found, f"{name}: done")
    print_table(checks, header)
    if args.out:
        args.out.write_text(
            json.dumps({"header": header, "checks": [c.__dict__ for c in checks]}, indent=2, default=str)
        )
    return 1 if any(c.passed is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
