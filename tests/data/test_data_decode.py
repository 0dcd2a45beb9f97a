"""annoboot.data.decode: the awkward files real folders hold, size and pixel caps, orientation,
failure reasons, and batched JPEG decoding on the device."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import jpeg_bytes, natural_photos, png_claiming, write_index_png
from PIL import Image

from annoboot.data import ImageFolderSource
from annoboot.data import device_decode as decode_module


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """One file per awkward case; returns {case name: path}."""
    root = tmp_path_factory.mktemp("zoo")
    photo = natural_photos(1)[0]
    files = {}

    def path(name: str) -> Path:
        files[name.split(".")[0]] = root / name
        return root / name

    Image.fromarray(photo).save(path("good.jpg"), quality=90)
    good_jpeg = files["good"].read_bytes()
    path("truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    path("empty.jpg").write_bytes(b"")
    path("text.png").write_text("this is a text file, not a PNG\n")
    Image.new("RGB", (40, 30), (255, 0, 0)).convert("CMYK").save(path("cmyk.jpg"), quality=95)
    gradient16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(gradient16).save(path("gray16.png"))
    Image.fromarray(photo).quantize(16).save(path("palette.png"))
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 2] = 255  # blue, opaque on the left half, fully transparent on the right
    rgba[:, :15, 3] = 255
    Image.fromarray(rgba).save(path("rgba.png"))
    Image.fromarray(photo).convert("L").save(path("gray.png"))
    Image.fromarray(photo).convert("1").save(path("bilevel.png"))
    return files


def decode(path: Path, max_short_side: int = 256):
    source = ImageFolderSource(path.parent, max_short_side=max_short_side)
    return source[source.paths.index(str(path))]


@pytest.mark.parametrize("case", ["truncated", "empty", "text"])
def test_undecodable_files_give_none_and_log_the_path(zoo, case, caplog):
    with caplog.at_level("DEBUG", logger="annoboot.data.decode"):
        assert decode(zoo[case]) is None
    assert str(zoo[case]) in caplog.text


def test_decompression_bomb_gives_none(zoo, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # good.jpg is far over 2x this
    assert decode(zoo["good"]) is None


@pytest.mark.parametrize("case", ["good", "cmyk", "gray16", "palette", "rgba", "gray", "bilevel"])
def test_decodable_files_come_back_as_rgb_uint8(zoo, case):
    image = decode(zoo[case])
    assert image is not None and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
    assert image.is_contiguous()
    if case != "cmyk":  # the CMYK file is one flat colour; the others hold a photo or gradient
        assert image.float().std() > 10


def test_cmyk_jpeg_keeps_its_colour(zoo):
    red = decode(zoo["cmyk"]).float().mean(dim=(1, 2))
    assert red[0] > 230 and red[1] < 30 and red[2] < 30


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(zoo):
    gray = decode(zoo["gray16"])
    assert gray.shape == (3, 48, 64)
    row = gray[0, 0].tolist()
    assert row[0] == 0 and row[-1] == 255
    assert row == sorted(row) and len(set(row)) > 50  # a full smooth ramp
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_rgba_is_composited_onto_white(zoo):
    image = decode(zoo["rgba"])
    assert image[:, :, :15].float().mean(dim=(1, 2)).tolist() == [0, 0, 255]
    assert image[:, :, 15:].float().mean(dim=(1, 2)).tolist() == [255, 255, 255]


def test_grayscale_and_palette_match_their_source_pixels(zoo):
    gray = decode(zoo["gray"])
    expected = torch.from_numpy(np.array(Image.open(zoo["gray"])))
    assert all(torch.equal(gray[c], expected) for c in range(3))
    palette = decode(zoo["palette"])
    expected_rgb = torch.from_numpy(np.array(Image.open(zoo["palette"]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(palette, expected_rgb)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_short_side_is_capped_keeping_aspect(tmp_path, suffix):
    photo = np.asarray(Image.fromarray(natural_photos(1)[0]).resize((640, 480)))
    Image.fromarray(photo).save(tmp_path / f"big{suffix}")
    image = ImageFolderSource(tmp_path, max_short_side=100)[0]
    assert image.shape == (3, 100, 133)
    small = ImageFolderSource(tmp_path, max_short_side=1000)[0]
    assert small.shape == (3, 480, 640)  # never upscaled
    # Downscaled, not cropped: the mean colour survives.
    assert torch.allclose(image.float().mean(dim=(1, 2)), small.float().mean(dim=(1, 2)), atol=4)


def test_exif_orientation_is_applied(tmp_path):
    photo = Image.fromarray(natural_photos(1)[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    image = ImageFolderSource(tmp_path)[0]
    assert tuple(image.shape[1:]) == (photo.width, photo.height)


def test_inspect_and_training_name_a_failure_alike(tmp_path):
    from annoboot.data.decode import failure_reason
    from annoboot.data.tools import inspect_folder

    for name in ("a.png", "b/c.png", "d/e/f.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("not an image")
    write_index_png(tmp_path / "good.png", 0)
    report = inspect_folder(str(tmp_path))
    assert list(report["bad_by_reason"]) == ["not an image"] and report["bad_by_reason"]["not an image"]["count"] == 3
    source = ImageFolderSource(tmp_path)
    assert {source.load(i)[1] for i in range(len(source))} == {None, "not an image"}
    # Paths and object addresses never split a reason's count.
    first = failure_reason(OSError("cannot read '/data/a/x.png' from <_io.BytesIO object at 0x7f3a2c1d90>"), 10)
    second = failure_reason(OSError("cannot read '/other/y.png' from <_io.BytesIO object at 0x7f99abcdef12>"), 10)
    assert first == second and "/" not in first and "0x" not in first


@pytest.mark.parametrize("side", [9_000, 10_000])  # under and over PIL's own warning at 89M pixels
def test_an_image_over_the_pixel_cap_is_a_bad_file_and_is_not_decoded(tmp_path, side):
    import warnings

    from annoboot.data.decode import MAX_IMAGE_PIXELS

    (tmp_path / "huge.png").write_bytes(png_claiming(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would say it was decoded
        image, reason = ImageFolderSource(tmp_path).load(0)
    assert image is None and reason == f"over the {MAX_IMAGE_PIXELS:,}-pixel cap"
    assert 50_000_000 < MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS


def test_a_one_pixel_image_decodes_without_a_non_writable_array_warning(tmp_path):
    import warnings

    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns (once per process) on a read-only NumPy array
        image, reason = ImageFolderSource(tmp_path).load(0)
    assert reason is None and image.flatten().tolist() == [1, 2, 3]


def test_a_bad_jpeg_leaves_the_others_decoding_in_batches(monkeypatch):
    jpegs = [torch.frombuffer(bytearray(jpeg_bytes(i)), dtype=torch.uint8) for i in range(8)]
    jpegs.insert(3, torch.frombuffer(bytearray(b"this is not a JPEG"), dtype=torch.uint8))
    call_sizes = []
    decode = decode_module._torchvision_decode_jpeg

    def counting_decode(data, device):
        call_sizes.append(len(data))
        return decode(data, device)

    monkeypatch.setattr(decode_module, "_torchvision_decode_jpeg", counting_decode)
    results = decode_module.decode_jpegs(jpegs, torch.device("cpu"), max_short_side=32)
    # halves of the failed calls, not 9 single-image calls after the failed batch
    assert call_sizes == [9, 4, 2, 2, 1, 1, 5]
    assert results[3] == (None, "not an image")
    for jpeg, (image, reason) in zip(jpegs[:3] + jpegs[4:], results[:3] + results[4:]):
        assert reason is None and torch.equal(image, decode_module.cap_short_side(decode(jpeg, torch.device("cpu")), 32))


class FakeStream:
    """Stands in for a torch.cuda.Stream; writes what is done with it to ``log``."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def synchronize(self):
        self.log.append(f"host waits for {self.name}")

    def wait_stream(self, other: "FakeStream"):
        self.log.append(f"{self.name} waits for {other.name}")


def test_device_decoder_orders_the_decode_between_the_streams(monkeypatch):
    """The CUDA stream calls of DeviceDecoder, recorded with fake streams on a CPU."""
    log, recorded = [], []
    current = [FakeStream("consumer", log)]
    created = []

    def new_stream(device=None):
        created.append(FakeStream("decode", log))
        return created[-1]

    @contextlib.contextmanager
    def use_stream(stream):
        log.append(f"enter {stream.name}")
        current.append(stream)
        yield
        current.pop()
        log.append(f"exit {stream.name}")

    def fake_decode(data, device):
        log.append(f"decode {len(data)} JPEGs on {current[-1].name}")
        return [torch.full((3, 40 + 10 * i, 48), i, dtype=torch.uint8) for i in range(len(data))]

    def record_stream(tensor, stream):
        log.append(f"record_stream {stream.name}")
        recorded.append(tensor)

    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "stream", use_stream)
    monkeypatch.setattr(torch.Tensor, "record_stream", record_stream)
    monkeypatch.setattr(decode_module, "_torchvision_decode_jpeg", fake_decode)
    jpegs = [torch.zeros(10, dtype=torch.uint8)] * 3

    on_cpu = decode_module.DeviceDecoder("cpu").decode(jpegs, max_short_side=45)
    assert log == ["decode 3 JPEGs on consumer"] and not created and not recorded  # no streams on a CPU
    log.clear()

    decoder = decode_module.DeviceDecoder("cuda")
    for _ in range(2):
        results = decoder.decode(jpegs, max_short_side=45)
        assert log == [
            "host waits for decode",  # its earlier work done: no queued kernel uses its free blocks
            "decode waits for consumer",
            "enter decode",
            "decode 3 JPEGs on decode",
            "exit decode",
            "consumer waits for decode",
            *["record_stream consumer"] * 3,
        ]
        assert len(recorded) == 3 and all(r is image for r, (image, _) in zip(recorded, results))
        assert [min(image.shape[1:]) for image, _ in results] == [40, 45, 45]  # the capped images are recorded
        log.clear()
        recorded.clear()
    assert len(created) == 1  # one decode stream, made at first use
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(on_cpu, results))


@pytest.mark.parametrize("kind", ["image_folder", "captioned_folder"])
def test_the_pixel_cap_is_an_option_of_every_file_source(tmp_path, kind):
    from annoboot.config import SourceConfig
    from annoboot.data import build_source

    Image.new("RGB", (120, 100), (9, 9, 9)).save(tmp_path / "photo.png")  # 12,000 pixels
    (tmp_path / "photo.txt").write_text("a dark photo")
    default = build_source(SourceConfig(kind=kind, root=str(tmp_path), split="all"))
    image, reason = default.load(0)
    assert reason is None and image.shape == (3, 100, 120)
    capped = build_source(SourceConfig(kind=kind, root=str(tmp_path), split="all", max_pixels=11_999))
    assert capped.load(0) == (None, "over the 11,999-pixel cap")
    assert build_source(SourceConfig(kind=kind, root=str(tmp_path), split="all", max_pixels=12_000)).load(0)[1] is None


def test_shard_samples_meet_the_same_cap():
    from annoboot.data.shard_samples import decode_sample, read_sample

    buffer = __import__("io").BytesIO()
    Image.new("RGB", (120, 100), (9, 9, 9)).save(buffer, format="PNG")
    sample = {"__key__": "a", "png": buffer.getvalue()}
    assert decode_sample(sample, 256)[3] is None and read_sample(sample, 256)[3] is None
    assert decode_sample(sample, 256, max_pixels=11_999)[3] == "over the 11,999-pixel cap"
    assert read_sample(sample, 256, max_pixels=11_999)[3] == "over the 11,999-pixel cap"
