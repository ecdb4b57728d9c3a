"""Retention: old segments, the byte budget, free space on the data disk, old clips.

Runs every ``interval`` seconds and on demand (a recorder hit a full disk).
Deletes oldest first; never a segment that is still being written (those are
not indexed yet) or that a clip job is reading.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from .errors import log_failure
from .store import MANIFEST_SUFFIX, Segment, SqlStore, Stream

log = Logger(namespace="streamrec.janitor")

BATCH = 200


@dataclass(frozen=True)
class Retention:
    max_age: float = 0.0  # seconds; 0 keeps segments forever (unless space runs short)
    max_bytes: int = 0  # 0: no budget
    min_free_bytes: int = 0  # keep at least this much free on the data disk
    clip_ttl: float = 7 * 86400.0  # finished clips are deleted after this long
    interval: float = 60.0


class Policy:
    """One reason to delete segments, oldest first: which ones it may take
    (older than ``before``, of ``stream_id``) and when it has had enough."""

    before: float | None = None
    stream_id: int | None = None

    def satisfied(self) -> bool:
        return False

    def take(self, segment: Segment) -> bool:
        """Count ``segment`` as deleted; True to delete the batch so far and look again."""
        return False


@dataclass
class MaxAge(Policy):
    """Every segment that ended before ``before`` (of one stream, or of all)."""

    before: float | None = None
    stream_id: int | None = None


@dataclass
class ByteBudget(Policy):
    """The oldest segments until the archive fits in its budget."""

    over: int = 0

    def satisfied(self) -> bool:
        return self.over <= 0

    def take(self, segment: Segment) -> bool:
        self.over -= segment.bytes
        return self.over <= 0


@dataclass
class FreeSpace(Policy):
    """The oldest segments until the disk has ``min_free`` bytes free, measured
    again after every ``step`` deletions."""

    free: Callable[[], int] = lambda: 0
    min_free: int = 0
    step: int = 10
    taken: int = 0

    def satisfied(self) -> bool:
        return self.free() >= self.min_free

    def take(self, segment: Segment) -> bool:
        self.taken += 1
        return self.taken % self.step == 0


def age_policies(now: float, max_age: float, streams: list[Stream]) -> list[Policy]:
    """Each stream's own maximum age, then the global one (0: none)."""
    policies: list[Policy] = [
        MaxAge(before=now - stream.max_age, stream_id=stream.id)
        for stream in streams
        if stream.max_age
    ]
    if max_age:
        policies.append(MaxAge(before=now - max_age))
    return policies


def _remove_files(segments: list[Segment]) -> None:
    for segment in segments:
        try:
            os.remove(segment.path)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warn("cannot delete {path}: {error}", path=segment.path, error=error)


def free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class Janitor(Service):
    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        storage: Any,
        data_dir: str,
        retention: Retention,
        in_use: Callable[[], set[str]],
        run_blocking: Callable[..., defer.Deferred[Any]],
        free: Callable[[str], int] = free_bytes,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.storage = storage
        self.data_dir = data_dir
        self.retention = retention
        self.in_use = in_use
        self.run_blocking = run_blocking
        self.free = free
        self.deleted_segments = 0
        self.deleted_bytes = 0
        self._loop: task.LoopingCall | None = None
        self._sweeping: defer.Deferred[None] | None = None
        self._again = False
        # Segments whose files are gone but whose rows could not be deleted
        # yet (the database could not write: the disk was full).
        self.forgotten: set[int] = set()

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.run_now)
        self._loop.clock = self.reactor
        self._loop.start(self.retention.interval, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._sweeping

    def run_now(self) -> defer.Deferred[None]:
        """Sweep now (or right after the sweep under way); errors are logged."""
        if self._sweeping is not None:
            self._again = True
            return self._sweeping
        d = defer.ensureDeferred(self.sweep())
        d.addErrback(lambda f: log_failure(log, "retention sweep failed", f))
        d.addBoth(self._swept)
        self._sweeping = d
        return d

    def _swept(self, _: object) -> None:
        self._sweeping = None
        if self._again and self.running:
            self._again = False
            self.run_now()

    async def sweep(self) -> None:
        now = self.reactor.seconds()
        if self.forgotten:
            await self.store.delete_segments(sorted(self.forgotten))
            self.forgotten.clear()
        retention = self.retention
        for policy in age_policies(now, retention.max_age, await self.store.list_streams()):
            await self._enforce(policy)
        if retention.max_bytes:
            over = await self.store.segment_bytes() - retention.max_bytes
            await self._enforce(ByteBudget(over=over))
        if retention.min_free_bytes:
            free = partial(self.free, self.data_dir)
            await self._enforce(FreeSpace(free=free, min_free=retention.min_free_bytes))
        await self._expire_clips(now)

    async def _enforce(self, policy: Policy) -> None:
        """Delete the oldest segments the policy may take until it is satisfied,
        never one a clip job is reading."""
        skipped: set[int] = set()
        while not policy.satisfied():
            batch = [
                segment
                for segment in await self.store.oldest_segments(
                    BATCH + len(skipped), before=policy.before, stream_id=policy.stream_id
                )
                if segment.id not in skipped
            ]
            if not batch:
                return
            busy = self.in_use()
            doomed: list[Segment] = []
            for segment in batch:
                if segment.path in busy or segment.id in self.forgotten:
                    skipped.add(segment.id)
                    continue
                doomed.append(segment)
                if policy.take(segment):
                    break
            if not doomed:
                return
            await self._delete(doomed)

    async def _delete(self, segments: list[Segment]) -> None:
        """Files first, then rows: on a full disk the database cannot write
        until the files are gone (rows left behind are deleted later)."""
        await self.run_blocking(_remove_files, segments)
        self.deleted_bytes += sum(segment.bytes for segment in segments)
        self.deleted_segments += len(segments)
        ids = [segment.id for segment in segments]
        try:
            await self.store.delete_segments(ids)
        except Exception as error:
            self.forgotten.update(ids)
            log.warn("segment rows not deleted yet ({error}): will retry", error=error)
        log.info(
            "retention deleted {count} segments, oldest ending {when}",
            count=len(segments),
            when=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(segments[0].end)),
        )

    async def _expire_clips(self, now: float) -> None:
        expired = await self.store.clips_created_before(now - self.retention.clip_ttl)
        jobs: dict[int, list[str]] = {}
        for job_id, key in expired:
            jobs.setdefault(job_id, []).append(key)
        for job_id, keys in jobs.items():
            for key in keys:
                await self.storage.delete_clip(key)
                # Its signed manifest, if it has one (a storage deletes what is
                # not there without a fuss).
                await self.storage.delete_clip(key + MANIFEST_SUFFIX)
            await self.store.expire_job(job_id, now)
        if jobs:
            log.info("expired the clips of {count} jobs", count=len(jobs))
