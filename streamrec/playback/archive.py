"""Playing any recorded range without a job: ``archive.mp4``, made on the fly.

A request names a stream and a start (and maybe a stop). The answer covers
one continuous span from the start (:func:`continuous`): it ends at the stop,
at the first gap (the next segment begins more than
:data:`~streamrec.recorder.timeline.JOIN_TOLERANCE` after the previous one
ends, or another run's segment overlaps instead of following on), or after
``max_seconds``, whichever comes first. The clip builder plans it
(:func:`~streamrec.media.mp4.plan_clip`): the header in memory and byte runs
of the segment files, served as they are read (:class:`ArchiveBody`).

A player asks for the same URL many times (each seek is a byte range), and
every answer must be the same file. So the first answer *pins* what the URL
means, its plan, and later requests for it get that plan while it is used
(:class:`Archive`), even while the recording grows: a player reaches the end
and asks for what follows. Before a pinned plan is answered again its files
are looked at: if retention deleted one since, the answer is
:class:`~streamrec.errors.RecordingDeleted`, never a broken file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from ..errors import NothingRecorded, RecordingDeleted
from ..media.clipfile import ClipReader, Gone, check
from ..media.fmp4 import Mp4Error
from ..media.mp4 import ClipPlan, SegmentPiece, plan_clip
from ..recorder.timeline import JOIN_TOLERANCE
from ..store import SqlStore
from ..store.records import Segment
from ..threads import RunBlocking, thread_runner

#: Pinned plans are dropped after this many seconds unused, ...
PIN_SECONDS = 600.0
#: ... and the oldest first while they hold more header bytes than this.
PIN_BYTES = 64 * 1024 * 1024
#: Where nothing is recorded, how far ahead the next span is looked for first.
NEXT_WINDOW = 86400.0
#: Bumped when the bytes made of the same segments change (the ETag changes with it).
FORMAT = 1


@dataclass(frozen=True)
class ArchiveFile:
    """One answer's file: its plan, its tag, where it begins and ends."""

    stream_id: int
    plan: ClipPlan
    etag: str  # quoted, as sent

    @property
    def start(self) -> float:
        return self.plan.start

    @property
    def stop(self) -> float:
        return self.plan.stop

    @property
    def size(self) -> int:
        return self.plan.size


class ArchiveBody:
    """The bytes of a plan for one answer, read off the reactor thread."""

    def __init__(self, plan: ClipPlan, run_blocking: RunBlocking) -> None:
        self._reader = ClipReader(plan)
        self._run_blocking = run_blocking

    def read(self, offset: int, length: int) -> defer.Deferred[bytes]:
        return self._run_blocking(self._reader.read, offset, length)

    def close(self) -> None:
        self._reader.close()


def continuous(
    segments: Sequence[Segment], start: float, stop: float
) -> tuple[list[Segment], float] | None:
    """The segments of the continuous recording from ``start`` (those of
    ``segments``, in time order, that follow each other) up to ``stop``, and
    the instant it begins: ``start``, or a little later when ``start`` falls
    in a hole shorter than the tolerance. None when nothing covers ``start``."""
    covering = [s for s in segments if s.end > start and s.start <= start + JOIN_TOLERANCE]
    if not covering:
        return None
    first = min(covering, key=lambda s: (s.start, s.id))  # the run that began first
    chain, end = [first], first.end
    for segment in segments:
        if segment.start >= stop:
            break
        if segment.end <= end:
            continue  # within what the chain covers: its own past, or another run's
        if segment.start > end + JOIN_TOLERANCE:
            break  # a gap
        if segment.start < end - JOIN_TOLERANCE:
            continue  # another run overlapping this one: not its continuation
        chain.append(segment)
        end = segment.end
    return chain, max(start, first.start)


def any_missing(paths: Sequence[str]) -> bool:
    return not all(os.path.exists(path) for path in paths)


def etag_of(segments: Sequence[Segment], start: float, stop: float) -> str:
    """A tag for the file made of ``segments`` for [start, stop): the same
    segments (the same files, at the same times) and range, the same tag."""
    key = [FORMAT, start, stop, [(s.id, s.path, s.bytes, s.start, s.end) for s in segments]]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    return f'"{digest}"'


@dataclass
class _Pin:
    file: ArchiveFile
    used: float


class Archive:
    """Plans of ``archive.mp4`` answers, pinned to their URL while they are played."""

    def __init__(
        self,
        *,
        store: SqlStore,
        clock: Any,
        max_seconds: float,
        run_blocking: RunBlocking | None = None,
        pin_seconds: float = PIN_SECONDS,
        pin_bytes: int = PIN_BYTES,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_seconds = max_seconds
        self.run_blocking = run_blocking or thread_runner(clock)
        self.pin_seconds = pin_seconds
        self.pin_bytes = pin_bytes
        self._pins: OrderedDict[tuple[int, float, float | None], _Pin] = OrderedDict()

    def body(self, file: ArchiveFile) -> ArchiveBody:
        return ArchiveBody(file.plan, self.run_blocking)

    async def open(self, stream_id: int, start: float, stop: float | None) -> ArchiveFile:
        """The file ``archive.mp4?start&stop`` answers with now.

        Raises :class:`NothingRecorded` (with where the recording goes on)
        when nothing is recorded at ``start``, :class:`RecordingDeleted` when
        the segments of the file this URL was answered with are deleted.
        """
        key = (stream_id, start, stop)
        now = self.clock.seconds()
        self._expire(now)
        pin = self._pins.get(key)
        if pin is not None:
            try:
                await self.run_blocking(check, pin.file.plan)
            except Gone:
                del self._pins[key]
                raise RecordingDeleted() from None
            pin.used = now
            self._pins.move_to_end(key)
            return pin.file
        file = await self._plan(stream_id, start, stop)
        self._pins[key] = _Pin(file, now)
        self._expire(now)
        return file

    async def _plan(self, stream_id: int, start: float, stop: float | None) -> ArchiveFile:
        limit = start + self.max_seconds if stop is None else min(stop, start + self.max_seconds)
        segments = await self.store.segments_between(stream_id, start, limit)
        found = continuous(segments, start, limit)
        if found is None:
            following = await self._next(stream_id, start, segments)
            raise NothingRecorded(start, next=following)
        chain, first = found
        until = min(limit, chain[-1].end)
        pieces = [SegmentPiece(s.path, s.start) for s in chain]
        try:
            plan = await self.run_blocking(plan_clip, pieces, first, until, until_change=True)
        except Mp4Error as error:
            if await self.run_blocking(any_missing, [p.path for p in pieces]):
                raise RecordingDeleted() from error  # since the index was read
            # Less than a frame between start and stop, or a segment unreadable.
            following = await self._next(stream_id, start, segments)
            raise NothingRecorded(start, next=following) from error
        return ArchiveFile(stream_id, plan, etag_of(chain, first, until))

    async def _next(
        self, stream_id: int, start: float, segments: Sequence[Segment]
    ) -> float | None:
        """Where the recording goes on after ``start``, or None: nowhere yet."""
        later = [s.start for s in segments if s.start > start]
        if later:
            return min(later)
        for window in (NEXT_WINDOW, None):
            until = start + window if window is not None else 1e11
            spans = await self.store.recorded_spans(stream_id, start, until)
            after = [first for first, _last in spans if first > start]
            if after:
                return min(after)
        return None

    def _expire(self, now: float) -> None:
        held = sum(len(pin.file.plan.header) for pin in self._pins.values())
        while self._pins:
            key, oldest = next(iter(self._pins.items()))
            if now - oldest.used <= self.pin_seconds and held <= self.pin_bytes:
                break
            held -= len(oldest.file.plan.header)
            del self._pins[key]
