"""Where asymmetric moves lead, from the crop boxes alone: how much of each target crop lies inside
its source view, and the scale the source view renders the scene at.

  python benchmarks/move_geometry.py --source-scale 0.5 1.0 --source-scale 0.25 0.5 [--target-scale 0.05 0.2]
      [--canvas 128] [--source-size 64] [--targets 3] [--draws 20000] [--seed 0]

The boxes are drawn by the trainer's own sampler (annoboot.actions.sample_crop_boxes, the
default crop ratio), one source and --targets targets per scene, as views.bootstrap_source_views=1
draws them. A target wholly outside its source leaves the region-mean readout no tokens of its
region (it reads the whole view instead); one partly inside gives it only the overlap's tokens.
"""

from __future__ import annotations

import argparse

import torch

from annoboot.actions import box_intersection, sample_crop_boxes
from annoboot.config import ViewsConfig


def inside_fraction(source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, T) share of each target box's area inside its scene's source box (xyxy, normalised)."""
    area = (targets[..., 2] - targets[..., 0]) * (targets[..., 3] - targets[..., 1])
    return box_intersection(source[:, None], targets) / area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-scale", nargs=2, type=float, action="append", required=True, metavar=("LOW", "HIGH"),
                        help="views.bootstrap_source_scale to measure (repeat)")
    parser.add_argument("--target-scale", nargs=2, type=float, default=[0.05, 0.2], metavar=("LOW", "HIGH"))
    parser.add_argument("--canvas", type=int, default=128, help="the scene's side in pixels")
    parser.add_argument("--source-size", type=int, default=64, help="views.bootstrap_source_size")
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--draws", type=int, default=20000, help="scenes drawn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ratio = ViewsConfig().crop_ratio
    sizes = torch.tensor([[args.canvas, args.canvas]] * args.draws)
    print(f"target scale {args.target_scale}, {args.targets} targets, {args.draws} scenes of {args.canvas} px, "
          f"sources rendered at {args.source_size} px, crop ratio {[round(r, 3) for r in ratio]}")
    print(f"{'source scale':>14} {'inside (mean)':>14} {'wholly inside':>14} {'wholly outside':>15} {'zoom (median)':>14}")
    for scale in args.source_scale:
        generator = torch.Generator().manual_seed(args.seed)
        source = sample_crop_boxes(sizes, 1, scale, ratio, generator)[:, 0]
        targets = sample_crop_boxes(sizes, args.targets, args.target_scale, ratio, generator)
        inside = inside_fraction(source, targets)
        # The source view's side over the box's side in scene pixels: below 1 shrinks the items.
        zoom = args.source_size / (((source[:, 2] - source[:, 0]) * (source[:, 3] - source[:, 1])).sqrt() * args.canvas)
        print(f"{str(scale):>14} {inside.mean():>14.2f} {(inside > 0.999).float().mean():>14.2f} "
              f"{(inside == 0).float().mean():>15.2f} {zoom.median():>14.2f}")


if __name__ == "__main__":
    main()
