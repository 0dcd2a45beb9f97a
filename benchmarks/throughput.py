"""Training throughput: ABSimCLR and SimCLR steps against a plain encoder-only step.

Measured in one process on the same device, in this order, each after warm-up steps:
  bound      a plain timm training step (forward, mean-pooled loss, backward, AdamW) on
             pre-rendered views: what the encoder alone costs for that many views;
  simclr     a full SimCLR step: render 2 views per image from uint8 images on the device,
             augment, encode, project, NT-Xent, backward, AdamW;
  ab_simclr  a full ABSimCLR step at the base batch that gives the *same number of views*
             (annotation B/2 x 2 views + bootstrap B/8 x 4 views = 1.5 B views), including
             the EMA target forward, the value decoder over all 4x4 moves and the EMA update.
Reported: views/s of each, ab/bound (target >= 0.75) and ab/simclr step cost per view
(target <= 1.3). With --dino, also DINO's multi-crop step (2 global + n local crops rendered
on the device, student + EMA teacher, head, centring, EMA update) against its own bound: the
encoder-only step on the same crops (globals and locals in two calls, as DINO runs them);
target dino/bound >= 0.7.

  python benchmarks/throughput.py                    # ViT-S/16 at 224 px on CUDA (bf16)
  python benchmarks/throughput.py --compile          # with torch.compile on the encoder
  python benchmarks/throughput.py --quick            # tiny CPU smoke version of the same code
  python benchmarks/throughput.py --dino             # + DINO multi-crop (2 x 224 + 8 x 96 px)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date

import torch

from annoboot.config import load_config
from annoboot.data.base import ImageBatch
from annoboot.methods import build_method
from annoboot.methods.dino import build_multicrop_encoder
from annoboot.models import build_encoder
from annoboot.train.ema import ema_update, make_target
from annoboot.train.runtime import autocast_context


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per step over ``iters`` timed steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def encoder_only_step(cfg, views: int, device: torch.device):
    encoder = build_encoder(cfg.model.backbone, cfg.views.img_size, cfg.model.backbone_kwargs).to(device)
    if cfg.train.compile:
        encoder.compile()
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(views, 3, cfg.views.img_size, cfg.views.img_size, device=device)

    def step():
        with autocast_context(device, cfg.train.precision):
            loss = encoder(x).pooled.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def multicrop_bound_step(cfg, num_images: int, device: torch.device):
    """The encoder-only step on DINO's crops: 2 global views per image at img_size, local_views
    at local_size, each size in one call."""
    v = cfg.views
    encoder = build_multicrop_encoder(cfg).to(device)  # the same encoder DINO builds
    if cfg.train.compile:
        encoder.compile()
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-4, fused=device.type == "cuda")
    globals_ = torch.randn(2 * num_images, 3, v.img_size, v.img_size, device=device)
    locals_ = torch.randn(v.local_views * num_images, 3, v.local_size, v.local_size, device=device)

    def step():
        with autocast_context(device, cfg.train.precision):
            loss = encoder(globals_).pooled.float().pow(2).mean() + encoder(locals_).pooled.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, (2 + v.local_views) * num_images


def method_step(cfg, device: torch.device, image_side: int):
    method = build_method(cfg).to(device)
    target = make_target(method) if method.uses_target else None
    if cfg.train.compile:
        method.encoder.compile()
        if target is not None:
            target.encoder.compile()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = {}
    for name, size in method.batch_sizes().items():
        images = torch.randint(0, 256, (size, 3, image_side, image_side), dtype=torch.uint8, generator=gen)
        sizes = torch.tensor([[image_side, image_side]] * size)
        batches[name] = ImageBatch(images.to(device), sizes.to(device))

    def step():
        with autocast_context(device, cfg.train.precision):
            out = method.training_step(batches, target, 0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if target is not None:
            ema_update(target, method, 0.996)

    return step, method.views_per_step()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--image-side", type=int, default=256, help="side of the uint8 source images")
    parser.add_argument("--simclr-batch", type=int, default=256, help="SimCLR images per step (2 views each)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke run")
    parser.add_argument("--dino", action="store_true", help="also time DINO multi-crop against its encoder-only bound")
    parser.add_argument("--dino-batch", type=int, default=128, help="DINO images per step")
    parser.add_argument("--local-views", type=int, default=8)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    kwargs = "{}"
    if args.quick:
        args.backbone, args.img_size, args.image_side, args.simclr_batch = "vit_tiny_patch16_224", 32, 40, 32
        args.warmup, args.iters, kwargs = 2, 5, "{patch_size: 8, depth: 2}"
        args.dino_batch, args.local_views, args.local_size = 16, 4, 16
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    views = 2 * args.simclr_batch
    # ABSimCLR's base batch B gives 1.5 B views; choose B so it matches SimCLR's 2 x batch.
    ab_batch = (4 * args.simclr_batch) // 3
    common = [f"model.backbone={args.backbone}", f"model.backbone_kwargs={kwargs}", f"views.img_size={args.img_size}",
              f"train.compile={args.compile}", f"train.device={device}"]
    simclr_cfg = load_config(None, common + ["method.name=simclr", f"train.batch_size={args.simclr_batch}"])
    ab_cfg = load_config(None, common + ["method.name=ab_simclr", f"train.batch_size={ab_batch}"])

    results = {}
    t = time_steps(encoder_only_step(simclr_cfg, views, device), device, args.warmup, args.iters)
    results["bound"] = {"views": views, "step_s": t, "views_per_s": views / t}
    for name, cfg in [("simclr", simclr_cfg), ("ab_simclr", ab_cfg)]:
        step, n_views = method_step(cfg, device, args.image_side)
        t = time_steps(step, device, args.warmup, args.iters)
        results[name] = {"views": n_views, "step_s": t, "views_per_s": n_views / t}
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.dino:
        # DINO's head is sized for the benchmark (paper: 65,536 prototypes for ImageNet).
        dino_cfg = load_config(None, common + ["method.name=dino", f"train.batch_size={args.dino_batch}",
                                               f"views.local_views={args.local_views}", f"views.local_size={args.local_size}"])
        step, n_views = multicrop_bound_step(dino_cfg, args.dino_batch, device)
        t = time_steps(step, device, args.warmup, args.iters)
        results["bound_multicrop"] = {"views": n_views, "step_s": t, "views_per_s": n_views / t}
        del step
        step, n_views = method_step(dino_cfg, device, args.image_side)
        t = time_steps(step, device, args.warmup, args.iters)
        results["dino"] = {"views": n_views, "step_s": t, "views_per_s": n_views / t}
        del step

    ab, simclr, bound = results["ab_simclr"], results["simclr"], results["bound"]
    summary = {
        "ab_over_bound": ab["views_per_s"] / bound["views_per_s"],
        "ab_cost_per_view_over_simclr": simclr["views_per_s"] / ab["views_per_s"],
        "simclr_over_bound": simclr["views_per_s"] / bound["views_per_s"],
    }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"throughput  {args.backbone} @ {args.img_size}px  compile={args.compile}  device={device_name}  date={date.today()}")
    print(f"{'step':<16}{'views':>8}{'ms/step':>10}{'views/s':>12}")
    for name in ("bound", "simclr", "ab_simclr", "bound_multicrop", "dino"):
        if name not in results:
            continue
        r = results[name]
        print(f"{name:<16}{r['views']:>8}{1000 * r['step_s']:>10.1f}{r['views_per_s']:>12.1f}")
    print(f"ab_simclr / bound (views/s): {summary['ab_over_bound']:.2f}   (target >= 0.75)")
    print(f"ab_simclr / simclr cost per view: {summary['ab_cost_per_view_over_simclr']:.2f}   (target <= 1.3)")
    if "dino" in results:
        summary["dino_over_multicrop_bound"] = results["dino"]["views_per_s"] / results["bound_multicrop"]["views_per_s"]
        print(f"dino / multi-crop bound (views/s): {summary['dino_over_multicrop_bound']:.2f}   (target >= 0.7)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": device_name, "results": results, "summary": summary}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
