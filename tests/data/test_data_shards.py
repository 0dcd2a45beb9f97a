"""annoboot.data.shards: WebDataset shards written from a folder, streamed with bad samples,
mixed by weight, decoded on the device, captioned, and read by training."""

import io
import tarfile

import numpy as np
import pytest
import torch
from helpers import _png_bytes, _TokenizerCountingMainProcessCalls, jpeg_bytes, photo, png_bytes, write_tar
from PIL import Image

from annoboot.cli import main
from annoboot.data import ShardStream, shard_samples
from annoboot.data.shard_files import count_shard_samples
from annoboot.data.shards import expand_shard_pattern
from annoboot.data.tools import folder_to_shards
from annoboot.errors import AnnobootError
from annoboot.train import Trainer


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


def test_a_batch_of_jpegs_leaves_the_worker_as_one_tensor():
    samples = [{"jpg": jpeg_bytes(0)}, {"png": png_bytes((1, 2, 3))}, {"jpg": jpeg_bytes(1, (30, 60))},
               {"jpg": b"\xff\xd8\xff broken"}, {"jpg": jpeg_bytes(2)}]
    pixels, data, lengths, captions, tokens, reasons = shard_samples.collate_encoded(
        [shard_samples.read_sample(sample, max_short_side=32) for sample in samples]
    )
    sent = [pixels, data, lengths, captions, tokens, reasons]
    tensors = [x for x in sent if isinstance(x, torch.Tensor)] + [p for p in pixels if p is not None]
    assert len(tensors) == 3  # the JPEGs' bytes, their lengths and the PNG decoded in the worker
    assert data.dtype == torch.uint8 and data.dim() == 1 and lengths.dtype == torch.int64
    assert lengths.tolist() == [len(samples[0]["jpg"]), 0, len(samples[2]["jpg"]), 0, len(samples[4]["jpg"])]
    jpegs = shard_samples.split_jpegs(data, lengths)
    for i in (0, 2, 4):
        assert jpegs[i].numpy().tobytes() == samples[i]["jpg"]  # each JPEG's bytes, exactly
        assert jpegs[i].untyped_storage().data_ptr() == data.untyped_storage().data_ptr()  # a view, not a copy
    assert jpegs[1] is None and jpegs[3] is None
    assert pixels[1].shape[0] == 3 and [p is None for p in pixels] == [True, False, True, True, True]
    assert reasons == {"not an image": 1} and captions == [None] * 5 and tokens is None


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


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shard_samples_without_caption_or_image_are_skipped_and_counted(tmp_path):
    good = [(f"g{i}", {"png": _png_bytes((i, 50, 0)), "txt": f"a shape number {i}".encode()}) for i in range(12)]
    no_caption = [("nocap", {"png": _png_bytes((1, 2, 3))}), ("empty", {"png": _png_bytes((1, 2, 3)), "txt": b"  \n"})]
    broken = [("broken", {"png": b"\x89PNG not really", "txt": b"a broken file"})]
    _write_shard(tmp_path / "s-0.tar", good + no_caption + broken)
    stream = ShardStream(str(tmp_path / "s-0.tar"), batch_size=4, seed=0, num_workers=0, shuffle_buffer=1, require_captions=True)
    batches = [next(stream) for _ in range(12)]
    assert all(b.captions is not None and all(c.startswith("a shape number") for c in b.captions) for b in batches)
    assert all(len(b.captions) == len(b) for b in batches)
    assert stream.skipped > 0  # 3 of every 15 resampled samples are unusable: counted, never fatal
    captionless = ShardStream(str(tmp_path / "s-0.tar"), batch_size=4, seed=0, num_workers=0, shuffle_buffer=1)
    assert any("" in next(captionless).captions for _ in range(12))  # kept, with an empty caption


@pytest.mark.parametrize("decode_on", ["cpu", "device"])
def test_shard_streams_tokenise_captions_in_their_workers(tmp_path, decode_on):
    from PIL import Image

    def jpeg_bytes(color):
        buffer = io.BytesIO()
        Image.new("RGB", (12, 10), color).save(buffer, format="JPEG")
        return buffer.getvalue()

    # JPEGs (decoded by the device path after the workers), PNGs, and a broken file whose
    # caption and tokens must leave the batch together.
    samples = [(f"g{i}", {"jpg" if i % 2 else "png": (jpeg_bytes if i % 2 else _png_bytes)((i * 20, 50, 0)),
                          "txt": f"a shape number {i}".encode()}) for i in range(10)]
    samples.append(("broken", {"jpg": b"\xff\xd8 not really", "txt": b"a broken file"}))
    _write_shard(tmp_path / "s-0.tar", samples)
    tokenize = _TokenizerCountingMainProcessCalls()
    stream = ShardStream(str(tmp_path / "s-0.tar"), batch_size=4, seed=0, num_workers=1, shuffle_buffer=1,
                         require_captions=True, decode_on=decode_on, tokenize=tokenize)
    batches = [next(stream) for _ in range(6)]
    assert tokenize.main_process_calls == 0
    assert stream.skipped > 0
    for batch in batches:
        assert "a broken file" not in batch.captions
        assert torch.equal(batch.caption_tokens, tokenize.tokenizer(batch.captions))
