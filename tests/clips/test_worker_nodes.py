"""Clip jobs across nodes: each span is built by a node that can read it.

Two workers named as two nodes share one real SQLite store (as nodes share
PostgreSQL); each run is recorded by one of them. The same with real
processes is in ``tests/e2e/test_nodes``.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from streamrec.clips.worker import ClipWorker
from streamrec.store import JOB_DONE, JOB_FAILED, JOB_PROCESSING

from ..store.test_store import run
from ..support.harness import sqlite_store
from .test_worker import MemoryStorage, RecordingEncoder, T


class NodeWorkerTests(unittest.TestCase):
    def setUp(self) -> Any:
        self.store, self.dir = sqlite_store(self)
        self.clock = task.Clock()
        self.clock.advance(T)
        self.notified: list[tuple[str, dict[str, Any]]] = []
        return self._setup()

    async def _setup_async(self) -> None:
        await self.store.migrate()
        self.stream = await self.store.create_stream("rtsp://cam/x", "", T - 100)
        # Node a recorded [T-60, T-30); it died, and node b recorded [T-25, T-5).
        self.paths: dict[str, list[str]] = {"a": [], "b": []}
        for node, first, last in (("a", -60, -30), ("b", -25, -5)):
            run_id = await self.store.open_run(self.stream, T + first, node, 1)
            os.makedirs(os.path.join(self.dir, node), exist_ok=True)
            for start in range(first, last, 2):
                path = os.path.join(self.dir, node, f"{start}.mp4")
                self.paths[node].append(path)
                with open(path, "wb") as handle:
                    handle.write(b"segment")
                await self.store.add_segment(self.stream, run_id, path, T + start, T + start + 2, 9)

    def _setup(self) -> Any:
        return defer.ensureDeferred(self._setup_async())

    def worker(self, node: str, **options: Any) -> ClipWorker:
        made = ClipWorker(
            reactor=self.clock,
            store=self.store,
            storage=MemoryStorage(),
            encoders={"copy": RecordingEncoder()},
            scratch_dir=os.path.join(self.dir, "tmp-" + node),
            is_recording=lambda stream_id: False,
            notify=lambda hook, **kw: self.notified.append((hook, kw)),
            node=node,
            **options,
        )
        os.makedirs(made.scratch_dir)
        return made

    async def job(self) -> Any:
        job, _ = await self.store.find_or_create_job(
            self.stream, T - 40, T - 10, T - 10, "copy", {}, self.clock.seconds()
        )
        return job

    async def alive(self, *names: str) -> None:
        for name in names:
            await self.store.register_node(name, f"http://{name}", None, 60)

    async def settle(self, worker: ClipWorker) -> None:
        """Two polls of the worker, each with the builds it started."""
        for _ in range(2):
            await worker._tick()
            for build in list(worker.builds.values()):
                await build

    def unreadable(self, node: str) -> None:
        """``node``'s segment files are on its own disk: the others cannot read them."""
        for path in self.paths[node]:
            os.remove(path)

    @run
    async def test_each_node_builds_the_span_it_recorded(self) -> None:
        await self.alive("a", "b")
        a, b = self.worker("a"), self.worker("b")
        job = await self.job()
        self.unreadable("a")
        await self.settle(b)  # b plans, builds its own span, leaves a's
        current = await self.store.get_job(job.id)
        self.assertEqual((current.status, len(current.clips)), (JOB_PROCESSING, 1))
        self.assertIsNone(current.waiting_for, "a is alive: nothing to wait for")
        self.assertEqual(
            [r.pieces[0].path for r in b.encoders["copy"].requests], [self.paths["b"][0]]
        )
        await self.settle(a)
        done = await self.store.get_job(job.id)
        self.assertEqual(done.status, JOB_DONE)
        self.assertEqual([c.link.split("/")[2] for c in done.clips], ["clips.test"] * 2)
        self.assertEqual([(c.start - T, c.stop - T) for c in done.clips], [(-40, -30), (-25, -10)])
        self.assertEqual([hook for hook, _ in self.notified], ["clip_done"])
        self.assertEqual(len(self.notified[0][1]["clips"]), 2)

    @run
    async def test_a_job_waits_for_a_node_that_is_gone_then_fails_at_its_deadline(self) -> None:
        await self.alive("b")
        b = self.worker("b", span_wait=60)
        job = await self.job()
        self.unreadable("a")
        await self.settle(b)
        waiting = await self.store.get_job(job.id)
        self.assertEqual((waiting.status, waiting.waiting_for), (JOB_PROCESSING, "a"))
        self.clock.advance(61)
        await self.settle(b)
        failed = await self.store.get_job(job.id)
        self.assertEqual(failed.status, JOB_FAILED)
        self.assertEqual(
            failed.error_message, "the recording is on node a, which has not answered for 60 s"
        )
        self.assertEqual(self.notified[-1][0], "clip_failed")

    @run
    async def test_a_node_that_comes_back_in_time_completes_the_job(self) -> None:
        await self.alive("b")
        b = self.worker("b", span_wait=60)
        job = await self.job()
        self.unreadable("a")
        await self.settle(b)
        self.assertEqual((await self.store.get_job(job.id)).waiting_for, "a")
        self.clock.advance(30)
        await self.alive("a")
        a = self.worker("a")
        await self.settle(a)
        done = await self.store.get_job(job.id)
        self.assertEqual((done.status, len(done.clips), done.waiting_for), (JOB_DONE, 2, None))

    @run
    async def test_a_shared_data_dir_lets_any_node_build_every_span(self) -> None:
        await self.alive("b")  # a is gone, but its files are readable here
        b = self.worker("b")
        job = await self.job()
        await self.settle(b)
        done = await self.store.get_job(job.id)
        self.assertEqual((done.status, len(done.clips)), (JOB_DONE, 2))
