"""How many DataLoader workers a stream decodes with.

A fixed count per stream oversubscribes the host as soon as several ranks, or an AB run's two
streams, each start it: eight ranks of a two-stream run with 4 workers per stream put 72
processes on a 16-core machine. By default a stream gets its process's share of the cores
instead; ``data.<stream>.num_workers`` (and ``eval.<split>.num_workers``) still set it exactly.
"""

from __future__ import annotations

import os

from annoboot.errors import AnnobootError

# Each worker holds its own prefetched batches (and, for shards, its own shuffle buffer):
# more than this per stream costs memory long before it adds throughput.
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask, which containers, taskset and
    batch schedulers narrow, rather than the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def ranks_on_this_machine() -> int:
    """Processes of the run sharing this machine: LOCAL_WORLD_SIZE, which torchrun sets; 1 otherwise."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def decode_workers(configured: int | None, streams: int = 1) -> int:
    """DataLoader workers for one of this process's ``streams`` that decode in workers.

    ``configured`` (the config's num_workers) when set, 0 included. Otherwise this rank's
    share of the available cores, one core left to the training loop, split evenly over the
    streams; at least 1 (decoding then still overlaps the step) and at most
    :data:`MAX_AUTO_WORKERS`.
    """
    if configured is not None:
        if configured < 0:
            raise AnnobootError(f"num_workers must be 0 or more, got {configured} (data.<stream>.num_workers)")
        return configured
    cores_per_rank = max(1, available_cores() // ranks_on_this_machine())
    share = (cores_per_rank - 1) // max(1, streams)
    return min(MAX_AUTO_WORKERS, max(1, share))
