"""WebDataset shards: writing from a folder, streaming with bad samples, training, inspecting."""

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from annoboot.cli import main
from annoboot.data import ShardStream
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
    assert counts == {"shards": 3, "samples": 22, "image_members": 22}
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
    assert sum(len(b) for b in batches) + stream.skipped == 12 * 8
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
