"""Fuzz: every kind of file a command reads (annoboot/checked_files.py lists them), cut short
and corrupted at offsets Hypothesis draws, then read by the real command. The command either
works (damage it can live with: a torn metrics line, a checkpoint with an intact older one, a
part of an unfinished embed computed again) or stops with exit status 2 and one error line that
names the damaged file; never a traceback.

Real files: a tiny CLIP run on a captioned folder (checkpoints, config.yaml, metrics.jsonl,
eval.json, environment.json), its export as a folder (with the text tower) and as one file,
an embeddings file, the parts of an unfinished embed, a labels file, and webdataset shards.
ANNOBOOT_FUZZ_EXAMPLES sets the examples Hypothesis draws per kind (default 2, after 4 fixed ones: one
of each damage)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple
from unittest import mock

import numpy as np
import pytest
import torch
from helpers import TINY, TINY_TEXT, one_thread  # noqa: F401 (one_thread: an autouse fixture)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from annoboot import commands
from annoboot.checked_files import (CHECKSUM_KEY, read_json_object, read_jsonl_rows, read_npz, read_safetensors, read_text,
                                    save_safetensors, tensors_checksum)
from annoboot.cli import main
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config

EXAMPLES = int(os.environ.get("ANNOBOOT_FUZZ_EXAMPLES", "2"))
LABELS = "a red square,a blue square"


class Kind(NamedTuple):
    files: Callable[[Path], List[Path]]  # the files damaged (alike), under a copy of the fixture's folder
    command: Callable[[Path], List[str]]  # the command that reads them
    must_work: bool = False  # the command recovers from any damage to the file's bytes (computes again, or skips and
    # counts); a folder in the file's place may still stop it with one line naming the file


def run_files(root: Path) -> List[Path]:
    return sorted((root / "clip" / "checkpoints").glob("*.pt"))


KINDS: Dict[str, Kind] = {
    "checkpoint": Kind(run_files, lambda r: ["export", str(r / "clip"), "--out", str(r / "out.safetensors")]),
    "run_config": Kind(lambda r: [r / "clip" / "config.yaml"], lambda r: ["compare", str(r / "clip")]),
    "metrics_viz": Kind(lambda r: [r / "clip" / "metrics.jsonl"],
                        lambda r: ["viz", str(r / "clip"), "--out", str(r / "viz"), "--curves-only"]),
    "metrics_compare": Kind(lambda r: [r / "clip" / "metrics.jsonl"], lambda r: ["compare", str(r / "clip")]),
    "metrics_resume": Kind(lambda r: [r / "clip" / "metrics.jsonl"],
                           lambda r: ["pretrain", "--resume", "--config", str(r / "clip" / "config.yaml"),
                                      f"train.out_dir={r / 'clip'}", "train.steps=3"], must_work=True),
    "eval_json": Kind(lambda r: [r / "clip" / "eval.json"], lambda r: ["export", str(r / "clip"), "--out", str(r / "hub2")]),
    "environment_json": Kind(lambda r: [r / "clip" / "environment.json"], lambda r: ["compare", str(r / "clip")]),
    "export_weights": Kind(lambda r: [r / "single.safetensors"], lambda r: embed(r, r / "single.safetensors")),
    "export_description": Kind(lambda r: [r / "single.safetensors.json"], lambda r: embed(r, r / "single.safetensors")),
    "hub_weights": Kind(lambda r: [r / "hub" / "model.safetensors"], lambda r: embed(r, r / "hub")),
    "hub_config": Kind(lambda r: [r / "hub" / "config.json"], lambda r: embed(r, r / "hub")),
    "text_weights": Kind(lambda r: [r / "hub" / "text_tower.safetensors"],
                         lambda r: ["zero-shot", str(r / "hub"), str(r / "squares"), "--labels", LABELS]),
    "text_config": Kind(lambda r: [r / "hub" / "text_config.json"],
                        lambda r: ["zero-shot", str(r / "hub"), str(r / "squares"), "--labels", LABELS]),
    "embeddings_text": Kind(lambda r: [r / "emb.npz"],
                            lambda r: ["similar", str(r / "emb.npz"), "--text", "a red square", "--out", str(r / "s.png")]),
    "embeddings_image": Kind(lambda r: [r / "emb.npz"],
                             lambda r: ["similar", str(r / "emb.npz"), str(r / "squares" / "red_00.png"), "--out", str(r / "s.png")]),
    "embed_part": Kind(lambda r: sorted((r / "unfinished.npz.parts").glob("part-*.npz"))[:1],
                       lambda r: ["embed", str(r / "clip"), str(r / "squares"), "--out", str(r / "unfinished.npz"),
                                  "--chunk-size", "8"], must_work=True),
    "labels_file": Kind(lambda r: [r / "labels.txt"],
                        lambda r: ["zero-shot", str(r / "clip"), str(r / "squares"), "--labels-file", str(r / "labels.txt")]),
    "shard": Kind(lambda r: [r / "shards" / "s-000001.tar"],
                  lambda r: ["data", "inspect", str(r / "shards" / "s-{000000..000001}.tar")], must_work=True),
}


def embed(root: Path, encoder: Path) -> List[str]:
    return ["embed", str(encoder), str(root / "squares"), "--out", str(root / "out.npz")]


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the autouse one_thread
    root = tmp_path_factory.mktemp("fuzz") / "base"
    folder = root / "squares"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (220, 30, 30), "blue": (30, 40, 220)}.items():
        for i in range(8):
            pixels = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")
            (folder / f"{name}_{i:02d}.txt").write_text(f"a {name} square")
    commands.pretrain(load_config(None, TINY + TINY_TEXT + [
        "method.name=clip", "data.annotation.kind=captioned_folder", f"data.annotation.root={folder}",
        "data.annotation.limit=null", "data.annotation.num_workers=0", "train.batch_size=16", "train.steps=2",
        "train.ckpt_every=1", "train.log_every=1", f"train.out_dir={root / 'clip'}"]))
    (root / "clip" / "eval.json").write_text('{"items": {"knn": 50.0, "linear": 60.0}, "command": "annoboot eval"}')
    quiet = contextlib.redirect_stderr(io.StringIO())
    with quiet:
        assert main(["export", str(root / "clip"), "--out", str(root / "hub")]) == 0
        assert main(["export", str(root / "clip"), "--out", str(root / "single.safetensors")]) == 0
        assert main(["embed", str(root / "clip"), str(folder), "--out", str(root / "emb.npz")]) == 0
        with mock.patch("annoboot.embedding.shutil.rmtree"):  # keep the parts, as a killed embed leaves them
            assert main(["embed", str(root / "clip"), str(folder), "--out", str(root / "unfinished.npz"), "--chunk-size", "8"]) == 0
        assert main(["data", "write-shards", str(folder), str(root / "shards" / "s-%06d.tar"), "--max-count", "8"]) == 0
    (root / "labels.txt").write_text("# colours\na red square\na blue square\n")
    torch.set_num_threads(threads)
    assert len(run_files(root)) >= 2 and len(list((root / "unfinished.npz.parts").glob("part-*.npz"))) == 2
    return root


# Damage: cut short at a fraction of the file; bytes overwritten at a fraction; replaced by a
# file of another kind; replaced by a folder of the same name.
OTHER_KINDS = {
    "png": None,  # filled in from the fixture's images
    "json_list": b"[1, 2, 3]\n",
    "json_deep": b"[" * 100_000,
    "yaml": b"method: [unclosed\n",
    "text": "héllo wörld\n".encode(),
    "zeros": bytes(4096),
    "empty": b"",
}
damages = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0, exclude_max=True)),
    st.tuples(st.just("overwrite"), st.floats(0.0, 1.0, exclude_max=True), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("replace"), st.sampled_from(sorted(OTHER_KINDS))),
    st.tuples(st.just("folder")),
)


def damage_file(path: Path, damage: tuple, root: Path) -> None:
    data = path.read_bytes()
    kind = damage[0]
    if kind == "truncate":
        path.write_bytes(data[: int(damage[1] * len(data))])
    elif kind == "overwrite":
        offset = int(damage[1] * len(data))
        path.write_bytes(data[:offset] + damage[2] + data[offset + len(damage[2]):])
    elif kind == "replace":
        other = OTHER_KINDS[damage[1]]
        path.write_bytes(other if other is not None else (root / "squares" / "red_00.png").read_bytes())
    else:
        path.unlink()
        path.mkdir()


def run_command(argv: List[str]) -> tuple[int, List[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)  # any exception but AnnobootError propagates and fails the test: a traceback
    return code, [line for line in err.getvalue().splitlines() if line.startswith("annoboot: error")]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fuzz_a_damaged_file_is_one_line_naming_it_or_harmless(real_files, tmp_path_factory, kind):
    spec = KINDS[kind]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(damage=damages)
    @example(damage=("truncate", 0.5))  # every kind of damage at least once, whatever Hypothesis draws
    @example(damage=("overwrite", 0.5, b"\xff" * 16))
    @example(damage=("replace", "png"))
    @example(damage=("folder",))
    def check(damage):
        root = tmp_path_factory.mktemp(kind)
        shutil.rmtree(root)
        shutil.copytree(real_files, root)
        files = spec.files(root)
        assert files, f"{kind}: the fixture wrote no such file"
        for path in files:
            damage_file(path, damage, root)
        code, errors = run_command(spec.command(root))
        if spec.must_work and damage[0] != "folder":
            assert code == 0 and not errors, f"{kind} {damage}: {errors}"
        else:
            assert code in (0, 2), f"{kind} {damage}: exit {code}"
            if code == 2:
                assert len(errors) == 1, f"{kind} {damage}: {errors}"
                assert any(path.name in errors[0] for path in files), f"{kind} {damage}: the error does not name the file: {errors[0]}"
        shutil.rmtree(root)

    check()


def test_fuzz_a_damaged_part_of_an_embed_is_computed_again_to_the_same_result(real_files, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(real_files, root)
    whole = dict(np.load(real_files / "unfinished.npz"))
    part = sorted((root / "unfinished.npz.parts").glob("part-*.npz"))[1]
    part.write_bytes(part.read_bytes()[:100])
    assert run_command(KINDS["embed_part"].command(root)) == (0, [])
    again = dict(np.load(root / "unfinished.npz"))
    assert again["names"].tolist() == whole["names"].tolist()
    np.testing.assert_allclose(again["embeddings"], whole["embeddings"], atol=1e-5)


def test_fuzz_a_changed_weight_byte_is_caught_by_the_checksum(real_files, tmp_path):
    """safetensors checks its header, not the bytes of a tensor: the checksum annoboot writes
    into the metadata is what catches a byte changed inside a weight."""
    root = tmp_path / "copy"
    shutil.copytree(real_files, root)
    weights = root / "hub" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01  # inside the last tensor's bytes, past the header
    weights.write_bytes(bytes(data))
    code, errors = run_command(embed(root, root / "hub"))
    assert code == 2 and "model.safetensors" in errors[0] and "checksum" in errors[0]


# ---------------------------------------------------------------------------------------------
# The readers alone, on any bytes at all: a value or one AnnobootError naming the file.
READERS = {
    "json": lambda path: read_json_object(path, "a test file", {"step": int}),
    "jsonl": lambda path: read_jsonl_rows(path),
    "npz": lambda path: read_npz(path, "a test archive", {"names": ("U", 1), "embeddings": ("f", 2)}),
    "safetensors": lambda path: read_safetensors(path),
    "text": lambda path: read_text(path),
}


def _valid_files() -> Dict[str, bytes]:
    """One valid file of each reader's kind: cutting these short reaches deeper into the parsers
    than random bytes do."""
    from safetensors.torch import save as safetensors_bytes

    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(["a", "b"]), embeddings=np.ones((2, 3), dtype=np.float32))
    weights = {"w": torch.ones(4, 4)}
    return {"json": b'{"step": 3, "loss": 0.5}', "jsonl": b'{"step": 1}\n{"step": 2}\n', "npz": buffer.getvalue(),
            "safetensors": safetensors_bytes(weights, metadata={CHECKSUM_KEY: tensors_checksum(weights)}),
            "text": b"a label\n"}


VALID_FILES = _valid_files()


def valid_prefixes():
    """A valid file of some kind, cut short or with a byte changed."""
    return st.builds(lambda data, cut, flip: _changed(data, cut, flip), st.sampled_from(sorted(VALID_FILES.values())),
                     st.floats(0.0, 1.0), st.integers(0, 255))


def _changed(data: bytes, cut: float, flip: int) -> bytes:
    end = int(cut * len(data))
    if end < len(data) and flip:
        return data[:end] + bytes([data[end] ^ flip]) + data[end + 1:]
    return data[:end]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reader=st.sampled_from(sorted(READERS)), data=st.one_of(st.binary(max_size=512), valid_prefixes()))
def test_fuzz_each_reader_takes_any_bytes(tmp_path, reader, data):
    path = tmp_path / f"file.{reader}"
    path.write_bytes(data)
    try:
        READERS[reader](path)
    except AnnobootError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


def test_a_safetensors_file_without_annoboots_checksum_is_taken_as_it_is(tmp_path):
    """Weights written elsewhere (timm, the model hub) carry no checksum: read, not refused."""
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    save_safetensors(tensors, tmp_path / "ours.safetensors")
    for name in ("plain", "ours"):
        loaded, metadata = read_safetensors(tmp_path / f"{name}.safetensors")
        assert torch.equal(loaded["w"], tensors["w"]) and (CHECKSUM_KEY in metadata) == (name == "ours")
    assert read_jsonl_rows(write(tmp_path / "m.jsonl", b'{"step": 1}\n\xff\xfe\n{"step": "2"}\n{"step": 3}\n{"ste')) == (
        [{"step": 1}, {"step": 3}], 3)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
