"""The clip worker over a real SQLite store, with fake encoders and storage."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from streamrec.clips.worker import ClipWorker
from streamrec.errors import ClipQueueFull
from streamrec.media.fmp4 import segment_span
from streamrec.media.mp4 import ClipResult
from streamrec.plugins import EncodeRequest
from streamrec.recorder.command import FRAGMENTED_MP4
from streamrec.store import JOB_DONE, JOB_FAILED, JOB_PENDING, JOB_PROCESSING

from ..support.harness import sqlite_store
from ..support.recordings import recording

T = 1_800_000_000.0


class RecordingEncoder:
    """Writes a small file and remembers what it was asked."""

    def __init__(self, fail: str | None = None) -> None:
        self.requests: list[EncodeRequest] = []
        self.fail = fail

    async def encode(self, request: EncodeRequest) -> ClipResult:
        self.requests.append(request)
        if self.fail:
            with open(request.out_path, "wb") as handle:
                handle.write(b"partial")
            raise RuntimeError(self.fail)
        with open(request.out_path, "wb") as handle:
            handle.write(b"clip")
        request.progress(1.0)
        return ClipResult(request.start, request.stop, request.stop - request.start, 4)


class StuckEncoder:
    """Writes part of a clip, then never finishes."""

    async def encode(self, request: EncodeRequest) -> ClipResult:
        with open(request.out_path, "wb") as handle:
            handle.write(b"half")
        return await defer.Deferred()


class MemoryStorage:
    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.deleted: list[str] = []

    async def store_clip(self, local_path: str, key: str) -> str:
        with open(local_path, "rb") as handle:
            self.stored[key] = handle.read()
        os.remove(local_path)
        return "http://clips.test/" + key

    async def delete_clip(self, key: str) -> None:
        self.deleted.append(key)


class WorkerBase(unittest.TestCase):
    def setUp(self) -> defer.Deferred[None]:
        self.store, self.dir = sqlite_store(self)
        self.clock = task.Clock()
        self.clock.advance(T)
        self.recording = True
        self.encoder = RecordingEncoder()
        self.storage = MemoryStorage()
        self.notified: list[tuple[str, dict[str, Any]]] = []
        self.worker = ClipWorker(
            reactor=self.clock,
            store=self.store,
            storage=self.storage,
            encoders={
                "copy": self.encoder,
                "broken": RecordingEncoder(fail="codec exploded"),
                "stuck": StuckEncoder(),
            },
            scratch_dir=os.path.join(self.dir, "tmp"),
            is_recording=lambda stream_id: self.recording,
            notify=lambda hook, **kw: self.notified.append((hook, kw)),
            late_grace=10,
        )
        os.makedirs(self.worker.scratch_dir)
        return defer.ensureDeferred(self._setup())

    async def _setup(self) -> None:
        await self.store.migrate()
        self.stream = await self.store.create_stream("rtsp://cam/x", "", T - 100)
        run1 = await self.store.open_run(self.stream, T - 100)
        run2 = self.run2 = await self.store.open_run(self.stream, T - 30)
        # run 1 covers [T-90, T-40); run 2 covers [T-25, T-5)
        for start in range(-90, -40, 2):
            await self.store.add_segment(
                self.stream, run1, f"/seg/1/{start}.mp4", T + start, T + start + 2, 10
            )
        for start in range(-25, -5, 2):
            await self.store.add_segment(
                self.stream, run2, f"/seg/2/{start}.mp4", T + start, T + start + 2, 10
            )

    async def job(self, start: float, stop: float, encoder: str = "copy") -> Any:
        job, _ = await self.store.find_or_create_job(
            self.stream, start, stop, stop, encoder, {}, self.clock.seconds()
        )
        return job


class WorkerTests(WorkerBase):
    @defer.inlineCallbacks
    def test_one_clip_per_continuous_span(self):
        job = yield defer.ensureDeferred(self.job(T - 50, T - 10))
        yield defer.ensureDeferred(self.worker.build(job))
        done = yield defer.ensureDeferred(self.store.get_job(job.id))
        self.assertEqual(done.status, JOB_DONE)
        self.assertEqual([(c.start - T, c.stop - T) for c in done.clips], [(-50, -40), (-25, -10)])
        first, second = self.encoder.requests
        self.assertEqual(first.pieces[0].path, "/seg/1/-50.mp4")
        self.assertEqual(first.pieces[-1].path, "/seg/1/-42.mp4")
        self.assertEqual([p.path for p in second.pieces][:1], ["/seg/2/-25.mp4"])
        self.assertEqual(len(self.storage.stored), 2)
        self.assertEqual(os.listdir(self.worker.scratch_dir), [])
        self.assertEqual(self.notified[-1][0], "clip_done")

    @defer.inlineCallbacks
    def test_nothing_recorded_is_done_and_empty(self):
        job = yield defer.ensureDeferred(self.job(T - 200, T - 150))
        yield defer.ensureDeferred(self.worker.build(job))
        done = yield defer.ensureDeferred(self.store.get_job(job.id))
        self.assertEqual((done.status, done.clips), (JOB_DONE, ()))

    @defer.inlineCallbacks
    def test_failure_is_reported_and_cleaned_up(self):
        job = yield defer.ensureDeferred(self.job(T - 50, T - 10, encoder="broken"))
        yield defer.ensureDeferred(self.worker.build(job))
        failed = yield defer.ensureDeferred(self.store.get_job(job.id))
        self.assertEqual(failed.status, JOB_FAILED)
        self.assertEqual(failed.error_message, "codec exploded")
        self.assertEqual(os.listdir(self.worker.scratch_dir), [])
        self.assertEqual(
            self.notified[-1],
            (
                "clip_failed",
                {"stream_id": self.stream, "job_id": job.id, "error": "codec exploded"},
            ),
        )
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_waits_for_the_recording_to_reach_the_end(self):
        future = yield defer.ensureDeferred(self.job(T - 10, T + 5))
        ready = yield defer.ensureDeferred(self.worker._ready(future))
        self.assertFalse(ready)
        past = yield defer.ensureDeferred(self.job(T - 20, T - 6))
        ready = yield defer.ensureDeferred(self.worker._ready(past))
        self.assertTrue(ready)
        # The source is down: the job does not wait for ever.
        self.clock.advance(16)
        ready = yield defer.ensureDeferred(self.worker._ready(future))
        self.assertTrue(ready)
        # A stopped stream will record nothing more.
        self.clock.advance(-16)
        self.recording = False
        ready = yield defer.ensureDeferred(self.worker._ready(future))
        self.assertTrue(ready)

    @defer.inlineCallbacks
    def test_only_streams_with_waiting_jobs_wake_it(self):
        future = yield defer.ensureDeferred(self.job(T - 10, T + 5))
        yield defer.ensureDeferred(self.worker._tick())
        self.assertEqual(self.worker.waiting, {future.stream_id})
        ticks = []
        self.patch(self.worker, "wake", lambda: ticks.append(1))
        self.worker.recorded(future.stream_id + 1)
        self.assertEqual(ticks, [])
        self.worker.recorded(future.stream_id)
        self.assertEqual(ticks, [1])

    @defer.inlineCallbacks
    def test_interrupted_jobs_are_built_again(self):
        job = yield defer.ensureDeferred(self.job(T - 50, T - 45))
        yield defer.ensureDeferred(
            self.store.set_job_status(job.id, JOB_PROCESSING, T, progress=0.5)
        )
        junk = os.path.join(self.worker.scratch_dir, "half-built.mp4")
        with open(junk, "wb") as handle:
            handle.write(b"junk")
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        self.assertFalse(os.path.exists(junk))
        for _ in range(100):
            current = yield defer.ensureDeferred(self.store.get_job(job.id))
            if current.status == JOB_DONE:
                break
            self.assertIn(current.status, (JOB_PENDING, JOB_PROCESSING))
            yield task.deferLater(reactor, 0.05, lambda: None)
            self.clock.advance(0.5)
        self.assertEqual(current.status, JOB_DONE)
        self.assertEqual(len(current.clips), 1)

    @defer.inlineCallbacks
    def test_stopping_leaves_builds_resumable(self):
        job = yield defer.ensureDeferred(self.job(T - 50, T - 45, encoder="stuck"))
        self.worker.startService()
        for _ in range(100):
            if job.id in self.worker.builds:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(os.listdir(self.worker.scratch_dir)), 1)
        self.worker.stopService()
        current = yield defer.ensureDeferred(self.store.get_job(job.id))
        self.assertEqual(current.status, JOB_PROCESSING)
        self.assertEqual(os.listdir(self.worker.scratch_dir), [])
        self.assertEqual(self.worker.builds, {})


class LiveEdgeTests(WorkerBase):
    """A job that ends in the segment still being written is cut from the
    fragments already on disk, without waiting for the segment to close."""

    def setUp(self) -> defer.Deferred[None]:
        done = super().setUp()
        flags = FRAGMENTED_MP4.split("=", 1)[1]
        whole = recording("worker_tail", seconds=4, audio=False, movflags=f"movflags={flags}")
        self.tail_path = os.path.join(self.dir, "seg000010.mp4")
        with open(whole.pieces[0].path, "rb") as source, open(self.tail_path, "wb") as tail:
            tail.write(source.read())
        first, end = segment_span(self.tail_path)
        self.flushed = end - first
        self.tail: tuple[int, str, float] | None = None
        self.worker.live_tail = lambda stream_id: self.tail
        return done

    @defer.inlineCallbacks
    def test_a_job_ending_in_the_segment_being_written(self):
        run2 = self.run2
        job = yield defer.ensureDeferred(self.job(T - 10, T - 5 + self.flushed - 0.5))
        ready = yield defer.ensureDeferred(self.worker._ready(job))
        self.assertFalse(ready)  # nothing written past the index
        self.tail = (run2, self.tail_path, T - 5)
        ready = yield defer.ensureDeferred(self.worker._ready(job))
        self.assertTrue(ready)
        yield defer.ensureDeferred(self.worker.build(job))
        done = yield defer.ensureDeferred(self.store.get_job(job.id))
        self.assertEqual(done.status, JOB_DONE)
        self.assertEqual(
            [(c.start - T, round(c.stop - T, 3)) for c in done.clips],
            [(-10, round(self.flushed - 5.5, 3))],
        )
        pieces = self.encoder.requests[0].pieces
        self.assertEqual(pieces[-1].path, self.tail_path)
        self.assertEqual(pieces[-1].wall_start, T - 5)

    @defer.inlineCallbacks
    def test_the_tail_ends_where_its_flushed_fragments_end(self):
        run2 = self.run2
        self.tail = (run2, self.tail_path, T - 5)
        beyond = yield defer.ensureDeferred(self.job(T - 10, T - 5 + self.flushed + 0.5))
        ready = yield defer.ensureDeferred(self.worker._ready(beyond))
        self.assertFalse(ready)
        # It is looked at again a fragment later, not only when the segment closes.
        self.worker.running = True
        self.addCleanup(setattr, self.worker, "running", False)
        yield defer.ensureDeferred(self.worker._tick())
        self.assertLessEqual(self.worker._timer.getTime() - self.clock.seconds(), 0.3)
        self.worker._schedule(None)
        # A tail of another run (the segmenter restarted) is not part of this one.
        self.tail = (run2 + 1, self.tail_path, T - 5)
        segments = yield defer.ensureDeferred(
            self.worker._with_tail(self.stream, T - 10, T, run_id=run2)
        )
        self.assertNotIn(self.tail_path, [s.path for s in segments])

    @defer.inlineCallbacks
    def test_an_empty_tail_is_not_a_segment(self):
        run2 = self.run2
        open(self.tail_path, "wb").close()
        self.tail = (run2, self.tail_path, T - 5)
        job = yield defer.ensureDeferred(self.job(T - 10, T - 4.5))
        ready = yield defer.ensureDeferred(self.worker._ready(job))
        self.assertFalse(ready)


class BoundedQueueTests(WorkerBase):
    """Jobs for ranges still to come cost nothing until their time; the queue is
    bounded; a job can be cancelled under its build; a build that is always
    interrupted is not begun for ever."""

    def count_queries(self) -> list[str]:
        calls: list[str] = []
        for name in ("_query", "_transaction", "_operation", "_read"):
            original = getattr(self.store, name)

            def counted(*args: Any, _original: Any = original, _name: str = name) -> Any:
                calls.append(_name)
                return _original(*args)

            self.patch(self.store, name, counted)
        return calls

    async def settle(self, looks: int = 0) -> None:
        """Let the worker's look for work (its queries run in threads) end, and
        wait until it has looked ``looks`` times in all."""
        for _ in range(500):
            if not self.worker._ticking and self.worker.looks >= looks:
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail("the worker kept looking for work")

    def start(self) -> defer.Deferred[None]:
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        return defer.ensureDeferred(self.settle(self.worker.looks + 1))

    @defer.inlineCallbacks
    def test_future_jobs_cost_nothing_until_their_time(self):
        yield defer.ensureDeferred(self.store.mark_started(self.stream, T - 100))
        yield defer.ensureDeferred(self.job(T - 10, T + 60))
        for n in range(300):
            yield defer.ensureDeferred(self.job(T - 10 + n * 0.001, T + 600 + n))
        calls = self.count_queries()
        yield self.start()
        self.assertLessEqual(len(calls), 8, calls)  # the same with 3 jobs or 3000
        self.assertEqual(self.worker.waiting, set())
        # Nothing is asked of the database while they wait: no polling.
        del calls[:]
        for _ in range(59):
            self.clock.advance(1)
            yield defer.ensureDeferred(self.settle())
        self.assertEqual(calls, [])
        self.assertEqual(self.encoder.requests, [])
        # The first one's range ends: the worker looks, and waits for its
        # last segments (they never come: the camera went quiet) for late_grace.
        self.clock.advance(1.1)
        yield defer.ensureDeferred(self.settle())
        self.assertNotEqual(calls, [])
        self.assertEqual(self.worker.waiting, {self.stream})
        del calls[:]
        self.clock.advance(9)
        yield defer.ensureDeferred(self.settle())
        self.assertEqual(calls, [])
        self.clock.advance(1)
        yield defer.ensureDeferred(self.settle())
        for _ in range(100):
            if self.encoder.requests:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        [request] = self.encoder.requests
        self.assertEqual((request.start, request.stop), (T - 10, T - 5))  # what was recorded

    @defer.inlineCallbacks
    def test_a_ready_job_is_not_starved_by_waiting_ones(self):
        yield defer.ensureDeferred(self.store.mark_started(self.stream, T - 100))
        for n in range(200):
            yield defer.ensureDeferred(self.job(T - 10 + n * 0.001, T + 600))
        # Ranges that have ended, whose last segments are still to come.
        for n in range(10):
            yield defer.ensureDeferred(self.job(T - 8 + n * 0.001, T - 1))
        ready = yield defer.ensureDeferred(self.job(T - 50, T - 45))
        yield self.start()
        yield self.worker.builds.get(ready.id) or defer.succeed(None)
        done = yield defer.ensureDeferred(self.store.get_job(ready.id))
        self.assertEqual(done.status, JOB_DONE)
        self.assertEqual(self.worker.waiting, {self.stream})

    @defer.inlineCallbacks
    def test_the_queue_is_bounded(self):
        for n in range(3):
            yield defer.ensureDeferred(
                self.store.find_or_create_job(self.stream, T - 50 + n, None, T, "copy", {}, T, 3)
            )
        with self.assertRaises(ClipQueueFull) as caught:
            yield defer.ensureDeferred(
                self.store.find_or_create_job(self.stream, T - 40, None, T, "copy", {}, T, 3)
            )
        self.assertIn("3 clip jobs are not finished (at most 3)", str(caught.exception))
        # Asking again for a job that exists is still answered.
        job, created = yield defer.ensureDeferred(
            self.store.find_or_create_job(self.stream, T - 50, None, T, "copy", {}, T, 3)
        )
        self.assertFalse(created)
        # Finished jobs leave room.
        yield defer.ensureDeferred(self.store.set_job_status(job.id, JOB_FAILED, T))
        _, created = yield defer.ensureDeferred(
            self.store.find_or_create_job(self.stream, T - 40, None, T, "copy", {}, T, 3)
        )
        self.assertTrue(created)

    @defer.inlineCallbacks
    def test_a_cancelled_job_stops_its_build(self):
        job = yield defer.ensureDeferred(self.job(T - 50, T - 45, encoder="stuck"))
        yield self.start()
        for _ in range(100):
            if os.listdir(self.worker.scratch_dir):
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertIn(job.id, self.worker.builds)
        # Cancelled elsewhere (another node's API): its next look drops the build.
        cancelled = yield defer.ensureDeferred(self.store.cancel_job(job.id, T, "cancelled"))
        self.assertTrue(cancelled)
        self.worker.wake()
        yield defer.ensureDeferred(self.settle())
        self.assertEqual(self.worker.builds, {})
        self.assertEqual(os.listdir(self.worker.scratch_dir), [])
        current = yield defer.ensureDeferred(self.store.get_job(job.id))
        self.assertEqual((current.status, current.error_message), (JOB_FAILED, "cancelled"))
        again = yield defer.ensureDeferred(self.store.cancel_job(job.id, T, "cancelled"))
        self.assertFalse(again)

    @defer.inlineCallbacks
    def test_a_build_interrupted_again_and_again_is_given_up(self):
        self.worker.node = "here"
        yield defer.ensureDeferred(self.store.register_node("here", "http://here", None, 600))
        job = yield defer.ensureDeferred(self.job(T - 50, T - 45, encoder="stuck"))
        for attempt in range(1, 4):  # the service stops (or dies) under each build
            self.worker.startService()
            yield defer.ensureDeferred(self.settle(self.worker.looks + 1))
            for _ in range(100):
                if os.listdir(self.worker.scratch_dir):
                    break
                yield task.deferLater(reactor, 0.02, lambda: None)
            self.assertIn(job.id, self.worker.builds, attempt)
            self.worker.stopService()
            current = yield defer.ensureDeferred(self.store.get_job(job.id))
            self.assertEqual(current.status, JOB_PROCESSING)
        yield self.start()
        for _ in range(100):
            current = yield defer.ensureDeferred(self.store.get_job(job.id))
            if current.status != JOB_PROCESSING:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(current.status, JOB_FAILED)
        self.assertIn("begun 3 times and interrupted each time", current.error_message)
        self.assertEqual(self.notified[-1][0], "clip_failed")
