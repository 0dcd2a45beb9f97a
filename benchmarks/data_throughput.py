"""End-to-end training throughput from JPEG shards: annoboot's data path against the standard
torchvision CPU pipeline, in the same run, on the same shards and device.

First it writes ``--images`` JPEGs of natural photos into webdataset shards in a temporary
folder (random crops of scikit-image's photos, rescaled to a long side of 400-500 px, JPEG
quality 80-95). Then it times three ways of training on them, each for ``--steps`` steps after
``--warmup`` untimed ones; the device is synchronised only where the timed window starts and
ends, so data loading overlaps the device's work as it does in training:

  annoboot/ab_simclr  ShardStream (workers read + decode, short side capped at
                      --max-short-side; with --decode-on device JPEGs are decoded on the
                      device) -> the Trainer's ABSimCLR step: views rendered and augmented on
                      the device, EMA target, value decoder, AdamW, EMA update.
  annoboot/simclr     the same data path -> a SimCLR step with the same number of views.
  torchvision/simclr  a DataLoader over the same shards whose workers decode each JPEG with
                      PIL and build 2 views per image with torchvision.transforms.v2
                      (RandomResizedCrop scale 0.08-1, flip, ColorJitter(0.4, 0.4, 0.4, 0.1)
                      p=0.8, grayscale p=0.2: the SimCLR recipe annoboot renders), as uint8;
                      on the device: normalise, then the same SimCLR step (encoder, projector,
                      NT-Xent, backward, AdamW) on the same number of views.

Rows 2 and 3 run the same model step, so they compare the data paths alone; row 1 is the
issue's figure. Reported per row: views/s and the fraction of step time spent waiting for data
(the host's time blocked in next(stream) over the total: with the device running ahead that
is the time the step truly waits for data; device decoding and copies that overlap the step
show in views/s instead). ``--workers`` is the number of CPU worker processes of each row (annoboot's ABSimCLR
splits them over its two streams in proportion to their batches).

  python benchmarks/data_throughput.py --workers 14             # ViT-S/16 at 224 px (CUDA, bf16)
  python benchmarks/data_throughput.py --workers 14 --decode-on device
  python benchmarks/data_throughput.py --quick                  # tiny ViT, 32 px, CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import date
from typing import Dict, List

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from annoboot.methods import build_method
from annoboot.objectives import nt_xent
from annoboot.recipe import load_config
from annoboot.runtime import autocast_context
from annoboot.train.trainer import Trainer

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_photo_shards(folder: str, count: int, seed: int, per_shard: int = 500) -> str:
    """``count`` JPEGs cut from scikit-image's photos into shards under ``folder``; returns the
    brace pattern of the shards."""
    from skimage import data as skdata

    rng = random.Random(seed)
    photos = [Image.fromarray(getattr(skdata, name)()) for name in PHOTOS]
    with wds.ShardWriter(os.path.join(folder, "photos-%04d.tar"), maxcount=per_shard, verbose=0) as sink:
        for index in range(count):
            photo = photos[index % len(photos)]
            width, height = photo.size
            area = rng.uniform(0.35, 1.0) * width * height
            ratio = rng.uniform(3 / 4, 4 / 3)
            crop_w = min(width, round((area * ratio) ** 0.5))
            crop_h = min(height, round((area / ratio) ** 0.5))
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            crop = photo.crop((left, top, left + crop_w, top + crop_h))
            scale = rng.uniform(400, 500) / max(crop_w, crop_h)
            crop = crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            buffer = io.BytesIO()
            crop.save(buffer, format="JPEG", quality=rng.randint(80, 95))
            sink.write({"__key__": f"{index:08d}", "jpg": buffer.getvalue()})
    shards = (count + per_shard - 1) // per_shard
    return os.path.join(folder, f"photos-{{0000..{shards - 1:04d}}}.tar")


class TimedStream:
    """Wraps a stream: counts the host's seconds blocked in ``next`` (no device sync: a sync per
    step would serialise the decode and copies with the step and hide their overlap)."""

    def __init__(self, stream, device: torch.device):
        self.stream, self.device, self.seconds = stream, device, 0.0

    def __iter__(self) -> "TimedStream":
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.stream)
        self.seconds += time.perf_counter() - start
        return batch

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def common_overrides(args, device: torch.device) -> List[str]:
    return [
        f"model.backbone={args.backbone}",
        f"model.backbone_kwargs={args.backbone_kwargs}",
        f"views.img_size={args.img_size}",
        f"train.device={device}",
        f"train.compile={args.compile}",
        "train.progress=false",
        f"train.steps={args.warmup + args.steps}",
        f"train.seed={args.seed}",
    ]


def shard_source(prefix: str, pattern: str, workers: int, args) -> List[str]:
    return [
        f"{prefix}.kind=webdataset",
        f"{prefix}.root={pattern}",
        f"{prefix}.num_workers={workers}",
        f"{prefix}.max_short_side={args.max_short_side}",
        f"{prefix}.decode_on={args.decode_on}",
    ]


def run_annoboot(method: str, batch_size: int, pattern: str, args, device: torch.device) -> Dict[str, float]:
    """Trainer steps on ShardStreams; returns views/s and the data-wait fraction."""
    overrides = common_overrides(args, device) + [f"method.name={method}", f"train.batch_size={batch_size}"]
    if method == "ab_simclr":  # split the workers about 4:1, as the batches (B/2 and B/8 images)
        bootstrap_workers = max(1, round(args.workers / 5))
        overrides += shard_source("data.annotation", pattern, max(1, args.workers - bootstrap_workers), args)
        overrides += shard_source("data.bootstrap", pattern, bootstrap_workers, args)
    else:
        overrides += shard_source("data.annotation", pattern, args.workers, args)
    trainer = Trainer(load_config(None, overrides))
    timed = {name: TimedStream(stream, device) for name, stream in trainer.streams.items()}
    trainer.streams = timed  # type: ignore[assignment]
    views = trainer.method.views_per_step()
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            for stream in timed.values():
                stream.seconds = 0.0
            start = time.perf_counter()
        trainer.train_step()
    synchronize(device)
    total = time.perf_counter() - start
    wait = sum(stream.seconds for stream in timed.values())
    skipped = sum(stream.skipped for stream in timed.values())
    del trainer, timed
    gc.collect()  # the streams' DataLoader workers exit before the next row starts its own
    return {"views_per_step": views, "step_s": total / args.steps, "views_per_s": views * args.steps / total,
            "data_wait": wait / total, "skipped": skipped}


def torchvision_two_views(img_size: int):
    """sample -> (2, 3, S, S) uint8: PIL decode, then the SimCLR recipe in torchvision.transforms.v2."""
    from torchvision.transforms import v2

    augment = v2.Compose([
        v2.RandomResizedCrop(img_size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.PILToTensor(),
    ])

    def two_views(sample):
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            rgb = image.convert("RGB")
        return torch.stack([augment(rgb), augment(rgb)])

    return two_views


def _stack(views: List[torch.Tensor]) -> torch.Tensor:
    return torch.stack(views)


def run_torchvision(batch_size: int, pattern: str, args, device: torch.device) -> Dict[str, float]:
    """The standard CPU pipeline feeding a SimCLR step of ``2 * batch_size`` views."""
    cfg = load_config(None, common_overrides(args, device) + ["method.name=simclr", f"train.batch_size={batch_size}"])
    torch.manual_seed(args.seed)
    method = build_method(cfg).to(device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4, fused=device.type == "cuda")
    if cfg.train.compile:
        method.encoder.compile()
    pipeline = wds.DataPipeline(
        wds.ResampledShards(pattern, seed=args.seed, deterministic=True),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(2000, initial=100, seed=args.seed),
        wds.map(torchvision_two_views(args.img_size)),
        wds.batched(batch_size, collation_fn=_stack, partial=False),
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda")
    batches = iter(loader)
    mean = torch.tensor(cfg.views.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.views.std, device=device).view(1, 3, 1, 1) * 255
    wait, start = 0.0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            wait, start = 0.0, time.perf_counter()
        fetch = time.perf_counter()
        pairs = next(batches).to(device, non_blocking=True)  # (B, 2, 3, S, S) uint8
        wait += time.perf_counter() - fetch
        views = (pairs.transpose(0, 1).flatten(0, 1).float() - mean) / std  # view-major, as SimCLR
        with autocast_context(device, cfg.train.precision):
            z1, z2 = method.projector(method.encoder(views).pooled).chunk(2)
            loss = nt_xent(z1, z2, cfg.method.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:  # as the Trainer does
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.train.grad_clip)
        optimizer.step()
    synchronize(device)
    total = time.perf_counter() - start
    del batches, loader
    gc.collect()
    views_per_step = 2 * batch_size
    return {"views_per_step": views_per_step, "step_s": total / args.steps,
            "views_per_s": views_per_step * args.steps / total, "data_wait": wait / total, "skipped": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="JPEGs written into the shards")
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--backbone-kwargs", default="{}", help="timm kwargs as YAML, e.g. '{depth: 2}'")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--max-short-side", type=int, default=256, help="annoboot's decode cap")
    parser.add_argument("--batch", type=int, default=256, help="ABSimCLR base batch B (1.5 B views per step)")
    parser.add_argument("--workers", type=int, help="CPU workers per row (default: all cores but 2; --quick: 2)")
    parser.add_argument("--decode-on", choices=["cpu", "device"], default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny ViT at 32 px, few images and steps: a CPU smoke run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.images, args.backbone, args.backbone_kwargs = 192, "vit_tiny_patch16_224", "{patch_size: 8, depth: 2}"
        args.img_size, args.max_short_side, args.batch = 32, 48, 64
        args.steps, args.warmup, args.workers = 8, 2, args.workers or 2
    if args.workers is None:
        args.workers = max(1, (os.cpu_count() or 2) - 2)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.batch % 8:
        parser.error("--batch must be a multiple of 8 (ABSimCLR takes B/2 annotation and B/8 bootstrap images)")
    views = 2 * (args.batch // 2) + 4 * (args.batch // 8)  # ABSimCLR's views per step
    simclr_batch = views // 2  # SimCLR images giving the same number of views

    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="annoboot-shards-") as folder:
        start = time.perf_counter()
        pattern = write_photo_shards(folder, args.images, args.seed)
        written_s = time.perf_counter() - start
        results["annoboot/ab_simclr"] = run_annoboot("ab_simclr", args.batch, pattern, args, device)
        results["annoboot/simclr"] = run_annoboot("simclr", simclr_batch, pattern, args, device)
        results["torchvision/simclr"] = run_torchvision(simclr_batch, pattern, args, device)

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"data throughput  {args.backbone} {args.backbone_kwargs} @ {args.img_size}px  decode_on={args.decode_on}  "
          f"workers={args.workers}  compile={args.compile}  device={device_name}  cpus={os.cpu_count()}  "
          f"date={date.today()}")
    print(f"shards: {args.images} JPEGs (long side 400-500 px), written in {written_s:.1f} s; "
          f"{args.steps} timed steps after {args.warmup} warm-up, seed {args.seed}")
    print(f"{'path/model step':<22}{'views':>7}{'ms/step':>10}{'views/s':>10}{'data wait':>11}")
    for name, r in results.items():
        row = f"{name:<22}{r['views_per_step']:>7}{1000 * r['step_s']:>10.1f}{r['views_per_s']:>10.1f}"
        print(f"{row}{r['data_wait']:>10.1%}")
    ratio = results["annoboot/ab_simclr"]["views_per_s"] / results["torchvision/simclr"]["views_per_s"]
    print(f"annoboot/ab_simclr over torchvision/simclr: {ratio:.2f}x   (target: >= 5,000 views/s, < 5% wait, ~2x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": device_name, "cpus": os.cpu_count(), "date": str(date.today()),
                       "results": results, "ab_over_torchvision": ratio}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
