"""Nodes sharing one database (streamrec.cluster): placement, failover, hand-over.

Two or three :class:`~streamrec.cluster.Node` objects on one real store, with
fake recorders and a Clock: each test drives the lease rounds itself. The
same rules with real processes and PostgreSQL are in ``tests/e2e/test_nodes``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from streamrec.cluster import OVERLAP_SECONDS, Node
from streamrec.errors import DatabaseUnavailable
from streamrec.recorder.fleet import Recorders

from .store.test_store import run
from .support.fakes import FakeRecorder
from .support.harness import one_node, sqlite_store

NOW = 1_800_000_000.0


class Box:
    """One node with its fake recorders."""

    def __init__(self, clock: Clock, store: Any, name: str, **options: Any) -> None:
        self.made: dict[int, FakeRecorder] = {}
        self.recorders = Recorders(make=self._make)
        self.node: Node = one_node(clock, store, self.recorders, name=name, **options)["node"]

    def _make(self, stream_id: int, url: str, **_: Any) -> FakeRecorder:
        recorder = self.made[stream_id] = FakeRecorder()
        return recorder

    def recording(self) -> list[int]:
        return sorted(sid for sid, r in self.made.items() if r.wanted)

    async def settle(self) -> None:
        """Let the steps the last round queued (starting, stopping) run."""
        for _ in range(5):
            await defer.succeed(None)


class NodeTests(unittest.TestCase):
    def setUp(self) -> defer.Deferred[None]:
        self.store, _ = sqlite_store(self)
        self.clock = Clock()
        self.clock.advance(NOW)
        return defer.ensureDeferred(self.store.migrate())

    async def wanted(self, count: int) -> list[int]:
        ids = []
        for n in range(count):
            stream_id = await self.store.create_stream(f"rtsp://cam/{n}", "", NOW)
            await self.store.mark_started(stream_id, NOW)
            ids.append(stream_id)
        return ids

    async def boxes(self, *names: str, **options: Any) -> list[Box]:
        """Nodes that joined together (registered before any takes a stream)."""
        made = [Box(self.clock, self.store, name, **options) for name in names]
        for box in made:
            node = box.node
            node.incarnation = await self.store.register_node(
                node.node_name, node.public_url, node.max_streams, node.lease_seconds
            )
        for box in made:
            await box.node.tick()
            await box.settle()
        return made

    async def expire_leases_of(self, name: str) -> None:
        await self.store._operation(
            "UPDATE streams SET lease_expires = db_now() - 1 WHERE owner = ?", (name,)
        )
        await self.store._operation(
            "UPDATE nodes SET expires_at = db_now() - 1 WHERE name = ?", (name,)
        )

    @run
    async def test_one_node_records_every_started_stream(self):
        streams = await self.wanted(3)
        await self.store.create_stream("rtsp://cam/stopped", "", NOW)
        [box] = await self.boxes("a")
        self.assertEqual(box.recording(), streams)
        self.assertEqual({box.made[s].epoch for s in streams}, {1})
        self.assertEqual(sorted(box.node.held), streams)

    @run
    async def test_nodes_that_join_together_share_the_streams(self):
        streams = await self.wanted(6)
        a, b, c = await self.boxes("a", "b", "c")
        self.assertEqual([len(x.recording()) for x in (a, b, c)], [2, 2, 2])
        self.assertEqual(sorted(a.recording() + b.recording() + c.recording()), streams)

    @run
    async def test_a_full_node_leaves_the_rest_to_the_others(self):
        streams = await self.wanted(5)
        a = (await self.boxes("a", max_streams=2))[0]
        self.assertEqual(len(a.recording()), 2)
        [b] = await self.boxes("b")
        self.clock.advance(b.node.renew_every)  # a whole interval: nobody else took them
        for box in (a, b):
            while box.node._ticking is not None:  # the rounds the clock just ran
                await box.node._ticking
        await b.node.tick()
        await b.settle()
        self.assertEqual(sorted(a.recording() + b.recording()), streams)
        self.assertFalse(a.node.has_room())

    @run
    async def test_a_dead_nodes_streams_move_and_it_stops_once_it_learns(self):
        streams = await self.wanted(4)
        a, b = await self.boxes("a", "b")
        on_a = a.recording()
        self.assertEqual(len(on_a), 2)
        await self.expire_leases_of("a")  # a is cut off, or dead
        await b.node.tick()
        await b.settle()
        self.assertEqual(b.recording(), streams)
        self.assertEqual({b.made[s].epoch for s in on_a}, {2}, "a new epoch for each")
        await a.node.tick()  # a's network comes back
        await a.settle()
        self.assertEqual(a.recording(), on_a, "a records on until b has recorded: no hole")
        for stream in on_a:
            run = await self.store.open_run(stream, NOW, "b", 2)
            await self.store.add_segment(stream, run, f"/b/{stream}.mp4", NOW, NOW + 2, 10)
        await a.node.tick()
        await a.settle()
        self.assertEqual(a.recording(), [], "a stops what b holds now")
        self.assertEqual([a.made[s].calls for s in on_a], [["resume", "stop"]] * 2)

    @run
    async def test_a_cut_off_node_records_on_a_bounded_while_if_the_new_owner_records_nothing(
        self,
    ):
        await self.wanted(2)
        a, b = await self.boxes("a", "b")
        on_a = a.recording()
        await self.expire_leases_of("a")
        await b.node.tick()
        await a.node.tick()
        await a.settle()
        self.assertEqual(a.recording(), on_a)
        self.clock.advance(OVERLAP_SECONDS)
        while a.node._ticking is not None:  # the round the clock just ran
            await a.node._ticking
        await a.node.tick()
        await a.settle()
        self.assertEqual(a.recording(), [])

    @run
    async def test_after_an_outage_a_node_renews_before_it_claims(self):
        await self.wanted(4)
        a, b = await self.boxes("a", "b")
        on_a, on_b = a.recording(), b.recording()
        real_heartbeat = self.store.heartbeat

        async def down(*args: Any) -> bool:
            raise DatabaseUnavailable("connection refused")

        self.store.heartbeat = down  # type: ignore[method-assign]
        await a.node.tick()
        await b.node.tick()
        self.store.heartbeat = real_heartbeat  # type: ignore[method-assign]
        await self.expire_leases_of("a")  # a long outage: every lease ran out
        await self.expire_leases_of("b")
        await a.node.tick()  # back first: renews its own, claims nothing yet
        await b.node.tick()
        for box in (a, b):
            await box.node.tick()
            await box.settle()
        self.assertEqual((a.recording(), b.recording()), (on_a, on_b), "nothing moved")

    @run
    async def test_a_stop_through_any_node_stops_the_recorder_where_it_runs(self):
        [stream] = await self.wanted(1)
        [a] = await self.boxes("a")
        await self.store.mark_stopped(stream, NOW + 10)  # through another node
        await a.node.tick()
        await a.settle()
        self.assertEqual(a.made[stream].calls, ["resume", "stop"])
        found = await self.store.get_stream(stream)
        self.assertIsNone(found.owner, "released")

    @run
    async def test_a_clean_stop_hands_the_streams_over_at_once(self):
        streams = await self.wanted(2)
        a, b = await self.boxes("a", "b")
        await a.node.hand_over()
        self.assertEqual(a.node.held, {})
        self.assertEqual([n.name for n in await self.store.live_nodes()], ["b"])
        await b.node.tick()
        await b.settle()
        self.assertEqual(b.recording(), streams)

    @run
    async def test_a_second_process_with_the_same_name_stops_the_first(self):
        await self.wanted(1)
        [a] = await self.boxes("a")
        [again] = await self.boxes("a")
        await a.node.tick()
        await a.settle()
        self.assertEqual(a.recording(), [])
        self.assertEqual(len(again.recording()), 1)

    @run
    async def test_the_next_round_comes_when_another_nodes_lease_can_run_out(self):
        await self.wanted(1)
        a, b = await self.boxes("a", "b", lease_seconds=9.0)
        call = b.node._tick_call
        self.assertIsNotNone(call)
        self.assertLessEqual(call.getTime() - self.clock.seconds(), 3.0)
