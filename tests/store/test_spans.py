"""The timeline: each stream's recorded spans, kept with its segments, on both engines.

The spans the store keeps are checked against the segments themselves (merged
here, the plain way) after inserts in any order, retention, shifts of a run
and the schema file that builds them for an existing archive; then the route.
"""

from __future__ import annotations

import os
import random
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from streamrec.auth import Access, parse_tokens
from streamrec.recorder.timeline import JOIN_TOLERANCE
from streamrec.store import SqlStore, open_store
from streamrec.store.spans import SPAN_JOIN
from streamrec.store.sqlstore import _split_statements
from streamrec.store.steps import Query

from ..test_api import APIBase
from .test_store import DATABASE, NO_DATABASE, fresh_postgres_url, run

NOW = 1_800_000_000.0
FOREVER = (0.0, 1e11)

Spans = list[tuple[float, float]]


def timeline_schema(dialect: str) -> str:
    """The schema file that makes the spans table (and builds the spans of an archive)."""
    folder = resources.files("streamrec.store") / "schema" / dialect
    (found,) = [f for f in folder.iterdir() if f.name.endswith("_timeline.sql")]
    return found.read_text("utf-8")


def merged(segments: list[tuple[float, float]]) -> Spans:
    """What the spans of ``segments`` are: sorted, a gap of at most
    JOIN_TOLERANCE joins, whatever run each came from."""
    spans: list[list[float]] = []
    for start, end in sorted(segments):
        if spans and start - JOIN_TOLERANCE <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(start, end) for start, end in spans]


class TimelineTestsMixin:
    """The timeline through the store's interface; ``open()`` picks the engine."""

    store: SqlStore

    def open(self) -> SqlStore:
        raise NotImplementedError

    def setUp(self) -> defer.Deferred[None]:
        self.store = self.open()
        self.addCleanup(self.store.close)  # type: ignore[attr-defined]
        self.paths = 0
        return defer.ensureDeferred(self.store.migrate())

    async def stream(self) -> int:
        return await self.store.create_stream("rtsp://cam/1", "door", NOW)

    async def add(self, stream: int, run_id: int, start: float, end: float) -> int | None:
        self.paths += 1
        return await self.store.add_segment(
            stream, run_id, f"/data/{stream}/{self.paths}.mp4", NOW + start, NOW + end, 1000
        )

    async def add_run(self, stream: int, *times: tuple[float, float]) -> tuple[int, list[int]]:
        """A run with segments at these times (seconds after NOW)."""
        run_id = await self.store.open_run(stream, NOW + times[0][0])
        ids = []
        for start, end in times:
            segment_id = await self.add(stream, run_id, start, end)
            assert segment_id is not None
            ids.append(segment_id)
        return run_id, ids

    async def table(self, stream: int) -> Spans:
        """Every row the store keeps for ``stream``, as seconds after NOW."""
        rows = await self.store._query(
            "SELECT start_time, end_time FROM recorded_spans WHERE stream_id = ?"
            " ORDER BY start_time",
            (stream,),
        )
        return [(round(a - NOW, 6), round(b - NOW, 6)) for a, b in rows]

    async def timeline(self, stream: int, start: float, stop: float) -> Spans:
        spans = await self.store.recorded_spans(stream, NOW + start, NOW + stop)
        return [(round(a - NOW, 6), round(b - NOW, 6)) for a, b in spans]

    async def segments(self, stream: int) -> list[tuple[float, float]]:
        found = await self.store.segments_between(stream, *FOREVER)
        return [(s.start, s.end) for s in found]

    async def assert_spans_of_segments(self, stream: int, why: str = "") -> None:
        """The spans kept are the spans of the segments there now."""
        expected = [
            (round(a - NOW, 6), round(b - NOW, 6)) for a, b in merged(await self.segments(stream))
        ]
        self.assertEqual(await self.table(stream), expected, why)  # type: ignore[attr-defined]

    # -- inserts -----------------------------------------------------------------
    @run
    async def test_spans_across_gaps_and_runs(self) -> None:
        stream = await self.stream()
        other = await self.stream()
        await self.add_run(stream, (0, 2), (2, 4), (4, 6))
        # The segmenter restarted 4 s later: a gap.
        await self.add_run(stream, (10, 12), (12, 14))
        # Stopped and started again at once: a new run, no gap.
        await self.add_run(stream, (14.1, 16), (16, 18))
        await self.add_run(other, (0, 30))
        self.assertEqual(await self.table(stream), [(0, 6), (10, 18)])
        self.assertEqual(await self.timeline(stream, *FOREVER), [(0, 6), (10, 18)])
        self.assertEqual(await self.table(other), [(0, 30)])
        await self.assert_spans_of_segments(stream)

    @run
    async def test_segments_join_within_the_tolerance(self) -> None:
        stream = await self.stream()
        run_id, _ = await self.add_run(stream, (0, 2))
        await self.add(stream, run_id, 2.2, 4)  # 0.2 s apart: one span
        await self.add(stream, run_id, 4.25, 6)  # exactly the tolerance: still one
        await self.add(stream, run_id, 6.3, 8)  # 0.3 s: a gap
        self.assertEqual(await self.table(stream), [(0, 6), (6.3, 8)])
        # Another run's segment overlapping both (a node that recorded on) joins them.
        await self.add_run(stream, (5.9, 6.4))
        self.assertEqual(await self.table(stream), [(0, 8)])
        await self.assert_spans_of_segments(stream)
        # Rewritten after a delete, the spans join the same way.
        _, ids = await self.add_run(stream, (3.5, 4.1))
        await self.store.delete_segments(ids)
        self.assertEqual(await self.table(stream), [(0, 8)])

    @run
    async def test_a_segment_in_a_gap_joins_the_spans_around_it(self) -> None:
        stream = await self.stream()
        run_id, _ = await self.add_run(stream, (20, 22))
        # Recovery and the journal index old segments late and out of order.
        await self.add(stream, run_id, 10, 12)
        await self.add(stream, run_id, 14, 16)
        await self.add(stream, run_id, 30, 32)
        self.assertEqual(await self.table(stream), [(10, 12), (14, 16), (20, 22), (30, 32)])
        await self.add(stream, run_id, 16, 18)  # extends the span before it
        await self.add(stream, run_id, 8, 10)  # extends the span after it
        self.assertEqual(await self.table(stream), [(8, 12), (14, 18), (20, 22), (30, 32)])
        await self.add(stream, run_id, 12, 14)  # fills a gap: two spans become one
        self.assertEqual(await self.table(stream), [(8, 18), (20, 22), (30, 32)])
        await self.add_run(stream, (17.9, 20.1), (20.1, 30))  # fills two gaps at once
        self.assertEqual(await self.table(stream), [(8, 32)])
        await self.add(stream, run_id, 9, 11)  # inside a span: nothing changes
        self.assertEqual(await self.table(stream), [(8, 32)])
        await self.assert_spans_of_segments(stream)

    @run
    async def test_a_refused_segment_adds_no_span(self) -> None:
        stream = await self.stream()
        newer = await self.store.open_run(stream, NOW, node="b", epoch=2)
        older = await self.store.open_run(stream, NOW, node="a", epoch=1)
        self.assertIsNotNone(await self.add(stream, newer, 10, 12))
        # The node that lost the stream's lease may not double the new owner's time.
        self.assertIsNone(await self.add(stream, older, 10, 12))
        self.assertIsNone(await self.add(stream, older, 11, 13))
        self.assertEqual(await self.table(stream), [(10, 12)])

    # -- retention and shifts -----------------------------------------------------
    @run
    async def test_retention_moves_the_first_span_and_drops_spans(self) -> None:
        stream = await self.stream()
        await self.add_run(stream, *((2 * n, 2 * n + 2) for n in range(5)))  # 0..10
        await self.add_run(stream, (20, 22), (22, 24))
        await self.add_run(stream, *((30 + 2 * n, 32 + 2 * n) for n in range(50)))  # 30..130
        # The janitor deletes the oldest segments, a batch at a time.
        oldest = await self.store.oldest_segments(3, stream_id=stream)
        await self.store.delete_segments([s.id for s in oldest])
        self.assertEqual(await self.table(stream), [(6, 10), (20, 24), (30, 130)])
        oldest = await self.store.oldest_segments(5, stream_id=stream)
        await self.store.delete_segments([s.id for s in oldest])
        self.assertEqual(await self.table(stream), [(32, 130)])
        await self.assert_spans_of_segments(stream)
        self.assertEqual(await self.timeline(stream, *FOREVER), [(32, 130)])

    @run
    async def test_deleting_segments_here_and_there_splits_spans(self) -> None:
        stream = await self.stream()
        _, ids = await self.add_run(stream, *((2 * n, 2 * n + 2) for n in range(50)))
        # Files found missing are forgotten wherever they are: far apart, and two together.
        await self.store.delete_segments([ids[3], ids[20], ids[21], ids[49]])
        self.assertEqual(await self.table(stream), [(0, 6), (8, 40), (44, 98)])
        await self.store.delete_segments([ids[0]])
        self.assertEqual(await self.table(stream), [(2, 6), (8, 40), (44, 98)])
        await self.assert_spans_of_segments(stream)

    @run
    async def test_deleting_keeps_the_spans_another_run_covers(self) -> None:
        stream = await self.stream()
        _, first = await self.add_run(stream, (0, 2), (2, 4), (4, 6))
        await self.add_run(stream, (1.9, 5))  # the same time, from another run
        await self.store.delete_segments([first[1], first[2]])
        self.assertEqual(await self.table(stream), [(0, 5)])
        await self.store.delete_segments([first[0]])
        self.assertEqual(await self.table(stream), [(1.9, 5)])
        await self.assert_spans_of_segments(stream)

    @run
    async def test_a_shift_moves_the_spans_of_its_run(self) -> None:
        stream = await self.stream()
        await self.add_run(stream, (0, 2), (2, 4))
        run_id, _ = await self.add_run(stream, (5, 7), (7, 9))
        await self.add_run(stream, (20, 22))
        self.assertEqual(await self.table(stream), [(0, 4), (5, 9), (20, 22)])
        # A better clock anchor moves the run 0.9 s back: it now follows the first.
        await self.store.shift_run(run_id, -0.9)
        self.assertEqual(await self.table(stream), [(0, 8.1), (20, 22)])
        # And far ahead: it leaves a gap where it was and joins the last span.
        await self.store.shift_run(run_id, 11.8)
        self.assertEqual(await self.table(stream), [(0, 4), (15.9, 22)])
        await self.assert_spans_of_segments(stream)

    # -- reading -------------------------------------------------------------------
    @run
    async def test_the_timeline_is_cut_to_the_window(self) -> None:
        stream = await self.stream()
        await self.add_run(stream, *((2 * n, 2 * n + 2) for n in range(5)))  # 0..10
        await self.add_run(stream, (20, 22), (22, 24))
        await self.add_run(stream, (30, 40))
        self.assertEqual(await self.timeline(stream, 5, 35), [(5, 10), (20, 24), (30, 35)])
        self.assertEqual(await self.timeline(stream, 21, 23), [(21, 23)])
        self.assertEqual(await self.timeline(stream, 12, 18), [])  # inside a gap
        self.assertEqual(await self.timeline(stream, 10, 20), [])  # gap, edges touching
        self.assertEqual(await self.timeline(stream, 9, 20.5), [(9, 10), (20, 20.5)])
        self.assertEqual(await self.timeline(stream, -100, 1000), [(0, 10), (20, 24), (30, 40)])
        self.assertEqual(await self.timeline(stream + 1, *FOREVER), [])

    @run
    async def test_random_changes_keep_the_spans_of_the_segments(self) -> None:
        """Inserts in any order from several runs, deletes anywhere, shifts: after
        each, the spans kept are those of the segments."""
        chance = random.Random(11)
        stream = await self.stream()
        runs = [await self.store.open_run(stream, NOW) for _ in range(3)]
        times: list[tuple[float, float]] = []
        for _ in range(120):  # segments of 1-2 s with gaps of 0-0.5 s, sometimes more
            start = times[-1][1] + chance.choice((0, 0, 0.1, 0.2, 0.3, 0.5, 3)) if times else 0
            times.append((start, start + chance.uniform(1, 2)))
        chance.shuffle(times)
        for start, end in times:
            await self.add(stream, chance.choice(runs), start, end)
        await self.assert_spans_of_segments(stream, "after the inserts")
        for step in range(12):
            ids = [s.id for s in await self.store.segments_between(stream, *FOREVER)]
            await self.store.delete_segments(chance.sample(ids, chance.randint(1, 6)))
            await self.assert_spans_of_segments(stream, f"after delete {step}")
            await self.store.shift_run(chance.choice(runs), chance.uniform(-3, 3))
            await self.assert_spans_of_segments(stream, f"after shift {step}")

    @run
    async def test_the_schema_file_builds_the_spans_of_an_existing_archive(self) -> None:
        stream = await self.stream()
        other = await self.stream()
        await self.stream()  # nothing recorded
        await self.add_run(stream, (0, 2), (2.1, 4), (4.5, 6))
        await self.add_run(stream, (5.9, 8), (8.2, 10), (30, 32))
        await self.add_run(other, (0, 2), (2.25, 4))
        kept = [await self.table(stream), await self.table(other)]
        script = timeline_schema(self.store.dialect)
        build = _split_statements(script)[-1]
        self.assertTrue(build.startswith("INSERT INTO recorded_spans"), build)

        def rebuild() -> Any:
            yield Query("DELETE FROM recorded_spans")
            yield Query(build)

        await self.store._transaction(rebuild())
        self.assertEqual([await self.table(stream), await self.table(other)], kept)
        self.assertEqual(kept, [[(0, 4), (4.5, 10), (30, 32)], [(0, 4)]])


class SqliteTimelineTests(TimelineTestsMixin, unittest.TestCase):
    def open(self) -> SqlStore:
        directory = self.mktemp()
        os.makedirs(directory)
        return open_store("sqlite:", directory)

    @run
    async def test_the_timeline_reads_one_bounded_index_range(self) -> None:
        """Its cost is the spans in the window: both ends of the range are index bounds."""
        rows = await self.store._query(
            "EXPLAIN QUERY PLAN SELECT start_time, end_time FROM recorded_spans"
            " WHERE stream_id = ? AND end_time > ? AND end_time <= COALESCE((SELECT"
            " MIN(end_time) FROM recorded_spans WHERE stream_id = ? AND end_time >= ?), ?)"
            " AND start_time < ? ORDER BY end_time",
            (1, 0.0, 1, 1.0, 1.0, 1.0),
        )
        plan = " | ".join(row[-1] for row in rows)
        self.assertIn(
            "USING COVERING INDEX recorded_spans_time (stream_id=? AND end_time>? AND end_time<?)",
            plan,
        )
        self.assertNotIn("SCAN", plan)
        self.assertNotIn("TEMP B-TREE", plan)


class PostgresTimelineTests(TimelineTestsMixin, unittest.TestCase):
    if not DATABASE:
        skip = NO_DATABASE

    def open(self) -> SqlStore:
        return open_store(fresh_postgres_url(self), self.mktemp())


class ToleranceTests(unittest.SynchronousTestCase):
    def test_the_store_joins_as_the_recorder_does(self) -> None:
        self.assertEqual(SPAN_JOIN, JOIN_TOLERANCE)
        for dialect in ("sqlite", "postgresql"):
            script = timeline_schema(dialect)
            self.assertIn(f"start_time - {SPAN_JOIN} <= reached", script, dialect)


VIEWER_TOKEN = "viewer-token-0123456789"


class TimelineAPITests(APIBase):
    async def recorded(self) -> int:
        """A stream with 0..6 s and 10..14 s recorded (after NOW), in two runs."""
        stream = await self.create()
        for n, times in enumerate((((0, 2), (2, 4), (4, 6)), ((10, 12), (12, 14)))):
            run_id = await self.store.open_run(stream, NOW)
            for k, (start, end) in enumerate(times):
                await self.store.add_segment(
                    stream, run_id, f"/d/{n}-{k}.mp4", NOW + start, NOW + end, 1000
                )
        return stream

    @run
    async def test_the_whole_archive_and_a_window(self) -> None:
        stream = await self.recorded()
        code, body = await self.call("GET", f"/streams/{stream}/timeline")
        self.assertEqual(code, 200, body)
        self.assertEqual(
            body,
            {
                "stream_id": stream,
                "start": NOW,
                "stop": NOW + 14,
                "spans": [{"start": NOW, "stop": NOW + 6}, {"start": NOW + 10, "stop": NOW + 14}],
            },
        )
        window = {"start": str(NOW + 5), "stop": str(NOW + 11.5)}
        code, body = await self.call("GET", f"/streams/{stream}/timeline", window)
        self.assertEqual(code, 200, body)
        self.assertEqual((body["start"], body["stop"]), (NOW + 5, NOW + 11.5))
        self.assertEqual(
            body["spans"],
            [{"start": NOW + 5, "stop": NOW + 6}, {"start": NOW + 10, "stop": NOW + 11.5}],
        )
        # One bound: the other is the archive's end (or the bound, past it).
        code, body = await self.call("GET", f"/streams/{stream}/timeline", {"start": NOW + 12})
        self.assertEqual((body["start"], body["stop"]), (NOW + 12, NOW + 14))
        self.assertEqual(body["spans"], [{"start": NOW + 12, "stop": NOW + 14}])
        code, body = await self.call("GET", f"/streams/{stream}/timeline", {"start": NOW + 20})
        self.assertEqual((code, body["stop"], body["spans"]), (200, NOW + 20, []))
        code, body = await self.call("GET", f"/streams/{stream}/timeline", {"stop": NOW + 3})
        self.assertEqual((body["start"], body["spans"]), (NOW, [{"start": NOW, "stop": NOW + 3}]))

    @run
    async def test_nothing_recorded(self) -> None:
        stream = await self.create()
        code, body = await self.call("GET", f"/streams/{stream}/timeline")
        self.assertEqual(
            (code, body), (200, {"stream_id": stream, "start": None, "stop": None, "spans": []})
        )
        code, body = await self.call("GET", f"/streams/{stream}/timeline", {"start": NOW})
        self.assertEqual((code, body["start"], body["stop"], body["spans"]), (200, NOW, NOW, []))

    @run
    async def test_unknown_streams_and_bad_numbers(self) -> None:
        stream = await self.recorded()
        for path in ("/streams/99/timeline", "/streams/x/timeline", "/streams/-1/timeline"):
            code, body = await self.call("GET", path)
            self.assertEqual((code, body), (404, {"error_message": "Stream not found"}), path)
        for params, message in (
            (
                {"start": "yesterday"},
                "Parameter 'start' must be a POSIX timestamp, got 'yesterday'",
            ),
            ({"stop": "nan"}, "stop must be a POSIX timestamp in seconds"),
            ({"start": "inf"}, "start must be a POSIX timestamp in seconds"),
            ({"start": "-5"}, "start must be a POSIX timestamp in seconds"),
            ({"start": NOW + 5, "stop": NOW + 4}, "stop must not be earlier than start"),
        ):
            code, body = await self.call("GET", f"/streams/{stream}/timeline", params)
            self.assertEqual((code, body), (400, {"error_message": message}), params)

    @run
    async def test_a_viewer_may_read_it(self) -> None:
        stream = await self.recorded()
        self.api.access = Access(parse_tokens([f"viewer {VIEWER_TOKEN}"]))
        code, body = await self.call("GET", f"/streams/{stream}/timeline")
        self.assertEqual(code, 401, body)
        response = await self.http.get(
            f"http://streamrec.test/streams/{stream}/timeline",
            headers={b"Authorization": [f"Bearer {VIEWER_TOKEN}".encode()]},
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(len((await response.json())["spans"]), 2)
