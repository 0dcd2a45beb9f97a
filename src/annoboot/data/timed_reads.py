"""File reads that give up: a read stuck on a hung network file system never returns and cannot be
interrupted, so with a timeout each read runs in a helper thread and the caller gives up after
``data.<stream>.read_timeout`` seconds with :class:`ReadTimedOut` naming the file (the stuck
thread is left behind, and does not keep the process from exiting). Image files are read whole
(:func:`read_file`); shards through a buffered :class:`TimedFile` (:func:`open_timed`), one
hand-off per 1 MiB.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from typing import Any, Callable, Optional

from annoboot.errors import AnnobootError


class ReadTimedOut(AnnobootError):
    """A file read that did not finish within the source's read_timeout (a hung file system)."""


class _TookTooLong(Exception):
    pass


class _Readers:
    """Two daemon threads that run reads handed to them. Not a ThreadPoolExecutor: Python joins
    its threads at exit, so one read stuck on a hung mount kept a run that had stopped with
    ReadTimedOut (and a loader worker told to quit) from ever exiting."""

    def __init__(self, count: int = 2):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(count):
            threading.Thread(target=self._serve, name=f"annoboot-read-{i}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call, args, answer = self._tasks.get()
            try:
                answer.put((True, call(*args)))
            except BaseException as exc:  # handed to the caller's thread
                answer.put((False, exc))

    def run(self, call: Callable, *args, timeout: float) -> Any:
        """``call(*args)`` in a reader thread; :class:`_TookTooLong` after ``timeout`` seconds."""
        answer: queue.SimpleQueue = queue.SimpleQueue()
        self._tasks.put((call, args, answer))
        try:
            done, value = answer.get(timeout=timeout)
        except queue.Empty:
            raise _TookTooLong from None
        if not done:
            raise value
        return value


_readers: Optional[_Readers] = None
_readers_pid = -1


def _pool() -> _Readers:
    """This process's reader threads (a forked loader worker makes its own: threads do not fork)."""
    global _readers, _readers_pid
    if _readers is None or _readers_pid != os.getpid():
        _readers, _readers_pid = _Readers(), os.getpid()
    return _readers


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def read_file(path: str, timeout: float = 0.0) -> bytes:
    """The bytes of ``path``; with ``timeout`` > 0, read in a helper thread and given up after
    ``timeout`` seconds with :class:`ReadTimedOut` naming the file (a read stuck on a hung network
    file system never returns, and cannot be interrupted: its thread is left behind)."""
    if timeout <= 0:
        return _read(path)
    try:
        return _pool().run(_read, path, timeout=timeout)
    except _TookTooLong:
        raise ReadTimedOut(f"{path}: reading it took more than {timeout:g} s (a hung or very slow file system?); "
                           "data.<stream>.read_timeout sets the limit, 0 waits forever") from None


class TimedFile(io.RawIOBase):
    """A local file whose every read gives up after ``timeout`` seconds with
    :class:`ReadTimedOut` naming it. Wrap it in ``io.BufferedReader`` with a large buffer: each
    raw read is one hand-off to a reader thread."""

    def __init__(self, path: str, timeout: float):
        super().__init__()
        self.path, self.timeout = path, timeout
        self._file = _pool().run(open, path, "rb", timeout=timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return _pool().run(self._file.readinto, buffer, timeout=self.timeout)
        except _TookTooLong:
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
    except _TookTooLong:
        raise ReadTimedOut(f"{path}: opening it took more than {timeout:g} s (a hung or very slow file system?); "
                           "data.<stream>.read_timeout sets the limit, 0 waits forever") from None


__all__ = ["ReadTimedOut", "TimedFile", "open_timed", "read_file"]
