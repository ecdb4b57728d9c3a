"""The domain: streams, their recorders and clip requests. No HTTP here."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .cluster import CHANNEL, Node
from .errors import (
    AlreadyStarted,
    BadRequest,
    CannotStart,
    CannotStop,
    DatabaseUnavailable,
    JobNotFound,
    NotStarted,
    StatusUnavailable,
    StreamNotFound,
    UnknownEncoder,
    log_failure,
)
from .playback import MAX_WIDTH, MIN_WIDTH, ArchiveBody, ArchiveFile, Picture, Playback
from .plugins import ClipEncoder, StorageBackend
from .recorder.fleet import Recorders
from .recorder.supervisor import DISK_FULL, RECONNECTING, RECORDING, STARTING, Recorder
from .sources import CLOCKS, mask_secrets, validate_source_url
from .store import JOB_PENDING, JOB_PROCESSING, Clip, ClipJob, SqlStore, Stream
from .views import job_json, stream_json, timeline_json

log = Logger(namespace="streamrec.core")

#: Seconds between looks at the database while another node starts or stops a stream.
WAIT_STEP = 0.1
#: Seconds between looks at a quick clip job that get_clip waits for.
QUICK_ANSWER_STEP = 0.05


class RecorderEvents:
    """What the recorders of this node report, passed on: to the store (the state
    every node answers with), the plugins' hooks, the clip worker and the janitor."""

    def __init__(
        self,
        *,
        store: SqlStore,
        node: str,
        notify: Callable[..., None],
        recorded: Callable[[int], None] = lambda stream_id: None,
        space_short: Callable[[], Any] = lambda: None,
    ) -> None:
        self.store = store
        self.node = node
        self.notify = notify
        self.recorded = recorded
        self.space_short = space_short

    def segment_closed(
        self, stream_id: int, segment_id: int, path: str, start: float, end: float
    ) -> None:
        self.recorded(stream_id)
        self.notify(
            "segment_closed",
            stream_id=stream_id,
            segment_id=segment_id,
            path=path,
            start=start,
            end=end,
        )

    def state_changed(self, stream_id: int, state: str, error: str | None) -> None:
        error = None if error is None else mask_secrets(error)
        d = defer.ensureDeferred(self.store.set_recorder_state(stream_id, self.node, state, error))
        d.addErrback(lambda f: log_failure(log, "cannot record the recorder's state", f))
        self.notify("stream_state_changed", stream_id=stream_id, state=state, error=error)

    def disk_full(self, stream_id: int) -> None:
        self.space_short()

    def audio_found(self, stream_id: int, codec: str) -> None:
        d = defer.ensureDeferred(self.store.set_source_audio(stream_id, codec))
        d.addErrback(lambda f: log_failure(log, "cannot record the source's audio codec", f))


class Streams:
    """Streams and what is done with them, as the API offers it."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        recorders: Recorders,
        node: Node,
        events: RecorderEvents,
        notify: Callable[..., None],
        encoders: Mapping[str, ClipEncoder],
        default_encoder: str,
        max_clip_seconds: float,
        storage: StorageBackend | None = None,
        wake_worker: Callable[[], None] = lambda: None,
        stop_wait: float = 20.0,
        playback: Playback | None = None,
        max_clip_jobs: int | None = None,
        cancel_build: Callable[[int], None] = lambda job_id: None,
        clip_answer_wait: float = 0.0,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.recorders = recorders
        self.node = node
        self.locks = node.locks
        self.events = events
        self.notify = notify
        self.encoders = encoders
        self.default_encoder = default_encoder
        self.max_clip_seconds = max_clip_seconds
        self.wake_worker = wake_worker
        self.stop_wait = stop_wait
        self.max_clip_jobs = max_clip_jobs or None
        self.cancel_build = cancel_build
        self.clip_answer_wait = clip_answer_wait
        self.playback = playback or Playback(
            store=store, clock=reactor, max_seconds=max_clip_seconds
        )
        # Backends whose links expire (presigned URLs) make a new one per answer.
        self._link: Callable[[str], str] | None = getattr(storage, "link", None)

    def now(self) -> float:
        return self.reactor.seconds()

    async def _stream(self, stream_id: int) -> Stream:
        stream = await self.store.get_stream(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        return stream

    def _recorder(self, stream: Stream) -> Recorder:
        return self.recorders.for_stream(stream, listener=self.events)

    async def _one_at_a_time(
        self, stream_id: int, step: Callable[[int], Coroutine[Any, Any, None]]
    ) -> None:
        """Start and stop of one stream (and the node taking or leaving it) happen
        one after the other."""
        await self.locks.run(stream_id, lambda: step(stream_id))

    def is_recording(self, stream_id: int) -> bool:
        return self.recorders.is_recording(stream_id)

    def fresh_link(self, clip: Clip) -> str:
        return self._link(clip.storage_key) if self._link is not None else clip.link

    # -- the API's calls --------------------------------------------------------
    async def create(
        self, url: str, description: str, max_age: float | None = None, clock: str = "auto"
    ) -> int:
        validate_source_url(url)
        if max_age is not None and not (math.isfinite(max_age) and max_age > 0):
            raise BadRequest("max_age must be a positive number of seconds")
        if clock not in CLOCKS:
            raise BadRequest(f"clock must be one of {', '.join(CLOCKS)}")
        return await self.store.create_stream(url, description, self.now(), max_age, clock)

    def _live(self, stream: Stream) -> dict[str, Any]:
        """What the stream's recorder reports: this node's own, or, when another
        node records it, the state that node wrote."""
        recorder = self.recorders.get(stream.id)
        if recorder is not None and (recorder.wanted or recorder.busy()):
            return recorder.status()
        if not stream.wanted:
            return {}
        return {"state": stream.recorder_state if stream.owner else STARTING}

    async def list(self) -> list[dict[str, Any]]:
        return [
            stream_json(stream, totals, self._live(stream))
            for stream, totals in await self.store.streams_with_totals()
        ]

    async def status(self, stream_id: int) -> dict[str, Any]:
        try:
            found = await self.store.stream_with_totals(stream_id)
        except DatabaseUnavailable:
            raise
        except Exception as failure:
            log.failure("cannot get the status of stream {stream_id}", stream_id=stream_id)
            raise StatusUnavailable(stream_id) from failure
        if found is None:
            raise StreamNotFound(stream_id)
        stream, totals = found
        return stream_json(stream, totals, self._live(stream))

    async def timeline(
        self, stream_id: int, start: float | None, stop: float | None
    ) -> dict[str, Any]:
        """The recorded spans within [start, stop], cut to it; without ``start``
        or ``stop``, from the first or to the last recorded instant."""
        for name, value in (("start", start), ("stop", stop)):
            if value is not None:
                check_time(name, value)
        if start is not None and stop is not None and stop < start:
            raise BadRequest("stop must not be earlier than start")
        found = await self.store.stream_with_totals(stream_id)
        if found is None:
            raise StreamNotFound(stream_id)
        totals = found[1]
        if start is None:  # the first recorded instant, not after stop
            start = min((t for t in (totals.first, stop) if t is not None), default=None)
        if stop is None:  # the last recorded instant, not before start
            stop = max((t for t in (totals.last, start) if t is not None), default=None)
        if start is None or stop is None:  # nothing recorded, no bound given
            return timeline_json(stream_id, start, stop, [])
        return timeline_json(
            stream_id, start, stop, await self.store.recorded_spans(stream_id, start, stop)
        )

    async def snapshot(self, stream_id: int, t: float | None, width: float | None) -> Picture:
        """The frame shown at ``t`` as JPEG, ``width`` pixels wide (the recorded
        width by default); without ``t``, the latest recorded keyframe."""
        if t is not None:
            check_time("t", t)
        if width is not None and not (width.is_integer() and MIN_WIDTH <= width <= MAX_WIDTH):
            raise BadRequest(f"width must be a whole number from {MIN_WIDTH} to {MAX_WIDTH}")
        size = None if width is None else int(width)
        await self._stream(stream_id)
        if t is None:
            return await self.playback.snapshots.latest(stream_id, size)
        return await self.playback.snapshots.picture(stream_id, t, size)

    async def archive(self, stream_id: int, start: float, stop: float | None) -> ArchiveFile:
        """The recording from ``start`` as one MP4 file, to ``stop`` or the first
        gap (see :mod:`streamrec.playback.archive`)."""
        check_time("start", start)
        if stop is not None:
            check_time("stop", stop)
            if stop <= start:
                raise BadRequest("stop must be later than start")
        await self._stream(stream_id)
        return await self.playback.archive.open(stream_id, start, stop)

    def archive_body(self, file: ArchiveFile) -> ArchiveBody:
        """The bytes of ``file`` for one answer, read as they are sent."""
        return self.playback.archive.body(file)

    async def start(self, stream_id: int) -> None:
        await self._one_at_a_time(stream_id, self._start)

    async def _start(self, stream_id: int) -> None:
        stream = await self._stream(stream_id)
        recorder = self.recorders.get(stream_id)
        if stream.wanted or (recorder is not None and recorder.wanted):
            raise AlreadyStarted(stream_id)
        requested = self.now()
        if self.node.has_room():
            await self._start_here(stream, requested)
        else:
            await self._start_elsewhere(stream, requested)
        self.notify("stream_started", stream_id=stream_id, url=mask_secrets(stream.url))

    async def _start_here(self, stream: Stream, requested: float) -> None:
        node = self.node
        lease = await self.store.claim_to_start(node.node_name, node.lease_seconds, stream.id)
        if lease is None:
            # Another node holds it: starting it for a start asked there at the
            # same moment, or still closing the recording a stop ended.
            raise AlreadyStarted(stream.id)
        try:
            await self._recorder(stream).start(lease.epoch)  # raises CannotStart
        except BaseException:
            await self.store.release_leases(node.node_name, [stream.id])
            raise
        await self.store.mark_started(stream.id, requested)
        node.held[stream.id] = replace(lease, wanted=True)

    async def _start_elsewhere(self, stream: Stream, requested: float) -> None:
        """This node is full: another node with room takes the stream; answer once
        it records (or failed to)."""
        nodes = await self.store.live_nodes()
        if not any(n.max_streams is None or n.holds < n.max_streams for n in nodes):
            raise CannotStart("no node has room for another stream (see --max-streams)")
        await self.store.mark_started(stream.id, requested)
        await self.store.notify(CHANNEL, f"start {stream.id}")
        deadline = self.now() + self.stop_wait
        while self.now() < deadline:
            await deferLater(self.reactor, WAIT_STEP, lambda: None)
            now = await self._stream(stream.id)
            if now.epoch > stream.epoch and now.recorder_state == RECORDING:
                return
            if now.epoch > stream.epoch and now.recorder_state in (RECONNECTING, DISK_FULL):
                await self._give_up_start(stream.id)
                raise CannotStart(now.last_error or f"node {now.owner} could not start it")
        await self._give_up_start(stream.id)
        raise CannotStart("no node started the stream in time")

    async def _give_up_start(self, stream_id: int) -> None:
        await self.store.mark_stopped(stream_id, self.now())
        await self.store.notify(CHANNEL, f"stop {stream_id}")

    async def stop(self, stream_id: int) -> None:
        await self._one_at_a_time(stream_id, self._stop)

    async def _stop(self, stream_id: int) -> None:
        stream = await self._stream(stream_id)
        recorder = self.recorders.get(stream_id)
        here = recorder is not None and recorder.wanted
        if not stream.wanted and not here:
            raise NotStarted(stream_id)
        await self.store.mark_stopped(stream_id, self.now())
        if recorder is not None and here:
            try:
                await recorder.stop()
            except Exception as failure:
                log.failure("stream {stream_id}: stop failed", stream_id=stream_id)
                raise CannotStop(str(failure)) from failure
            self.node.held.pop(stream_id, None)
            await self.store.release_leases(self.node.node_name, [stream_id])
        elif stream.owner is not None:
            await self.store.notify(CHANNEL, f"stop {stream_id}")
            await self._released(stream)
        self.wake_worker()
        self.notify("stream_stopped", stream_id=stream_id)

    async def _released(self, stream: Stream) -> None:
        """Wait (a bounded while) for the node recording ``stream`` to close its
        last segment and let go; it does anyway, at its next lease round."""
        deadline = self.now() + self.stop_wait
        while self.now() < deadline:
            await deferLater(self.reactor, WAIT_STEP, lambda: None)
            now = await self._stream(stream.id)
            if now.owner is None or now.epoch != stream.epoch:
                return
        log.warn(
            "stream {stream_id}: node {node} has not let go yet; it stops at its next round",
            stream_id=stream.id,
            node=stream.owner,
        )

    async def get_clip(
        self,
        stream_id: int,
        start: float,
        stop: float | None,
        encoder: str | None,
        options: dict[str, str],
    ) -> dict[str, Any]:
        stream = await self._stream(stream_id)
        if stream.start_date is None:
            raise NotStarted(stream_id)
        check_time("start", start)
        # A millisecond is a frame's fraction: finer times would only make
        # every request a new job.
        start = round(start, 3)
        if stop is not None:
            check_time("stop", stop)
            stop = round(stop, 3)
            if stop <= start:
                raise BadRequest("stop must be later than start")
        encoder = encoder or self.default_encoder
        if encoder not in self.encoders:
            known = ", ".join(sorted(self.encoders))
            raise UnknownEncoder(f"unknown encoder {encoder!r}: known encoders are {known}")
        # Only the parameters the encoder takes are part of the job's identity.
        chosen = self.encoders[encoder]
        options = {key: value for key, value in options.items() if key in chosen.options}
        chosen.validate(options)  # raises BadRequest with what is wrong
        now = self.now()
        recording = self.is_recording(stream_id) or stream.wanted
        default_stop = now if recording else (stream.stop_date or now)
        if stop is None and default_stop <= start:
            raise BadRequest("start must be earlier than the end of the recording")
        end = stop if stop is not None else default_stop
        if end - start > self.max_clip_seconds:
            raise BadRequest(
                f"the range is {end - start:.0f} s long; at most {self.max_clip_seconds:g} s"
                " can be asked for at once"
            )
        longest = getattr(chosen, "max_seconds", None)
        if longest is not None and end - start > longest:
            raise BadRequest(
                f"the range is {end - start:.0f} s long; the {encoder} encoder takes"
                f" at most {longest:g} s at once"
            )
        job, created = await self.store.find_or_create_job(
            stream_id, start, stop, default_stop, encoder, options, now, self.max_clip_jobs
        )
        if created:
            self.wake_worker()
        if job.status in (JOB_PENDING, JOB_PROCESSING) and getattr(chosen, "quick", False):
            job = await self._quick_answer(job)
        return job_json(job, self.fresh_link)

    async def _quick_answer(self, job: ClipJob) -> ClipJob:
        """A quick encoder's job over a range already recorded is done within
        ``clip_answer_wait`` seconds: wait that long for it, so the first answer
        has the links."""
        if self.clip_answer_wait <= 0:
            return job
        totals = await self.store.totals(job.stream_id)
        if totals.last is None or totals.last < job.stop:
            return job  # its range is still being recorded
        deadline = self.now() + self.clip_answer_wait
        while self.now() < deadline:
            await deferLater(self.reactor, QUICK_ANSWER_STEP, lambda: None)
            job = await self.store.get_job(job.id)
            if job.status not in (JOB_PENDING, JOB_PROCESSING):
                break
        return job

    async def cancel_clip(self, stream_id: int, job_id: int) -> dict[str, Any]:
        """End a clip job that is pending or being built (its encoder is killed);
        the job answers ``failed`` with the reason from then on."""
        await self._stream(stream_id)
        if job_id not in await self.store.job_statuses([job_id]):
            raise JobNotFound(job_id)
        job = await self.store.get_job(job_id)
        if job.stream_id != stream_id:
            raise JobNotFound(job_id)
        if await self.store.cancel_job(job_id, self.now(), "cancelled through the API"):
            self.cancel_build(job_id)
            self.notify(
                "clip_failed", stream_id=stream_id, job_id=job_id, error="cancelled through the API"
            )
        return job_json(await self.store.get_job(job_id), self.fresh_link)

    # -- service life -------------------------------------------------------
    async def shutdown(self) -> None:
        """Hand the streams over to the other nodes, then stop every recorder
        gracefully; the wanted state stays for them (or for the restart)."""
        await self.node.hand_over()
        await self.recorders.stop_all()


def check_time(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0 or value > 1e11:
        raise BadRequest(f"{name} must be a POSIX timestamp in seconds")
