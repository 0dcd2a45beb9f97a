"""Faults under DDP: two real processes (gloo) read one image folder, and one rank's share of a
batch is all bad. The ranks vote, so both skip that batch and stay at the same position; and
when one rank's source is hopeless, both stop with an error instead of one waiting forever."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import decoded_indices, index_folder

from annoboot.data import ImageFolderSource
from annoboot.data.stream import BatchStream, epoch_order

BATCH, SEED, COUNT = 8, 3, 64
SHARE = BATCH // 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_batches(rank: int, world_size: int, port: int, folder: str, out: str, steps: int, max_bad_fraction: float) -> None:
    import torch.distributed as dist

    from annoboot import distributed
    from annoboot.errors import AnnobootError

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    stream = BatchStream(ImageFolderSource(folder), batch_size=BATCH, seed=SEED, rank=rank, world_size=world_size,
                         max_bad_fraction=max_bad_fraction)
    record = {"indices": [], "positions": [], "error": None}
    try:
        for _ in range(steps):
            record["indices"].append(decoded_indices(next(stream)))
            record["positions"].append(stream.state_dict()["position"])
    except AnnobootError as exc:
        record["error"] = str(exc)
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    distributed.shutdown()


def run_two_ranks(tmp_path: Path, corrupt: set, steps: int, max_bad_fraction: float = 1.0) -> list:
    folder = index_folder(tmp_path / "images", COUNT, corrupt=tuple(corrupt))
    mp.spawn(read_batches, args=(2, free_port(), str(folder), str(tmp_path), steps, max_bad_fraction), nprocs=2,
             join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def share(order: torch.Tensor, batch: int, rank: int) -> list:
    start = batch * BATCH + rank * SHARE
    return sorted(order[start : start + SHARE].tolist())


@pytest.mark.slow
def test_fault_ranks_agree_to_skip_a_batch_one_ranks_share_of_which_is_all_bad(tmp_path):
    order = epoch_order(COUNT, SEED, 0)
    bad = set(share(order, 1, rank=1))  # batch 1: rank 1's share unreadable, rank 0's fine
    ranks = run_two_ranks(tmp_path, bad, steps=3)
    assert [r["error"] for r in ranks] == [None, None]
    assert ranks[0]["positions"] == ranks[1]["positions"] == [BATCH, 3 * BATCH, 4 * BATCH]  # batch 1 skipped by both
    for rank, record in enumerate(ranks):
        assert [sorted(i) for i in record["indices"]] == [share(order, b, rank) for b in (0, 2, 3)]


@pytest.mark.slow
def test_fault_when_one_ranks_source_is_hopeless_both_stop_with_an_error(tmp_path):
    order = epoch_order(COUNT, SEED, 0)
    bad = {i for b in range(COUNT // BATCH) for i in share(order, b, rank=1)}  # rank 1 never sees a good image
    ranks = run_two_ranks(tmp_path, bad, steps=3, max_bad_fraction=0.5)
    assert ranks[0]["indices"] == [] == ranks[1]["indices"]
    assert "could be used" in ranks[1]["error"] or "could not be used" in ranks[1]["error"]
    assert "another process stopped" in ranks[0]["error"]
