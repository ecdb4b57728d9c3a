"""The domain: streams, their recorders and clip requests. No HTTP here."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from .errors import (
    AlreadyStarted,
    BadRequest,
    CannotStop,
    NotStarted,
    StatusUnavailable,
    StreamNotFound,
    UnknownEncoder,
)
from .plugins import ClipEncoder, StorageBackend
from .recorder.fleet import Recorders
from .recorder.supervisor import Recorder
from .sources import validate_source_url
from .store import Clip, SqlStore, Stream
from .views import job_json, stream_json

log = Logger(namespace="streamrec.core")


class Streams:
    """Streams and what is done with them, as the API offers it."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        recorders: Recorders,
        notify: Callable[..., None],
        encoders: Mapping[str, ClipEncoder],
        default_encoder: str,
        max_clip_seconds: float,
        storage: StorageBackend | None = None,
        wake_worker: Callable[[], None] = lambda: None,
        recorded: Callable[[int], None] = lambda stream_id: None,
        space_short: Callable[[], Any] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.recorders = recorders
        self.notify = notify
        self.encoders = encoders
        self.default_encoder = default_encoder
        self.max_clip_seconds = max_clip_seconds
        self.wake_worker = wake_worker
        self.recorded = recorded
        self.space_short = space_short
        # Backends whose links expire (presigned URLs) make a new one per answer.
        self._link: Callable[[str], str] | None = getattr(storage, "link", None)
        self._locks: dict[int, defer.DeferredLock] = {}

    def now(self) -> float:
        return self.reactor.seconds()

    async def _stream(self, stream_id: int) -> Stream:
        stream = await self.store.get_stream(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        return stream

    def _recorder(self, stream: Stream) -> Recorder:
        return self.recorders.for_stream(stream, listener=self)

    async def _one_at_a_time(
        self, stream_id: int, step: Callable[[int], Coroutine[Any, Any, None]]
    ) -> None:
        """Start and stop of one stream happen one after the other."""
        lock = self._locks.setdefault(stream_id, defer.DeferredLock())
        await lock.run(lambda: defer.ensureDeferred(step(stream_id)))

    def is_recording(self, stream_id: int) -> bool:
        return self.recorders.is_recording(stream_id)

    def fresh_link(self, clip: Clip) -> str:
        return self._link(clip.storage_key) if self._link is not None else clip.link

    # -- recorder listener ---------------------------------------------------
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
        if error is not None:
            d = defer.ensureDeferred(self.store.set_last_error(stream_id, error))
            d.addErrback(lambda f: log.failure("cannot record the last error", f))
        self.notify("stream_state_changed", stream_id=stream_id, state=state, error=error)

    def disk_full(self, stream_id: int) -> None:
        self.space_short()

    def audio_found(self, stream_id: int, codec: str) -> None:
        d = defer.ensureDeferred(self.store.set_source_audio(stream_id, codec))
        d.addErrback(lambda f: log.failure("cannot record the source's audio codec", f))

    # -- the API's calls --------------------------------------------------------
    async def create(self, url: str, description: str, max_age: float | None = None) -> int:
        validate_source_url(url)
        if max_age is not None and not (math.isfinite(max_age) and max_age > 0):
            raise BadRequest("max_age must be a positive number of seconds")
        return await self.store.create_stream(url, description, self.now(), max_age)

    async def list(self) -> list[dict[str, Any]]:
        live = self.recorders.live_status
        return [
            stream_json(stream, totals, live(stream.id))
            for stream, totals in await self.store.streams_with_totals()
        ]

    async def status(self, stream_id: int) -> dict[str, Any]:
        try:
            found = await self.store.stream_with_totals(stream_id)
        except Exception as failure:
            log.failure("cannot get the status of stream {stream_id}", stream_id=stream_id)
            raise StatusUnavailable(stream_id) from failure
        if found is None:
            raise StreamNotFound(stream_id)
        stream, totals = found
        return stream_json(stream, totals, self.recorders.live_status(stream_id))

    async def start(self, stream_id: int) -> None:
        await self._one_at_a_time(stream_id, self._start)

    async def _start(self, stream_id: int) -> None:
        stream = await self._stream(stream_id)
        recorder = self._recorder(stream)
        if stream.wanted or recorder.wanted:
            raise AlreadyStarted(stream_id)
        requested = self.now()
        await recorder.start()  # raises CannotStart
        await self.store.mark_started(stream_id, requested)
        self.notify("stream_started", stream_id=stream_id, url=stream.url)

    async def stop(self, stream_id: int) -> None:
        await self._one_at_a_time(stream_id, self._stop)

    async def _stop(self, stream_id: int) -> None:
        stream = await self._stream(stream_id)
        recorder = self.recorders.get(stream_id)
        if not stream.wanted and (recorder is None or not recorder.wanted):
            raise NotStarted(stream_id)
        await self.store.mark_stopped(stream_id, self.now())
        if recorder is not None:
            try:
                await recorder.stop()
            except Exception as failure:
                log.failure("stream {stream_id}: stop failed", stream_id=stream_id)
                raise CannotStop(str(failure)) from failure
        self.wake_worker()
        self.notify("stream_stopped", stream_id=stream_id)

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
        if stop is not None:
            check_time("stop", stop)
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
        job, created = await self.store.find_or_create_job(
            stream_id, start, stop, default_stop, encoder, options, now
        )
        if created:
            self.wake_worker()
        return job_json(job, self.fresh_link)

    # -- service life -------------------------------------------------------
    async def resume_all(self) -> None:
        """Start recording again every stream that was started before."""
        for stream in await self.store.list_streams():
            if stream.wanted:
                log.info("stream {stream_id}: resuming recording", stream_id=stream.id)
                self._recorder(stream).resume()
                self.notify("stream_started", stream_id=stream.id, url=stream.url)

    async def shutdown(self) -> None:
        """Stop every recorder gracefully; the wanted state stays for the restart."""
        await self.recorders.stop_all()


def check_time(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0 or value > 1e11:
        raise BadRequest(f"{name} must be a POSIX timestamp in seconds")
