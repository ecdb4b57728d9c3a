"""The recorders of this service: one per stream started here, made on demand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from ..store import Stream
from .supervisor import Recorder, RecorderListener

#: ``make(stream_id, url, listener=..., source_audio=..., clock=...)``: a new
#: recorder for a stream.
MakeRecorder = Callable[..., Recorder]


class Recorders:
    def __init__(self, make: MakeRecorder) -> None:
        self.make = make
        self.by_stream: dict[int, Recorder] = {}

    def get(self, stream_id: int) -> Recorder | None:
        return self.by_stream.get(stream_id)

    def for_stream(self, stream: Stream, listener: RecorderListener) -> Recorder:
        recorder = self.by_stream.get(stream.id)
        if recorder is None:
            recorder = self.by_stream[stream.id] = self.make(
                stream.id,
                stream.url,
                listener=listener,
                source_audio=stream.source_audio,
                clock=stream.clock,
            )
        return recorder

    def is_recording(self, stream_id: int) -> bool:
        """Started, or still closing its last segment after a stop."""
        recorder = self.by_stream.get(stream_id)
        return recorder is not None and recorder.busy()

    def live_tail(self, stream_id: int) -> tuple[int, str, float] | None:
        """``(run id, path, wall start)`` of the segment being written for the stream here."""
        recorder = self.by_stream.get(stream_id)
        run = recorder.run if recorder is not None else None
        tail = run.tail() if run is not None else None
        return None if tail is None else (run.run_id, *tail)  # type: ignore[union-attr]

    def live_status(self, stream_id: int) -> dict[str, Any]:
        """What the stream's recorder reports, empty when it has none."""
        recorder = self.by_stream.get(stream_id)
        return recorder.status() if recorder is not None else {}

    async def stop_all(self) -> None:
        """Stop every recorder gracefully (the wanted state stays in the store)."""
        await defer.DeferredList(
            [defer.ensureDeferred(r.stop()) for r in self.by_stream.values()],
            consumeErrors=True,
        )
