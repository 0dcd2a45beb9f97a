"""The price of data.<stream>.read_timeout: loading an image file read in a helper thread (the
timeout's way) against a plain read, per file, for small PNGs and 640x480 JPEGs written here.

  python benchmarks/read_timeout.py            # about 20 s on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from annoboot.data.decode import load_image_file


def per_file_ms(paths, timeout: float, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for path in paths:
            load_image_file(path, 256, read_timeout=timeout)
        best = min(best, (time.perf_counter() - started) / len(paths) * 1e3)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="the best of these many passes is reported")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        kinds = {"40x40 PNG": ((40, 40), "png"), "640x480 JPEG": ((480, 640), "jpg")}
        print(f"{'files':14s} {'plain read':>12s} {'timed read':>12s} {'extra':>9s}")
        for name, ((h, w), suffix) in kinds.items():
            paths = []
            for i in range(args.files):
                path = str(Path(folder) / f"{suffix}_{i:04d}.{suffix}")
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
                paths.append(path)
            per_file_ms(paths, 0.0, 1)  # warm the page cache
            plain, timed = per_file_ms(paths, 0.0, args.rounds), per_file_ms(paths, 300.0, args.rounds)
            print(f"{name:14s} {plain:9.3f} ms {timed:9.3f} ms {timed - plain:+6.3f} ms ({timed / plain:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
