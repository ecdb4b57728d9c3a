"""Planning clips: one per continuous recorded span inside the asked range."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..store import Segment

# Segments of one run follow each other exactly; a larger hole is a gap.
MAX_JOIN_GAP = 0.25
# Shorter pieces (less than a frame at 25 fps) are not worth a clip.
MIN_CLIP_SECONDS = 0.04


@dataclass(frozen=True)
class Span:
    """Consecutive segments of one run, and the part of them the clip covers."""

    segments: tuple[Segment, ...]
    start: float
    stop: float


def plan_spans(segments: Sequence[Segment], start: float, stop: float) -> list[Span]:
    """Split ``segments`` (ordered by time) into continuous spans within [start, stop).

    A change of run (the segmenter restarted, the stream was stopped and
    started) or a hole between segments starts a new span.
    """
    groups: list[list[Segment]] = []
    for segment in segments:
        if segment.end <= start or segment.start >= stop:
            continue
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and last.run_id == segment.run_id
            and segment.start - last.end <= MAX_JOIN_GAP
        ):
            groups[-1].append(segment)
        else:
            groups.append([segment])
    spans = []
    for group in groups:
        span = Span(
            segments=tuple(group),
            start=max(start, group[0].start),
            stop=min(stop, group[-1].end),
        )
        if span.stop - span.start >= MIN_CLIP_SECONDS:
            spans.append(span)
    return spans
