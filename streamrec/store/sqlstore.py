"""The one implementation of every store method, over a SQL driver (see ``streamrec.store``)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred

from .jobs import JobQueries
from .leases import LeaseQueries
from .records import (
    JOB_DONE,
    JOB_EXPIRED,
    Segment,
    Stream,
    Totals,
)
from .spans import SpanQueries
from .steps import Driver, Insert, Lock, Query, Steps, T

#: Seconds no indexed segment is longer than (the recorder refuses longer ones).
LONGEST_SEGMENT = 600.0

#: Seconds (a frame) by which an older owner's segment may overlap a newer one's.
FENCE_TOLERANCE = 0.04

# Lock namespaces (:class:`~.steps.Lock`): one per kind of read-then-write transaction.
_MIGRATION_LOCK = 0x5EC0


def _schema_files(dialect: str) -> list[tuple[int, str]]:
    folder = resources.files("streamrec.store") / "schema" / dialect
    files = sorted(
        (int(entry.name.split("_", 1)[0]), entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return files


def _split_statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


class SqlStore(JobQueries, LeaseQueries, SpanQueries):
    """The store over a :class:`~.steps.Driver` (SQLite or PostgreSQL).

    SQL is written once, with ``?`` placeholders and types both engines
    share; the driver runs it in its dialect.
    """

    _longest_segment = LONGEST_SEGMENT

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        # Segments waiting for the insert transaction in flight to end (group commit).
        self._new_segments: list[tuple[tuple[Any, ...], Deferred[int | None]]] = []
        self._inserting = False

    @property
    def dialect(self) -> str:
        return self._driver.dialect

    # -- plumbing -------------------------------------------------------
    def _transaction(self, steps: Steps[T]) -> Deferred[T]:
        return self._driver.transaction(steps)

    def _query(self, query: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return self._driver.query(query, tuple(params))

    def _operation(self, query: str, params: Sequence[Any] = ()) -> Deferred[None]:
        return self._driver.operation(query, tuple(params))

    def _read(self, query: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        """What the API asks all the time (status, the list): not behind the
        segment inserts of a hundred cameras closing their segments at once."""
        return self._driver.read(query, tuple(params))

    async def connect(self) -> None:
        """Open the database connections (done by the first call otherwise)."""
        await self._driver.connect()

    def close(self) -> Deferred[None]:
        """Close the database; fires once the statements in flight have ended.

        Calling it without waiting is fine: nothing new starts after it.
        """
        return self._driver.close()

    async def listen(self, channel: str, callback: Any) -> None:
        """Hear what other nodes on this database notify on ``channel``."""
        await self._driver.listen(channel, callback)

    async def notify(self, channel: str, payload: str) -> None:
        await self._driver.notify(channel, payload)

    async def migrate(self) -> int:
        """Connect, apply every schema file newer than the database in one
        transaction, and return the version."""
        await self.connect()
        return await self._transaction(self._migrate())

    def _migrate(self) -> Steps[int]:
        # Services sharing a database may start together: one migrates, the others wait.
        yield Lock(_MIGRATION_LOCK)
        yield Query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = yield Query("SELECT MAX(version) FROM schema_version")
        current: int = rows[0][0] or 0
        for version, script in _schema_files(self.dialect):
            if version <= current:
                continue
            for statement in _split_statements(script):
                yield Query(statement)
            yield Query("INSERT INTO schema_version (version) VALUES (?)", (version,))
            current = version
        return current

    # -- streams --------------------------------------------------------
    _STREAM_COLUMNS = (
        "id, url, description, create_date, start_date, stop_date, wanted, last_error, max_age,"
        " source_audio, owner, epoch, recorder_state, clock"
    )
    _STREAM_WIDTH = len(_STREAM_COLUMNS.split(","))

    @staticmethod
    def _stream(row: Sequence[Any]) -> Stream:
        return Stream(
            id=row[0],
            url=row[1],
            description=row[2],
            create_date=row[3],
            start_date=row[4],
            stop_date=row[5],
            wanted=bool(row[6]),
            last_error=row[7],
            max_age=row[8],
            source_audio=row[9],
            owner=row[10],
            epoch=row[11],
            recorder_state=row[12],
            clock=row[13],
        )

    @staticmethod
    def _insert(query: str, params: Sequence[Any]) -> Steps[int]:
        new_id: int = yield Insert(query, params)
        return new_id

    def _create_stream(
        self, url: str, description: str, now: float, max_age: float | None, clock: str
    ) -> Steps[int]:
        stream_id: int = yield Insert(
            "INSERT INTO streams (url, description, create_date, max_age, clock)"
            " VALUES (?, ?, ?, ?, ?)",
            (url, description, now, max_age, clock),
        )
        yield Query("INSERT INTO stream_totals (stream_id) VALUES (?)", (stream_id,))
        return stream_id

    async def create_stream(
        self,
        url: str,
        description: str,
        now: float,
        max_age: float | None = None,
        clock: str = "auto",
    ) -> int:
        return await self._transaction(self._create_stream(url, description, now, max_age, clock))

    async def get_stream(self, stream_id: int) -> Stream | None:
        rows = await self._query(
            f"SELECT {self._STREAM_COLUMNS} FROM streams WHERE id = ?", (stream_id,)
        )
        return self._stream(rows[0]) if rows else None

    async def list_streams(self) -> list[Stream]:
        rows = await self._query(f"SELECT {self._STREAM_COLUMNS} FROM streams ORDER BY id")
        return [self._stream(row) for row in rows]

    _WITH_TOTALS = (
        f"SELECT {', '.join('streams.' + c.strip() for c in _STREAM_COLUMNS.split(','))},"
        " COALESCE(stream_totals.segments, 0), COALESCE(stream_totals.seconds, 0),"
        " COALESCE(stream_totals.bytes, 0), stream_totals.first_start, stream_totals.last_end"
        " FROM streams LEFT JOIN stream_totals ON stream_totals.stream_id = streams.id"
    )

    @classmethod
    def _with_totals(cls, row: Sequence[Any]) -> tuple[Stream, Totals]:
        count, seconds, size, first, last = row[cls._STREAM_WIDTH :]
        return cls._stream(row[: cls._STREAM_WIDTH]), Totals(
            int(count), float(seconds), int(size), first, last
        )

    async def streams_with_totals(self) -> list[tuple[Stream, Totals]]:
        """Every stream and what it has recorded, in one query, ordered by id."""
        rows = await self._read(self._WITH_TOTALS + " ORDER BY streams.id")
        return [self._with_totals(row) for row in rows]

    async def stream_with_totals(self, stream_id: int) -> tuple[Stream, Totals] | None:
        rows = await self._read(self._WITH_TOTALS + " WHERE streams.id = ?", (stream_id,))
        return self._with_totals(rows[0]) if rows else None

    async def mark_started(self, stream_id: int, now: float) -> None:
        await self._operation(
            "UPDATE streams SET wanted = 1, start_date = ?, stop_date = NULL, last_error = NULL"
            " WHERE id = ?",
            (now, stream_id),
        )

    async def mark_stopped(self, stream_id: int, now: float) -> None:
        await self._operation(
            "UPDATE streams SET wanted = 0, stop_date = ? WHERE id = ?", (now, stream_id)
        )

    async def set_source_audio(self, stream_id: int, codec: str) -> None:
        await self._operation(
            "UPDATE streams SET source_audio = ? WHERE id = ?", (codec, stream_id)
        )

    async def set_last_error(self, stream_id: int, error: str | None) -> None:
        await self._operation("UPDATE streams SET last_error = ? WHERE id = ?", (error, stream_id))

    # -- runs and segments ----------------------------------------------
    async def open_run(
        self, stream_id: int, now: float, node: str | None = None, epoch: int = 0
    ) -> int:
        """A new run of a stream, recorded by ``node`` under the lease's ``epoch``."""
        return await self._transaction(
            self._insert(
                "INSERT INTO runs (stream_id, started_at, node, epoch) VALUES (?, ?, ?, ?)",
                (stream_id, now, node, epoch),
            )
        )

    async def set_run_clock(self, run_id: int, clock: str, time_error: float) -> None:
        """The clock a run follows now, and how far off its times may be (s)."""
        await self._operation(
            "UPDATE runs SET clock = ?, time_error = ? WHERE id = ?", (clock, time_error, run_id)
        )

    async def run_clock(self, run_id: int) -> tuple[str | None, float | None]:
        """``(clock, time error)`` of a run; Nones for one from before schema 10."""
        rows = await self._query("SELECT clock, time_error FROM runs WHERE id = ?", (run_id,))
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    async def close_run(self, run_id: int, now: float, reason: str) -> None:
        await self._operation(
            "UPDATE runs SET ended_at = ?, exit_reason = ? WHERE id = ?", (now, reason, run_id)
        )

    async def open_runs(self, node: str | None = None) -> list[tuple[int, int]]:
        """``(run_id, stream_id)`` of runs never closed (the service died); with
        ``node``, only that node's (and those of before there were nodes)."""
        query = "SELECT id, stream_id FROM runs WHERE ended_at IS NULL"
        params: tuple[str, ...] = ()
        if node is not None:
            query += " AND (node = ? OR node IS NULL)"
            params = (node,)
        rows = await self._query(query + " ORDER BY id", params)
        return [(row[0], row[1]) for row in rows]

    async def run_stream(self, run_id: int) -> int | None:
        rows = await self._query("SELECT stream_id FROM runs WHERE id = ?", (run_id,))
        return rows[0][0] if rows else None

    async def run_segments(self, run_id: int) -> list[Segment]:
        rows = await self._query(
            "SELECT id, stream_id, run_id, path, start_time, end_time, bytes FROM segments"
            " WHERE run_id = ? ORDER BY start_time, id",
            (run_id,),
        )
        return [Segment(*row) for row in rows]

    async def oldest_segments(
        self, limit: int, before: float | None = None, stream_id: int | None = None
    ) -> list[Segment]:
        """The oldest indexed segments (by end), optionally ending before ``before``."""
        query = "SELECT id, stream_id, run_id, path, start_time, end_time, bytes FROM segments"
        conditions, params = [], []
        if before is not None:
            conditions.append("end_time < ?")
            params.append(before)
        if stream_id is not None:
            conditions.append("stream_id = ?")
            params.append(stream_id)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        rows = await self._query(query + " ORDER BY end_time, id LIMIT ?", (*params, limit))
        return [Segment(*row) for row in rows]

    def _delete_segments(self, segment_ids: Sequence[int]) -> Steps[None]:
        marks = ", ".join("?" for _ in segment_ids)
        gone = yield Query(
            "SELECT stream_id, COUNT(*), SUM(end_time - start_time), SUM(bytes) FROM segments"
            f" WHERE id IN ({marks}) GROUP BY stream_id",
            tuple(segment_ids),
        )
        removed = yield Query(
            f"DELETE FROM segments WHERE id IN ({marks}) RETURNING stream_id, start_time, end_time",
            tuple(segment_ids),
        )
        for stream_id, count, seconds, size in gone:
            yield Query(
                "UPDATE stream_totals SET segments = segments - ?, seconds = seconds - ?,"
                " bytes = bytes - ? WHERE stream_id = ?",
                (count, seconds, size, stream_id),
            )
            yield from self._refresh_ends(stream_id)
        yield from self._spans_removed(removed)

    def _refresh_ends(self, stream_id: int) -> Steps[None]:
        """Recompute a stream's first and last recorded instants (two index lookups:
        a stream's segments do not overlap, so the first to end is the first to start)."""
        yield Query(
            "UPDATE stream_totals SET"
            " first_start = (SELECT start_time FROM segments WHERE stream_id = ?"
            " ORDER BY end_time LIMIT 1),"
            " last_end = (SELECT MAX(end_time) FROM segments WHERE stream_id = ?),"
            " seconds = CASE WHEN segments = 0 THEN 0 ELSE seconds END"
            " WHERE stream_id = ?",
            (stream_id, stream_id, stream_id),
        )

    async def delete_segments(self, segment_ids: Sequence[int]) -> None:
        """Delete segment rows; the streams' totals and spans follow in the same transaction."""
        if segment_ids:
            await self._transaction(self._delete_segments(segment_ids))

    async def segment_bytes(self) -> int:
        rows = await self._query("SELECT COALESCE(SUM(bytes), 0) FROM stream_totals")
        return int(rows[0][0])

    async def clips_created_before(self, before: float) -> list[tuple[int, str]]:
        """``(job_id, storage_key)`` of clips of done jobs finished before ``before``."""
        rows = await self._query(
            "SELECT clips.job_id, clips.storage_key FROM clips JOIN clip_jobs"
            " ON clips.job_id = clip_jobs.id WHERE clip_jobs.status = ?"
            " AND clip_jobs.updated_at < ? ORDER BY clips.job_id, clips.seq",
            (JOB_DONE, before),
        )
        return [(row[0], row[1]) for row in rows]

    def _expire_job(self, job_id: int, now: float) -> Steps[None]:
        yield Query("DELETE FROM clips WHERE job_id = ?", (job_id,))
        yield Query("DELETE FROM clip_spans WHERE job_id = ?", (job_id,))
        yield Query(
            "UPDATE clip_jobs SET status = ?, updated_at = ? WHERE id = ?",
            (JOB_EXPIRED, now, job_id),
        )

    async def expire_job(self, job_id: int, now: float) -> None:
        """The job's clips are gone; asking again builds it anew."""
        await self._transaction(self._expire_job(job_id, now))

    def _add_segment(
        self, stream_id: int, run_id: int, path: str, start: float, end: float, size: int
    ) -> Steps[int | None]:
        # Fencing: a run of an older epoch (a node that lost the stream's lease)
        # is not indexed where a run of a newer epoch already covers its start:
        # it may fill the time before the new owner began, never double it.
        at = start + FENCE_TOLERANCE
        rows = yield Query(
            "INSERT INTO segments (stream_id, run_id, path, start_time, end_time, bytes)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM segments"
            " JOIN runs ON runs.id = segments.run_id WHERE segments.stream_id = ?"
            " AND segments.end_time > ? AND segments.end_time < ? AND segments.start_time <= ?"
            " AND runs.epoch > (SELECT epoch FROM runs WHERE id = ?)) RETURNING id",
            (stream_id, run_id, path, start, end, size)
            + (stream_id, at, at + LONGEST_SEGMENT, at, run_id),
        )
        if not rows:
            return None
        segment_id = int(rows[0][0])
        yield Query(
            "UPDATE stream_totals SET segments = segments + 1, seconds = seconds + ?,"
            " bytes = bytes + ?,"
            " first_start = CASE WHEN first_start IS NULL OR ? < first_start"
            " THEN ? ELSE first_start END,"
            " last_end = CASE WHEN last_end IS NULL OR ? > last_end THEN ? ELSE last_end END"
            " WHERE stream_id = ?",
            (end - start, size, start, start, end, end, stream_id),
        )
        yield from self._span_added(stream_id, start, end)
        return segment_id

    async def add_segment(
        self, stream_id: int, run_id: int, path: str, start: float, end: float, size: int
    ) -> int | None:
        """Index a segment; the stream's totals and spans follow in the same transaction.
        None: refused, because a newer owner of the stream has recorded that time.

        Segments that arrive while an insert is in flight go in together in
        the next transaction: the segments of many cameras close at once,
        and one transaction for them all keeps the database free for others.
        """
        done: Deferred[int | None] = Deferred()
        self._new_segments.append(((stream_id, run_id, path, start, end, size), done))
        if not self._inserting:
            self._insert_segments()
        return await done

    def _insert_segments(self) -> None:
        batch, self._new_segments = self._new_segments, []
        self._inserting = True

        def inserted(ids: list[int | None]) -> None:
            for (_, done), segment_id in zip(batch, ids):
                done.callback(segment_id)

        def failed(failure: Any) -> None:
            if len(batch) == 1:
                batch[0][1].errback(failure)
                return
            for segment, done in batch:  # one at a time: only the bad one fails
                self._transaction(self._add_segment(*segment)).chainDeferred(done)

        def next_batch(_: object) -> None:
            self._inserting = False
            if self._new_segments:
                self._insert_segments()

        d = self._transaction(self._add_segments([segment for segment, _ in batch]))
        d.addCallbacks(inserted, failed)
        d.addBoth(next_batch)

    def _add_segments(self, segments: list[tuple[Any, ...]]) -> Steps[list[int | None]]:
        ids = []
        for segment in segments:
            ids.append((yield from self._add_segment(*segment)))
        return ids

    def _shift_run(self, run_id: int, delta: float) -> Steps[None]:
        yield Query(
            "UPDATE segments SET start_time = start_time + ?, end_time = end_time + ?"
            " WHERE run_id = ?",
            (delta, delta, run_id),
        )
        rows = yield Query("SELECT stream_id FROM runs WHERE id = ?", (run_id,))
        if rows:
            yield from self._refresh_ends(rows[0][0])
        moved = yield Query(
            "SELECT stream_id, MIN(start_time), MAX(end_time) FROM segments WHERE run_id = ?"
            " GROUP BY stream_id",
            (run_id,),
        )
        for stream_id, low, high in moved:  # the time the run left and the time it took
            yield from self._respan(stream_id, min(low, low - delta), max(high, high - delta))

    async def shift_run(self, run_id: int, delta: float) -> None:
        """Move every segment of a run by ``delta`` seconds (a better clock anchor);
        the stream's spans follow."""
        await self._transaction(self._shift_run(run_id, delta))

    async def segments_between(self, stream_id: int, start: float, stop: float) -> list[Segment]:
        """Segments that overlap [start, stop), ordered by time.

        No segment is longer than :data:`LONGEST_SEGMENT`, so the index on
        (stream, end) is read from ``start`` to ``stop + LONGEST_SEGMENT`` only,
        whatever the length of the archive.
        """
        rows = await self._query(
            "SELECT segments.id, segments.stream_id, run_id, path, segments.start_time,"
            " end_time, bytes, runs.node FROM segments JOIN runs ON runs.id = segments.run_id"
            " WHERE segments.stream_id = ? AND end_time > ? AND end_time < ?"
            " AND segments.start_time < ? ORDER BY segments.start_time, segments.id",
            (stream_id, start, stop + LONGEST_SEGMENT, stop),
        )
        return [Segment(*row) for row in rows]

    async def last_segment_end(self, stream_id: int) -> float | None:
        return (await self.totals(stream_id)).last

    async def totals(self, stream_id: int) -> Totals:
        """What a stream has recorded (kept, not summed: one row read)."""
        rows = await self._query(
            "SELECT segments, seconds, bytes, first_start, last_end FROM stream_totals"
            " WHERE stream_id = ?",
            (stream_id,),
        )
        if not rows:
            return Totals(0, 0.0, 0, None, None)
        count, seconds, size, first, last = rows[0]
        return Totals(int(count), float(seconds), int(size), first, last)
