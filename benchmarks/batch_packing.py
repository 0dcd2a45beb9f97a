"""How much canvas a batch of mixed-size images takes: padded to the largest height and width
(the old ``pad_collate``) against shelf-packed into one canvas (``pack_layout``), as a multiple of
the images' own area, over random batches of a real image set.

  python benchmarks/batch_packing.py                       # Open Clip Art train split, 256 px cap
  python benchmarks/batch_packing.py --batch-sizes 64 256 --batches 50 --max-short-side 256

Only image headers are read (no decoding): a few seconds on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from PIL import Image

from annoboot.data.batching import pack_layout
from annoboot.data.captioned import openclipart
from annoboot.data.decode import capped_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--max-short-side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = openclipart(split="train", max_short_side=args.max_short_side)
    sizes, bombs = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for path in source.paths:
            try:
                with Image.open(path) as image:
                    w, h = capped_size(*image.size, args.max_short_side)
            except Image.DecompressionBombError:  # training skips these too
                bombs += 1
                continue
            sizes.append((h, w))
    sizes_np = np.array(sizes)
    print(f"{source.name}: {len(sizes)} images ({bombs} decompression bombs left out), short side capped at {args.max_short_side}; "
          f"long side median {np.median(sizes_np.max(1)):.0f}, max {sizes_np.max()}")
    print("batch  padded / area (mean, min-max)   packed / area (mean, min-max)")
    rng = np.random.default_rng(args.seed)
    for batch_size in args.batch_sizes:
        padded, packed = [], []
        for _ in range(args.batches):
            batch = sizes_np[rng.choice(len(sizes_np), batch_size, replace=False)]
            area = float((batch[:, 0] * batch[:, 1]).sum())
            padded.append(batch_size * batch[:, 0].max() * batch[:, 1].max() / area)
            height, width, _ = pack_layout([(int(h), int(w)) for h, w in batch])
            packed.append(height * width / area)
        print(f"{batch_size:5d}  {np.mean(padded):5.2f} ({min(padded):.2f}-{max(padded):.2f})"
              f"                {np.mean(packed):5.2f} ({min(packed):.2f}-{max(packed):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
