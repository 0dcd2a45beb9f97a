"""File reads that give up: a read stuck on a hung network file system never returns and cannot be
interrupted, so with a timeout each read runs in a helper thread and the caller gives up after
``data.<stream>.read_timeout`` seconds with :class:`ReadTimedOut` naming the file (the stuck
thread is left behind). Image files are read whole (:func:`read_file`); shards through a
buffered :class:`TimedFile` (:func:`open_timed`), one hand-off per 1 MiB.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Optional

from annoboot.errors import AnnobootError


class ReadTimedOut(AnnobootError):
    """A file read that did not finish within the source's read_timeout (a hung file system)."""


_read_pool: Optional[ThreadPoolExecutor] = None
_read_pool_pid = -1


def _pool() -> ThreadPoolExecutor:
    """This process's reader threads (a forked loader worker makes its own: threads do not fork)."""
    global _read_pool, _read_pool_pid
    if _read_pool is None or _read_pool_pid != os.getpid():
        _read_pool, _read_pool_pid = ThreadPoolExecutor(max_workers=2, thread_name_prefix="annoboot-read"), os.getpid()
    return _read_pool


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def read_file(path: str, timeout: float = 0.0) -> bytes:
    """The bytes of ``path``; with ``timeout`` > 0, read in a helper thread and given up after
    ``timeout`` seconds with :class:`ReadTimedOut` naming the file (a read stuck on a hung network
    file system never returns, and cannot be interrupted: its thread is left behind)."""
    if timeout <= 0:
        return _read(path)
    future = _pool().submit(_read, path)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        raise ReadTimedOut(f"{path}: reading it took more than {timeout:g} s (a hung or very slow file system?); "
                           "data.<stream>.read_timeout sets the limit, 0 waits forever") from None


class TimedFile(io.RawIOBase):
    """A local file whose every read gives up after ``timeout`` seconds with
    :class:`ReadTimedOut` naming it. Wrap it in ``io.BufferedReader`` with a large buffer: each
    raw read is one hand-off to a reader thread."""

    def __init__(self, path: str, timeout: float):
        super().__init__()
        self.path, self.timeout = path, timeout
        self._file = _pool().submit(open, path, "rb").result(timeout=timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        future = _pool().submit(self._file.readinto, buffer)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            raise ReadTimedOut(f"{self.path}: a read took more than {self.timeout:g} s (a hung or very slow file "
                               "system?); data.<stream>.read_timeout sets the limit, 0 waits forever") from None

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_timed(path: str, timeout: float, buffer_size: int = 1 << 20):
    """``open(path, "rb")``, or with ``timeout`` > 0 a buffered :class:`TimedFile`."""
    if timeout <= 0:
        return open(path, "rb")
    try:
        return io.BufferedReader(TimedFile(path, timeout), buffer_size)
    except FutureTimeout:
        raise ReadTimedOut(f"{path}: opening it took more than {timeout:g} s (a hung or very slow file system?); "
                           "data.<stream>.read_timeout sets the limit, 0 waits forever") from None


__all__ = ["ReadTimedOut", "TimedFile", "open_timed", "read_file"]
