"""annoboot.data.stream: batching and packing, exact and resumable streams, bad images within
the budget, the in-order evaluation pass, and captions tokenised off the training thread."""

from __future__ import annotations

from typing import List

import pytest
import torch
from helpers import (
    IndexedTensorSource,
    _png_bytes,
    _TokenizerCountingMainProcessCalls,
    decoded_indices,
    index_folder,
    write_index_png,
)

from annoboot.data import BatchStream, ImageBatch, ImageFolderSource, iter_eval_batches, pad_collate
from annoboot.data.base import InMemoryImageSource
from annoboot.data.captioned import captioned_folder
from annoboot.data.stream import epoch_order
from annoboot.errors import AnnobootError


def index_png_size(index: int) -> tuple:
    return 6 + index % 4, 5 + index % 3


def tensor_indices(batch: ImageBatch) -> List[int]:
    pixels = batch.images[:, 0, 0, :2].long().cpu()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def test_pad_collate_stacks_one_size_and_drops_none():
    a = torch.full((1, 3, 2), 9, dtype=torch.uint8)
    b = torch.full((3, 3, 2), 4, dtype=torch.uint8)
    batch, skipped = pad_collate([(a, 3), (None, 1), (b, 7)])
    assert skipped == 1 and batch.origins is None
    assert batch.images.shape == (2, 3, 3, 2) and batch.images.dtype == torch.uint8
    assert batch.sizes.dtype == torch.int64 and batch.sizes.tolist() == [[3, 2], [3, 2]]
    assert batch.labels.tolist() == [3, 7]
    assert (batch.images[0] == 9).all() and (batch.images[1] == 4).all()  # gray repeated to RGB
    unlabeled, _ = pad_collate([(a, None)])
    assert unlabeled.labels is None
    empty, skipped = pad_collate([(None, None), (None, None)])
    assert len(empty) == 0 and skipped == 2


def test_pad_collate_packs_mixed_sizes_into_one_canvas_with_edge_borders():
    tall = torch.full((3, 5, 2), 9, dtype=torch.uint8)
    wide = torch.full((1, 2, 4), 4, dtype=torch.uint8)
    batch, skipped = pad_collate([(tall, 3), (None, 1), (wide, 7)])
    assert skipped == 1 and len(batch) == 2 and batch.labels.tolist() == [3, 7]
    assert batch.images.shape[:2] == (1, 3) and batch.sizes.tolist() == [[5, 2], [2, 4]]
    assert torch.equal(batch.image(0), tall) and (batch.image(1) == 4).all()
    for i, value in enumerate((9, 4)):  # each image's one-pixel border repeats its edge
        (y, x), (h, w) = batch.origins[i].tolist(), batch.sizes[i].tolist()
        assert (batch.images[0, :, y - 1 : y + h + 1, x - 1 : x + w + 1] == value).all()
    # Far less canvas than padding to the largest height and width would take.
    sizes = [(256, 256 + 37 * i % 300) if i % 2 else (256 + 53 * i % 700, 256) for i in range(64)]
    images = [(torch.zeros((3, h, w), dtype=torch.uint8), None) for h, w in sizes]
    packed, _ = pad_collate(images)
    area = sum(h * w for h, w in sizes)
    padded_area = len(sizes) * max(h for h, _ in sizes) * max(w for _, w in sizes)
    assert packed.images[0, 0].numel() < 1.3 * area and padded_area > 3.5 * area, (packed.images.shape, area, padded_area)
    for i, (h, w) in enumerate(sizes):  # no two images overlap
        (y, x) = packed.origins[i].tolist()
        assert packed.image(i).shape == (3, h, w)
        for j in range(i):
            (y2, x2), (h2, w2) = packed.origins[j].tolist(), sizes[j]
            assert y + h + 1 <= y2 - 1 or y2 + h2 + 1 <= y - 1 or x + w + 1 <= x2 - 1 or x2 + w2 + 1 <= x - 1


def test_packing_does_not_change_rendered_views():
    from annoboot.views import render_views

    g = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (9, 7), (3, 12), (6, 6), (11, 2)]
    images = [torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes]
    packed, _ = pad_collate([(image, None) for image in images])
    assert packed.origins is not None
    corners = torch.rand((len(images), 6, 2, 2), generator=g).sort(dim=2).values  # x1 < x2, y1 < y2
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # whole images: borders on all four sides
    for out_size in (3, 7, 16):  # shrinking and enlarging
        together = render_views(packed, boxes, out_size).view(len(images), 6, 3, out_size, out_size)
        for i, image in enumerate(images):
            alone, _ = pad_collate([(image, None)])
            assert torch.allclose(render_views(alone, boxes[i : i + 1], out_size), together[i], atol=1e-5), (out_size, i)


def test_in_memory_stream_visits_every_index_once_per_epoch():
    source = IndexedTensorSource(50)
    stream = BatchStream(source, batch_size=8, seed=3)
    first_epoch = [next(stream) for _ in range(6)]  # 48 of 50: the 2-image tail is dropped
    assert all(b.images.shape == (8, 1, 4, 4) and b.images.dtype == torch.uint8 for b in first_epoch)
    assert all(b.labels is None and b.sizes.tolist() == [[4, 4]] * 8 for b in first_epoch)
    seen = [i for batch in first_epoch for i in tensor_indices(batch)]
    assert seen == epoch_order(50, 3, 0)[:48].tolist() and len(set(seen)) == 48
    assert positional(stream.state_dict()) == {"epoch": 1, "position": 0, "skipped": 0, "bad_in_a_row": 0}
    assert tensor_indices(next(stream)) == epoch_order(50, 3, 1)[:8].tolist()


def test_streams_with_different_seeds_differ():
    source = IndexedTensorSource(64)
    a, b = BatchStream(source, 16, seed=0), BatchStream(source, 16, seed=1)
    assert tensor_indices(next(a)) != tensor_indices(next(b))


@pytest.mark.parametrize("taken", [0, 4, 6])
def test_in_memory_stream_resumes_exactly(taken):
    source = IndexedTensorSource(50)
    uninterrupted = BatchStream(source, batch_size=8, seed=1)
    for _ in range(taken):
        next(uninterrupted)
    state = uninterrupted.state_dict()
    resumed = BatchStream(source, batch_size=8, seed=1)
    resumed.load_state_dict(state)
    for _ in range(5):  # crosses an epoch boundary
        assert tensor_indices(next(resumed)) == tensor_indices(next(uninterrupted))


def test_file_stream_epoch_visits_each_index_once_with_true_sizes(tmp_path):
    source = ImageFolderSource(index_folder(tmp_path, 24))
    stream = BatchStream(source, batch_size=5, seed=0)
    seen = []
    for _ in range(4):  # 20 of 24
        batch = next(stream)
        assert len(batch) == 5 and batch.images.dtype == torch.uint8 and batch.labels is None
        indices = decoded_indices(batch)
        assert batch.sizes.tolist() == [list(index_png_size(i)) for i in indices]
        assert all(batch.image(k).shape == (3, *index_png_size(i)) for k, i in enumerate(indices))
        seen += indices
    assert seen == epoch_order(24, 0, 0)[:20].tolist()
    assert positional(stream.state_dict()) == {"epoch": 1, "position": 0, "skipped": 0, "bad_in_a_row": 0}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_stream_resumes_exactly_mid_epoch(tmp_path, num_workers):
    source = ImageFolderSource(index_folder(tmp_path, 23))
    uninterrupted = BatchStream(source, batch_size=4, seed=5, num_workers=num_workers)
    for _ in range(3):
        next(uninterrupted)
    state = uninterrupted.state_dict()
    assert positional(state) == {"epoch": 0, "position": 12, "skipped": 0, "bad_in_a_row": 0}
    expected = [decoded_indices(next(uninterrupted)) for _ in range(6)]  # crosses into epoch 1
    resumed = BatchStream(source, batch_size=4, seed=5, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert [decoded_indices(next(resumed)) for _ in range(6)] == expected
    # Restoring an earlier state on a running stream rewinds it, workers and all.
    uninterrupted.load_state_dict(state)
    assert decoded_indices(next(uninterrupted)) == expected[0]
    uninterrupted.close()
    resumed.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_stream_skips_and_counts_a_corrupt_file(tmp_path, num_workers):
    source = ImageFolderSource(index_folder(tmp_path, 20, corrupt=(7,)))
    stream = BatchStream(source, batch_size=5, seed=2, num_workers=num_workers)
    batches = [next(stream) for _ in range(4)]
    seen = [i for batch in batches for i in decoded_indices(batch)]
    assert sorted(set(seen)) == [i for i in range(20) if i != 7]
    assert all(len(batch) == 5 for batch in batches)  # the short batch is filled back to 5
    assert len(seen) == 20 and len(set(seen)) == 19  # with one repeat of an image of its own batch
    assert stream.skipped == 1 and stream.state_dict()["skipped"] == 1
    next(stream)
    resumed = BatchStream(source, batch_size=5, seed=2)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.skipped == stream.skipped
    stream.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_stream_of_unreadable_files_raises(tmp_path, num_workers):
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8 garbage")
    stream = BatchStream(ImageFolderSource(tmp_path), batch_size=2, seed=0, num_workers=num_workers)
    with pytest.raises(AnnobootError, match="most files are unreadable"):
        next(stream)
    stream.close()


def test_stream_needs_at_least_one_batch_of_images():
    with pytest.raises(AnnobootError, match="fewer than one batch"):
        BatchStream(IndexedTensorSource(3), batch_size=4, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streams_deliver_batches_on_cuda(tmp_path):
    memory_batch = next(BatchStream(IndexedTensorSource(16), 8, seed=0, device="cuda"))
    assert memory_batch.images.is_cuda and memory_batch.sizes.is_cuda
    stream = BatchStream(ImageFolderSource(index_folder(tmp_path, 8)), 4, seed=0, device="cuda", num_workers=2)
    file_batch = next(stream)
    assert file_batch.images.is_cuda and file_batch.sizes.is_cuda
    assert decoded_indices(file_batch) == epoch_order(8, 0, 0)[:4].tolist()
    stream.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_batches_are_in_order_labelled_and_keep_the_tail(tmp_path, num_workers):
    for i in range(11):
        write_index_png(tmp_path / ("even" if i % 2 == 0 else "odd") / f"{i:02d}.png", i)
    (tmp_path / "odd" / "05.png").write_text("corrupt")  # one undecodable file
    source = ImageFolderSource(tmp_path, labels_from_subfolders=True)
    batches = list(iter_eval_batches(source, batch_size=4, num_workers=num_workers))
    kept_indices = [i for batch in batches for i in decoded_indices(batch)]
    kept_labels = [label for batch in batches for label in batch.labels.tolist()]
    assert kept_indices == [0, 2, 4, 6, 8, 10, 1, 3, 7, 9]  # source order: even/... then odd/...
    assert kept_labels == [i % 2 for i in kept_indices]  # labels stay with their images
    assert [len(batch) for batch in batches] == [4, 4, 2]  # 11 files in 4s; the bad one leaves 2 in the tail


def test_eval_batches_of_an_in_memory_source_are_slices():
    source = IndexedTensorSource(10)
    source.labels = torch.arange(10) % 3
    batches = list(iter_eval_batches(source, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [i for b in batches for i in tensor_indices(b)] == list(range(10))
    assert torch.equal(torch.cat([b.labels for b in batches]), source.labels)
    assert batches[-1].sizes.tolist() == [[4, 4], [4, 4]]


def test_eval_of_an_unreadable_folder_raises(tmp_path):
    (tmp_path / "a.png").write_text("x")
    with pytest.raises(AnnobootError, match="no image could be decoded"):
        list(iter_eval_batches(ImageFolderSource(tmp_path), batch_size=2))


def test_a_mostly_bad_folder_stops_with_a_clear_message(tmp_path):
    source = ImageFolderSource(index_folder(tmp_path, 300, corrupt=tuple(i for i in range(300) if i % 5)))
    stream = BatchStream(source, batch_size=32, seed=0)
    with pytest.raises(AnnobootError) as error:
        for _ in range(9):
            next(stream)
    message = str(error.value)
    assert str(tmp_path) in message and "of 256 images tried" in message and "max_bad_fraction=0.5" in message
    assert f"annoboot data inspect {tmp_path}" in message and "not an image" in message
    bad = stream.skipped
    assert 0.7 < bad / 256 < 0.9 and f"{bad} of 256" in message and f"({bad / 256:.0%})" in message


def test_a_folder_with_a_few_bad_files_trains_on_and_counts_them(tmp_path, caplog):
    index_folder(tmp_path, 50, corrupt=(13,))
    (tmp_path / "0050.png").write_bytes(b"")  # and one empty file
    source = ImageFolderSource(tmp_path)
    stream = BatchStream(source, batch_size=17, seed=0)
    with caplog.at_level("WARNING", logger="annoboot.data.stream"):
        batches = [next(stream) for _ in range(3 * 18)]  # 18 epochs of 3 batches of 17 (all 51 files)
    assert all(len(b) == 17 for b in batches)  # batches that lost a file are filled back to 17
    assert stream.skipped == 36 and stream.skipped_by_reason == {"not an image": 18, "empty file": 18}
    assert stream.state_dict()["skipped"] == 36
    assert "skipped" in caplog.text and "empty file" in caplog.text  # per-reason counts in the log


def test_a_batch_of_only_bad_images_is_replaced_when_the_budget_allows(tmp_path):
    order = epoch_order(10, 0, 0).tolist()
    index_folder(tmp_path, 10, corrupt=(order[0],))  # the first batch of one is a bad file
    for budget in (1.0, 0.5):
        stream = BatchStream(ImageFolderSource(tmp_path), batch_size=1, seed=0, max_bad_fraction=budget)
        assert decoded_indices(next(stream)) == [order[1]]  # the next image takes its place
        assert stream.skipped_by_reason == {"not an image": 1} and stream.state_dict()["position"] == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resume_landing_on_bad_batches_continues_like_the_uninterrupted_run(tmp_path, num_workers):
    order = epoch_order(12, 4, 0).tolist()
    index_folder(tmp_path, 12, corrupt=tuple(order[4:8]))  # batches 2 and 3 of the epoch hold only bad files
    source = ImageFolderSource(tmp_path)
    uninterrupted = BatchStream(source, batch_size=2, seed=4, num_workers=num_workers)
    for _ in range(2):
        next(uninterrupted)
    state = uninterrupted.state_dict()
    expected = [decoded_indices(next(uninterrupted)) for _ in range(4)]
    assert expected[0] == order[8:10]
    resumed = BatchStream(source, batch_size=2, seed=4, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert [decoded_indices(next(resumed)) for _ in range(4)] == expected
    assert resumed.state_dict() == uninterrupted.state_dict()
    uninterrupted.close()
    resumed.close()


def test_a_folder_where_nothing_decodes_stops_even_with_the_widest_budget(tmp_path):
    index_folder(tmp_path, 9, corrupt=tuple(range(9)))
    stream = BatchStream(ImageFolderSource(tmp_path), batch_size=2, seed=0, max_bad_fraction=1.0)
    with pytest.raises(AnnobootError, match=r"none of the last 8 images tried could be used \(not an image: 8\)"):
        next(stream)


def test_a_stream_state_written_before_bad_in_a_row_was_kept_still_loads(tmp_path):
    source = ImageFolderSource(index_folder(tmp_path, 8))
    stream = BatchStream(source, batch_size=2, seed=0)
    stream.load_state_dict({"epoch": 1, "position": 2, "skipped": 3})
    assert stream.state_dict() == {"epoch": 1, "position": 2, "skipped": 3, "bad_in_a_row": 0, "tried": 0, "bad": 0,
                                   "by_reason": {}}


def positional(state):
    """Where a stream is and what it skipped: its state without the bad-fraction counts."""
    return {key: state[key] for key in ("epoch", "position", "skipped", "bad_in_a_row")}


def test_the_bad_fraction_counts_survive_a_resume(tmp_path):
    """The stop rule judges the run, not the process: a resumed counter stops at the same batch
    as the uninterrupted one (before, a resume started its fraction from zero)."""
    from annoboot.data.batching import SkipCounter

    def batches():  # 64 images per batch, 40 of them bad: 62.5% > 50%, stops once 256 were tried
        while True:
            yield 64, {"not an image": 40}

    uninterrupted, stops = SkipCounter("src", "src"), None
    for number, (tried, reasons) in enumerate(batches()):
        try:
            uninterrupted.add(tried, reasons)
        except AnnobootError:
            stops = number
            break
    assert stops == 3  # the 4th batch reaches 256 tried
    first = SkipCounter("src", "src")
    for _ in range(2):
        first.add(64, {"not an image": 40})
    resumed = SkipCounter("src", "src")
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == {"skipped": 80, "tried": 128, "bad": 80, "bad_in_a_row": 0,
                                    "by_reason": {"not an image": 80}}
    resumed.add(64, {"not an image": 40})
    with pytest.raises(AnnobootError, match=r"160 of 256 images tried could not be used \(62%\)"):
        resumed.add(64, {"not an image": 40})


def test_a_file_stream_keeps_its_counts_in_its_state(tmp_path):
    index_folder(tmp_path, 12, corrupt=(1, 5))
    stream = BatchStream(ImageFolderSource(tmp_path), batch_size=4, seed=0)
    for _ in range(2):
        next(stream)
    state = stream.state_dict()
    assert state["bad"] == state["skipped"] and state["tried"] >= 8 and sum(state["by_reason"].values()) == state["bad"]
    resumed = BatchStream(ImageFolderSource(tmp_path), batch_size=4, seed=0)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


class _CaptionedImagesInMemory(InMemoryImageSource):
    def __init__(self, captions):
        self._images = torch.zeros(len(captions), 3, 8, 8, dtype=torch.uint8)
        self.captions = captions


@pytest.mark.parametrize("served_from", ["workers", "files_without_workers", "memory"])
def test_batch_streams_tokenise_captions_off_the_training_thread(tmp_path, served_from):
    # Tokenising took the training thread ~60 ms per 512 captions every step. Decode workers
    # tokenise now; a stream without workers tokenises the source's captions once, up front.
    captions = [f"a red square number {i}" for i in range(12)]
    if served_from == "memory":
        source = _CaptionedImagesInMemory(captions)
    else:
        for i, caption in enumerate(captions):
            (tmp_path / f"{i}.png").write_bytes(_png_bytes((i * 10, 0, 0), size=(12 + i, 10)))
            (tmp_path / f"{i}.txt").write_text(caption)
        source = captioned_folder(str(tmp_path))
    tokenize = _TokenizerCountingMainProcessCalls()
    workers = 1 if served_from == "workers" else 0
    stream = BatchStream(source, batch_size=4, seed=0, num_workers=workers, tokenize=tokenize)
    calls_up_front = tokenize.main_process_calls
    batches = [next(stream) for _ in range(7)]  # over two epochs
    assert tokenize.main_process_calls == calls_up_front == (0 if served_from == "workers" else 1)
    for batch in batches:
        assert torch.equal(batch.caption_tokens, tokenize.tokenizer(batch.captions))
