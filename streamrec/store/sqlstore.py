"""The one implementation of every store method, over a SQL driver (see ``streamrec.store``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred

from .records import (
    JOB_DONE,
    JOB_EXPIRED,
    JOB_PENDING,
    JOB_PROCESSING,
    Clip,
    ClipJob,
    Segment,
    Stream,
    Totals,
)
from .steps import Driver, Insert, Lock, Query, Steps, T

#: Seconds no indexed segment is longer than (the recorder refuses longer ones).
LONGEST_SEGMENT = 600.0

# Lock namespaces (:class:`~.steps.Lock`): one per kind of read-then-write transaction.
_MIGRATION_LOCK = 0x5EC0
_JOB_LOCK = 0x5EC1


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


class SqlStore:
    """The store over a :class:`~.steps.Driver` (SQLite or PostgreSQL).

    SQL is written once, with ``?`` placeholders and types both engines
    share; the driver runs it in its dialect.
    """

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        # Segments waiting for the insert transaction in flight to end (group commit).
        self._new_segments: list[tuple[tuple[Any, ...], Deferred[int]]] = []
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

    async def connect(self) -> None:
        """Open the database connections (done by the first call otherwise)."""
        await self._driver.connect()

    def close(self) -> Deferred[None]:
        """Close the database; fires once the statements in flight have ended.

        Calling it without waiting is fine: nothing new starts after it.
        """
        return self._driver.close()

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
        " source_audio"
    )

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
        )

    @staticmethod
    def _insert(query: str, params: Sequence[Any]) -> Steps[int]:
        new_id: int = yield Insert(query, params)
        return new_id

    def _create_stream(
        self, url: str, description: str, now: float, max_age: float | None
    ) -> Steps[int]:
        stream_id: int = yield Insert(
            "INSERT INTO streams (url, description, create_date, max_age) VALUES (?, ?, ?, ?)",
            (url, description, now, max_age),
        )
        yield Query("INSERT INTO stream_totals (stream_id) VALUES (?)", (stream_id,))
        return stream_id

    async def create_stream(
        self, url: str, description: str, now: float, max_age: float | None = None
    ) -> int:
        return await self._transaction(self._create_stream(url, description, now, max_age))

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
        count, seconds, size, first, last = row[10:]
        return cls._stream(row[:10]), Totals(int(count), float(seconds), int(size), first, last)

    async def streams_with_totals(self) -> list[tuple[Stream, Totals]]:
        """Every stream and what it has recorded, in one query, ordered by id."""
        rows = await self._query(self._WITH_TOTALS + " ORDER BY streams.id")
        return [self._with_totals(row) for row in rows]

    async def stream_with_totals(self, stream_id: int) -> tuple[Stream, Totals] | None:
        rows = await self._query(self._WITH_TOTALS + " WHERE streams.id = ?", (stream_id,))
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
    async def open_run(self, stream_id: int, now: float) -> int:
        return await self._transaction(
            self._insert("INSERT INTO runs (stream_id, started_at) VALUES (?, ?)", (stream_id, now))
        )

    async def close_run(self, run_id: int, now: float, reason: str) -> None:
        await self._operation(
            "UPDATE runs SET ended_at = ?, exit_reason = ? WHERE id = ?", (now, reason, run_id)
        )

    async def open_runs(self) -> list[tuple[int, int]]:
        """``(run_id, stream_id)`` of runs never closed (the service died)."""
        rows = await self._query(
            "SELECT id, stream_id FROM runs WHERE ended_at IS NULL ORDER BY id"
        )
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
        yield Query(f"DELETE FROM segments WHERE id IN ({marks})", tuple(segment_ids))
        for stream_id, count, seconds, size in gone:
            yield Query(
                "UPDATE stream_totals SET segments = segments - ?, seconds = seconds - ?,"
                " bytes = bytes - ? WHERE stream_id = ?",
                (count, seconds, size, stream_id),
            )
            yield from self._refresh_ends(stream_id)

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
        """Delete segment rows; the streams' totals follow in the same transaction."""
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
        yield Query(
            "UPDATE clip_jobs SET status = ?, updated_at = ? WHERE id = ?",
            (JOB_EXPIRED, now, job_id),
        )

    async def expire_job(self, job_id: int, now: float) -> None:
        """The job's clips are gone; asking again builds it anew."""
        await self._transaction(self._expire_job(job_id, now))

    def _add_segment(
        self, stream_id: int, run_id: int, path: str, start: float, end: float, size: int
    ) -> Steps[int]:
        segment_id: int = yield Insert(
            "INSERT INTO segments (stream_id, run_id, path, start_time, end_time, bytes)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (stream_id, run_id, path, start, end, size),
        )
        yield Query(
            "UPDATE stream_totals SET segments = segments + 1, seconds = seconds + ?,"
            " bytes = bytes + ?,"
            " first_start = CASE WHEN first_start IS NULL OR ? < first_start"
            " THEN ? ELSE first_start END,"
            " last_end = CASE WHEN last_end IS NULL OR ? > last_end THEN ? ELSE last_end END"
            " WHERE stream_id = ?",
            (end - start, size, start, start, end, end, stream_id),
        )
        return segment_id

    async def add_segment(
        self, stream_id: int, run_id: int, path: str, start: float, end: float, size: int
    ) -> int:
        """Index a segment; the stream's totals follow in the same transaction.

        Segments that arrive while an insert is in flight go in together in
        the next transaction: the segments of many cameras close at once,
        and one transaction for them all keeps the database free for others.
        """
        done: Deferred[int] = Deferred()
        self._new_segments.append(((stream_id, run_id, path, start, end, size), done))
        if not self._inserting:
            self._insert_segments()
        return await done

    def _insert_segments(self) -> None:
        batch, self._new_segments = self._new_segments, []
        self._inserting = True

        def inserted(ids: list[int]) -> None:
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

    def _add_segments(self, segments: list[tuple[Any, ...]]) -> Steps[list[int]]:
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

    async def shift_run(self, run_id: int, delta: float) -> None:
        """Move every segment of a run by ``delta`` seconds (a better clock anchor)."""
        await self._transaction(self._shift_run(run_id, delta))

    async def segments_between(self, stream_id: int, start: float, stop: float) -> list[Segment]:
        """Segments that overlap [start, stop), ordered by time.

        No segment is longer than :data:`LONGEST_SEGMENT`, so the index on
        (stream, end) is read from ``start`` to ``stop + LONGEST_SEGMENT`` only,
        whatever the length of the archive.
        """
        rows = await self._query(
            "SELECT id, stream_id, run_id, path, start_time, end_time, bytes FROM segments"
            " WHERE stream_id = ? AND end_time > ? AND end_time < ? AND start_time < ?"
            " ORDER BY start_time, id",
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

    # -- clip jobs ------------------------------------------------------
    _JOB_COLUMNS = (
        "id, stream_id, start_time, stop_time, stop_given, encoder, options, status,"
        " error_message, progress, created_at"
    )

    @staticmethod
    def _job(row: Sequence[Any]) -> Steps[ClipJob]:
        clips = yield Query(
            "SELECT seq, link, storage_key, start_time, stop_time, bytes FROM clips"
            " WHERE job_id = ? ORDER BY seq",
            (row[0],),
        )
        return ClipJob(
            id=row[0],
            stream_id=row[1],
            start=row[2],
            stop=row[3],
            stop_given=bool(row[4]),
            encoder=row[5],
            options=json.loads(row[6]),
            status=row[7],
            error_message=row[8],
            progress=row[9],
            created_at=row[10],
            clips=tuple(Clip(*clip) for clip in clips),
        )

    def _find_or_create_job(
        self,
        stream_id: int,
        start: float,
        stop: float | None,
        default_stop: float,
        encoder: str,
        options: dict[str, Any],
        now: float,
    ) -> Steps[tuple[ClipJob, bool]]:
        encoded = json.dumps(options, sort_keys=True)
        # The same request from two connections at once makes one job.
        yield Lock(_JOB_LOCK, stream_id)
        query = (
            f"SELECT {self._JOB_COLUMNS} FROM clip_jobs WHERE stream_id = ? AND start_time = ?"
            " AND encoder = ? AND options = ? AND stop_given = ? AND status != ?"
        )
        params: list[Any] = [stream_id, start, encoder, encoded, int(stop is not None), JOB_EXPIRED]
        if stop is not None:
            query += " AND stop_time = ?"
            params.append(stop)
        rows = yield Query(query + " ORDER BY id DESC LIMIT 1", params)
        if rows:
            return (yield from self._job(rows[0])), False
        job_id = yield Insert(
            "INSERT INTO clip_jobs (stream_id, start_time, stop_time, stop_given, encoder,"
            " options, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stream_id,
                start,
                stop if stop is not None else default_stop,
                int(stop is not None),
                encoder,
                encoded,
                JOB_PENDING,
                now,
                now,
            ),
        )
        return (yield from self._get_job(job_id)), True

    async def find_or_create_job(
        self,
        stream_id: int,
        start: float,
        stop: float | None,
        default_stop: float,
        encoder: str,
        options: dict[str, Any],
        now: float,
    ) -> tuple[ClipJob, bool]:
        """The job for this request, created if new; ``(job, created)``.

        A request without ``stop`` matches the earlier request without
        ``stop`` for the same ``start``; a new one ends at ``default_stop``.
        """
        return await self._transaction(
            self._find_or_create_job(stream_id, start, stop, default_stop, encoder, options, now)
        )

    def _get_job(self, job_id: int) -> Steps[ClipJob]:
        rows = yield Query(f"SELECT {self._JOB_COLUMNS} FROM clip_jobs WHERE id = ?", (job_id,))
        return (yield from self._job(rows[0]))

    async def get_job(self, job_id: int) -> ClipJob:
        return await self._transaction(self._get_job(job_id))

    def _jobs_with_status(self, statuses: Sequence[str]) -> Steps[list[ClipJob]]:
        marks = ", ".join("?" for _ in statuses)
        rows = yield Query(
            f"SELECT {self._JOB_COLUMNS} FROM clip_jobs WHERE status IN ({marks}) ORDER BY id",
            tuple(statuses),
        )
        jobs = []
        for row in rows:
            jobs.append((yield from self._job(row)))
        return jobs

    async def jobs_with_status(self, *statuses: str) -> list[ClipJob]:
        return await self._transaction(self._jobs_with_status(statuses))

    async def set_job_status(
        self,
        job_id: int,
        status: str,
        now: float,
        error_message: str | None = None,
        progress: float | None = None,
    ) -> None:
        await self._operation(
            "UPDATE clip_jobs SET status = ?, error_message = ?, updated_at = ?,"
            " progress = COALESCE(?, progress) WHERE id = ?",
            (status, error_message, now, progress, job_id),
        )

    async def claim_job(self, job_id: int, now: float) -> bool:
        """Move a pending job to processing; False if another worker has it."""
        return bool(await self._transaction(self._claim_job(job_id, now)))

    def _claim_job(self, job_id: int, now: float) -> Steps[bool]:
        rows = yield Query(
            "UPDATE clip_jobs SET status = ?, progress = 0, updated_at = ?"
            " WHERE id = ? AND status = ? RETURNING id",
            (JOB_PROCESSING, now, job_id, JOB_PENDING),
        )
        return bool(rows)

    async def set_job_progress(self, job_id: int, progress: float, now: float) -> None:
        """Record how far a job being built has come (0..1)."""
        await self._operation(
            "UPDATE clip_jobs SET progress = ?, updated_at = ? WHERE id = ? AND status = ?",
            (progress, now, job_id, JOB_PROCESSING),
        )

    def _finish_job(self, job_id: int, clips: Sequence[Clip], now: float) -> Steps[None]:
        for clip in clips:
            yield Query(
                "INSERT INTO clips (job_id, seq, link, storage_key, start_time, stop_time,"
                " bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, clip.seq, clip.link, clip.storage_key, clip.start, clip.stop, clip.bytes),
            )
        yield Query(
            "UPDATE clip_jobs SET status = ?, progress = 1, updated_at = ? WHERE id = ?",
            (JOB_DONE, now, job_id),
        )

    async def finish_job(self, job_id: int, clips: Sequence[Clip], now: float) -> None:
        """Record the job's clips and mark it done, in one transaction."""
        await self._transaction(self._finish_job(job_id, clips, now))
