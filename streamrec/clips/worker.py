"""The clip worker: builds pending clip jobs, a bounded number at a time."""

from __future__ import annotations

import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import log_failure
from ..evidence import Signer, file_digest
from ..media.fmp4 import Mp4Error
from ..media.mp4 import SegmentPiece, cached_segment
from ..media.prft import frame_seconds
from ..plugins import ClipEncoder, EncodeRequest, RunBlocking, StorageBackend
from ..store import (
    JOB_FAILED,
    JOB_PENDING,
    JOB_PROCESSING,
    MANIFEST_SUFFIX,
    Clip,
    ClipJob,
    Segment,
    SpanTask,
    SqlStore,
)
from ..views import clip_json
from .planner import plan_spans

log = Logger(namespace="streamrec.clips")

#: Seconds a job waits for a node that holds part of its recording and is gone.
SPAN_WAIT = 600.0
#: Seconds between looks for other nodes' work, on a database they share.
SWEEP_INTERVAL = 2.0
#: Seconds before looking again after a look failed (the database was away).
RETRY_INTERVAL = 5.0
#: Seconds between looks at the segment being written, for a job that ends
#: at the live edge: about one fragment.
TAIL_LOOK = 0.25
#: The id of the segment being written, which is not on the index yet.
TAIL_ID = -1
#: How many times a span's build is begun: one that never ends (the service
#: stops or dies under it every time) is not begun for ever.
MAX_ATTEMPTS = 3


class ClipWorker(Service):
    """Builds pending jobs once the recording has reached their end: cuts each
    into spans (one clip per continuous recorded span) and builds the spans
    this node can read, handing each clip to the storage backend.

    It does not poll. It looks for work when woken: a new job, a stream that
    stops, a segment indexed for a stream a job waits for, a build that ends,
    and a timer set for the first moment a waiting job can go on (the end of
    its range, the end of its grace for late segments). Jobs for ranges still
    to come cost nothing meanwhile, however many there are. On a shared
    database (PostgreSQL) it also looks every ``sweep_interval`` seconds, for
    what other nodes ask of it; each look is a few queries, whatever the
    length of the queue.

    Several nodes may share a database, each with segments on its own disk.
    A job is planned once, by whichever worker comes first; each span names
    the node that recorded it, and is built by that node, or by any node that
    can read the span's segment files itself (a data dir all nodes share).
    While a span's node is gone, its job waits (``waiting_for``) and fails
    after ``span_wait`` seconds if the node has not come back.
    """

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
        sweep_interval: float | None = SWEEP_INTERVAL,
        late_grace: float = 10.0,
        node: str | None = None,
        span_wait: float = SPAN_WAIT,
        max_attempts: int = MAX_ATTEMPTS,
        live_tail: Callable[[int], tuple[int, str, float] | None] = lambda stream_id: None,
        run_blocking: RunBlocking = defer.maybeDeferred,
        signer: Signer | None = None,
    ) -> None:
        self.reactor = reactor
        # Hashing a clip and writing its manifest: in the reactor's thread pool
        # (streamrec.threads.thread_runner); by default here, for tests.
        self.run_blocking = run_blocking
        # With --signing-key: each clip gets a signed manifest beside it.
        self.signer = signer
        self.store = store
        self.storage = storage
        self.encoders = encoders
        self.scratch_dir = scratch_dir
        self.is_recording = is_recording
        self.notify = notify
        self.concurrency = concurrency
        # Alone on a SQLite file, work comes only through this process.
        shared = getattr(store, "dialect", None) != "sqlite"
        self.sweep_interval = sweep_interval if shared else None
        self.late_grace = late_grace
        self.node = node
        self.span_wait = span_wait
        self.max_attempts = max_attempts
        self.live_tail = live_tail
        self.running_jobs: set[int] = set()
        self.reading: dict[int, set[str]] = {}
        self.builds: dict[int, defer.Deferred[None]] = {}
        self._ticking = False
        self._again = False  # woken during a tick: tick once more after it
        self.looks = 0  # how many times it has looked for work
        self._timer: Any = None  # the next look, when nothing wakes it before
        # Streams with pending jobs that wait for their recording to reach them.
        self.waiting: set[int] = set()
        # Nodes whose segment files this node has found it can read (a shared data dir).
        self._readable: set[str] = set()

    # -- service ----------------------------------------------------------
    def startService(self) -> None:
        """Empty the scratch dir (recovery has ended any encoder a dead process
        left writing there), resume interrupted jobs, then look for work."""
        super().startService()
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        os.makedirs(self.scratch_dir, exist_ok=True)
        d = defer.ensureDeferred(self._resume_interrupted())
        d.addErrback(lambda f: log_failure(log, "cannot resume clip jobs", f))
        d.addBoth(lambda _: self.wake())

    def stopService(self) -> None:
        """Stop looking and abandon builds under way (their encoders are killed):
        their spans stay taken by this node and are built again by its next
        start (or by another node), :data:`MAX_ATTEMPTS` times at most."""
        super().stopService()
        self._schedule(None)
        for build in list(self.builds.values()):
            build.cancel()

    def cancel(self, job_id: int) -> None:
        """Abandon the build of ``job_id`` (its encoder is killed), if this node runs it."""
        build = self.builds.get(job_id)
        if build is not None:
            build.cancel()

    async def _resume_interrupted(self) -> None:
        """Spans a previous process of this node left half-built are built again
        from scratch; so are jobs it took before jobs were cut into spans."""
        if self.node is not None:
            await self.store.release_spans(self.node)
        for job in await self.store.jobs_with_status(JOB_PROCESSING):
            if job.planned_at is None:
                log.info("clip job {job_id} was interrupted: building it again", job_id=job.id)
                await self.store.set_job_status(
                    job.id, JOB_PENDING, self.reactor.seconds(), progress=0
                )

    # -- looking for work ------------------------------------------------------
    def wake(self) -> None:
        """Look for work now (a job was asked for, a stream stopped, a build
        ended, a waiting job's time came)."""
        if not self.running:
            return
        if self._ticking:
            self._again = True
            return
        self._ticking = True
        self._again = False
        d = defer.ensureDeferred(self._tick())
        d.addErrback(self._tick_failed)
        d.addBoth(self._ticked)

    def _tick_failed(self, failure: Failure) -> None:
        log_failure(log, "clip worker tick failed", failure)
        self._schedule(self.reactor.seconds() + RETRY_INTERVAL)

    def recorded(self, stream_id: int) -> None:
        """A stream indexed a segment: look again if a job waits for that stream."""
        if stream_id in self.waiting:
            self.wake()

    def _ticked(self, _: object) -> None:
        self._ticking = False
        self.looks += 1
        if self._again:
            self.wake()

    def _schedule(self, when: float | None) -> None:
        """Look again at ``when`` (instead of any earlier plan); None: only when woken."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if when is not None and self.running:
            delay = max(0.0, when - self.reactor.seconds()) + 0.05
            self._timer = self.reactor.callLater(delay, self.wake)

    async def _tick(self) -> None:
        """Start what can be built, and set the timer for the next moment a
        waiting job can go on: a few queries, however many jobs wait for ranges
        still to come (they wait in the database until their time)."""
        await self._drop_cancelled()
        now = self.reactor.seconds()
        waiting = set()
        # Jobs still waiting for their last segments come after those that are
        # ready; the slots left are filled from a few of them.
        candidates = 2 * self.concurrency + len(self.running_jobs)
        later: list[float] = []
        if len(self.running_jobs) < self.concurrency:
            for job in await self.store.jobs_to_build(now, candidates, self.late_grace):
                if job.id in self.running_jobs or len(self.running_jobs) >= self.concurrency:
                    continue
                if not await self._ready(job):
                    waiting.add(job.stream_id)
                    later.append(job.stop + self.late_grace)
                    if self.live_tail(job.stream_id) is not None:
                        later.append(now + TAIL_LOOK)
                    continue
                self._start_build(job)
        self.waiting = waiting
        later.append(await self.store.next_job_stop(now) or math.inf)
        later.append(await self._planned_jobs())
        if self.sweep_interval is not None:
            later.append(now + self.sweep_interval)
        soonest = min(later)
        self._schedule(soonest if math.isfinite(soonest) else None)

    async def _drop_cancelled(self) -> None:
        """Builds of jobs that ended meanwhile (cancelled, maybe on another node)."""
        if not self.builds:
            return
        statuses = await self.store.job_statuses(list(self.builds))
        for job_id, status in statuses.items():
            if status not in (JOB_PENDING, JOB_PROCESSING):
                log.info(
                    "clip job {job_id} ended ({status}): its build stops",
                    job_id=job_id,
                    status=status,
                )
                self.cancel(job_id)

    async def _planned_jobs(self) -> float:
        """Build the spans of planned jobs that this node can build; note the jobs
        whose spans wait for a node that is gone, and fail those that waited too
        long. When the first of those waits runs out (inf: none waits)."""
        spans = await self.store.open_spans()
        if not spans:
            return math.inf
        live = {node.name for node in await self.store.live_nodes()}
        by_job: dict[int, list[SpanTask]] = {}
        for span in spans:
            by_job.setdefault(span.job_id, []).append(span)
        deadline = math.inf
        for job_id, open_spans in by_job.items():
            buildable = [s for s in open_spans if await self._can_build(s)]
            if buildable and job_id not in self.running_jobs:
                if len(self.running_jobs) < self.concurrency and any(
                    s.status == JOB_PENDING or s.builder not in live for s in buildable
                ):
                    self._start_build(await self.store.get_job(job_id))
            gone = sorted(
                {
                    s.node or ""
                    for s in open_spans
                    if s not in buildable and s.node not in live and s.builder not in live
                }
            )
            await self._wait_for(job_id, gone, open_spans[0].planned_at)
            if gone:
                deadline = min(deadline, open_spans[0].planned_at + self.span_wait)
        return deadline

    async def _wait_for(self, job_id: int, gone: list[str], planned_at: float) -> None:
        job = await self.store.get_job(job_id)
        waiting_for = ", ".join(gone) or None
        if gone and self.reactor.seconds() - planned_at > self.span_wait:
            message = (
                f"the recording is on node {waiting_for}, which has not answered"
                f" for {self.span_wait:g} s"
            )
            await self.store.set_job_status(
                job_id, JOB_FAILED, self.reactor.seconds(), error_message=message
            )
            self.notify("clip_failed", stream_id=job.stream_id, job_id=job_id, error=message)
        elif job.waiting_for != waiting_for:
            await self.store.set_job_waiting(job_id, waiting_for)

    async def _can_build(self, span: SpanTask) -> bool:
        """This node recorded the span, or can read its segment files itself."""
        if span.node is None or span.node == self.node or span.node in self._readable:
            return True
        segments = await self._segments(span)
        if segments and all(os.path.exists(segment.path) for segment in segments):
            log.info("node {node}'s segments are readable here: a shared data dir", node=span.node)
            self._readable.add(span.node)
            return True
        return False

    def _start_build(self, job: ClipJob) -> None:
        self.running_jobs.add(job.id)
        d = self.builds[job.id] = defer.ensureDeferred(self.build(job))
        d.addErrback(self._crashed)
        d.addBoth(self._finished, job.id)

    def paths_in_use(self) -> set[str]:
        """Segment files that jobs being built are reading."""
        return set().union(*self.reading.values())

    def _crashed(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log_failure(log, "clip job crashed", failure)

    def _finished(self, _: object, job_id: int) -> None:
        self.running_jobs.discard(job_id)
        self.reading.pop(job_id, None)
        self.builds.pop(job_id, None)
        self.wake()

    async def _ready(self, job: ClipJob) -> bool:
        """Has the recording reached the job's end (or will it never)?"""
        if not self.is_recording(job.stream_id):
            stream = await self.store.get_stream(job.stream_id)
            if stream is None or not stream.wanted:  # nor on another node
                return True
        if self.reactor.seconds() > job.stop + self.late_grace:
            return True
        last = await self.store.last_segment_end(job.stream_id)
        if last is not None and last >= job.stop:
            return True
        tail = self._tail(job.stream_id)
        return tail is not None and tail.end >= job.stop

    def _tail(self, stream_id: int, run_id: int | None = None) -> Segment | None:
        """The segment this node is writing for the stream, as far as its
        fragments are on disk (a few kilobytes of tables, read again only once
        the file has grown, and then by the clip's plan too): a clip that ends
        at the live edge is cut from it without waiting for it to close."""
        tail = self.live_tail(stream_id)
        if tail is None or run_id not in (None, tail[0]):
            return None
        tail_run, path, start = tail
        try:
            first, end = cached_segment(path).span()
            size = os.path.getsize(path)
        except (Mp4Error, OSError):
            return None  # no fragment written yet
        return Segment(
            TAIL_ID, stream_id, tail_run, path, start, start + end - first, size, self.node
        )

    async def _with_tail(
        self, stream_id: int, start: float, stop: float, run_id: int | None = None
    ) -> list[Segment]:
        """The indexed segments between ``start`` and ``stop``, and the one being
        written if the range reaches it. The tail is read first: if it is indexed
        meanwhile, the index has it, and it is not taken twice."""
        tail = self._tail(stream_id, run_id)
        found = await self.store.segments_between(stream_id, start, stop)
        if run_id is not None:
            found = [segment for segment in found if segment.run_id == run_id]
        if tail is not None and tail.start < stop and all(s.path != tail.path for s in found):
            found.append(tail)
        return found

    # -- building ------------------------------------------------------------
    async def build(self, job: ClipJob) -> None:
        """Plan a pending job (unless another worker does first), then build the
        spans of it that this node can build, one after another."""
        if job.status == JOB_PENDING:
            segments = await self._with_tail(job.stream_id, job.start, job.stop)
            spans = [
                (span.segments[0].run_id, span.segments[0].node, span.start, span.stop)
                for span in plan_spans(segments, job.start, job.stop)
            ]
            if await self.store.plan_job(job.id, spans, self.reactor.seconds()) and not spans:
                self.notify("clip_done", stream_id=job.stream_id, job_id=job.id, clips=[])
                return
        for span in await self.store.open_spans(job.id):
            if not await self._can_build(span):
                continue
            attempt = await self.store.claim_span(job.id, span.seq, self.node or "")
            if not attempt:
                continue  # another node builds it
            if attempt > self.max_attempts:
                await self._fail(
                    job,
                    f"building this clip was begun {attempt - 1} times and interrupted"
                    " each time (the service stopped under it); it is not begun again",
                )
                return
            if not await self._build_span(job, span):
                return

    async def _segments(self, span: SpanTask) -> list[Segment]:
        return await self._with_tail(span.stream_id, span.start, span.stop, span.run_id)

    async def _build_span(self, job: ClipJob, span: SpanTask) -> bool:
        """Build one span's clip; False when the job failed."""
        now = self.reactor.seconds
        out_path: str | None = None
        clip: Clip | None = None
        stored: list[str] = []  # keys handed to the storage backend
        try:
            encoder = self.encoders.get(job.encoder)
            if encoder is None:
                raise LookupError(f"clip encoder {job.encoder!r} is not loaded")
            segments = await self._segments(span)
            self.reading[job.id] = {segment.path for segment in segments}
            key = secrets.token_urlsafe(18) + ".mp4"
            out_path = os.path.join(self.scratch_dir, key)

            def progress(fraction: float) -> None:
                self._progress(job.id, (span.seq + fraction) / span.total)

            result = await encoder.encode(
                EncodeRequest(
                    pieces=[SegmentPiece(s.path, s.start) for s in segments],
                    start=span.start,
                    stop=span.stop,
                    out_path=out_path,
                    options=dict(job.options),
                    progress=progress,
                )
            )
            sha256, size = await self.run_blocking(file_digest, out_path)
            link = await self.storage.store_clip(out_path, key)
            out_path = None
            stored.append(key)
            clip = Clip(
                span.seq,
                link,
                key,
                result.start,
                result.stop,
                result.size,
                sha256=sha256,
                **await self._provenance(span, segments, result.start, result.stop),
            )
            if self.signer is not None:
                manifest = self.signer.manifest(
                    stream=await self.store.get_stream(job.stream_id),
                    stream_id=job.stream_id,
                    clip=clip,
                    size=size,
                    encoder=job.encoder,
                    created=now(),
                )
                # Stored as the clip is, beside it: any storage backend keeps it.
                out_path = os.path.join(self.scratch_dir, key + MANIFEST_SUFFIX)
                await self.run_blocking(self.signer.write, out_path, manifest)
                manifest_link = await self.storage.store_clip(out_path, key + MANIFEST_SUFFIX)
                out_path = None
                stored.append(key + MANIFEST_SUFFIX)
                clip = replace(clip, manifest=manifest_link)
            last = await self.store.finish_span(job.id, span.seq, self.node or "", clip, now())
            if last is None:
                # Another node took the span over (this one seemed gone): its clip counts.
                for stored_key in stored:
                    await self.storage.delete_clip(stored_key)
                return True
        except defer.CancelledError:
            if out_path is not None and os.path.exists(out_path):
                os.remove(out_path)
            raise
        except Exception as failure:
            message = str(failure) or failure.__class__.__name__
            log.failure("clip job {job_id} failed", job_id=job.id)
            if out_path is not None and os.path.exists(out_path):
                os.remove(out_path)
            for stored_key in stored:
                try:
                    await self.storage.delete_clip(stored_key)
                except Exception:
                    log.failure("cannot delete clip {key}", key=stored_key)
            await self._fail(job, message)
            return False
        if last:
            done = await self.store.get_job(job.id)
            self.notify(
                "clip_done",
                stream_id=job.stream_id,
                job_id=job.id,
                clips=[clip_json(made) for made in done.clips],
            )
        return True

    async def _provenance(
        self, span: SpanTask, segments: list[Segment], start: float, stop: float
    ) -> dict[str, Any]:
        """Where a clip's times come from: the clock its run followed, the
        instants of its first and last shown frames, and the run's bound on
        their error (None for a run recorded before streamrec kept it)."""
        clock, time_error = await self.store.run_clock(span.run_id)
        try:
            frame = await self.run_blocking(frame_seconds, segments[-1].path)
        except (Mp4Error, OSError):
            frame = 0.0  # the last frame is then said to be shown at the clip's end
        return {
            "clock": clock or "arrival",
            "first_frame": start,
            "last_frame": max(start, stop - frame),
            "time_error": time_error,
        }

    async def _fail(self, job: ClipJob, message: str) -> None:
        await self.store.set_job_status(
            job.id, JOB_FAILED, self.reactor.seconds(), error_message=message
        )
        self.notify("clip_failed", stream_id=job.stream_id, job_id=job.id, error=message)

    def _progress(self, job_id: int, fraction: float) -> None:
        d = defer.ensureDeferred(
            self.store.set_job_progress(job_id, min(fraction, 0.99), self.reactor.seconds())
        )
        d.addErrback(lambda f: log_failure(log, "cannot record progress", f))
