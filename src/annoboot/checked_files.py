"""Checked readers of the files commands take in: each turns damage (a file cut short at any
byte, garbage, the wrong kind of file, missing keys, wrong shapes or types) into one
AnnobootError line that names the file and what is wrong, never a traceback from a parser.

The kinds of file a command reads, and where each is checked:

=====================================  ================================================  =========================
kind                                   read by                                           checked in
=====================================  ================================================  =========================
checkpoints (``ckpt-*.pt``)            pretrain --resume, eval, export, embed, viz       train/checkpoint.py (CRC-32
                                                                                         of every record, finite
                                                                                         weights, older fallback)
run configs (``config.yaml``)          compare; recipes: pretrain --config               compare.py, recipe.py
metrics logs (``metrics.jsonl``)       pretrain --resume, viz, compare                   :func:`read_jsonl_rows`
JSON files (``eval.json``,             compare, export, embed, zero-shot, similar        :func:`read_json_object`
``environment.json``, an export's
``.json`` and ``config.json``,
``text_config.json``)
weights (``*.safetensors``)            embed, zero-shot, similar, ``load_encoder``        :func:`read_safetensors`
                                                                                         (header, and the checksum
                                                                                         annoboot writes with them)
embeddings (``.npz`` and their parts)  similar, embed (resuming its parts)                :func:`read_npz`
label files                            zero-shot --labels-file                           :func:`read_text`
images, shards, videos, captions       pretrain, eval, embed, data inspect/write-shards  data/ (skipped and counted)
Fashion-MNIST IDX files                every Fashion-MNIST source                        data/fashion_mnist.py
=====================================  ================================================  =========================

tests/test_fuzz_files.py cuts short and corrupts real files of each kind at seeded random
offsets and runs the command that reads them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from annoboot.errors import AnnobootError

# The safetensors metadata key holding the SHA-256 of a file's tensors: safetensors checks its
# header but not the bytes of a tensor, so a changed byte would load as a changed weight.
CHECKSUM_KEY = "annoboot_sha256"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_is_file(path: Path, what: str) -> None:
    if not path.exists():
        raise AnnobootError(f"{path}: no such file ({what})")
    if not path.is_file():  # a folder or a FIFO (which would block a read) named like the file
        raise AnnobootError(f"{path}: not a regular file ({what})")


def _readable_bytes(path: Path, what: str) -> bytes:
    _check_is_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AnnobootError(f"{path}: cannot read it ({exc.strerror or _first_line(exc)})") from None


def read_text(path: str | Path, what: str = "a text file") -> str:
    """A UTF-8 text file's contents."""
    path = Path(path)
    data = _readable_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnnobootError(f"{path}: not UTF-8 text ({what}; byte {exc.start} is 0x{data[exc.start]:02x})") from None


def read_json_object(path: str | Path, what: str = "a JSON file", required: Optional[Mapping[str, Any]] = None) -> Dict:
    """A file holding one JSON object; ``required`` maps keys it must hold to the type (or tuple
    of types) of their values."""
    path = Path(path)
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past Python's stack
        raise AnnobootError(f"{path}: not a readable JSON file ({what}; {_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise AnnobootError(f"{path}: expected a JSON object ({what}), found a {type(data).__name__}")
    check_keys(data, required or {}, f"{path}", what)
    return data


def is_finite_number(value: Any) -> bool:
    """An int or float that is finite (a JSON true/false is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_keys(data: Mapping, required: Mapping[str, Any], where: str, what: str) -> None:
    """Every key of ``required`` in ``data`` with a value of its type(s); bool is not a number."""
    for key, types in required.items():
        if key not in data:
            raise AnnobootError(f"{where}: no '{key}' key ({what})")
        types = types if isinstance(types, tuple) else (types,)
        value = data[key]
        numeric = any(t in (int, float) for t in types)
        if not isinstance(value, types) or (numeric and isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise AnnobootError(f"{where}: '{key}' should be a {names}, found {type(value).__name__} {str(value)[:60]!r} ({what})")


def read_jsonl_rows(path: str | Path, what: str = "a metrics log") -> Tuple[List[Dict], int]:
    """The rows of a JSON-lines file that are JSON objects with a "step", and how many other
    non-blank lines it held (torn by a kill, or damaged). Never raises on a line's content."""
    path = Path(path)
    data = _readable_bytes(path, what)
    rows, damaged = [], 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            damaged += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool):
            rows.append(row)
        else:
            damaged += 1
    return rows, damaged


# ------------------------------------------------------------------ safetensors
def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_safetensors(tensors: Dict[str, torch.Tensor], path: str | Path, metadata: Optional[Dict[str, str]] = None) -> None:
    """safetensors.torch.save_file with the tensors' checksum in the metadata."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={**(metadata or {}), CHECKSUM_KEY: tensors_checksum(tensors)})


def read_safetensors(path: str | Path, what: str = "weights") -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file; its checksum verified where annoboot wrote one
    (files written elsewhere carry none and are taken as they are)."""
    from safetensors import safe_open

    path = Path(path)
    _check_is_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # the parser's own error types (SafetensorError, OSError, ...): the file is damaged
        raise AnnobootError(f"{path}: not a readable safetensors file ({what}; {_first_line(exc)})") from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and tensors_checksum(tensors) != expected:
        raise AnnobootError(f"{path}: its tensors do not match the checksum written with them (bytes changed on disk; "
                            f"{what})")
    return tensors, metadata


# ------------------------------------------------------------------ numpy archives
# An array's expected dtype kinds (numpy's dtype.kind letters: "f" float, "U" unicode, "b" bool,
# "i"/"u" integers) and number of dimensions.
ArraySpec = Tuple[str, int]


def read_npz(path: str | Path, what: str, arrays: Mapping[str, ArraySpec],
             optional: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """Every array of an .npz (no pickles), loaded now; the ``arrays`` checked for presence,
    dtype kind and dimensions (those named in ``optional`` only when present)."""
    path = Path(path)
    _check_is_file(path, what)
    try:
        with np.load(path, allow_pickle=False) as saved:
            loaded = {name: saved[name] for name in saved.files}
    except Exception as exc:  # zip, zlib, header and pickle errors alike: the file is damaged or not an .npz
        raise AnnobootError(f"{path}: not a readable {what} ({_first_line(exc)})") from None
    for name, (kinds, ndim) in arrays.items():
        if name not in loaded:
            if name in optional:
                continue
            raise AnnobootError(f"{path}: no '{name}' array (not {what}?)")
        array = loaded[name]
        if array.dtype.kind not in kinds or array.ndim != ndim:
            raise AnnobootError(f"{path}: '{name}' is a {array.ndim}-d {array.dtype} array, expected {ndim}-d of kind "
                                f"{'/'.join(kinds)} ({what})")
    return loaded


__all__ = ["CHECKSUM_KEY", "check_keys", "is_finite_number", "read_json_object", "read_jsonl_rows", "read_npz", "read_safetensors", "read_text",
           "save_safetensors", "tensors_checksum"]
