"""The store, one set of tests run against both adapters: SQLite and PostgreSQL.

The PostgreSQL tests need a server: ``STREAMREC_TEST_DATABASE`` names a
database (``postgresql://USER@HOST:PORT/DB``) in which each test gets a fresh
schema; ``scripts/start-postgres`` starts one and CI sets the variable.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from importlib import resources
from typing import Any
from urllib.parse import quote

import psycopg2
from twisted.internet import defer, threads
from twisted.trial import unittest

from streamrec.errors import ClipQueueFull, DatabaseUnavailable
from streamrec.store import (
    JOB_DONE,
    JOB_EXPIRED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_PROCESSING,
    Clip,
    SqlStore,
    UnsupportedDatabase,
    open_store,
)
from streamrec.store.steps import Insert, Query, Steps

from ..support.harness import ServiceTestCase, until
from ..support.livesource import UdpTsSource, free_port

NOW = 1_800_000_000.0
DATABASE = os.environ.get("STREAMREC_TEST_DATABASE", "")
NO_DATABASE = (
    "STREAMREC_TEST_DATABASE is not set: no PostgreSQL server to test against"
    " (scripts/start-postgres DIR PORT starts one and prints the URL to set)"
)


def fresh_postgres_url(testcase: unittest.TestCase) -> str:
    """A new, empty schema in the test database, dropped after the test; its URL."""
    schema = "test_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(DATABASE)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with admin.cursor() as cursor:
            cursor.execute("SET lock_timeout = '60s'")
            cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()

    # In a thread: a store closing gracefully may still be ending a transaction.
    testcase.addCleanup(threads.deferToThread, drop)
    separator = "&" if "?" in DATABASE else "?"
    return DATABASE + separator + "options=" + quote(f"-c search_path={schema}")


def run(fn: Any) -> Any:
    """Trial runs a test that returns a Deferred; ours are coroutines."""

    def test(self: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(fn(self))

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


#: The version the schema files build.
SCHEMA_VERSION = 10

#: What schema 10 added: time provenance.
CLOCK_COLUMNS = [
    ("streams", "clock"),
    ("runs", "clock"),
    ("runs", "time_error"),
    *(("clips", column) for column in ("clock", "first_frame", "last_frame", "time_error")),
]

#: What schema 005 (several nodes) added to the older tables.
CLUSTER_COLUMNS = [
    ("streams", "owner"),
    ("streams", "lease_expires"),
    ("streams", "epoch"),
    ("streams", "recorder_state"),
    ("runs", "node"),
    ("runs", "epoch"),
    ("clip_jobs", "planned_at"),
    ("clip_jobs", "waiting_for"),
]


class StoreTestsMixin:
    """Every store method, through the public interface; ``open()`` picks the engine."""

    store: SqlStore
    #: the driver's DB-API errors
    database_error: type[Exception]
    integrity_error: type[Exception]

    def open(self) -> SqlStore:
        raise NotImplementedError

    def setUp(self) -> defer.Deferred[None]:
        self.store = self.open()
        self.addCleanup(self.store.close)  # type: ignore[attr-defined]
        return defer.ensureDeferred(self._migrate())

    async def _migrate(self) -> None:
        self.version = await self.store.migrate()

    async def recording(self) -> tuple[int, int]:
        """A stream with one run of three 2 s segments from NOW."""
        stream = await self.store.create_stream("rtsp://cam/1", "door", NOW)
        run_id = await self.store.open_run(stream, NOW)
        for n in range(3):
            await self.store.add_segment(
                stream, run_id, f"/data/{stream}/{n}.mp4", NOW + 2 * n, NOW + 2 * n + 2, 100 + n
            )
        return stream, run_id

    # -- schema ---------------------------------------------------------
    def test_schema_files_are_numbered_once(self) -> None:
        """Each version is one file, with the same name for both engines: two files
        of one version would leave the second unapplied wherever the first was."""
        folder = resources.files("streamrec.store") / "schema"
        names = {
            dialect: sorted(e.name for e in (folder / dialect).iterdir() if e.name.endswith(".sql"))
            for dialect in ("sqlite", "postgresql")
        }
        self.assertEqual(names["sqlite"], names["postgresql"])
        versions = [int(name.split("_", 1)[0]) for name in names["sqlite"]]
        self.assertEqual(versions, list(range(1, SCHEMA_VERSION + 1)), names["sqlite"])

    @run
    async def test_migrate_is_idempotent(self) -> None:
        self.assertEqual(self.version, SCHEMA_VERSION)
        self.assertEqual(await self.store.migrate(), SCHEMA_VERSION)
        rows = await self.store._query("SELECT version FROM schema_version ORDER BY version")
        self.assertEqual([row[0] for row in rows], list(range(1, SCHEMA_VERSION + 1)))
        self.assertEqual(await self.store.list_streams(), [])

    @run
    async def test_failed_transaction_leaves_nothing(self) -> None:
        def steps() -> Steps[None]:
            yield Insert(
                "INSERT INTO streams (url, description, create_date) VALUES (?, ?, ?)",
                ("rtsp://cam/x", "", NOW),
            )
            yield Query("SELECT no_such_column FROM streams")

        with self.assertRaises(self.database_error):
            await self.store._transaction(steps())
        self.assertEqual(await self.store.list_streams(), [])
        # and the connection is usable afterwards
        await self.store.create_stream("rtsp://cam/y", "", NOW)
        self.assertEqual([s.url for s in await self.store.list_streams()], ["rtsp://cam/y"])

    # -- streams --------------------------------------------------------
    @run
    async def test_streams(self) -> None:
        first = await self.store.create_stream("rtsp://cam/1", "door", NOW)
        second = await self.store.create_stream("udp://1.2.3.4:5", "", NOW + 1, max_age=3600.5)
        self.assertEqual((first, second), (1, 2))
        streams = await self.store.list_streams()
        self.assertEqual([s.id for s in streams], [1, 2])
        one = streams[0]
        self.assertEqual(
            (one.url, one.description, one.create_date, one.wanted, one.max_age),
            ("rtsp://cam/1", "door", NOW, False, None),
        )
        self.assertEqual(streams[1].max_age, 3600.5)
        self.assertIsNone(await self.store.get_stream(99))

        await self.store.set_last_error(first, "boom")
        await self.store.mark_started(first, NOW + 5)
        started = await self.store.get_stream(first)
        assert started is not None
        self.assertEqual(
            (started.wanted, started.start_date, started.stop_date, started.last_error),
            (True, NOW + 5, None, None),
        )
        await self.store.set_last_error(first, "camera gone")
        await self.store.mark_stopped(first, NOW + 9)
        stopped = await self.store.get_stream(first)
        assert stopped is not None
        self.assertEqual(
            (stopped.wanted, stopped.start_date, stopped.stop_date, stopped.last_error),
            (False, NOW + 5, NOW + 9, "camera gone"),
        )
        self.assertIsNone(stopped.source_audio)
        await self.store.set_source_audio(first, "pcm_alaw")
        learned = await self.store.get_stream(first)
        assert learned is not None
        self.assertEqual(learned.source_audio, "pcm_alaw")

    # -- runs and segments ----------------------------------------------
    @run
    async def test_runs(self) -> None:
        stream = await self.store.create_stream("rtsp://cam/1", "", NOW)
        first = await self.store.open_run(stream, NOW)
        second = await self.store.open_run(stream, NOW + 10)
        self.assertEqual(await self.store.open_runs(), [(first, stream), (second, stream)])
        await self.store.close_run(first, NOW + 9, "exited")
        self.assertEqual(await self.store.open_runs(), [(second, stream)])
        self.assertEqual(await self.store.run_stream(second), stream)
        self.assertIsNone(await self.store.run_stream(999))

    @run
    async def test_segments(self) -> None:
        stream, run_id = await self.recording()
        segments = await self.store.run_segments(run_id)
        self.assertEqual(
            [(s.start, s.end, s.bytes) for s in segments],
            [(NOW, NOW + 2, 100), (NOW + 2, NOW + 4, 101), (NOW + 4, NOW + 6, 102)],
        )
        self.assertEqual(segments[0].path, f"/data/{stream}/0.mp4")
        self.assertEqual((segments[0].stream_id, segments[0].run_id), (stream, run_id))
        # overlapping [start, stop): touching ends do not count
        between = await self.store.segments_between(stream, NOW + 2, NOW + 4.5)
        self.assertEqual([s.start for s in between], [NOW + 2, NOW + 4])
        self.assertEqual(await self.store.segments_between(stream, NOW + 6, NOW + 9), [])
        self.assertEqual(await self.store.segments_between(stream + 1, NOW, NOW + 9), [])
        self.assertEqual(await self.store.last_segment_end(stream), NOW + 6)
        self.assertIsNone(await self.store.last_segment_end(stream + 1))
        totals = await self.store.totals(stream)
        self.assertEqual(
            (totals.segments, totals.seconds, totals.bytes, totals.first, totals.last),
            (3, 6.0, 303, NOW, NOW + 6),
        )
        empty = await self.store.totals(stream + 1)
        self.assertEqual(
            (empty.segments, empty.seconds, empty.bytes, empty.first, empty.last),
            (0, 0.0, 0, None, None),
        )
        self.assertEqual(await self.store.segment_bytes(), 303)
        self.assertIsInstance(await self.store.segment_bytes(), int)

    @run
    async def test_segment_paths_are_unique(self) -> None:
        stream, run_id = await self.recording()
        with self.assertRaises(self.integrity_error):
            await self.store.add_segment(stream, run_id, f"/data/{stream}/0.mp4", 0, 1, 1)

    @run
    async def test_segments_closing_together_go_in_together(self) -> None:
        stream, run_id = await self.recording()
        inserts = [
            defer.ensureDeferred(
                self.store.add_segment(
                    stream, run_id, f"/data/{stream}/b{n}.mp4", NOW + 10 + n, NOW + 11 + n, 10
                )
            )
            for n in range(5)
        ]
        # The same path again: only this one fails, in a batch with others.
        inserts.insert(
            3,
            defer.ensureDeferred(
                self.store.add_segment(stream, run_id, f"/data/{stream}/0.mp4", 0, 1, 1)
            ),
        )
        results = await defer.DeferredList(inserts, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True, True, False, True, True])
        self.assertIsInstance(results[3][1].value, self.integrity_error)
        ids = [value for ok, value in results if ok]
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(await self.kept(stream), await self.summed(stream))
        self.assertEqual((await self.store.totals(stream)).segments, 8)

    @run
    async def test_clocks_of_streams_and_runs(self) -> None:
        stream, run_id = await self.recording()
        self.assertEqual((await self.store.get_stream(stream)).clock, "auto")
        other = await self.store.create_stream("rtsp://cam/2", "", NOW, clock="arrival")
        self.assertEqual((await self.store.get_stream(other)).clock, "arrival")
        self.assertEqual(await self.store.run_clock(run_id), (None, None))
        await self.store.set_run_clock(run_id, "camera", 0.041)
        self.assertEqual(await self.store.run_clock(run_id), ("camera", 0.041))

    @run
    async def test_shift_run(self) -> None:
        stream, run_id = await self.recording()
        other_run = await self.store.open_run(stream, NOW + 100)
        await self.store.add_segment(stream, other_run, "/data/late.mp4", NOW + 100, NOW + 102, 7)
        await self.store.shift_run(run_id, -0.25)
        starts = [s.start for s in await self.store.oldest_segments(10)]
        self.assertEqual(starts, [NOW - 0.25, NOW + 1.75, NOW + 3.75, NOW + 100])

    @run
    async def test_oldest_and_delete_segments(self) -> None:
        stream, run_id = await self.recording()
        other = await self.store.create_stream("rtsp://cam/2", "", NOW)
        other_run = await self.store.open_run(other, NOW)
        await self.store.add_segment(other, other_run, "/data/o.mp4", NOW + 1, NOW + 3, 50)
        oldest = await self.store.oldest_segments(2)
        self.assertEqual(
            [(s.stream_id, s.end) for s in oldest], [(stream, NOW + 2), (other, NOW + 3)]
        )
        before = await self.store.oldest_segments(10, before=NOW + 4)
        self.assertEqual([s.end for s in before], [NOW + 2, NOW + 3])
        mine = await self.store.oldest_segments(10, before=NOW + 5, stream_id=stream)
        self.assertEqual([s.end for s in mine], [NOW + 2, NOW + 4])
        await self.store.delete_segments([])
        await self.store.delete_segments([s.id for s in mine])
        left = await self.store.oldest_segments(10)
        self.assertEqual([s.end for s in left], [NOW + 3, NOW + 6])
        self.assertEqual(await self.store.segment_bytes(), 152)

    async def summed(self, stream: int) -> tuple[Any, ...]:
        """What the totals must say, summed from the segments themselves."""
        rows = await self.store._query(
            "SELECT COUNT(*), COALESCE(SUM(end_time - start_time), 0), COALESCE(SUM(bytes), 0),"
            " MIN(start_time), MAX(end_time) FROM segments WHERE stream_id = ?",
            (stream,),
        )
        count, seconds, size, first, last = rows[0]
        return int(count), round(float(seconds), 6), int(size), first, last

    async def kept(self, stream: int) -> tuple[Any, ...]:
        t = await self.store.totals(stream)
        return t.segments, round(t.seconds, 6), t.bytes, t.first, t.last

    @run
    async def test_totals_follow_every_change(self) -> None:
        stream, run_id = await self.recording()
        other = await self.store.create_stream("rtsp://cam/2", "", NOW)
        self.assertEqual(await self.kept(other), (0, 0.0, 0, None, None))
        other_run = await self.store.open_run(other, NOW)
        await self.store.add_segment(other, other_run, "/data/o.mp4", NOW + 1, NOW + 3, 50)
        for check in (stream, other):
            self.assertEqual(await self.kept(check), await self.summed(check))
        await self.store.shift_run(run_id, -0.5)
        self.assertEqual(await self.kept(stream), await self.summed(stream))
        self.assertEqual((await self.store.totals(stream)).first, NOW - 0.5)
        oldest = await self.store.oldest_segments(2, stream_id=stream)
        await self.store.delete_segments([s.id for s in oldest] + [])
        self.assertEqual(await self.kept(stream), await self.summed(stream))
        self.assertEqual((await self.store.totals(stream)).first, NOW + 3.5)
        everything = await self.store.oldest_segments(10)
        await self.store.delete_segments([s.id for s in everything])
        for check in (stream, other):
            self.assertEqual(await self.kept(check), (0, 0.0, 0, None, None))
        self.assertEqual(await self.store.segment_bytes(), 0)
        listed = await self.store.streams_with_totals()
        self.assertEqual([(s.id, t.segments) for s, t in listed], [(stream, 0), (other, 0)])
        found = await self.store.stream_with_totals(stream)
        assert found is not None
        self.assertEqual(found[0].url, "rtsp://cam/1")
        self.assertIsNone(await self.store.stream_with_totals(other + 1))

    @run
    async def test_totals_of_an_older_archive_are_counted_once(self) -> None:
        stream, _ = await self.recording()
        # As a version 2 database had it: segments, no totals.
        await self.store._operation("DROP TABLE stream_totals")
        await self.store._operation("DELETE FROM schema_version WHERE version >= 3")
        await self.store._operation("ALTER TABLE streams DROP COLUMN source_audio")
        await self.store._operation("DROP TABLE nodes")
        await self.store._operation("DROP TABLE clip_spans")
        await self.store._operation("DROP TABLE recorded_spans")
        await self.store._operation("DROP INDEX clip_jobs_waiting")
        await self.store._operation("ALTER TABLE clips DROP COLUMN sha256")
        await self.store._operation("ALTER TABLE clips DROP COLUMN manifest")
        for table, column in CLOCK_COLUMNS:
            await self.store._operation(f"ALTER TABLE {table} DROP COLUMN {column}")
        for table, column in CLUSTER_COLUMNS:
            await self.store._operation(f"ALTER TABLE {table} DROP COLUMN {column}")
        self.assertEqual(await self.store.migrate(), SCHEMA_VERSION)
        self.assertEqual(await self.kept(stream), (3, 6.0, 303, NOW, NOW + 6))

    # -- clip jobs ------------------------------------------------------
    async def job(self, stream: int, start: float, stop: float | None, **kw: Any) -> Any:
        return await self.store.find_or_create_job(
            stream,
            start,
            stop,
            kw.pop("default_stop", start + 60),
            kw.pop("encoder", "fast"),
            kw.pop("options", {}),
            kw.pop("now", NOW + 10),
        )

    @run
    async def test_find_or_create_job(self) -> None:
        stream, _ = await self.recording()
        start = NOW + 1.234567891
        job, created = await self.job(stream, start, start + 4, options={"b": 1, "a": 2})
        self.assertTrue(created)
        self.assertEqual(
            (job.stream_id, job.start, job.stop, job.stop_given, job.encoder, job.options),
            (stream, start, start + 4, True, "fast", {"a": 2, "b": 1}),
        )
        self.assertEqual(
            (job.status, job.error_message, job.progress, job.clips), (JOB_PENDING, None, 0.0, ())
        )
        self.assertEqual(job.created_at, NOW + 10)
        # the same request (options in any order) is the same job
        again, created = await self.job(stream, start, start + 4, options={"a": 2, "b": 1})
        self.assertEqual((again, created), (job, False))
        # anything else differing is another job
        for other in (
            self.job(stream, start, start + 5, options={"a": 2, "b": 1}),
            self.job(stream, start, start + 4, options={"a": 3, "b": 1}),
            self.job(stream, start, start + 4, encoder="transcode", options={"a": 2, "b": 1}),
            self.job(stream, start + 0.001, start + 4, options={"a": 2, "b": 1}),
        ):
            different, created = await other
            self.assertTrue(created)
            self.assertNotEqual(different.id, job.id)
        self.assertEqual(len(await self.store.jobs_with_status(JOB_PENDING)), 5)

    @run
    async def test_stopless_job(self) -> None:
        stream, _ = await self.recording()
        with_stop, _ = await self.job(stream, NOW, NOW + 30)
        job, created = await self.job(stream, NOW, None, default_stop=NOW + 60)
        self.assertTrue(created)
        self.assertNotEqual(job.id, with_stop.id)
        self.assertEqual((job.stop, job.stop_given), (NOW + 60, False))
        # a later request without stop finds it, whatever its default stop
        again, created = await self.job(stream, NOW, None, default_stop=NOW + 90)
        self.assertEqual((again.id, again.stop, created), (job.id, NOW + 60, False))
        # a request that gives the same stop explicitly is another job
        explicit, created = await self.job(stream, NOW, NOW + 60)
        self.assertTrue(created)
        self.assertNotIn(explicit.id, (job.id, with_stop.id))

    @run
    async def test_one_worker_plans_a_job_and_one_claims_each_span(self) -> None:
        stream, _ = await self.recording()
        job, _ = await self.job(stream, NOW, NOW + 4)
        run = (await self.store.segments_between(stream, NOW, NOW + 4))[0].run_id
        spans = [(run, "a", NOW, NOW + 2), (run, "b", NOW + 2, NOW + 4)]
        plans = await defer.gatherResults(
            [defer.ensureDeferred(self.store.plan_job(job.id, spans, NOW + 11)) for _ in range(4)]
        )
        self.assertEqual(sorted(plans), [False, False, False, True])
        planned = await self.store.get_job(job.id)
        self.assertEqual((planned.status, planned.planned_at), (JOB_PROCESSING, NOW + 11))
        tasks = await self.store.open_spans()
        self.assertEqual([(t.seq, t.node, t.total) for t in tasks], [(0, "a", 2), (1, "b", 2)])
        await self.store.register_node("a", "http://a", None, 60)
        claims = await defer.gatherResults(
            [defer.ensureDeferred(self.store.claim_span(job.id, 0, "a")) for _ in range(4)]
        )
        self.assertEqual(sorted(claims), [False, False, False, True])
        self.assertTrue(await self.store.claim_span(job.id, 1, "gone"))
        self.assertTrue(
            await self.store.claim_span(job.id, 1, "a"), "a builder that is gone loses it"
        )
        first = Clip(0, "http://a/x.mp4", "x.mp4", NOW, NOW + 2, 10)
        self.assertFalse(await self.store.finish_span(job.id, 0, "a", first, NOW + 12))
        self.assertEqual([t.seq for t in await self.store.open_spans(job.id)], [1])
        await self.store.release_spans("a")
        [left] = await self.store.open_spans(job.id)
        self.assertEqual((left.status, left.builder), (JOB_PENDING, None))
        # What a signed clip carries: its bytes' SHA-256 and its manifest's link.
        second = Clip(
            1,
            "http://b/y.mp4",
            "y.mp4",
            NOW + 2,
            NOW + 4,
            10,
            sha256="ab" * 32,
            manifest="http://b/y.mp4.manifest.json",
            clock="camera",
            first_frame=NOW + 2,
            last_frame=NOW + 3.96,
            time_error=0.04,
        )
        self.assertTrue(await self.store.claim_span(job.id, 1, "b"))
        self.assertIsNone(
            await self.store.finish_span(job.id, 1, "a", second, NOW + 13),
            "a lost the span to b: its clip is not recorded",
        )
        self.assertTrue(await self.store.finish_span(job.id, 1, "b", second, NOW + 13))
        done = await self.store.get_job(job.id)
        self.assertEqual((done.status, done.clips), (JOB_DONE, (first, second)))
        self.assertEqual(await self.store.open_spans(), [])

    @run
    async def test_job_lifecycle(self) -> None:
        stream, _ = await self.recording()
        job, _ = await self.job(stream, NOW, NOW + 4)
        await self.store.set_job_status(job.id, JOB_PROCESSING, NOW + 11)
        await self.store.set_job_progress(job.id, 0.25, NOW + 12)
        self.assertEqual((await self.store.get_job(job.id)).progress, 0.25)
        # status without progress keeps it
        await self.store.set_job_status(job.id, JOB_PROCESSING, NOW + 12)
        self.assertEqual((await self.store.get_job(job.id)).progress, 0.25)
        self.assertEqual(
            [j.id for j in await self.store.jobs_with_status(JOB_PROCESSING)], [job.id]
        )
        clips = [
            Clip(1, "http://x/b.mp4", "b.mp4", NOW + 3, NOW + 4, 2_500_000_000),
            Clip(0, "http://x/a.mp4", "a.mp4", NOW, NOW + 2, 1000),
        ]
        await self.store.finish_job(job.id, clips, NOW + 13)
        done = await self.store.get_job(job.id)
        self.assertEqual((done.status, done.progress), (JOB_DONE, 1.0))
        self.assertEqual(done.clips, (clips[1], clips[0]))
        # progress only moves while processing
        await self.store.set_job_progress(job.id, 0.5, NOW + 14)
        self.assertEqual((await self.store.get_job(job.id)).progress, 1.0)
        self.assertEqual(await self.store.clips_created_before(NOW + 13), [])
        self.assertEqual(
            await self.store.clips_created_before(NOW + 14), [(job.id, "a.mp4"), (job.id, "b.mp4")]
        )
        found, created = await self.job(stream, NOW, NOW + 4)
        self.assertEqual((found.id, found.clips, created), (job.id, done.clips, False))

    @run
    async def test_failed_job(self) -> None:
        stream, _ = await self.recording()
        job, _ = await self.job(stream, NOW, NOW + 4)
        await self.store.set_job_status(job.id, JOB_FAILED, NOW + 11, "no segments", 0.5)
        failed = await self.store.get_job(job.id)
        self.assertEqual(
            (failed.status, failed.error_message, failed.progress), (JOB_FAILED, "no segments", 0.5)
        )
        statuses = await self.store.jobs_with_status(JOB_FAILED, JOB_PENDING)
        self.assertEqual([j.id for j in statuses], [job.id])
        # a failed job is still the answer to the same request
        self.assertEqual((await self.job(stream, NOW, NOW + 4))[0].id, job.id)

    @run
    async def test_expired_job_is_built_anew(self) -> None:
        stream, _ = await self.recording()
        job, _ = await self.job(stream, NOW, NOW + 4)
        await self.store.finish_job(job.id, [Clip(0, "l", "k.mp4", NOW, NOW + 4, 9)], NOW + 11)
        await self.store.expire_job(job.id, NOW + 20)
        expired = await self.store.get_job(job.id)
        self.assertEqual((expired.status, expired.clips), (JOB_EXPIRED, ()))
        self.assertEqual(await self.store.clips_created_before(NOW + 99), [])
        anew, created = await self.job(stream, NOW, NOW + 4, now=NOW + 30)
        self.assertTrue(created)
        self.assertNotEqual(anew.id, job.id)
        self.assertEqual((anew.status, anew.created_at), (JOB_PENDING, NOW + 30))
        self.assertEqual([j.id for j in await self.store.jobs_with_status(JOB_EXPIRED)], [job.id])

    @run
    async def test_jobs_to_build_come_ready_first_and_future_ones_wait(self) -> None:
        stream, _ = await self.recording()  # recorded to NOW + 6
        await self.store.mark_started(stream, NOW)
        now, grace = NOW + 10, 5
        reached, _ = await self.job(stream, NOW, NOW + 4)
        lagging, _ = await self.job(stream, NOW + 5, NOW + 8)  # its last segments are late
        also, _ = await self.job(stream, NOW + 1, NOW + 5)
        later, _ = await self.job(stream, NOW, NOW + 30)
        soon, _ = await self.job(stream, NOW, NOW + 20)
        stopped = await self.store.create_stream("rtsp://cam/2", "", NOW)  # not recording
        other, _ = await self.job(stopped, NOW, NOW + 100)

        async def ids(at: float, limit: int = 10) -> list[int]:
            return [job.id for job in await self.store.jobs_to_build(at, limit, grace)]

        self.assertEqual(await ids(now), [reached.id, also.id, other.id, lagging.id])
        self.assertEqual(await ids(now, 2), [reached.id, also.id])
        # Once its grace is over, the late one waits no more: oldest first.
        self.assertEqual(await ids(NOW + 14), [reached.id, lagging.id, also.id, other.id])
        [first] = await self.store.jobs_to_build(now, 1, grace)
        self.assertEqual(first, await self.store.get_job(reached.id))
        self.assertEqual(await self.store.next_job_stop(now), NOW + 20)
        self.assertEqual(await self.store.next_job_stop(NOW + 20), NOW + 30)
        # A cancelled job is failed, waits no more, and is not cancelled twice.
        self.assertTrue(await self.store.cancel_job(soon.id, now, "cancelled"))
        self.assertFalse(await self.store.cancel_job(soon.id, now + 1, "again"))
        self.assertEqual(await self.store.next_job_stop(now), NOW + 30)
        cancelled = await self.store.get_job(soon.id)
        self.assertEqual((cancelled.status, cancelled.error_message), (JOB_FAILED, "cancelled"))
        self.assertEqual(
            await self.store.job_statuses([reached.id, soon.id, soon.id + 99]),
            {reached.id: JOB_PENDING, soon.id: JOB_FAILED},
        )
        self.assertEqual(await self.store.job_statuses([]), {})
        self.assertEqual(await self.store.next_job_stop(NOW + 100), None)

    @run
    async def test_a_full_queue_takes_no_new_job(self) -> None:
        stream, _ = await self.recording()

        async def ask(start: float) -> Any:
            return await self.store.find_or_create_job(
                stream, start, NOW + 6, NOW + 6, "fast", {}, NOW + 10, 2
            )

        first, _ = await ask(NOW)
        await ask(NOW + 1)
        with self.assertRaises(ClipQueueFull) as caught:
            await ask(NOW + 2)
        self.assertIn("2 clip jobs are not finished (at most 2)", caught.exception.reason)
        self.assertEqual((await ask(NOW))[0].id, first.id)  # asking again is answered
        await self.store.set_job_status(first.id, JOB_DONE, NOW + 11)
        self.assertTrue((await ask(NOW + 2))[1])  # a finished job leaves room
        rows = await self.store._query("SELECT COUNT(*) FROM clip_jobs")
        self.assertEqual(rows[0][0], 3)

    @run
    async def test_each_claim_of_a_span_is_counted(self) -> None:
        stream, _ = await self.recording()
        job, _ = await self.job(stream, NOW, NOW + 4)
        run_id = (await self.store.segments_between(stream, NOW, NOW + 4))[0].run_id
        await self.store.plan_job(job.id, [(run_id, "a", NOW, NOW + 4)], NOW + 11)
        incarnation = await self.store.register_node("a", "http://a", None, 60)
        self.assertEqual(await self.store.claim_span(job.id, 0, "a"), 1)
        self.assertEqual(await self.store.claim_span(job.id, 0, "b"), 0)  # a holds it
        await self.store.release_spans("a")  # a stopped under the build
        self.assertEqual(await self.store.claim_span(job.id, 0, "a"), 2)
        self.assertEqual(await self.store.claim_span(job.id, 0, "gone-b"), 0)
        await self.store.leave("a", incarnation)  # a died: another node takes the span over
        self.assertEqual(await self.store.claim_span(job.id, 0, "b"), 3)

    @run
    async def test_concurrent_requests_make_one_job(self) -> None:
        stream, _ = await self.recording()
        results = await defer.gatherResults(
            [defer.ensureDeferred(self.job(stream, NOW, None)) for _ in range(8)]
        )
        self.assertEqual(len({job.id for job, _ in results}), 1)
        self.assertEqual(sum(created for _, created in results), 1)


class SqliteStoreTests(StoreTestsMixin, unittest.TestCase):
    database_error = sqlite3.DatabaseError
    integrity_error = sqlite3.IntegrityError

    def open(self) -> SqlStore:
        directory = self.mktemp()
        os.makedirs(directory)
        store = open_store("sqlite:", directory)
        self.assertEqual(store.dialect, "sqlite")
        return store

    @run
    async def test_status_reads_do_not_wait_behind_a_write(self) -> None:
        stream, _ = await self.recording()
        write_may_end = threading.Event()

        def slow_write() -> Steps[None]:
            yield Query("UPDATE streams SET description = ? WHERE id = ?", ("busy", stream))
            write_may_end.wait(30)  # in the writing thread, holding the transaction open

        writing = defer.ensureDeferred(self.store._transaction(slow_write()))
        found = await self.store.stream_with_totals(stream)
        self.assertFalse(write_may_end.is_set(), "read while the write was in flight")
        self.assertFalse(writing.called)
        assert found is not None
        self.assertEqual(found[0].description, "door", "the last committed state")
        self.assertEqual(found[1].segments, 3)
        write_may_end.set()
        await writing
        after = await self.store.stream_with_totals(stream)
        assert after is not None
        self.assertEqual(after[0].description, "busy")


class PostgresStoreTests(StoreTestsMixin, unittest.TestCase):
    database_error = psycopg2.DatabaseError
    integrity_error = psycopg2.IntegrityError

    if not DATABASE:
        skip = NO_DATABASE

    def open(self) -> SqlStore:
        store = open_store(fresh_postgres_url(self), self.mktemp())
        self.assertEqual(store.dialect, "postgresql")
        return store


class OpenStoreTests(unittest.TestCase):
    def test_unsupported_url(self) -> None:
        with self.assertRaises(UnsupportedDatabase) as caught:
            open_store("mysql://me@db/streamrec", self.mktemp())
        self.assertIn("postgresql://USER@HOST:PORT/DATABASE", str(caught.exception))

    def test_postgresql_connects_on_first_use(self) -> None:
        store = open_store(f"postgresql://nobody@127.0.0.1:{free_port()}/streamrec", "unused")
        self.addCleanup(store.close)
        self.assertEqual(store.dialect, "postgresql")
        return self.assertFailure(defer.ensureDeferred(store.migrate()), DatabaseUnavailable)


class PostgresServiceTests(ServiceTestCase):
    """A real service records a live source into PostgreSQL and cuts a clip."""

    if not DATABASE:
        skip = NO_DATABASE

    @run
    async def test_record_and_cut_a_clip(self) -> None:
        url = fresh_postgres_url(self)
        source = UdpTsSource.running(self, audio="aac")
        service = await self.service(database=url, segment_seconds=2)
        self.assertEqual(service.service.store.dialect, "postgresql")
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first_segment() -> float | None:
            return (await service.status(stream_id))["recorded"]["first"]

        first = await until(first_segment, 30, "the first segment")
        start = first + 1.5
        await service.recorded_until(stream_id, start + 4)
        job = await service.clip(stream_id, start=start, stop=start + 3)
        [clip] = job["clips"]
        self.assertNear(clip["duration"], 3, 0.1)
        shown = await self.fetch(service, clip)
        self.assertEqual((shown["video"], shown["audio"]), ("h264", "aac"))
        self.assertGreater(len(shown["numbers"]), 60)
        # the same request answers from the database, without a new job
        again = await service.ok(
            "GET", f"/streams/{stream_id}/get_clip", start=start, stop=start + 3
        )
        self.assertEqual((again["status"], again["clips"][0]["start"]), ("done", clip["start"]))
        segments = await service.service.store.segments_between(stream_id, first, start + 4)
        self.assertGreaterEqual(len(segments), 2)
