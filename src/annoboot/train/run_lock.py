"""One live owner per run folder: an OS file lock held while a process trains in it.

The lock is ``flock`` on ``<run_dir>/run.lock``: the kernel releases it when the process exits,
however it dies (a SIGKILL leaves no stale lock). The file also records who holds it (pid, host,
start time, command), so a second ``annoboot pretrain`` on the folder stops at once with one
line naming the holder, and readers (eval, export, viz, embed) can say that the run they read
is still training. Re-entrant within a process: ``pretrain`` holds it around training and the
probes, the trainer again around ``fit``. The file stays in the folder when ``--overwrite``
moves the old run's files aside, so the lock never leaves the folder it guards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from annoboot.errors import AnnobootError

LOCK_FILE = "run.lock"

# Locks this process holds: resolved folder -> (open file, depth of nesting).
_HELD: Dict[Path, Tuple[object, int]] = {}


def _describe(holder: Dict) -> str:
    parts = [f"pid {holder.get('pid', '?')}", f"on {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    return ", ".join(parts)


def read_holder(run_dir: str | Path) -> Dict:
    """What the lock file says about its holder ({} when it says nothing readable)."""
    try:
        data = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def live_holder(run_dir: str | Path) -> Optional[Dict]:
    """The holder of the folder's lock when another live process trains in it, else None."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    if not path.is_file() or run_dir.resolve() in _HELD:
        return None
    try:
        with open(path, "r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return read_holder(run_dir) or {"pid": "?"}
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


@contextlib.contextmanager
def hold_run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the folder's lock for the block (creating the folder); AnnobootError naming the
    holder when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:  # re-entered by the same process
        handle, depth = _HELD[key]
        _HELD[key] = (handle, depth + 1)
        try:
            yield
        finally:
            handle, depth = _HELD[key]
            _HELD[key] = (handle, depth - 1)
        return
    handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        holder = read_holder(run_dir)
        raise AnnobootError(
            f"{run_dir} is in use: another annoboot process trains in it ({_describe(holder)}); wait for it to end or "
            "stop it, or choose another train.out_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                             "command": " ".join(sys.argv)}) + "\n")
    handle.flush()
    _HELD[key] = (handle, 1)
    try:
        yield
    finally:
        _HELD.pop(key)
        handle.close()  # releases the lock; the file stays, saying who held it last


__all__ = ["LOCK_FILE", "hold_run_lock", "live_holder", "read_holder"]
