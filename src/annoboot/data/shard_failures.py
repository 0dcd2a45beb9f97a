"""The shard reads that failed, watched for one reader: a damaged shard is skipped with a warning,
a shard set from which nothing can be read stops the run (:class:`ShardFailures`)."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, Iterator, Optional

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from annoboot.data.decode import failure_reason
from annoboot.data.timed_reads import ReadTimedOut, open_timed
from annoboot.errors import AnnobootError

log = logging.getLogger(__name__)

# A reader stops after this many shard reads in a row that yielded no sample (see ShardFailures):
# with even 80% of a set's shards broken, 50 in a row happen once in 10^5 reads.
MAX_SHARD_FAILURES_IN_A_ROW = 50


class UnreadableShards(AnnobootError):
    """A shard set from which nothing could be read (raised in the reader, often a worker)."""


class ShardFailures:
    """The shard reads of one reader (a DataLoader worker, or the process) that failed, and
    webdataset's exception handler for them: webdataset's own handlers sleep 0.5 s per error
    and resample a set whose every shard is broken forever.

    A shard read fails when the shard cannot be opened or read (garbage, truncated, empty), or
    ends without a member. It is skipped with a warning (at 1, 2, 4, ... failures). Failures
    that yield no member, with none read in between, stop the reader with
    :class:`UnreadableShards` naming ``name`` and the last reason, once every one of the
    ``num_shards`` shards has failed so, or :data:`MAX_SHARD_FAILURES_IN_A_ROW` did. A shard that
    yields samples before it fails never stops the reader. ``stop=False`` neither warns nor
    stops: ``data inspect`` names the unreadable shards itself (:func:`count_shard_samples`).

    Use it through :meth:`samples`, which tracks the shard being read."""

    def __init__(self, name: str, num_shards: int, stop: bool = True, read_timeout: float = 0.0):
        self.name, self.num_shards, self.stop = name, num_shards, stop
        self.read_timeout = read_timeout  # seconds a read of a local shard may take (0: no limit)
        self.failures = 0
        self._url: Optional[str] = None
        self._members = 0  # of the shard being read
        self._failed = False  # the shard being read has failed (counted once)
        self._empty_in_a_row = 0  # failed reads without a member since the last member
        self._empty_shards: set = set()
        self._log_at = 1

    def samples(self, shards: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """webdataset's ``tarfile_to_samples`` on ``shards`` (dicts with a ``url``), watched."""
        opened = self._open_timed(self._watch_shards(shards)) if self.read_timeout > 0 else url_opener(
            self._watch_shards(shards), handler=self)
        files = tar_file_expander(opened, handler=self)
        return group_by_keys(self._watch_members(files), handler=self)

    def _open_timed(self, shards: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """webdataset's url_opener, local files read with the read timeout (others as it reads them)."""
        for shard in shards:
            url = shard["url"]
            try:
                local = "://" not in url and not url.startswith("pipe:")
                stream = open_timed(url, self.read_timeout) if local else gopen(url)
            except Exception as exc:
                exc.args = exc.args + (url,)
                if self(exc):
                    continue
                break
            yield {**shard, "stream": stream}

    def _watch_shards(self, shards: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for shard in shards:
            self._url, self._members, self._failed = shard["url"], 0, False
            yield shard

    def _watch_members(self, files: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for file in files:
            if file:
                self._members += 1
                self._empty_in_a_row = 0
                self._empty_shards.clear()
            elif not self._members and not self._failed:  # webdataset's end-of-shard marker
                self._fail("no sample in the shard")
            yield file

    def __call__(self, exc: Exception) -> bool:
        """webdataset's handler: count the shard as failed and go on with the next one (a read
        that timed out stops the reader: the next shard's would hang the same way)."""
        if isinstance(exc, ReadTimedOut):
            raise ReadTimedOut(exc.args[0]) from None  # webdataset appended the URL to its args
        self._fail(failure_reason(exc, local_size(self._url)))
        return True

    def _fail(self, reason: str) -> None:
        if self._failed:  # later errors of one shard read are the same failure
            return
        self._failed = True
        self.failures += 1
        if self.stop and self.failures >= self._log_at:
            log.warning(
                "shards '%s': skipped unreadable shard %s (%s); %d unreadable shard read(s) so far in this reader",
                self.name, self._url, reason, self.failures,
            )
            self._log_at = 2 * self.failures
        if self._members:  # it yielded samples: a damaged shard in a working set
            return
        self._empty_in_a_row += 1
        self._empty_shards.add(self._url)
        every_shard = len(self._empty_shards) >= self.num_shards
        if self.stop and (every_shard or self._empty_in_a_row >= MAX_SHARD_FAILURES_IN_A_ROW):
            which = f"all {self.num_shards} shard(s)" if every_shard else f"{self._empty_in_a_row} shard reads in a row"
            raise UnreadableShards(
                f"shards '{self.name}': no sample could be read from {which} (last: {self._url}: {reason}); "
                f"check them with `annoboot data inspect '{self.name}'`"
            )


def local_size(url: Optional[str]) -> int:
    """Size in bytes of a local shard; -1 when unknown (remote, or gone)."""
    try:
        return os.path.getsize(url) if url and "://" not in url else -1
    except OSError:
        return -1
