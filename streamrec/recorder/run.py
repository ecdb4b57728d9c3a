"""What a recorder keeps between ffmpeg's reports: the run of one segmenter
process, and the backoff between launches."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer

from ..media.ffmpeg import FfmpegChild
from ..media.fmp4 import Mp4Error
from ..media.prft import camera_anchor, frame_seconds, producer_times
from .hls import FirstSegment, fetch_program_date_time, is_playlist
from .layout import segment_name
from .timeline import PROGRAM_DATE_TIME, Observation, RunClock


def source_clock(url: str) -> str | None:
    """How a source may carry its own clock: ``rtsp`` (sender reports), ``hls``
    (a playlist's dates), None (it does not)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https") and is_playlist(url):
        return "hls"
    return None


@dataclass
class Backoff:
    """Capped exponential backoff with jitter."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2
    rng: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return delay * (1 - self.jitter + 2 * self.jitter * self.rng())

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Run:
    """One ffmpeg process of a recorder: its directory, clock and indexing chain."""

    run_id: int
    directory: str
    clock: RunClock
    child: FfmpegChild
    copy_audio: bool = False
    # ffmpeg's report of its input, collected until it is complete.
    input_report: list[str] | None = None
    # Ended on purpose before it recorded, to launch again with other audio options.
    relaunch: str | None = None
    last_index: int = -1
    # The number of the latest segment on the index (-1: none yet).
    indexed_index: int = -1
    # How the source may send its own clock (source_clock): it is measured
    # even when not followed, to bound arrival time's error.
    source_clock: str | None = None
    # An HLS source: the first media segment ffmpeg opens, for its date.
    hls: FirstSegment | None = None
    # (clock, time error) as last written to the run's row.
    noted: tuple[str, float] | None = None
    segments: int = 0
    opened: bool = False
    disk_full: str | None = None
    stall: str | None = None
    # The source has a length (a finished HLS playlist): why it ends once read.
    source_end: str | None = None
    # Segments closed before the clock settled: (name, media start, media end).
    held: list[tuple[str, float, float]] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    waiters: list[defer.Deferred[None]] = field(default_factory=list)
    done: defer.Deferred[None] = field(default_factory=defer.Deferred)
    # Indexing steps run one after the other, in the order ffmpeg reported them.
    chain: defer.Deferred[None] = field(default_factory=lambda: defer.succeed(None))

    @property
    def exited(self) -> bool:
        return self.child.exited

    def look_at_camera(self, name: str) -> Observation:
        """Feed the camera's clock of a closed segment to the run's clock (a few
        kilobytes read), when the source may send one."""
        if self.source_clock != "rtsp":
            return Observation()
        path = os.path.join(self.directory, name)
        try:
            times = producer_times(path)
            if self.clock.camera_seen is None:
                self.clock.frame = frame_seconds(path)
        except (Mp4Error, OSError):
            return Observation()  # validation will say what is wrong with it
        return self.clock.observe_camera(camera_anchor(times, self.clock.frame))

    def hls_line(self, line: str) -> defer.Deferred[Observation] | None:
        """At the first media segment ffmpeg's log says it opened: its date
        from the playlist, fed to the run's clock (a Deferred)."""
        first = self.hls.line(line) if self.hls is not None else None
        if first is None:
            return None

        async def dated() -> Observation:
            date = await fetch_program_date_time(*first)
            return self.clock.observe_camera(date, declared=True, source=PROGRAM_DATE_TIME)

        return defer.ensureDeferred(dated())

    def provenance(self) -> tuple[str, float] | None:
        """The run's (clock, time error) when it changed since it was noted."""
        now = (self.clock.clock, round(self.clock.time_error, 3))
        if now == self.noted:
            return None
        self.noted = now
        return now

    def tail(self) -> tuple[str, float] | None:
        """``(path, wall start)`` of the segment ffmpeg is writing now, right
        after the last indexed one; None before the first is indexed.

        Its fragments are on disk as soon as they are written (a quarter of a
        second each, whatever the GOP), so a clip that ends at the live edge
        can be cut from them before the segment closes.
        """
        if self.exited or not self.clock.settled or self.clock.last_end is None:
            return None
        path = os.path.join(self.directory, segment_name(self.indexed_index + 1))
        return path, self.clock.last_end
