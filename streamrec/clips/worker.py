"""The clip worker: builds pending clip jobs, a bounded number at a time."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import log_failure
from ..media.mp4 import SegmentPiece
from ..plugins import ClipEncoder, EncodeRequest, StorageBackend
from ..store import JOB_FAILED, JOB_PENDING, JOB_PROCESSING, Clip, ClipJob, SqlStore
from ..views import clip_json
from .planner import plan_spans

log = Logger(namespace="streamrec.clips")


class ClipWorker(Service):
    """Polls pending jobs, waits until the recording has reached their end,
    builds one clip per continuous span and hands it to the storage backend."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        storage: StorageBackend,
        encoders: Mapping[str, ClipEncoder],
        scratch_dir: str,
        is_recording: Callable[[int], bool],
        notify: Callable[..., None],
        concurrency: int = 2,
        poll_interval: float = 0.5,
        late_grace: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.storage = storage
        self.encoders = encoders
        self.scratch_dir = scratch_dir
        self.is_recording = is_recording
        self.notify = notify
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.late_grace = late_grace
        self.running_jobs: set[int] = set()
        self.reading: dict[int, set[str]] = {}
        self.builds: dict[int, defer.Deferred[None]] = {}
        self._loop: task.LoopingCall | None = None
        self._ticking = False
        # Streams with pending jobs that wait for their recording to reach them.
        self.waiting: set[int] = set()

    # -- service ----------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        os.makedirs(self.scratch_dir, exist_ok=True)
        self._loop = task.LoopingCall(self.wake)
        self._loop.clock = self.reactor
        d = defer.ensureDeferred(self._resume_interrupted())
        d.addErrback(lambda f: log.failure("cannot resume clip jobs", f))
        d.addBoth(self._start_polling)

    def _start_polling(self, _: object) -> None:
        if self.running and self._loop is not None:
            self._loop.start(self.poll_interval, now=True)

    def stopService(self) -> None:
        """Stop polling and abandon builds under way: they stay ``processing``
        and are built again by the next start."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for build in list(self.builds.values()):
            build.cancel()

    async def _resume_interrupted(self) -> None:
        """Jobs a previous process left half-built are built again from scratch."""
        for job in await self.store.jobs_with_status(JOB_PROCESSING):
            log.info("clip job {job_id} was interrupted: building it again", job_id=job.id)
            await self.store.set_job_status(job.id, JOB_PENDING, self.reactor.seconds(), progress=0)

    # -- polling -------------------------------------------------------------
    def wake(self) -> None:
        """Look for work now (also called every poll interval)."""
        if self._ticking or not self.running:
            return
        self._ticking = True
        d = defer.ensureDeferred(self._tick())
        d.addErrback(lambda f: log_failure(log, "clip worker tick failed", f))
        d.addBoth(self._ticked)

    def recorded(self, stream_id: int) -> None:
        """A stream indexed a segment: look again if a job waits for that stream."""
        if stream_id in self.waiting:
            self.wake()

    def _ticked(self, _: object) -> None:
        self._ticking = False

    async def _tick(self) -> None:
        if len(self.running_jobs) >= self.concurrency:
            return
        waiting = set()
        for job in await self.store.jobs_with_status(JOB_PENDING):
            if len(self.running_jobs) >= self.concurrency:
                waiting.add(job.stream_id)
                continue
            if job.id in self.running_jobs:
                continue
            if not await self._ready(job):
                waiting.add(job.stream_id)
                continue
            self.running_jobs.add(job.id)
            d = self.builds[job.id] = defer.ensureDeferred(self.build(job))
            d.addErrback(self._crashed)
            d.addBoth(self._finished, job.id)
        self.waiting = waiting

    def paths_in_use(self) -> set[str]:
        """Segment files that jobs being built are reading."""
        return set().union(*self.reading.values())

    def _crashed(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("clip job crashed", failure)

    def _finished(self, _: object, job_id: int) -> None:
        self.running_jobs.discard(job_id)
        self.reading.pop(job_id, None)
        self.builds.pop(job_id, None)
        self.wake()

    async def _ready(self, job: ClipJob) -> bool:
        """Has the recording reached the job's end (or will it never)?"""
        if not self.is_recording(job.stream_id):
            return True
        if self.reactor.seconds() > job.stop + self.late_grace:
            return True
        last = await self.store.last_segment_end(job.stream_id)
        return last is not None and last >= job.stop

    # -- building ------------------------------------------------------------
    async def build(self, job: ClipJob) -> None:
        now = self.reactor.seconds
        if not await self.store.claim_job(job.id, now()):
            return  # another worker (on another box) builds it
        made: list[Clip] = []
        out_path: str | None = None
        try:
            encoder = self.encoders.get(job.encoder)
            if encoder is None:
                raise LookupError(f"clip encoder {job.encoder!r} is not loaded")
            segments = await self.store.segments_between(job.stream_id, job.start, job.stop)
            self.reading[job.id] = {segment.path for segment in segments}
            spans = plan_spans(segments, job.start, job.stop)
            for seq, span in enumerate(spans):
                key = secrets.token_urlsafe(18) + ".mp4"
                out_path = os.path.join(self.scratch_dir, key)
                done_before = seq / len(spans)

                def progress(fraction: float, base: float = done_before) -> None:
                    self._progress(job.id, base + fraction / len(spans))

                result = await encoder.encode(
                    EncodeRequest(
                        pieces=[SegmentPiece(s.path, s.start) for s in span.segments],
                        start=span.start,
                        stop=span.stop,
                        out_path=out_path,
                        options=dict(job.options),
                        progress=progress,
                    )
                )
                link = await self.storage.store_clip(out_path, key)
                out_path = None
                made.append(Clip(seq, link, key, result.start, result.stop, result.size))
            await self.store.finish_job(job.id, made, now())
        except defer.CancelledError:
            if out_path is not None and os.path.exists(out_path):
                os.remove(out_path)
            raise
        except Exception as failure:
            message = str(failure) or failure.__class__.__name__
            log.failure("clip job {job_id} failed", job_id=job.id)
            if out_path is not None and os.path.exists(out_path):
                os.remove(out_path)
            for clip in made:
                try:
                    await self.storage.delete_clip(clip.storage_key)
                except Exception:
                    log.failure("cannot delete clip {key}", key=clip.storage_key)
            await self.store.set_job_status(job.id, JOB_FAILED, now(), error_message=message)
            self.notify("clip_failed", stream_id=job.stream_id, job_id=job.id, error=message)
            return
        self.notify(
            "clip_done",
            stream_id=job.stream_id,
            job_id=job.id,
            clips=[clip_json(clip) for clip in made],
        )

    def _progress(self, job_id: int, fraction: float) -> None:
        d = defer.ensureDeferred(
            self.store.set_job_progress(job_id, min(fraction, 0.99), self.reactor.seconds())
        )
        d.addErrback(lambda f: log_failure(log, "cannot record progress", f))
