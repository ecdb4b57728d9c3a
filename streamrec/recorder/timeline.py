"""A run's timeline: where its media time lies on the wall clock. Pure arithmetic.

ffmpeg's output timeline starts at 0 with the first packet it received. Every
report about it (a closed segment's end, a progress line) that arrives at
wall time W about media time M bounds the run's *anchor* (the wall time of
media time 0) from above: ``anchor <= W - M``. The smallest bound of the last
:data:`BOUND_WINDOW` seconds of media is the anchor: the least delayed report
wins, as in Moonfire NVR's ``design/time.md``, whose window is one recording.

Right after it opens a source, ffmpeg writes out at once what it buffered
while probing: media time runs ahead of the wall clock and the anchor is
still far too late. Segments are held back until media time advances at the
pace of the wall clock (or :data:`SETTLE_LIMIT` seconds have passed); the
anchor is then good to a few milliseconds plus the arrival jitter (tens of
milliseconds). While the run is young (:data:`REANCHOR_SECONDS` of media
after its first indexed segment), a better anchor by at most
:data:`STEP_THRESHOLD` moves the segments already indexed with it
(:meth:`RunClock.reanchor`), so one run is one consistent timeline.

Later, or by more, the anchor moves because the wall clock did: NTP stepped
it, or it drifts. A step back makes every bound smaller at once; a step
forward makes them larger, and the window lets the old bounds expire. The
indexed past is then never moved: each new segment starts where the last
one ended and its wall duration is its media duration stretched or shrunk
by at most :data:`SLEW_RATE` (500 ppm, Moonfire's bound), until the index
meets the clock again: a 5 s step takes 10,000 s of media. So the index
never goes backwards, never overlaps, and shows a gap only where media is
missing. :attr:`RunClock.error` is how far the index is from the clock and
:attr:`RunClock.slewing` whether it is catching up.

With the wall clock alone, a lasting rise in latency (a source that fell
behind) looks like a forward step and is followed the same way, at the same
bounded rate.

A camera's own clock: an RTSP camera's sender reports say when it captured
each frame (:mod:`streamrec.media.prft`), and an HLS playlist may date its
segments (:mod:`.hls`), which gives a *camera anchor* with no network or
buffering delay in it. The run's ``mode`` says which clock to
follow: ``arrival`` (the anchor above), ``camera`` (the camera anchor once
known), or ``auto`` (the camera anchor while it agrees with the arrival
anchor within ``tolerance`` seconds: a camera whose clock is wrong, unset
or in another time zone falls back to arrival). A playlist's date counts at
once; a camera's sender reports count once
two closed segments in a row give the same anchor (the first sender reports
may disagree with the rest); the run waits for it for at most
:data:`CAMERA_WAIT` seconds before its first segment is indexed, so a run
starts in the clock it keeps. A switch of clock later in the run (the camera
stopped agreeing) is slewed like a step.

No I/O here: the recorder feeds observations in and applies the answers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Segments are indexed at the latest this long after ffmpeg started, even if
#: its output never settled to the pace of the wall clock.
SETTLE_LIMIT = 15.0

#: Observations closer together than this say nothing about the pace.
PACE_WINDOW = 0.3

#: Media time may run this much faster than the wall clock and count as settled.
PACE_TOLERANCE = 1.1

#: Anchor changes smaller than this are noise, not a better bound; an index
#: this close to the clock is not slewed.
ANCHOR_EPSILON = 0.002

#: A segment whose start is this close to the previous end follows it exactly.
JOIN_TOLERANCE = 0.25

#: The anchor is the smallest bound reported over this many seconds of media.
#: A forward step of the wall clock is seen once the bounds before it expired.
BOUND_WINDOW = 60.0

#: For this long (media seconds) after the run's first indexed segment, a
#: better anchor moves the indexed segments (ffmpeg's output settling).
REANCHOR_SECONDS = 30.0

#: An anchor change larger than this is a clock step, never a better bound:
#: above the arrival jitter (tens of ms), below the smallest step ntpd makes
#: (128 ms; timesyncd steps from 400 ms, chrony's default from 1 s).
STEP_THRESHOLD = 0.1

#: Seconds after ffmpeg started that a run which may follow the camera's
#: clock waits for it before its first segment is indexed.
CAMERA_WAIT = 10.0

#: Camera anchors of two segments in a row that agree this closely are the
#: camera's clock (sender reports of a drifting camera move it a little).
CAMERA_STEADY = 0.005

#: Where an RTSP camera's clock comes from.
SENDER_REPORTS = "RTCP sender reports"

#: Where an HLS source's clock comes from.
PROGRAM_DATE_TIME = "HLS EXT-X-PROGRAM-DATE-TIME"

#: The default bound on camera minus arrival under ``auto``.
CLOCK_TOLERANCE = 5.0

#: The least delay from capture to arrival measured on a local source
#: (encoding, muxing, the network: 100-115 ms): the error of arrival time
#: when nothing better is known. Real cameras and networks add to it.
ARRIVAL_DELAY = 0.1

#: The length of a frame when no segment said it yet (25 fps).
FRAME = 0.04

#: The most a segment's wall duration differs from its media duration while
#: the index catches up with the clock: 500 ppm, 1 ms on a 2 s segment.
SLEW_RATE = 500e-6


@dataclass(frozen=True)
class Observation:
    """What one report changed: the clock just settled (index what was held),
    and/or the anchor improved while segments are indexed (shift them)."""

    settled: bool = False
    reanchor: bool = False


@dataclass
class RunClock:
    """The wall-clock mapping of one run: wall time = ``indexed_anchor`` + media time."""

    started_at: float
    anchor: float | None = None  # the smallest W - M of the window: the target
    indexed_anchor: float | None = None  # the anchor the latest indexed segment uses
    settled: bool = False
    last_observation: tuple[float, float] | None = None
    last_media: float | None = None  # the latest media time ffmpeg reported
    last_end: float | None = None  # wall end of the last indexed segment
    # (media, bound) of the window, bounds rising: the front is the smallest.
    bounds: deque[tuple[float, float]] = field(default_factory=deque, repr=False)
    media: float = 0.0  # the latest media time observed
    first_media: float | None = None  # media end of the first placed segment
    placed_media: float | None = None  # media end of the latest placed segment
    mode: str = "arrival"  # the clock asked for: auto, camera or arrival
    tolerance: float = CLOCK_TOLERANCE  # camera - arrival under auto, at most
    camera: float | None = None  # the camera's time of media time 0, once steady
    camera_seen: float | None = None  # the latest segment's camera anchor
    camera_source: str = ""  # where the camera's clock comes from
    paced: bool = False  # media time advances at the wall clock's pace
    frame: float = FRAME  # seconds a video frame lasts

    def __post_init__(self) -> None:
        if self.anchor is not None and not self.bounds:
            self.bounds.append((0.0, self.anchor))

    @property
    def clock(self) -> str:
        """The clock the index follows: ``camera`` or ``arrival``."""
        if self.camera is None or self.mode == "arrival":
            return "arrival"
        if self.mode == "camera" or self.agrees:
            return "camera"
        return "arrival"

    @property
    def offset(self) -> float | None:
        """Camera minus arrival, seconds (negative: the camera's time of a frame
        is earlier than its arrival); None without a camera clock."""
        if self.camera is None or self.anchor is None:
            return None
        return self.camera - self.anchor

    @property
    def agrees(self) -> bool:
        offset = self.offset
        return offset is not None and abs(offset) <= self.tolerance

    @property
    def target(self) -> float | None:
        """The anchor of the clock followed."""
        return self.camera if self.clock == "camera" else self.anchor

    @property
    def time_error(self) -> float:
        """How far the index's times may be from the instants the frames were
        captured, seconds: a frame (a clip starts on a frame boundary) and the
        slew still to go, and with arrival time the delay from capture to
        arrival, as measured against an agreeing camera clock, or else
        :data:`ARRIVAL_DELAY`. With the camera's clock, it is as right as
        the camera's own clock."""
        error = self.frame + abs(self.error)
        if self.clock == "camera":
            return error
        offset = self.offset
        measured = offset is not None and self.agrees and offset < 0
        return error + (-offset if measured else ARRIVAL_DELAY)  # type: ignore[operator]

    @property
    def error(self) -> float:
        """Seconds from the indexed mapping to the clock's: positive when the
        index is early and its segments are being stretched."""
        target = self.target
        if target is None or self.indexed_anchor is None:
            return 0.0
        return target - self.indexed_anchor

    @property
    def slewing(self) -> bool:
        """Is the index catching up with the clock, segment by segment?"""
        error = self.error
        return abs(error) > ANCHOR_EPSILON and not self._shifts(error)

    def observe(self, wall: float, media: float) -> Observation:
        """A report at wall time ``wall`` about media time ``media``."""
        settled = not self.settled and self._pace(wall, media)
        self.media = max(self.media, media)
        least, previous = self._bound(wall - media), self.anchor
        if previous is None or abs(least - previous) > ANCHOR_EPSILON:
            self.anchor = least
        improved = previous is None or least < previous - ANCHOR_EPSILON
        return Observation(settled, improved and self._shifts(self.error))

    def _bound(self, bound: float) -> float:
        """Add a bound to the window; the smallest one in it."""
        bounds = self.bounds
        while bounds and bounds[-1][1] >= bound:
            bounds.pop()  # never the smallest again: it expires first
        bounds.append((self.media, bound))
        while bounds[0][0] < self.media - BOUND_WINDOW:
            bounds.popleft()
        return bounds[0][1]

    def _shifts(self, error: float) -> bool:
        """Is this error a better anchor that moves the indexed segments?"""
        if self.indexed_anchor is None or error > -ANCHOR_EPSILON or -error > STEP_THRESHOLD:
            return False
        return self.first_media is None or self.media <= self.first_media + REANCHOR_SECONDS

    def observe_camera(
        self, anchor: float | None, declared: bool = False, source: str = SENDER_REPORTS
    ) -> Observation:
        """The camera anchor a closed segment gives (None: it has none); a
        ``declared`` one (an HLS playlist's date) counts at once."""
        if anchor is None:
            return Observation()
        previous, self.camera_seen = self.camera_seen, anchor
        if declared or (previous is not None and abs(anchor - previous) <= CAMERA_STEADY):
            self.camera, self.camera_source = anchor, source
        settled = not self.settled and self.paced and self.camera is not None
        self.settled = self.settled or settled
        return Observation(settled, self._shifts(self.error))

    def _pace(self, wall: float, media: float) -> bool:
        """Has media time started to advance at the pace of the wall clock (and
        is the camera's clock known, or given up on)?"""
        previous = self.last_observation
        if previous is None:
            self.last_observation = (wall, media)
            return False
        elapsed = wall - previous[0]
        if elapsed < PACE_WINDOW:
            return False
        self.last_observation = (wall, media)
        waited = wall - self.started_at
        if media - previous[1] <= elapsed * PACE_TOLERANCE or waited > SETTLE_LIMIT:
            self.paced = True
        camera_done = self.mode == "arrival" or self.camera is not None or waited > CAMERA_WAIT
        self.settled = self.paced and camera_done
        return self.settled

    def settle(self) -> bool:
        """Settle now (ffmpeg exited); True if it was not settled yet."""
        was = self.settled
        self.settled = True
        return not was

    def reanchor(self) -> float:
        """Move the indexed timeline to the better anchor: the shift to apply to
        the run's indexed segments (0.0 when there is none, or when the index
        slews instead)."""
        delta = self.error
        if not self._shifts(delta):
            return 0.0
        self.indexed_anchor = self.target
        if self.last_end is not None:
            self.last_end += delta
        return delta

    def _slew(self, media: float) -> float:
        """Move the indexed anchor toward the anchor by what ``media`` seconds
        allow; the move."""
        if self.target is None or self.indexed_anchor is None or media <= 0:
            return 0.0
        error = self.error
        if abs(error) <= ANCHOR_EPSILON:
            return 0.0
        limit = media * SLEW_RATE
        step = max(-limit, min(limit, error))
        self.indexed_anchor += step
        return step

    def place(self, duration: float, media_end: float | None) -> tuple[float, float]:
        """Wall ``(start, end)`` of the next segment of the run.

        ``media_end`` is where ffmpeg said the segment ends, None for a
        segment whose close was never reported (ffmpeg died writing it): that
        one follows the previous segment, or ends at the last reported time.
        A segment starts at the previous end unless media is missing between
        them, never before it. Call :meth:`reanchor` first, and
        :meth:`indexed` once it is stored.
        """
        if self.indexed_anchor is None:
            target = self.target
            self.indexed_anchor = target if target is not None else self.started_at
        if media_end is not None:
            if self.placed_media is not None:
                self._slew(media_end - self.placed_media)
            self._placed(media_end)
            end = self.indexed_anchor + media_end
            start = end - duration
            if self.last_end is not None and start - self.last_end < JOIN_TOLERANCE:
                start = self.last_end  # the usual case: right after the previous one
            if end <= start:  # reports out of order: keep the index going forward
                end = start + duration
            return start, end
        if self.last_end is not None:
            self._placed((self.placed_media or 0.0) + duration)
            return self.last_end, self.last_end + duration + self._slew(duration)
        end = self.indexed_anchor + (self.last_media or duration)
        self._placed(self.last_media or duration)
        return end - duration, end

    def _placed(self, media_end: float) -> None:
        if self.first_media is None:
            self.first_media = media_end
        self.placed_media = media_end

    def indexed(self, end: float) -> None:
        self.last_end = end


def clock_status(clock: RunClock) -> dict[str, Any]:
    """What ``status`` says of a run's clock."""
    offset = clock.offset
    if clock.clock == "camera":
        why = f"the source's own clock ({clock.camera_source})"
    elif clock.mode == "arrival":
        why = "arrival time, as asked"
    elif offset is not None:
        why = (
            f"arrival time: the camera's clock is {offset:+.3f} s from arrival,"
            f" beyond the {clock.tolerance:g} s tolerance"
        )
    else:
        why = "arrival time: the camera has not sent its clock"
    return {
        "clock": clock.clock,
        "clock_reason": why,
        "camera_offset_ms": None if offset is None else round(offset * 1000),
        "time_error_ms": round(clock.time_error * 1000),
        "clock_slewing": clock.slewing,
    }


def follow(last_end: float | None, duration: float, written_at: float) -> tuple[float, float]:
    """Wall ``(start, end)`` of a segment found on disk after a crash: right after
    the run's last indexed one, else ending when the file was last written."""
    start = last_end if last_end is not None else written_at - duration
    return start, start + duration
