"""Clip jobs: the same request is the same job, claimed once, finished in one transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from .records import JOB_DONE, JOB_EXPIRED, JOB_PENDING, JOB_PROCESSING, Clip, ClipJob
from .steps import Insert, Lock, Query, Steps, T

#: Lock namespace (:class:`~.steps.Lock`) of find-or-create.
_JOB_LOCK = 0x5EC1


class JobQueries:
    """Mixed into :class:`~.sqlstore.SqlStore`: clip jobs and their clips."""

    def _transaction(self, steps: Steps[T]) -> Deferred[T]:
        raise NotImplementedError

    def _operation(self, query: str, params: Sequence[Any] = ()) -> Deferred[None]:
        raise NotImplementedError

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
