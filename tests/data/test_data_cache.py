"""annoboot.data.cache: a small folder is decoded once and streamed from memory."""

from __future__ import annotations

import torch
from helpers import decoded_indices, write_index_png

from annoboot.config import SourceConfig
from annoboot.data import ImageFolderSource, build_stream


def test_a_small_folder_is_decoded_once_and_streamed_from_memory(tmp_path):
    from annoboot.data.cache import DecodedImages, cache_decoded

    for index in range(12):
        write_index_png(tmp_path / f"{index:02d}.png", index)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = ImageFolderSource(str(tmp_path))
    cached = cache_decoded(source, budget_mb=1, num_workers=2, progress=False)
    assert isinstance(cached, DecodedImages) and len(cached) == len(source)
    for index in range(len(source)):
        (image, reason), (again, why) = source.load(index), cached.load(index)
        assert (image is None and again is None and reason == why) or torch.equal(image, again)
    # The stream reads it in this process, with the same order, skips and counts as from files.
    config = SourceConfig(kind="image_folder", root=str(tmp_path), num_workers=2)
    from_files = build_stream(config, 4, seed=3, device="cpu", source=source)
    from_memory = build_stream(config, 4, seed=3, device="cpu", source=cached)
    assert from_memory.num_workers == 0
    for _ in range(6):
        a, b = next(from_files), next(from_memory)
        assert decoded_indices(a) == decoded_indices(b)
    assert from_files.skipped == from_memory.skipped >= 1
    from_files.close()
    # Over the budget: the source is left to decode from files.
    assert cache_decoded(source, budget_mb=0, progress=False) is source
