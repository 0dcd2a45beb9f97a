"""annoboot.data.tools: `data inspect` reports bad files and unreadable shards by reason."""

import tarfile

import numpy as np
import pytest
from helpers import png_bytes, write_tar

from annoboot.cli import main
from annoboot.data.tools import inspect_folder


def test_inspect_reports_bad_files_by_reason(folder, capsys):
    report = inspect_folder(str(folder))
    assert report["files"] == 22 and report["decodable"] == 20 and report["bad"] == 2
    assert "empty file" in report["bad_by_reason"]
    assert main(["data", "inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "bad:" in out and "broken.jpg" in out


def test_inspect_decodes_shards_and_reports_bad_samples(tmp_path, capsys):
    samples = [("a", {"png": png_bytes((1, 2, 3))}), ("b", {"jpg": b""}), ("c", {"jpg": b"\xff\xd8 no"})]
    write_tar(tmp_path / "s-0.tar", samples)
    assert main(["data", "inspect", str(tmp_path / "s-0.tar")]) == 0
    out = capsys.readouterr().out
    assert "samples: 3" in out and "decodable: 1" in out and "bad: 2" in out
    assert "empty file" in out and "s-0.tar:c.jpg" in out


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
