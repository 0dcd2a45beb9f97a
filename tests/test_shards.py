"""WebDataset shards: writing from a folder, streaming with bad samples, training, inspecting."""

import contextlib
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from annoboot.cli import main
from annoboot.data import ShardStream
from annoboot.data import decode as decode_module
from annoboot.data import shards as shard_module
from annoboot.data.shards import count_shard_samples, expand_shard_pattern
from annoboot.data.tools import folder_to_shards, inspect_folder
from annoboot.errors import AnnobootError
from annoboot.train import Trainer


def photo(seed: int, size=(48, 40)) -> Image.Image:
    """A smooth colour image (gradients plus noise), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * rng.uniform(1, 5), y * rng.uniform(1, 5), (x + y) * rng.uniform(1, 3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(20):
        photo(i).save(root / ("sub" if i % 2 else "") / f"img{i:02d}.{'jpg' if i % 3 else 'png'}")
        if i % 4 == 0:
            (root / ("sub" if i % 2 else "") / f"img{i:02d}.txt").write_text(f"a photo number {i}\nsecond line")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root


def test_write_shards_keeps_every_image_and_caption(folder, tmp_path):
    report = folder_to_shards(str(folder), str(tmp_path / "shards" / "train-%06d.tar"), max_count=8)
    assert report["samples"] == 22 and report["with_caption"] == 5
    assert len(report["shards"]) == 3
    counts = count_shard_samples(expand_shard_pattern(str(tmp_path / "shards" / "train-{000000..000002}.tar")))
    assert counts == {"shards": 3, "samples": 22, "image_members": 22, "unreadable_shards": {}}
    with tarfile.open(report["shards"][0]) as tar:
        texts = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    assert "a photo number 0" in texts


def test_shard_stream_batches_and_counts_bad_samples(folder, tmp_path):
    folder_to_shards(str(folder), str(tmp_path / "s-%06d.tar"), max_count=6)
    stream = ShardStream(str(tmp_path / "s-{000000..000003}.tar"), batch_size=8, seed=0, num_workers=0, max_short_side=32)
    batches = [next(stream) for _ in range(12)]
    assert all(b.images.dtype == torch.uint8 and b.images.shape[1] == 3 for b in batches)
    assert all(int(b.sizes.min()) <= 32 for b in batches)  # short side capped at decode time
    assert stream.skipped > 0  # the corrupt and the empty file were met, skipped and counted
    assert all(len(b) == 8 for b in batches)  # batches that lost samples are filled back to 8
    state = stream.state_dict()
    resumed = ShardStream(str(tmp_path / "s-{000000..000003}.tar"), batch_size=8, seed=0, num_workers=0)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["generation"] == 1 and resumed.skipped == state["skipped"]
    assert len(next(resumed)) > 0


def test_ranks_draw_different_samples(folder, tmp_path):
    folder_to_shards(str(folder), str(tmp_path / "s-%06d.tar"), max_count=4)
    pattern = str(tmp_path / "s-{000000..000005}.tar")
    a = next(ShardStream(pattern, 8, seed=0, num_workers=0, rank=0, world_size=2, max_short_side=16))
    b = next(ShardStream(pattern, 8, seed=0, num_workers=0, rank=1, world_size=2, max_short_side=16))
    assert len(a) <= 4 and len(b) <= 4
    assert a.images.shape != b.images.shape or not torch.equal(a.images, b.images)


def test_missing_shards_name_the_pattern(tmp_path):
    with pytest.raises(AnnobootError, match="nowhere"):
        ShardStream(str(tmp_path / "nowhere-{000..003}.tar"), 8, 0)


def test_training_reads_the_bootstrap_batch_from_shards(folder, tmp_path, tiny_config):
    folder_to_shards(str(folder), str(tmp_path / "s-%06d.tar"), max_count=8)
    cfg = tiny_config("method.name=ab_simclr", "train.steps=2", "train.log_every=2", "train.batch_size=32",
                      "data.bootstrap.kind=webdataset", f"data.bootstrap.root={tmp_path / 's-{000000..000002}.tar'}",
                      "data.bootstrap.num_workers=0")
    trainer = Trainer(cfg)
    assert isinstance(trainer.streams["bootstrap"], ShardStream)
    last = trainer.fit()
    assert np.isfinite(last["loss/bootstrap"])


def test_inspect_reports_bad_files_by_reason(folder, capsys):
    report = inspect_folder(str(folder))
    assert report["files"] == 22 and report["decodable"] == 20 and report["bad"] == 2
    assert "empty file" in report["bad_by_reason"]
    assert main(["data", "inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "bad:" in out and "broken.jpg" in out


# ---------------------------------------------------------------------------------------------
# Weighted mixing of several shard sets


def write_tar(path, samples):
    """Write (key, {ext: bytes}) samples into one webdataset tar at ``path``."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for key, members in samples:
            sink.write({"__key__": key, **members})


def png_bytes(rgb, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mixed_shard_sets_follow_their_weights(tmp_path):
    for name, rgb, shards in [("red", (255, 0, 0), 2), ("blue", (0, 0, 255), 1)]:
        for s in range(shards):
            samples = [(f"{name}{s}_{i:03d}", {"png": png_bytes(rgb)}) for i in range(30)]
            write_tar(tmp_path / f"{name}-{s}.tar", samples)
    pattern = f"{tmp_path / 'red-{0..1}.tar'}::{tmp_path / 'blue-0.tar'}"

    def red_fraction(weights, seed=0):
        stream = ShardStream(pattern, batch_size=50, seed=seed, num_workers=0, mix_weights=weights, shuffle_buffer=100)
        images = torch.cat([next(stream).images for _ in range(8)])
        return (images[:, 0, 0, 0] == 255).float().mean().item()

    assert abs(red_fraction([0.8, 0.2]) - 0.8) < 0.06  # 400 samples: 3 standard deviations
    assert abs(red_fraction([1, 3], seed=1) - 0.25) < 0.07  # weights need not sum to 1
    assert red_fraction([1, 0]) == 1.0
    assert red_fraction([0.8, 0.2]) == red_fraction([0.8, 0.2])  # seeded: the same draws again
    pooled = ShardStream(pattern, batch_size=50, seed=0, num_workers=0, shuffle_buffer=100)
    assert len(pooled.urls) == 3


@pytest.mark.parametrize("weights, problem", [([1.0], "1 weight"), ([1.0, -0.5], ">= 0"), ([0.0, 0.0], "positive sum")])
def test_mix_weights_are_checked_against_the_patterns(tmp_path, weights, problem):
    from annoboot.config import load_config

    overrides = ["data.bootstrap.kind=webdataset", f"data.bootstrap.root={tmp_path / 'a.tar'}::{tmp_path / 'b.tar'}",
                 f"data.bootstrap.mix_weights=[{', '.join(map(str, weights))}]"]
    with pytest.raises(AnnobootError, match=f"data.bootstrap.mix_weights.*{problem}"):
        load_config(None, overrides)
    with pytest.raises(AnnobootError, match="webdataset only"):
        load_config(None, ["data.annotation.kind=image_folder", "data.annotation.root=x",
                           "data.annotation.mix_weights=[1]"])


def test_a_mostly_bad_shard_set_stops_with_a_clear_message(tmp_path):
    good = png_bytes((10, 200, 30))
    members = [{"jpg": good if i % 5 == 0 else b"\xff\xd8\xff broken"} for i in range(100)]  # 80% bad
    write_tar(tmp_path / "bad-0.tar", [(f"{i:04d}", m) for i, m in enumerate(members)])
    pattern = str(tmp_path / "bad-0.tar")
    stream = ShardStream(pattern, batch_size=32, seed=0, num_workers=0, shuffle_buffer=50)
    with pytest.raises(AnnobootError) as error:
        for _ in range(20):
            next(stream)
    message = str(error.value)
    assert pattern in message and "of 256 images" in message and "max_bad_fraction=0.5" in message
    assert f"annoboot data inspect '{pattern}'" in message and "not an image" in message
    assert 0.7 < stream.skipped / 256 < 0.9
    lenient = ShardStream(pattern, batch_size=32, seed=0, num_workers=0, shuffle_buffer=50, max_bad_fraction=1.0)
    assert all(len(next(lenient)) for _ in range(10))


def test_inspect_decodes_shards_and_reports_bad_samples(tmp_path, capsys):
    samples = [("a", {"png": png_bytes((1, 2, 3))}), ("b", {"jpg": b""}), ("c", {"jpg": b"\xff\xd8 no"})]
    write_tar(tmp_path / "s-0.tar", samples)
    assert main(["data", "inspect", str(tmp_path / "s-0.tar")]) == 0
    out = capsys.readouterr().out
    assert "samples: 3" in out and "decodable: 1" in out and "bad: 2" in out
    assert "empty file" in out and "s-0.tar:c.jpg" in out


# ---------------------------------------------------------------------------------------------
# Decoding JPEGs on the device


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory):
    """Two shards of real photos as JPEG (scikit-image's), plus one PNG, one grayscale, one CMYK
    and one EXIF-rotated JPEG, a truncated JPEG and a text file posing as one."""
    skdata = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("jpeg_shards")

    def jpeg(image: Image.Image, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90, **kwargs)
        return buffer.getvalue()

    photos = [Image.fromarray(p) for p in (skdata.astronaut(), skdata.chelsea(), skdata.coffee())]
    members = [{"jpg": jpeg(p)} for p in photos]
    members += [{"jpg": jpeg(p.crop((0, 0, 200 + 30 * i, 150 + 20 * i)))} for i, p in enumerate(photos)]
    members.append({"png": png_bytes((40, 90, 200), size=(150, 120))})
    members.append({"jpg": jpeg(photos[1].convert("L"))})
    members.append({"jpg": jpeg(photos[2].convert("CMYK"))})
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the device decoder would ignore the tag, the worker applies it
    members.append({"jpg": jpeg(photos[1], exif=exif)})
    members.append({"jpg": members[0]["jpg"][: len(members[0]["jpg"]) // 2]})  # truncated
    members.append({"jpg": b"this is not a JPEG"})
    write_tar(root / "p-0.tar", [(f"{i:03d}", m) for i, m in enumerate(members[:6])])
    write_tar(root / "p-1.tar", [(f"{i:03d}", m) for i, m in enumerate(members[6:], 6)])
    return str(root / "p-{0..1}.tar")


def compare_device_and_cpu_decoding(pattern: str, device: str) -> None:
    common = {"batch_size": 12, "seed": 3, "num_workers": 0, "max_short_side": 160, "shuffle_buffer": 12}
    common["max_bad_fraction"] = 1.0  # 2 of 11 samples are bad: fine here
    on_cpu = ShardStream(pattern, decode_on="cpu", **common)
    on_device = ShardStream(pattern, device=device, decode_on="device", **common)
    for _ in range(3):
        a, b = next(on_cpu), next(on_device)
        assert b.images.device.type == torch.device(device).type
        assert torch.equal(a.sizes, b.sizes.cpu())  # the same samples, the same capped sizes
        for i, (h, w) in enumerate(a.sizes.tolist()):
            difference = (a.image(i).float() - b.image(i).cpu().float()).abs().mean()
            assert difference < 4, (i, h, w, float(difference))
    assert on_device.skipped == on_cpu.skipped > 0  # the truncated and the fake JPEG
    assert set(on_device.skipped_by_reason) == {"truncated", "not an image"}


def test_device_jpeg_decoding_matches_the_cpu_decoder(jpeg_shards):
    compare_device_and_cpu_decoding(jpeg_shards, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_jpeg_decoding_matches_the_cpu_decoder(jpeg_shards):
    compare_device_and_cpu_decoding(jpeg_shards, "cuda")


def jpeg_bytes(seed: int, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    photo(seed, size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_batch_of_jpegs_leaves_the_worker_as_one_tensor():
    samples = [{"jpg": jpeg_bytes(0)}, {"png": png_bytes((1, 2, 3))}, {"jpg": jpeg_bytes(1, (30, 60))},
               {"jpg": b"\xff\xd8\xff broken"}, {"jpg": jpeg_bytes(2)}]
    pixels, data, lengths, captions, tokens, reasons = shard_module._collate_encoded(
        [shard_module.read_sample(sample, max_short_side=32) for sample in samples]
    )
    sent = [pixels, data, lengths, captions, tokens, reasons]
    tensors = [x for x in sent if isinstance(x, torch.Tensor)] + [p for p in pixels if p is not None]
    assert len(tensors) == 3  # the JPEGs' bytes, their lengths and the PNG decoded in the worker
    assert data.dtype == torch.uint8 and data.dim() == 1 and lengths.dtype == torch.int64
    assert lengths.tolist() == [len(samples[0]["jpg"]), 0, len(samples[2]["jpg"]), 0, len(samples[4]["jpg"])]
    jpegs = shard_module.split_jpegs(data, lengths)
    for i in (0, 2, 4):
        assert jpegs[i].numpy().tobytes() == samples[i]["jpg"]  # each JPEG's bytes, exactly
        assert jpegs[i].untyped_storage().data_ptr() == data.untyped_storage().data_ptr()  # a view, not a copy
    assert jpegs[1] is None and jpegs[3] is None
    assert pixels[1].shape[0] == 3 and [p is None for p in pixels] == [True, False, True, True, True]
    assert reasons == {"not an image": 1} and captions == [None] * 5 and tokens is None


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


# ---------------------------------------------------------------------------------------------
# Every format the writer packs is one the reader decodes; unreadable shards are reported


def test_write_shards_packs_bmp_gif_tif_that_training_reads_back(tmp_path, capsys):
    root = tmp_path / "formats"
    root.mkdir()
    suffixes = ("bmp", "gif", "tif", "tiff", "png", "jpg", "jpeg", "webp")
    for i, suffix in enumerate(suffixes):
        photo(i, size=(20 + i, 16)).save(root / f"img{i}.{suffix}")
    assert folder_to_shards(str(root), str(tmp_path / "s-%06d.tar"))["samples"] == len(suffixes)
    stream = ShardStream(str(tmp_path / "s-000000.tar"), batch_size=4, seed=0, num_workers=0, shuffle_buffer=8)
    widths = {int(w) for _ in range(8) for w in next(stream).sizes[:, 1]}
    assert widths == {20 + i for i in range(len(suffixes))} and stream.skipped == 0
    assert main(["data", "inspect", str(tmp_path / "s-000000.tar")]) == 0
    out = capsys.readouterr().out
    assert f"image_members: {len(suffixes)}" in out and f"decodable: {len(suffixes)}" in out and "bad: 0" in out


@pytest.mark.parametrize("damage, reason", [("cut", "ReadError: unexpected end of data"),
                                            ("garbage", "ReadError: invalid header"), ("empty", "empty file")])
def test_inspect_reports_an_unreadable_shard_by_reason_without_a_traceback(tmp_path, capsys, damage, reason):
    samples = [(f"{i:03d}", {"png": png_bytes((i, 2, 3), size=(40, 30))}) for i in range(4)]
    write_tar(tmp_path / "s-0.tar", samples)
    with tarfile.open(tmp_path / "s-0.tar") as tar:
        second = tar.getmembers()[1]
    damaged = {"cut": (tmp_path / "s-0.tar").read_bytes()[: second.offset_data + 10],
               "garbage": np.random.default_rng(0).bytes(1500), "empty": b""}[damage]
    (tmp_path / "s-1.tar").write_bytes(damaged)
    assert main(["data", "inspect", str(tmp_path / "s-{0..1}.tar")]) == 0
    out = capsys.readouterr().out
    assert "unreadable_shards: 1" in out and f"  {reason}  (e.g. {tmp_path / 's-1.tar'})" in out
    assert "decodable: " in out and "Traceback" not in out
