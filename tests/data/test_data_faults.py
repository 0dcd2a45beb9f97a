"""Bad inputs on every path that reads files: each is skipped and counted, the good images still
arrive, and nothing hangs or ends in a traceback.

Hangs are the failure mode here (a FIFO blocks whoever opens it; webdataset used to resample a
broken shard set forever), so every read runs under :func:`finishes`, which fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Sequence, TypeVar

import numpy as np
import pytest
from helpers import png_claiming
from PIL import Image

from annoboot.cli import main
from annoboot.config import SourceConfig
from annoboot.data import ImageFolderSource, ShardStream, build_source, build_stream, iter_eval_batches
from annoboot.data.decode import MAX_IMAGE_PIXELS
from annoboot.data.tools import folder_to_shards, inspect_folder
from annoboot.errors import AnnobootError

T = TypeVar("T")

# A loader worker: the error crosses the process boundary. Slow, because torch's DataLoader, shut
# down after a worker's error, waits out its 5 s status interval for the worker to quit.
WITH_A_WORKER = pytest.param(1, marks=pytest.mark.slow, id="1")

# Reasons the zoo's bad image files are skipped for, in training and in `data inspect`.
ZOO_REASONS = {"empty file", "truncated", "not an image", f"over the {MAX_IMAGE_PIXELS:,}-pixel cap"}


def finishes(run: Callable[[], T], seconds: float = 30.0, fifos: Sequence[Path] = ()) -> T:
    """``run()`` in a daemon thread; the test fails if it takes longer than ``seconds``. A reader
    stuck on one of ``fifos`` is then released (a writer opens and closes the FIFO: the reader
    sees end of file), so a regression costs one timeout, not the rest of the suite."""
    outcome: Dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = run()
        except BaseException as exc:  # handed to the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # nobody is reading it
                pass
        pytest.fail(f"still running after {seconds:.0f} s: a read hangs")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def good_image(index: int) -> Image.Image:
    """A small photo-like image, 12 + index pixels wide: its width names it in a batch."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:10, 0 : 12 + index]
    pixels = np.stack([x * 9 + index * 20, y * 11, (x + y) * 5], -1) + rng.normal(0, 4, (10, 12 + index, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


GOOD = 6  # good images in a zoo; image i is 12 + i pixels wide


def write_zoo(root: Path, suffix: str = ".png") -> Dict[str, Path]:
    """``GOOD`` good images and one of each bad case under ``root``; {case: path}."""
    root.mkdir(parents=True, exist_ok=True)
    zoo: Dict[str, Path] = {}
    for i in range(GOOD):
        zoo[f"good{i}"] = root / f"good{i}{suffix}"
        good_image(i).save(zoo[f"good{i}"])
    jpeg = io.BytesIO()
    good_image(9).save(jpeg, format="JPEG", quality=90)
    cases = {
        "empty": ("empty.png", b""),
        "truncated": ("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
        "garbage": ("garbage.png", np.random.default_rng(0).bytes(500)),
        # a valid image of a type the decoder does not read (SVG), under a name it lists
        "unsupported": ("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'),
        "huge": ("huge.png", png_claiming(10_000, 10_000)),
    }
    for case, (name, data) in cases.items():
        zoo[case] = root / name
        zoo[case].write_bytes(data)
    (root / "drawing.svg").write_bytes(cases["unsupported"][1])  # not an image extension: never listed
    zoo["directory"] = root / "folder.jpg"
    zoo["directory"].mkdir()
    zoo["fifo"] = root / "pipe.jpg"
    os.mkfifo(zoo["fifo"])
    zoo["dangling"] = root / "dangling.jpg"
    zoo["dangling"].symlink_to(root / "nowhere.jpg")
    return zoo


def widths_and_reasons(stream, batches: int) -> tuple:
    """(set of image widths seen, {skip reason: count}) over ``batches`` batches of ``stream``."""
    widths = set()
    for _ in range(batches):
        batch = next(stream)
        widths.update(int(w) for w in batch.sizes[:, 1].tolist())
    return widths, stream.skipped_by_reason


ALL_GOOD = {12 + i for i in range(GOOD)}


# ---------------------------------------------------------------------------------------------
# Endless hangs: a FIFO among the images, a shard set that never yields


def test_a_fifo_named_like_an_image_is_skipped_when_listing(tmp_path, capsys):
    zoo = write_zoo(tmp_path / "photos")
    fifos = [zoo["fifo"]]
    source = finishes(lambda: ImageFolderSource(tmp_path / "photos"), fifos=fifos)
    assert str(zoo["fifo"]) not in source.paths and str(zoo["dangling"]) not in source.paths
    report = finishes(lambda: inspect_folder(str(tmp_path / "photos")), fifos=fifos)
    assert report["skipped_non_regular_files"] == 1 and report["decodable"] == GOOD
    written = finishes(lambda: folder_to_shards(str(tmp_path / "photos"), str(tmp_path / "s-%06d.tar")), fifos=fifos)
    assert written["skipped_non_regular_files"] == 1 and written["samples"] == GOOD + 5
    assert finishes(lambda: main(["data", "inspect", str(tmp_path / "photos")]), fifos=fifos) == 0
    assert "skipped_non_regular_files: 1" in capsys.readouterr().out


def write_tar(path: Path, members: Dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png_bytes(index: int) -> bytes:
    buffer = io.BytesIO()
    good_image(index).save(buffer, format="PNG")
    return buffer.getvalue()


def broken_shards(root: Path) -> str:
    """Four shards of which none yields a sample: garbage, empty, a cut header, no members."""
    root.mkdir()
    write_tar(root / "full.tar", {f"{i:03d}.png": png_bytes(i) for i in range(3)})
    (root / "b-0.tar").write_bytes(np.random.default_rng(1).bytes(3000))
    (root / "b-1.tar").write_bytes(b"")
    (root / "b-2.tar").write_bytes((root / "full.tar").read_bytes()[:300])
    write_tar(root / "b-3.tar", {})
    return str(root / "b-{0..3}.tar")


SHARD_REASONS = r"ReadError: invalid header|empty file|ReadError: truncated header|no sample in the shard"


@pytest.mark.parametrize("num_workers", [0, WITH_A_WORKER])
def test_a_shard_set_that_yields_nothing_stops_naming_the_pattern_and_reason(tmp_path, num_workers):
    pattern = broken_shards(tmp_path / "shards")
    stream = ShardStream(pattern, batch_size=4, seed=0, num_workers=num_workers)
    with pytest.raises(AnnobootError, match=SHARD_REASONS) as error:
        finishes(lambda: next(stream), seconds=20)
    message = str(error.value)
    assert pattern in message and "Traceback" not in message and "\n" not in message


def test_a_bad_shard_among_good_ones_is_skipped_with_a_warning(tmp_path, caplog):
    write_tar(tmp_path / "s-0.tar", {f"{i:03d}.png": png_bytes(i) for i in range(GOOD)})
    (tmp_path / "s-1.tar").write_bytes(np.random.default_rng(2).bytes(2000))
    with tarfile.open(tmp_path / "s-0.tar") as tar:
        third = tar.getmembers()[2]
    end = third.offset_data + third.size
    (tmp_path / "s-2.tar").write_bytes((tmp_path / "s-0.tar").read_bytes()[:end])  # 3 samples, then a cut
    stream = ShardStream(str(tmp_path / "s-{0..2}.tar"), batch_size=4, seed=0, num_workers=0, shuffle_buffer=8)
    with caplog.at_level("WARNING", logger="annoboot.data.shard_failures"):
        widths, reasons = finishes(lambda: widths_and_reasons(stream, 12), seconds=20)
    assert widths == ALL_GOOD and reasons == {}
    assert "unreadable shard" in caplog.text and "s-1.tar" in caplog.text and "invalid header" in caplog.text


# ---------------------------------------------------------------------------------------------
# The zoo, fed to every source kind that reads files


def test_image_folder_training_and_eval_skip_the_zoo(tmp_path):
    zoo = write_zoo(tmp_path / "photos")
    cfg = SourceConfig(kind="image_folder", root=str(tmp_path / "photos"), num_workers=0, max_bad_fraction=1.0)
    stream = finishes(lambda: build_stream(cfg, batch_size=4, seed=0, device="cpu"), fifos=[zoo["fifo"]])
    widths, reasons = finishes(lambda: widths_and_reasons(stream, 12), fifos=[zoo["fifo"]])
    assert widths == ALL_GOOD and set(reasons) == ZOO_REASONS
    source = build_source(cfg)
    batches = finishes(lambda: list(iter_eval_batches(source, batch_size=4)), fifos=[zoo["fifo"]])
    assert sum(len(b) for b in batches) == GOOD


def test_decoded_in_memory_the_zoo_keeps_its_reasons(tmp_path):
    from annoboot.data.cache import cache_decoded
    from annoboot.data.stream import BatchStream

    zoo = write_zoo(tmp_path / "photos")
    source = finishes(lambda: cache_decoded(ImageFolderSource(tmp_path / "photos"), budget_mb=16, progress=False),
                      fifos=[zoo["fifo"]])
    stream = BatchStream(source, batch_size=4, seed=1, max_bad_fraction=1.0)
    widths, reasons = finishes(lambda: widths_and_reasons(stream, 12), fifos=[zoo["fifo"]])
    assert widths == ALL_GOOD and set(reasons) == ZOO_REASONS


@pytest.mark.parametrize("decode_on", ["cpu", "device"])
def test_shards_written_from_the_zoo_train_on_the_good_images(tmp_path, decode_on):
    zoo = write_zoo(tmp_path / "photos")
    finishes(lambda: folder_to_shards(str(tmp_path / "photos"), str(tmp_path / "zoo-%06d.tar"), max_count=4),
             fifos=[zoo["fifo"]])
    (tmp_path / "garbage.tar").write_bytes(np.random.default_rng(3).bytes(700))
    os.mkfifo(tmp_path / "pipe.tar")  # not a regular file: left out like a missing shard
    pattern = f"{tmp_path / 'zoo-{000000..000002}.tar'}::{tmp_path / 'garbage.tar'}::{tmp_path / 'pipe.tar'}"
    stream = ShardStream(pattern, batch_size=4, seed=0, num_workers=0, max_bad_fraction=1.0, decode_on=decode_on,
                         shuffle_buffer=8)
    widths, reasons = finishes(lambda: widths_and_reasons(stream, 16), fifos=[tmp_path / "pipe.tar"])
    assert widths == ALL_GOOD and set(reasons) == ZOO_REASONS


def write_twins(zoo: Dict[str, Path], make_fifo_twin: str = "good0") -> None:
    """A caption beside every zoo file, and a FIFO posing as one good image's caption."""
    for case, path in zoo.items():
        if case not in ("fifo", "dangling", "directory", make_fifo_twin):
            path.with_suffix(".txt").write_text(f"a picture of {case}\n")
    os.mkfifo(zoo[make_fifo_twin].with_suffix(".txt"))


@pytest.mark.parametrize("kind", ["captioned_folder", "tuxpaint"])
def test_captioned_folders_skip_the_zoo_and_never_open_a_fifo_caption(tmp_path, kind):
    zoo = write_zoo(tmp_path / "stamps" / "animals")
    write_twins(zoo)
    fifos = [zoo["fifo"], zoo["good0"].with_suffix(".txt")]
    cfg = SourceConfig(kind=kind, root=str(tmp_path / "stamps"), split="all", num_workers=0, max_bad_fraction=1.0)
    source = finishes(lambda: build_source(cfg), fifos=fifos)
    assert str(zoo["good0"]) not in source.paths  # its caption is a FIFO: no caption, left out
    stream = build_stream(cfg, batch_size=4, seed=0, device="cpu", source=source)
    widths, reasons = finishes(lambda: widths_and_reasons(stream, 12), fifos=fifos)
    tuxpaint_reads = ZOO_REASONS - {"truncated"}  # Tux Paint stamps are PNGs: the JPEG is not listed
    assert widths == ALL_GOOD - {12} and set(reasons) == (tuxpaint_reads if kind == "tuxpaint" else ZOO_REASONS)


def test_openclipart_layout_skips_the_zoo_and_never_opens_a_fifo_twin(tmp_path):
    zoo = write_zoo(tmp_path / "png" / "animals")
    svg = tmp_path / "svg" / "animals"
    svg.mkdir(parents=True)
    for case, path in zoo.items():
        if case not in ("fifo", "dangling", "directory", "good0"):
            (svg / path.with_suffix(".svg").name).write_text(f"<svg><dc:title>{case} drawing</dc:title></svg>")
    os.mkfifo(svg / "good0.svg")  # its title would be read from a FIFO
    fifos = [zoo["fifo"], svg / "good0.svg"]
    cfg = SourceConfig(kind="openclipart", root=str(tmp_path), split="all", num_workers=0, max_bad_fraction=1.0)
    source = finishes(lambda: build_source(cfg), fifos=fifos)
    stream = build_stream(cfg, batch_size=4, seed=0, device="cpu", source=source)
    widths, reasons = finishes(lambda: widths_and_reasons(stream, 12), fifos=fifos)
    assert widths == ALL_GOOD - {12} and set(reasons) == ZOO_REASONS  # good0 has no title: left out


def test_video_folder_skips_unreadable_and_special_files(tmp_path, caplog):
    av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")
    root = tmp_path / "videos"
    root.mkdir()
    with av.open(str(root / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mkv").write_bytes(np.random.default_rng(4).bytes(4000))
    (root / "folder.mp4").mkdir()
    os.mkfifo(root / "pipe.mp4")
    (root / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    cfg = SourceConfig(kind="video_folder", root=str(root), num_workers=0)
    with caplog.at_level("WARNING", logger="annoboot.data.video"):
        source = finishes(lambda: build_source(cfg), fifos=[root / "pipe.mp4"])
    assert len(source) == 8 and source.videos == [str(root / "clip.mp4")]
    assert "skipped 2 unreadable video(s)" in caplog.text and "2 non-regular" in caplog.text
    batch = finishes(lambda: next(build_stream(cfg, batch_size=4, seed=0, device="cpu", source=source)))
    assert batch.images.shape[:2] == (4, 3)


def test_inspect_reports_the_zoo_by_stable_reason_without_a_traceback(tmp_path, capsys):
    zoo = write_zoo(tmp_path / "photos")
    assert finishes(lambda: main(["data", "inspect", str(tmp_path / "photos")]), fifos=[zoo["fifo"]]) == 0
    out = capsys.readouterr().out
    for reason in ZOO_REASONS:
        assert f"  {reason}  (e.g." in out
    assert f"decodable: {GOOD}" in out and "bad: " in out and "Traceback" not in out


@pytest.mark.parametrize("num_workers", [0, WITH_A_WORKER])
def test_fault_a_hung_read_stops_the_stream_naming_the_file(tmp_path, monkeypatch, num_workers):
    """A read that never returns (a hung network file system, simulated by a read that sleeps
    past data.<stream>.read_timeout) stops the stream with one line naming the file, in the
    process and from a loader worker, instead of stalling the run."""
    from helpers import index_folder

    from annoboot.data import timed_reads

    folder = index_folder(tmp_path / "images", 16)
    hung = str(folder / "0005.png")
    read = timed_reads._read

    def read_or_hang(path):
        if path == hung:
            time.sleep(3)
        return read(path)

    monkeypatch.setattr(timed_reads, "_read", read_or_hang)  # before the loader forks its worker
    cfg = SourceConfig(kind="image_folder", root=str(folder), read_timeout=0.5, num_workers=num_workers, cache_mb=0)
    stream = build_stream(cfg, batch_size=16, seed=0, device="cpu")
    with pytest.raises(AnnobootError) as raised:
        next(stream)
    message = raised.value.plain_message
    assert "0005.png" in message and "0.5 s" in message and "read_timeout" in message and "\n" not in message
    stream.close()


def test_a_read_stuck_for_good_gives_up_in_a_thread_that_does_not_hold_up_the_exit(tmp_path):
    """A FIFO without a writer blocks whoever opens it, as a read on a hung mount does. The read
    gives up naming the file, and the thread left stuck in it is a daemon: Python would wait for
    any other kind at exit, so a run stopped by a hung read would never end."""
    from annoboot.data import timed_reads

    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    with pytest.raises(timed_reads.ReadTimedOut, match="stuck.png: reading it took more than 0.3 s"):
        timed_reads.read_file(str(fifo), timeout=0.3)
    readers = [t for t in threading.enumerate() if t.name.startswith("annoboot-read")]
    assert readers and all(t.daemon for t in readers)
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the stuck reader: end of file
    (tmp_path / "fine.png").write_bytes(b"fine")
    assert timed_reads.read_file(str(tmp_path / "fine.png"), timeout=5) == b"fine"


@pytest.mark.slow  # a fresh interpreter
def test_a_process_stopped_by_a_hung_read_exits_at_once(tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    code = ("import sys; from annoboot.data import timed_reads\n"
            "try:\n    timed_reads.read_file(sys.argv[1], timeout=0.3)\n"
            "except timed_reads.ReadTimedOut as exc:\n    print(exc.plain_message)")
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    finally:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a hung child: let it go
        except OSError:
            pass
    assert done.returncode == 0 and "stuck.png" in done.stdout, done.stderr
    assert time.monotonic() - started < 30  # the import and 0.3 s, not the stuck read


@pytest.mark.parametrize("num_workers", [0, WITH_A_WORKER])
def test_fault_a_hung_shard_read_stops_the_stream_naming_the_shard(tmp_path, monkeypatch, num_workers):
    """The same for webdataset shards: a read of a local shard that hangs past read_timeout."""
    from helpers import index_folder

    from annoboot.data import timed_reads

    index_folder(tmp_path / "images", 16)
    folder_to_shards(str(tmp_path / "images"), str(tmp_path / "s-%06d.tar"), max_count=8)
    hung = str(tmp_path / "s-000001.tar")

    class HangingFile(io.FileIO):
        def readinto(self, buffer):
            time.sleep(3)
            return super().readinto(buffer)

    def open_or_hang(path, mode="r", *args):
        return HangingFile(path, "rb") if path == hung else open(path, mode, *args)

    monkeypatch.setattr(timed_reads, "open", open_or_hang, raising=False)  # before the loader forks its worker
    pattern = str(tmp_path / "s-{000000..000001}.tar")
    stream = ShardStream(pattern, batch_size=4, seed=0, num_workers=num_workers, read_timeout=0.5, shuffle_buffer=1)
    with pytest.raises(AnnobootError) as raised:
        for _ in range(8):  # 16 images in 2 shards: the hung one comes within the first few batches
            next(stream)
    message = raised.value.plain_message
    assert "s-000001.tar" in message and "0.5 s" in message and "read_timeout" in message and "\n" not in message
    stream.close()  # the worker quits now (its stuck reader thread does not hold it up), not in a later test
