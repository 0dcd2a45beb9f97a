"""How long `annoboot similar` takes to search: exact cosine top-k by one matrix product.

  python benchmarks/similar_search.py            # N = 10k, 100k, 1M unit vectors of D = 192

Prints, per N, the median of 20 searches (one query, k = 8) and the memory of the vectors.
Why no index library (faiss): an exact search over a million 192-d vectors is a single
(N x D) @ (D,) product that streams 0.77 GB once; an approximate index pays off only where
that time, or holding the vectors in memory, no longer fits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from annoboot.similar import nearest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"{'N':>10} {'D':>5} {'MiB':>8} {'median ms':>10} (threads: {torch.get_num_threads()})")
    for n in args.sizes:
        vectors = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=1)
        times = []
        for r in range(args.repeats + 2):
            query = vectors[r * 7 % n]
            start = time.perf_counter()
            scores, order = nearest(vectors, query, 8)
            times.append(time.perf_counter() - start)
            assert order[0] == r * 7 % n  # the query itself comes first
        print(f"{n:>10} {args.dim:>5} {vectors.numel() * 4 / 2**20:>8.0f} {statistics.median(times[2:]) * 1e3:>10.2f}")


if __name__ == "__main__":
    main()
