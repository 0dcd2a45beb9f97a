"""annoboot.data.workers: decode workers share the cores of each local rank."""

from __future__ import annotations

import os

import pytest
from helpers import IndexedTensorSource, index_folder

from annoboot.config import SourceConfig
from annoboot.data import build_stream
from annoboot.errors import AnnobootError


def test_decode_workers_split_the_cores_of_each_local_rank_between_its_streams(tmp_path, monkeypatch):
    # A fixed 4 workers per stream put 8 ranks x 2 streams x 4 workers on a 16-core host.
    from annoboot.data import decode_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decode_workers(None, streams=2) == 7  # one core left to the training loop
    assert decode_workers(None, streams=1) == 8  # 15, capped: each worker holds its own buffers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, 2 ranks: 8 cores each
    assert decode_workers(None, streams=2) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 2 cores each
    assert decode_workers(None, streams=2) == 1  # never 0: decoding still overlaps the step
    assert decode_workers(6, streams=2) == 6 and decode_workers(0) == 0  # the config's count wins
    with pytest.raises(AnnobootError, match="num_workers"):
        decode_workers(-1)
    # build_stream applies it to a file-backed source; an in-memory one needs no workers.
    folder = SourceConfig(kind="image_folder", root=str(index_folder(tmp_path, 8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert build_stream(folder, 4, seed=0, device="cpu", decoding_streams=2).num_workers == 3
    assert build_stream(folder, 4, seed=0, device="cpu", source=IndexedTensorSource(8)).num_workers == 0
