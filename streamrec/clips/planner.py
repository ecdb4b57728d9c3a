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
    started) or a hole between segments starts a new span. Two runs may
    overlap: a node cut off from the database recorded on while another
    took the stream over. Then the run that began first is kept to its end,
    and the other's span starts where it ends, so no instant is in two clips.
    """
    groups: list[list[Segment]] = []
    open_group: dict[int, list[Segment]] = {}  # run -> its latest group
    for segment in segments:
        if segment.end <= start or segment.start >= stop:
            continue
        group = open_group.get(segment.run_id)
        if group is not None and segment.start - group[-1].end <= MAX_JOIN_GAP:
            group.append(segment)
        else:
            group = open_group[segment.run_id] = [segment]
            groups.append(group)
    spans = []
    covered = start
    for group in groups:  # ordered by their first segment
        span_start = max(covered, group[0].start)
        span_stop = min(stop, group[-1].end)
        if span_stop - span_start < MIN_CLIP_SECONDS:
            continue
        inside = tuple(s for s in group if s.end > span_start and s.start < span_stop)
        spans.append(Span(segments=inside, start=span_start, stop=span_stop))
        covered = span_stop
    return spans
