"""Each stream's recorded spans (its timeline), kept with its segments.

A span is a stretch of time with video: a stream's segments merged, whichever
run recorded them, where the gap from one to the next is at most
:data:`SPAN_JOIN`. The table ``recorded_spans`` holds them, changed in the
same transaction as every segment insert, delete and shift
(:class:`~.sqlstore.SqlStore`), so a timeline reads as many rows as it shows
spans, however many segments they hold.

- An insert extends the spans the segment touches (two or more, when it
  fills a gap between them) or opens one: an index lookup.
- A delete or a shift rewrites the spans of the time it changed from the
  segments there now, reading only the segments of that time: the parts of
  those spans outside it stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from .steps import Query, Steps

#: Seconds: segments at most this far apart are one span. The recorder's
#: ``streamrec.recorder.timeline.JOIN_TOLERANCE`` (a test keeps them equal;
#: the store cannot import the recorder). The schema file ``*_timeline.sql``,
#: which builds the spans of an existing archive, spells it out too.
SPAN_JOIN = 0.25

Span = tuple[float, float]


def join_spans(intervals: Iterable[Span]) -> list[Span]:
    """Merge ``(start, end)`` intervals, ordered by start, into spans."""
    spans: list[list[float]] = []
    for start, end in intervals:
        # Written as the SQL of the insert compares, so both agree to the last bit.
        if spans and start - SPAN_JOIN <= spans[-1][1]:
            if end > spans[-1][1]:
                spans[-1][1] = end
        else:
            spans.append([start, end])
    return [(start, end) for start, end in spans]


class SpanQueries:
    """Mixed into :class:`~.sqlstore.SqlStore`: the timeline of each stream."""

    #: Seconds no indexed segment is longer than (``LONGEST_SEGMENT``, set by the store).
    _longest_segment: float

    def _read(self, query: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        raise NotImplementedError

    async def recorded_spans(self, stream_id: int, start: float, stop: float) -> list[Span]:
        """The recorded spans that overlap [start, stop], cut to it, in time order.

        Spans do not overlap, so the first to end after ``stop`` bounds the
        index range: the rows read are the spans shown (and that one).
        """
        rows = await self._read(
            "SELECT start_time, end_time FROM recorded_spans WHERE stream_id = ?"
            " AND end_time > ? AND end_time <= COALESCE((SELECT MIN(end_time)"
            " FROM recorded_spans WHERE stream_id = ? AND end_time >= ?), ?)"
            " AND start_time < ? ORDER BY end_time",
            (stream_id, start, stream_id, stop, stop, stop),
        )
        return [(max(first, start), min(last, stop)) for first, last in rows]

    # -- kept in the segments' transactions ---------------------------------
    @staticmethod
    def _touching(stream_id: int, start: float, end: float) -> Query:
        """The spans that [start, end] joins: those ending from ``start - SPAN_JOIN``
        up to the first that ends after ``end + SPAN_JOIN`` (which may begin in time)."""
        return Query(
            "SELECT id, start_time, end_time FROM recorded_spans WHERE stream_id = ?"
            " AND end_time >= ? AND end_time <= COALESCE((SELECT MIN(end_time)"
            " FROM recorded_spans WHERE stream_id = ? AND end_time > ?), ?)"
            " AND start_time - ? <= ? ORDER BY end_time",
            (stream_id, start - SPAN_JOIN)
            + (stream_id, end + SPAN_JOIN, end + SPAN_JOIN)
            + (SPAN_JOIN, end),
        )

    def _span_added(self, stream_id: int, start: float, end: float) -> Steps[None]:
        """A new segment [start, end]: extend the spans it touches, or open one."""
        # What a recorder does all day, in one statement: the segment follows
        # the end of one span and touches no other.
        touching = self._touching(stream_id, start, end)
        extended = yield Query(
            "UPDATE recorded_spans SET end_time = ? WHERE stream_id = ? AND end_time >= ?"
            " AND end_time <= ? AND start_time <= ? AND NOT EXISTS (SELECT 1 FROM ("
            + touching.sql
            + ") AS other WHERE other.id <> recorded_spans.id) RETURNING id",
            (end, stream_id, start - SPAN_JOIN, end, start, *touching.params),
        )
        if extended:
            return
        spans = yield touching
        if not spans:
            yield Query(
                "INSERT INTO recorded_spans (stream_id, start_time, end_time) VALUES (?, ?, ?)",
                (stream_id, start, end),
            )
            return
        first = min(start, spans[0][1])
        last = max(end, spans[-1][2])
        if (first, last) != (spans[0][1], spans[0][2]) or len(spans) > 1:
            yield Query(
                "UPDATE recorded_spans SET start_time = ?, end_time = ? WHERE id = ?",
                (first, last, spans[0][0]),
            )
        yield from self._drop_spans([row[0] for row in spans[1:]])

    @staticmethod
    def _drop_spans(span_ids: Sequence[int]) -> Steps[None]:
        if span_ids:
            marks = ", ".join("?" for _ in span_ids)
            yield Query(f"DELETE FROM recorded_spans WHERE id IN ({marks})", tuple(span_ids))

    def _respan(self, stream_id: int, low: float, high: float) -> Steps[None]:
        """Segments changed within [low, high] (deleted, moved, or moved there):
        rewrite the spans that touch it from the segments there now.

        Outside [low - SPAN_JOIN, high + SPAN_JOIN] nothing changed: the spans
        reaching out of it keep those parts, and the segments inside are read
        again (an index range as long as the time that changed).
        """
        spans = yield self._touching(stream_id, low, high)
        before, after = low - SPAN_JOIN, high + SPAN_JOIN
        segments = yield Query(
            "SELECT start_time, end_time FROM segments WHERE stream_id = ?"
            " AND end_time >= ? AND end_time <= ? AND start_time - ? <= ?",
            (stream_id, before, after + self._longest_segment, SPAN_JOIN, high),
        )
        kept = [(row[1], before) for row in spans if row[1] < before]
        kept += [(after, row[2]) for row in spans if row[2] > after]
        new = join_spans(sorted([*kept, *((row[0], row[1]) for row in segments)]))
        if [(row[1], row[2]) for row in spans] == new:
            return
        yield from self._drop_spans([row[0] for row in spans])
        for start, end in new:
            yield Query(
                "INSERT INTO recorded_spans (stream_id, start_time, end_time) VALUES (?, ?, ?)",
                (stream_id, start, end),
            )

    def _spans_removed(self, segments: Iterable[tuple[int, float, float]]) -> Steps[None]:
        """Segments ``(stream_id, start, end)`` were deleted: rewrite the spans
        around each bunch of them. Bunches are cut where their windows would
        not meet, so each one reads only the time its segments held."""
        by_stream: dict[int, list[Span]] = {}
        for stream_id, start, end in segments:
            by_stream.setdefault(stream_id, []).append((start, end))
        for stream_id, times in sorted(by_stream.items()):
            times.sort()
            low, high = times[0]
            for start, end in times[1:]:
                if start - 2 * SPAN_JOIN > high:
                    yield from self._respan(stream_id, low, high)
                    low, high = start, end
                else:
                    high = max(high, end)
            yield from self._respan(stream_id, low, high)
