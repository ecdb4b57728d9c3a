"""Retention against a real SQLite store and real files, with a fake clock and disk."""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from streamrec.janitor import ByteBudget, FreeSpace, Janitor, MaxAge, Retention, age_policies
from streamrec.store import JOB_DONE, JOB_EXPIRED, Clip, Segment, Stream

from .support.harness import sqlite_store

NOW = 1_800_000_000.0


class FakeStorage:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete_clip(self, key: str) -> None:
        self.deleted.append(key)


class JanitorTests(unittest.TestCase):
    def setUp(self) -> defer.Deferred[None]:
        self.store, self.dir = sqlite_store(self)
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.storage = FakeStorage()
        self.busy: set[str] = set()
        self.free = 10**12
        return defer.ensureDeferred(self._setup())

    async def _setup(self) -> None:
        await self.store.migrate()
        self.cam1 = await self.store.create_stream("rtsp://cam1/x", "", NOW - 10 * 86400)
        self.cam2 = await self.store.create_stream(
            "rtsp://cam2/x", "", NOW - 10 * 86400, max_age=3600
        )
        self.paths: dict[tuple[int, int], str] = {}
        for stream in (self.cam1, self.cam2):
            run = await self.store.open_run(stream, NOW - 10 * 86400)
            # one 1000-byte segment per hour over the last 48 hours
            for hour in range(48, 0, -1):
                path = os.path.join(self.dir, f"s{stream}-{hour}.mp4")
                with open(path, "wb") as handle:
                    handle.write(b"x" * 1000)
                end = NOW - hour * 3600
                await self.store.add_segment(stream, run, path, end - 2, end, 1000)
                self.paths[stream, hour] = path

    def janitor(self, **retention: float) -> Janitor:
        return Janitor(
            reactor=self.clock,
            store=self.store,
            storage=self.storage,
            data_dir=self.dir,
            retention=Retention(**retention),
            in_use=lambda: self.busy,
            run_blocking=defer.maybeDeferred,
            free=lambda path: self.free,
        )

    async def hours_left(self, stream: int) -> list[int]:
        segments = await self.store.oldest_segments(1000, stream_id=stream)
        return sorted(round((NOW - s.end) / 3600) for s in segments)

    def exists(self, stream: int, hour: int) -> bool:
        return os.path.exists(self.paths[stream, hour])

    @defer.inlineCallbacks
    def test_keeps_everything_by_default_except_per_stream_age(self):
        yield defer.ensureDeferred(self.janitor().sweep())
        left1 = yield defer.ensureDeferred(self.hours_left(self.cam1))
        left2 = yield defer.ensureDeferred(self.hours_left(self.cam2))
        self.assertEqual(left1, list(range(1, 49)))
        self.assertEqual(left2, [1])
        self.assertFalse(self.exists(self.cam2, 2))
        self.assertTrue(self.exists(self.cam2, 1))

    @defer.inlineCallbacks
    def test_global_max_age(self):
        yield defer.ensureDeferred(self.janitor(max_age=24 * 3600 - 60).sweep())
        left = yield defer.ensureDeferred(self.hours_left(self.cam1))
        self.assertEqual(left, list(range(1, 24)))
        self.assertFalse(self.exists(self.cam1, 24))

    @defer.inlineCallbacks
    def test_byte_budget_deletes_oldest_first(self):
        # 49 segments (48 + 1) of 1000 bytes; keep 30 000.
        yield defer.ensureDeferred(self.janitor(max_bytes=30_000).sweep())
        total = yield defer.ensureDeferred(self.store.segment_bytes())
        self.assertEqual(total, 30_000)
        left = yield defer.ensureDeferred(self.hours_left(self.cam1))
        self.assertEqual(left, list(range(1, 30)))

    @defer.inlineCallbacks
    def test_never_deletes_what_a_clip_job_reads(self):
        self.busy = {self.paths[self.cam1, 48], self.paths[self.cam1, 47]}
        yield defer.ensureDeferred(self.janitor(max_age=40 * 3600 - 60).sweep())
        left = yield defer.ensureDeferred(self.hours_left(self.cam1))
        self.assertEqual(left, list(range(1, 40)) + [47, 48])
        self.assertTrue(self.exists(self.cam1, 48))

    @defer.inlineCallbacks
    def test_minimum_free_space(self):
        janitor = self.janitor(min_free_bytes=100_000)
        cam1_files = [path for (stream, _), path in self.paths.items() if stream == self.cam1]

        def fake_free(path: str) -> int:
            # 75 000 free, and what deleting cam1's segments frees
            return 75_000 + 1000 * sum(not os.path.exists(p) for p in cam1_files)

        janitor.free = fake_free
        yield defer.ensureDeferred(janitor.sweep())
        freed = 1000 * sum(not os.path.exists(p) for p in cam1_files)
        self.assertGreaterEqual(freed, 25_000)
        self.assertLess(freed, 25_000 + 10 * 1000)
        self.assertFalse(self.exists(self.cam1, 48))
        self.assertTrue(self.exists(self.cam1, 1))

    @defer.inlineCallbacks
    def test_clips_expire(self):
        old, _ = yield defer.ensureDeferred(
            self.store.find_or_create_job(self.cam1, NOW - 7200, NOW - 7000, NOW, "copy", {}, NOW)
        )
        yield defer.ensureDeferred(
            self.store.finish_job(old.id, [Clip(0, "http://x/clips/a.mp4", "a.mp4", 1, 2, 3)], NOW)
        )
        self.clock.advance(8 * 86400)
        yield defer.ensureDeferred(self.janitor(clip_ttl=7 * 86400).sweep())
        self.assertEqual(self.storage.deleted, ["a.mp4", "a.mp4.manifest.json"])
        job = yield defer.ensureDeferred(self.store.get_job(old.id))
        self.assertEqual((job.status, job.clips), (JOB_EXPIRED, ()))
        # Asking again builds the clip anew.
        again, created = yield defer.ensureDeferred(
            self.store.find_or_create_job(self.cam1, NOW - 7200, NOW - 7000, NOW, "copy", {}, NOW)
        )
        self.assertTrue(created)
        self.assertNotEqual(again.id, old.id)
        self.assertNotEqual(again.status, JOB_DONE)

    @defer.inlineCallbacks
    def test_run_now_while_sweeping_sweeps_again(self):
        janitor = self.janitor(max_age=47 * 3600 - 60)
        janitor.running = True
        first = janitor.run_now()
        second = janitor.run_now()
        self.assertIs(first, second)
        yield first
        left = yield defer.ensureDeferred(self.hours_left(self.cam1))
        self.assertEqual(left, list(range(1, 47)))

    @defer.inlineCallbacks
    def test_full_disk_frees_files_before_the_database_can_write(self):
        janitor = self.janitor(max_age=47 * 3600 - 60)
        real_delete = self.store.delete_segments
        calls = []

        async def full_disk(ids):
            calls.append(list(ids))
            if len(calls) == 1:
                raise OSError("database or disk is full")
            await real_delete(ids)

        self.patch(self.store, "delete_segments", full_disk)
        yield defer.ensureDeferred(janitor.sweep())
        self.assertFalse(self.exists(self.cam1, 48), "the file is gone at once")
        self.assertTrue(janitor.forgotten)
        yield defer.ensureDeferred(janitor.sweep())
        self.assertEqual(janitor.forgotten, set())
        left = yield defer.ensureDeferred(self.hours_left(self.cam1))
        self.assertEqual(left, list(range(1, 47)))


def segment(size: int) -> Segment:
    return Segment(id=1, stream_id=1, run_id=1, path="/x", start=0.0, end=2.0, bytes=size)


class PolicyTests(unittest.SynchronousTestCase):
    """Each retention rule on its own, with plain numbers."""

    def test_age_policies_per_stream_then_global(self):
        streams = [
            Stream(1, "rtsp://a", "", 0.0, None, None, False, None, max_age=3600.0),
            Stream(2, "rtsp://b", "", 0.0, None, None, False, None, max_age=None),
        ]
        self.assertEqual(
            age_policies(NOW, 86400.0, streams),
            [MaxAge(before=NOW - 3600, stream_id=1), MaxAge(before=NOW - 86400)],
        )
        self.assertEqual(age_policies(NOW, 0.0, streams[1:]), [])

    def test_an_age_limit_takes_everything_it_may(self):
        policy = MaxAge(before=NOW)
        self.assertFalse(policy.satisfied())
        self.assertFalse(policy.take(segment(10**9)), "never stops a batch early")

    def test_a_byte_budget_takes_until_it_fits(self):
        policy = ByteBudget(over=2500)
        self.assertFalse(policy.take(segment(1000)))
        self.assertFalse(policy.take(segment(1000)))
        self.assertFalse(policy.satisfied())
        self.assertTrue(policy.take(segment(1000)))
        self.assertTrue(policy.satisfied())
        self.assertTrue(ByteBudget(over=0).satisfied())

    def test_free_space_measures_again_every_few_segments(self):
        disk = {"free": 100}
        policy = FreeSpace(free=lambda: disk["free"], min_free=500, step=3)
        self.assertFalse(policy.satisfied())
        self.assertEqual([policy.take(segment(1)) for _ in range(6)], [False, False, True] * 2)
        disk["free"] = 600
        self.assertTrue(policy.satisfied())
