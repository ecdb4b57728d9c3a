"""Clip jobs: the same request is the same job, claimed once, finished in one transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from ..errors import ClipQueueFull
from .records import (
    JOB_DONE,
    JOB_EXPIRED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_PROCESSING,
    Clip,
    ClipJob,
    SpanTask,
)
from .steps import Insert, Lock, Query, Steps, T

#: Lock namespaces (:class:`~.steps.Lock`): find-or-create, finishing a span.
_JOB_LOCK = 0x5EC1
_SPAN_LOCK = 0x5EC2


class JobQueries:
    """Mixed into :class:`~.sqlstore.SqlStore`: clip jobs and their clips."""

    def _transaction(self, steps: Steps[T]) -> Deferred[T]:
        raise NotImplementedError

    def _operation(self, query: str, params: Sequence[Any] = ()) -> Deferred[None]:
        raise NotImplementedError

    def _query(self, query: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        raise NotImplementedError

    _JOB_COLUMNS = (
        "id, stream_id, start_time, stop_time, stop_given, encoder, options, status,"
        " error_message, progress, created_at, planned_at, waiting_for"
    )
    _INSERT_CLIP = (
        "INSERT INTO clips (job_id, seq, link, storage_key, start_time, stop_time, bytes,"
        " sha256, manifest, clock, first_frame, last_frame, time_error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    @staticmethod
    def _job(row: Sequence[Any]) -> Steps[ClipJob]:
        clips = yield Query(
            "SELECT seq, link, storage_key, start_time, stop_time, bytes, sha256, manifest,"
            " clock, first_frame, last_frame, time_error FROM clips WHERE job_id = ? ORDER BY seq",
            (row[0],),
        )
        return JobQueries._record(row, tuple(JobQueries._clip(clip) for clip in clips))

    @staticmethod
    def _clip(row: Sequence[Any]) -> Clip:
        return Clip(
            seq=row[0],
            link=row[1],
            storage_key=row[2],
            start=row[3],
            stop=row[4],
            bytes=row[5],
            sha256=row[6],
            manifest=row[7],
            clock=row[8],
            first_frame=row[9],
            last_frame=row[10],
            time_error=row[11],
        )

    @staticmethod
    def _clip_row(job_id: int, clip: Clip) -> tuple[Any, ...]:
        return (
            job_id,
            clip.seq,
            clip.link,
            clip.storage_key,
            clip.start,
            clip.stop,
            clip.bytes,
            clip.sha256,
            clip.manifest,
            clip.clock,
            clip.first_frame,
            clip.last_frame,
            clip.time_error,
        )

    @staticmethod
    def _record(row: Sequence[Any], clips: tuple[Clip, ...] = ()) -> ClipJob:
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
            clips=clips,
            planned_at=row[11],
            waiting_for=row[12],
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
        max_unfinished: int | None = None,
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
        if max_unfinished is not None:
            counted = yield Query(
                "SELECT COUNT(*) FROM clip_jobs WHERE status IN (?, ?)",
                (JOB_PENDING, JOB_PROCESSING),
            )
            if int(counted[0][0]) >= max_unfinished:
                raise ClipQueueFull(
                    f"{counted[0][0]} clip jobs are not finished (at most {max_unfinished});"
                    " ask again later"
                )
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
        max_unfinished: int | None = None,
    ) -> tuple[ClipJob, bool]:
        """The job for this request, created if new; ``(job, created)``.

        A request without ``stop`` matches the earlier request without
        ``stop`` for the same ``start``; a new one ends at ``default_stop``.
        A new job is refused (:class:`~streamrec.errors.ClipQueueFull`) while
        ``max_unfinished`` jobs are pending or being built.
        """
        return await self._transaction(
            self._find_or_create_job(
                stream_id, start, stop, default_stop, encoder, options, now, max_unfinished
            )
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

    async def jobs_to_build(self, now: float, limit: int, grace: float = 0.0) -> list[ClipJob]:
        """Pending jobs that may be built now, ``limit`` at most, in one query:
        those whose range has ended by ``now``, and those of streams that no
        longer record (their recording will not reach further). A job for a
        range still to come costs nothing here until its time.

        First come, oldest first, those whose recording has reached their end
        (or ended, or whose ``grace`` for late segments is over); then those
        still waiting for their last segments, so these never hold up the rest.
        """
        stopped = "stream_id IN (SELECT id FROM streams WHERE wanted = 0)"
        reached = (
            "stop_time <= (SELECT last_end FROM stream_totals"
            " WHERE stream_totals.stream_id = clip_jobs.stream_id)"
        )
        rows = await self._query(
            f"SELECT {self._JOB_COLUMNS} FROM clip_jobs"
            f" WHERE status = ? AND (stop_time <= ? OR {stopped})"
            f" ORDER BY CASE WHEN {stopped} OR stop_time + ? < ? OR {reached} THEN 0 ELSE 1 END,"
            " id LIMIT ?",
            (JOB_PENDING, now, grace, now, limit),
        )
        return [self._record(row) for row in rows]  # pending: no clips yet

    async def next_job_stop(self, now: float) -> float | None:
        """When the next pending job's range ends, after ``now`` (None: no such job)."""
        rows = await self._query(
            "SELECT MIN(stop_time) FROM clip_jobs WHERE status = ? AND stop_time > ?",
            (JOB_PENDING, now),
        )
        return rows[0][0] if rows and rows[0][0] is not None else None

    async def job_statuses(self, job_ids: Sequence[int]) -> dict[int, str]:
        if not job_ids:
            return {}
        marks = ", ".join("?" for _ in job_ids)
        rows = await self._query(
            f"SELECT id, status FROM clip_jobs WHERE id IN ({marks})", tuple(job_ids)
        )
        return {job_id: status for job_id, status in rows}

    async def cancel_job(self, job_id: int, now: float, message: str) -> bool:
        """Fail a pending or processing job with ``message``; False if it had ended."""
        rows = await self._query(
            "UPDATE clip_jobs SET status = ?, error_message = ?, waiting_for = NULL,"
            " updated_at = ? WHERE id = ? AND status IN (?, ?) RETURNING id",
            (JOB_FAILED, message, now, job_id, JOB_PENDING, JOB_PROCESSING),
        )
        return bool(rows)

    async def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status, in one query (the status index)."""
        rows = await self._query("SELECT status, COUNT(*) FROM clip_jobs GROUP BY status")
        return {status: count for status, count in rows}

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

    # -- spans: a planned job's pieces, each built by a node that can read it --
    async def plan_job(
        self, job_id: int, spans: Sequence[tuple[int, str | None, float, float]], now: float
    ) -> bool:
        """Cut a pending job into ``spans`` (run, node, start, stop) and move it to
        processing; False if another worker planned it first. A job with no
        span is done at once."""
        return await self._transaction(self._plan_job(job_id, spans, now))

    def _plan_job(
        self, job_id: int, spans: Sequence[tuple[int, str | None, float, float]], now: float
    ) -> Steps[bool]:
        rows = yield Query(
            "UPDATE clip_jobs SET status = ?, progress = 0, planned_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ? RETURNING id",
            (JOB_DONE if not spans else JOB_PROCESSING, now, now, job_id, JOB_PENDING),
        )
        if not rows:
            return False
        for seq, (run_id, node, start, stop) in enumerate(spans):
            yield Query(
                "INSERT INTO clip_spans (job_id, seq, run_id, node, start_time, stop_time, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, run_id, node, start, stop, JOB_PENDING),
            )
        return True

    async def open_spans(self, job_id: int | None = None) -> list[SpanTask]:
        """The spans not built yet of planned jobs (of one job, or of all)."""
        query = (
            "SELECT clip_spans.job_id, clip_jobs.stream_id, seq, run_id, node,"
            " clip_spans.start_time, clip_spans.stop_time, clip_spans.status, builder,"
            " (SELECT COUNT(*) FROM clip_spans AS every WHERE every.job_id = clip_spans.job_id),"
            " planned_at"
            " FROM clip_spans JOIN clip_jobs ON clip_jobs.id = clip_spans.job_id"
            " WHERE clip_jobs.status = ? AND clip_spans.status != ?"
        )
        params: list[Any] = [JOB_PROCESSING, JOB_DONE]
        if job_id is not None:
            query += " AND clip_spans.job_id = ?"
            params.append(job_id)
        rows = await self._query(query + " ORDER BY clip_spans.job_id, seq", params)
        return [SpanTask(*row) for row in rows]

    async def claim_span(self, job_id: int, seq: int, builder: str) -> int:
        """Take a span to build: one not taken, or taken by a node that is gone.
        Which build of the span this is (1 for the first; more after builds that
        were interrupted), or 0 when another node has it."""
        rows = await self._query(
            "UPDATE clip_spans SET status = ?, builder = ?, attempts = attempts + 1"
            " WHERE job_id = ? AND seq = ? AND (status = ? OR (status = ? AND builder NOT IN"
            " (SELECT name FROM nodes WHERE expires_at > db_now()))) RETURNING attempts",
            (JOB_PROCESSING, builder, job_id, seq, JOB_PENDING, JOB_PROCESSING),
        )
        return int(rows[0][0]) if rows else 0

    async def release_spans(self, builder: str) -> None:
        """Spans this node was building when it stopped: to be built again."""
        await self._query(
            "UPDATE clip_spans SET status = ?, builder = NULL WHERE builder = ? AND status = ?"
            " RETURNING seq",
            (JOB_PENDING, builder, JOB_PROCESSING),
        )

    async def finish_span(
        self, job_id: int, seq: int, builder: str, clip: Clip, now: float
    ) -> bool | None:
        """Record a built span's clip: True when it was the job's last (the job is
        done), False when others remain, None when ``builder`` no longer holds
        the span (another node took it over): its clip is not recorded."""
        return await self._transaction(self._finish_span(job_id, seq, builder, clip, now))

    def _finish_span(
        self, job_id: int, seq: int, builder: str, clip: Clip, now: float
    ) -> Steps[bool | None]:
        # Two nodes finishing a job's last spans at once: one sees the other's.
        yield Lock(_SPAN_LOCK, job_id)
        held = yield Query(
            "UPDATE clip_spans SET status = ? WHERE job_id = ? AND seq = ? AND builder = ?"
            " AND status = ? RETURNING seq",
            (JOB_DONE, job_id, seq, builder, JOB_PROCESSING),
        )
        if not held:
            return None
        yield Query(self._INSERT_CLIP, self._clip_row(job_id, clip))
        rows = yield Query(
            "SELECT COUNT(*) FROM clip_spans WHERE job_id = ? AND status != ?", (job_id, JOB_DONE)
        )
        if int(rows[0][0]):
            return False
        yield Query(
            "UPDATE clip_jobs SET status = ?, progress = 1, waiting_for = NULL, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (JOB_DONE, now, job_id, JOB_PROCESSING),
        )
        return True

    async def set_job_waiting(self, job_id: int, nodes: str | None) -> None:
        """The nodes a job waits for (None: it waits for nobody)."""
        await self._operation("UPDATE clip_jobs SET waiting_for = ? WHERE id = ?", (nodes, job_id))

    async def set_job_progress(self, job_id: int, progress: float, now: float) -> None:
        """Record how far a job being built has come (0..1)."""
        await self._operation(
            "UPDATE clip_jobs SET progress = ?, updated_at = ? WHERE id = ? AND status = ?",
            (progress, now, job_id, JOB_PROCESSING),
        )

    def _finish_job(self, job_id: int, clips: Sequence[Clip], now: float) -> Steps[None]:
        for clip in clips:
            yield Query(self._INSERT_CLIP, self._clip_row(job_id, clip))
        yield Query(
            "UPDATE clip_jobs SET status = ?, progress = 1, updated_at = ? WHERE id = ?",
            (JOB_DONE, now, job_id),
        )

    async def finish_job(self, job_id: int, clips: Sequence[Clip], now: float) -> None:
        """Record the job's clips and mark it done, in one transaction."""
        await self._transaction(self._finish_job(job_id, clips, now))
