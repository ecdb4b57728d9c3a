"""A run's timeline: where its media time lies on the wall clock. Pure arithmetic.

ffmpeg's output timeline starts at 0 with the first packet it received. Every
report about it (a closed segment's end, a progress line) that arrives at
wall time W about media time M bounds the run's *anchor* (the wall time of
media time 0) from above: ``anchor <= W - M``. The smallest bound seen is the
anchor. When it improves after segments were indexed, those segments are
shifted with it (:meth:`RunClock.reanchor`), so one run is always one
consistent timeline.

Right after it opens a source, ffmpeg writes out at once what it buffered
while probing: media time runs ahead of the wall clock and the anchor is
still far too late. Segments are held back until media time advances at the
pace of the wall clock (or :data:`SETTLE_LIMIT` seconds have passed); the
anchor is then good to a few milliseconds.

No I/O here: the recorder feeds observations in and applies the answers.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Segments are indexed at the latest this long after ffmpeg started, even if
#: its output never settled to the pace of the wall clock.
SETTLE_LIMIT = 15.0

#: Observations closer together than this say nothing about the pace.
PACE_WINDOW = 0.3

#: Media time may run this much faster than the wall clock and count as settled.
PACE_TOLERANCE = 1.1

#: Anchor changes smaller than this are noise, not a better bound.
ANCHOR_EPSILON = 0.002

#: A segment whose start is this close to the previous end follows it exactly.
JOIN_TOLERANCE = 0.25


@dataclass(frozen=True)
class Observation:
    """What one report changed: the clock just settled (index what was held),
    and/or the anchor improved while segments are indexed (shift them)."""

    settled: bool = False
    reanchor: bool = False


@dataclass
class RunClock:
    """The wall-clock mapping of one run."""

    started_at: float
    anchor: float | None = None  # the smallest W - M seen
    indexed_anchor: float | None = None  # the anchor the indexed segments use
    settled: bool = False
    last_observation: tuple[float, float] | None = None
    last_media: float | None = None  # the latest media time ffmpeg reported
    last_end: float | None = None  # wall end of the last indexed segment

    def observe(self, wall: float, media: float) -> Observation:
        """A report at wall time ``wall`` about media time ``media``."""
        settled = not self.settled and self._pace(wall, media)
        bound = wall - media
        improved = self.anchor is None or bound < self.anchor - ANCHOR_EPSILON
        if improved:
            self.anchor = bound
        return Observation(settled, improved and self.indexed_anchor is not None)

    def _pace(self, wall: float, media: float) -> bool:
        """Has media time started to advance at the pace of the wall clock?"""
        previous = self.last_observation
        if previous is None:
            self.last_observation = (wall, media)
            return False
        elapsed = wall - previous[0]
        if elapsed < PACE_WINDOW:
            return False
        self.last_observation = (wall, media)
        if media - previous[1] <= elapsed * PACE_TOLERANCE or wall - self.started_at > SETTLE_LIMIT:
            self.settled = True
        return self.settled

    def settle(self) -> bool:
        """Settle now (ffmpeg exited); True if it was not settled yet."""
        was = self.settled
        self.settled = True
        return not was

    def reanchor(self) -> float:
        """Move the indexed timeline to the better anchor: the shift to apply to
        the run's indexed segments (0.0 when there is none)."""
        if self.indexed_anchor is None or self.anchor is None:
            return 0.0
        delta = self.anchor - self.indexed_anchor
        if delta > -ANCHOR_EPSILON:
            return 0.0
        self.indexed_anchor = self.anchor
        if self.last_end is not None:
            self.last_end += delta
        return delta

    def place(self, duration: float, media_end: float | None) -> tuple[float, float]:
        """Wall ``(start, end)`` of the next segment of the run.

        ``media_end`` is where ffmpeg said the segment ends, None for a
        segment whose close was never reported (ffmpeg died writing it): that
        one follows the previous segment, or ends at the last reported time.
        Call :meth:`reanchor` first, and :meth:`indexed` once it is stored.
        """
        if self.indexed_anchor is None:
            self.indexed_anchor = self.anchor if self.anchor is not None else self.started_at
        if media_end is not None:
            end = self.indexed_anchor + media_end
            start = end - duration
            if self.last_end is not None and abs(start - self.last_end) < JOIN_TOLERANCE:
                start = self.last_end  # the usual case: right after the previous one
            return start, end
        if self.last_end is not None:
            return self.last_end, self.last_end + duration
        end = self.indexed_anchor + (self.last_media or duration)
        return end - duration, end

    def indexed(self, end: float) -> None:
        self.last_end = end


def follow(last_end: float | None, duration: float, written_at: float) -> tuple[float, float]:
    """Wall ``(start, end)`` of a segment found on disk after a crash: right after
    the run's last indexed one, else ending when the file was last written."""
    start = last_end if last_end is not None else written_at - duration
    return start, start + duration
