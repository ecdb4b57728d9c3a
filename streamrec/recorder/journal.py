"""Segments closed while the database cannot be reached: kept, then indexed.

A database outage must not cost any recording. The segmenters go on writing
files; each segment that cannot be indexed is appended, with where it lies
on the wall clock, to a journal file beside the archive (one JSON line a
segment, flushed to disk). Once the database answers again the journal is
replayed in order, and emptied. A restart replays it too, before recovery
looks at the run directories, so a segment's place is never guessed when it
was known.

While anything waits in the journal, new segments go behind it, so the index
is filled in the order the segments closed. A replayed segment goes through
the same fencing as a live one: where a newer owner of the stream recorded
the same time (this node was cut off and another took the stream), the
newer copy is kept and this one is deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..errors import DatabaseUnavailable
from ..store import SqlStore

log = Logger(namespace="streamrec.recorder")

#: What :meth:`SegmentJournal.add_segment` answers for a segment it kept.
JOURNALED: Final = -1

#: Seconds between attempts to replay the journal while the database is away.
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Entry:
    stream_id: int
    run_id: int
    path: str
    start: float
    end: float
    size: int


class SegmentJournal:
    """The store's ``add_segment``, with a durable queue in front of it for outages."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        path: str | None,
        indexed: Callable[[int, int, str, float, float], None] = lambda *_: None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.path = path
        self.indexed = indexed
        self.retry_seconds = retry_seconds
        self.pending: list[Entry] = []
        self.replayed = 0
        self._retry: IDelayedCall | None = None
        self._replaying: defer.Deferred[None] | None = None
        self._stopped = False

    # -- life -------------------------------------------------------------------
    def load(self) -> int:
        """Read what a previous process left in the journal; how many segments."""
        if self.path is None or not os.path.exists(self.path):
            return 0
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    self.pending.append(Entry(**json.loads(line)))
                except (ValueError, TypeError):
                    # A line cut short by a crash while it was written: that
                    # segment's file is still on disk for recovery to find.
                    log.warn(
                        "journal {path}:{n}: unreadable line skipped", path=self.path, n=number
                    )
        return len(self.pending)

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- indexing ---------------------------------------------------------------
    async def add_segment(
        self, stream_id: int, run_id: int, path: str, start: float, end: float, size: int
    ) -> int | None:
        """Index a segment (its id, or None when a newer owner recorded that time),
        or keep it in the journal while the database is away (:data:`JOURNALED`)."""
        entry = Entry(stream_id, run_id, path, start, end, size)
        if not self.pending:
            try:
                return await self.store.add_segment(*_fields(entry))
            except DatabaseUnavailable as failure:
                log.warn(
                    "database unavailable ({why}): segments are journaled until it is back",
                    why=failure.reason,
                )
        self._keep(entry)
        return JOURNALED

    async def note_clock(self, run_id: int, clock: str, time_error: float) -> bool:
        """Write the clock a run follows and its time error; False while the
        database is away (the recorder notes it again with a later segment)."""
        try:
            await self.store.set_run_clock(run_id, clock, time_error)
        except DatabaseUnavailable:
            return False
        return True

    def _keep(self, entry: Entry) -> None:
        self.pending.append(entry)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(entry)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self._schedule()

    def _schedule(self) -> None:
        if self._stopped or (self._retry is not None and self._retry.active()):
            return
        self._retry = self.reactor.callLater(self.retry_seconds, self._replay_soon)

    def _replay_soon(self) -> None:
        self._retry = None
        d = defer.ensureDeferred(self.replay())
        d.addErrback(lambda failure: log.failure("journal replay failed", failure))

    async def replay(self) -> int:
        """Index what waits, in order, as far as the database lets; how many went in."""
        if self._replaying is not None:
            await self._replaying
            return 0
        self._replaying = defer.Deferred()
        done = 0
        try:
            while self.pending:
                entry = self.pending[0]
                if os.path.exists(entry.path):
                    try:
                        segment_id = await self.store.add_segment(*_fields(entry))
                    except DatabaseUnavailable:
                        self._schedule()
                        break
                    except Exception:
                        # Indexed already (a replay cut short), or refused: never
                        # let one entry hold the others back.
                        log.failure("journal: segment {path} left out", path=entry.path)
                        segment_id = 0
                    if segment_id is None:
                        log.warn(
                            "segment {path} not indexed: the stream has a newer owner",
                            path=entry.path,
                        )
                        _remove(entry.path)
                    elif segment_id:
                        self.indexed(
                            entry.stream_id, segment_id, entry.path, entry.start, entry.end
                        )
                done += 1
                self.pending.pop(0)
            if not self.pending:
                self._truncate()
        finally:
            replaying, self._replaying = self._replaying, None
            replaying.callback(None)
        if done:
            self.replayed += done
            log.info(
                "journal: {done} segments indexed, {left} waiting",
                done=done,
                left=len(self.pending),
            )
        return done

    def _truncate(self) -> None:
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


def _fields(entry: Entry) -> tuple[int, int, str, float, float, int]:
    return (entry.stream_id, entry.run_id, entry.path, entry.start, entry.end, entry.size)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
