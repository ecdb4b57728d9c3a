"""Nodes, leases and their fencing in the store, on SQLite and on PostgreSQL."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from streamrec.store import SqlStore, open_store

from .test_store import DATABASE, NO_DATABASE, NOW, fresh_postgres_url, run

LEASE = 15.0


class LeaseTestsMixin:
    store: SqlStore

    def open(self) -> SqlStore:
        raise NotImplementedError

    def setUp(self) -> defer.Deferred[None]:
        self.store = self.open()
        self.addCleanup(self.store.close)  # type: ignore[attr-defined]
        return defer.ensureDeferred(self.store.migrate())

    async def streams(self, count: int, wanted: bool = True) -> list[int]:
        ids = []
        for n in range(count):
            stream_id = await self.store.create_stream(f"rtsp://cam/{n}", "", NOW)
            if wanted:
                await self.store.mark_started(stream_id, NOW)
            ids.append(stream_id)
        return ids

    async def expire(self, stream_id: int) -> None:
        """As if its owner had died a lease ago."""
        await self.store._operation(
            "UPDATE streams SET lease_expires = db_now() - 1 WHERE id = ?", (stream_id,)
        )

    @run
    async def test_a_node_registers_and_a_second_process_of_its_name_fences_the_first(self):
        first = await self.store.register_node("a", "http://a", None, LEASE)
        self.assertTrue(await self.store.heartbeat("a", first, LEASE))
        second = await self.store.register_node("a", "http://a", 10, LEASE)
        self.assertEqual(second, first + 1)
        self.assertFalse(await self.store.heartbeat("a", first, LEASE))
        self.assertTrue(await self.store.heartbeat("a", second, LEASE))
        [node] = await self.store.live_nodes()
        self.assertEqual((node.name, node.max_streams, node.holds), ("a", 10, 0))
        self.assertGreater(node.expires_in, LEASE - 5)

    @run
    async def test_one_node_takes_a_stream_to_start_it_and_no_other(self):
        [stream] = await self.streams(1, wanted=False)
        lease = await self.store.claim_to_start("a", LEASE, stream)
        assert lease is not None
        self.assertEqual((lease.stream_id, lease.epoch, lease.wanted), (stream, 1, False))
        self.assertIsNone(await self.store.claim_to_start("b", LEASE, stream))
        await self.store.mark_started(stream, NOW)
        self.assertEqual(await self.store.claim_streams("b", LEASE, 10), [])
        [renewed] = await self.store.renew_leases("a", LEASE)
        self.assertEqual((renewed.stream_id, renewed.epoch, renewed.wanted), (stream, 1, True))
        found = await self.store.get_stream(stream)
        assert found is not None
        self.assertEqual((found.owner, found.epoch), ("a", 1))

    @run
    async def test_a_lease_that_ran_out_goes_to_another_node_with_a_new_epoch(self):
        [stream] = await self.streams(1)
        [mine] = await self.store.claim_streams("a", LEASE, 10)
        self.assertEqual(mine.epoch, 1)
        self.assertEqual(await self.store.unowned_wanted(), 0)
        await self.expire(stream)
        self.assertEqual(await self.store.unowned_wanted(), 1)
        [theirs] = await self.store.claim_streams("b", LEASE, 10)
        self.assertEqual((theirs.stream_id, theirs.epoch), (stream, 2))
        self.assertEqual(await self.store.renew_leases("a", LEASE), [], "a lost it")

    @run
    async def test_a_lease_that_ran_out_with_nobody_taking_it_is_still_the_owners(self):
        [stream] = await self.streams(1)
        await self.store.claim_streams("a", LEASE, 10)
        await self.expire(stream)
        [lease] = await self.store.renew_leases("a", LEASE)
        self.assertEqual(lease.epoch, 1)
        self.assertEqual(await self.store.claim_streams("b", LEASE, 10), [])

    @run
    async def test_claims_take_at_most_the_limit_and_only_wanted_streams(self):
        await self.store.register_node("a", "http://a", None, LEASE)
        await self.store.register_node("b", "http://b", 3, LEASE)
        wanted = await self.streams(5)
        await self.streams(2, wanted=False)
        first = await self.store.claim_streams("a", LEASE, 2)
        self.assertEqual([lease.stream_id for lease in first], wanted[:2])
        rest = await self.store.claim_streams("b", LEASE, 10)
        self.assertEqual([lease.stream_id for lease in rest], wanted[2:])
        self.assertEqual(await self.store.claim_streams("a", LEASE, 0), [])
        await self.store.register_node("a", "http://a", None, LEASE)
        holds = {node.name: node.holds for node in await self.store.live_nodes()}
        self.assertEqual(holds, {"a": 0, "b": 3}, "a node that starts again holds nothing")

    @run
    async def test_leaving_gives_the_leases_up_and_stopped_streams_are_released(self):
        a = await self.store.register_node("a", "http://a", None, LEASE)
        streams = await self.streams(2)
        await self.store.claim_streams("a", LEASE, 10)
        self.assertLess(await self.store.next_lease_expiry("b") or 0, LEASE + 1)
        self.assertIsNone(await self.store.next_lease_expiry("a"), "only others' leases")
        await self.store.mark_stopped(streams[0], NOW)
        [stopped, _] = sorted(await self.store.renew_leases("a", LEASE), key=lambda x: x.stream_id)
        self.assertFalse(stopped.wanted, "the owner learns of a stop through any node")
        await self.store.release_leases("a", [streams[0]])
        self.assertEqual([x.stream_id for x in await self.store.renew_leases("a", LEASE)], [2])
        await self.store.leave("a", a)
        self.assertEqual(await self.store.live_nodes(), [])
        [lease] = await self.store.claim_streams("b", LEASE, 10)
        self.assertEqual((lease.stream_id, lease.epoch), (streams[1], 2))

    @run
    async def test_only_the_owner_reports_the_recorder_state(self):
        [stream] = await self.streams(1)
        await self.store.claim_streams("a", LEASE, 10)
        await self.store.set_recorder_state(stream, "b", "stopped", "not mine")
        await self.store.set_recorder_state(stream, "a", "reconnecting", "Connection refused")
        found = await self.store.get_stream(stream)
        assert found is not None
        self.assertEqual(
            (found.recorder_state, found.last_error), ("reconnecting", "Connection refused")
        )

    @run
    async def test_an_older_epoch_is_not_indexed_over_a_newer_ones_time(self):
        [stream] = await self.streams(1)
        await self.store.claim_streams("a", LEASE, 10)
        old_run = await self.store.open_run(stream, NOW, "a", 1)
        await self.expire(stream)
        await self.store.claim_streams("b", LEASE, 10)
        new_run = await self.store.open_run(stream, NOW + 5, "b", 2)
        self.assertIsNotNone(
            await self.store.add_segment(stream, old_run, "/a/0.mp4", NOW, NOW + 2, 10)
        )
        self.assertIsNotNone(
            await self.store.add_segment(stream, new_run, "/b/0.mp4", NOW + 10, NOW + 12, 10)
        )
        refused = await self.store.add_segment(stream, old_run, "/a/5.mp4", NOW + 11, NOW + 13, 10)
        self.assertIsNone(refused, "b recorded that time")
        self.assertIsNotNone(
            await self.store.add_segment(stream, old_run, "/a/1.mp4", NOW + 2, NOW + 4, 10),
            "where b has nothing, a's recording is kept: no hole",
        )
        self.assertIsNotNone(
            await self.store.add_segment(stream, new_run, "/b/1.mp4", NOW + 3, NOW + 5, 10),
            "the newer owner is never refused",
        )
        self.assertIsNotNone(
            await self.store.add_segment(stream, old_run, "/a/4.mp4", NOW + 9, NOW + 11, 10),
            "a's segment that began before b's first one fills the time before it",
        )
        totals = await self.store.totals(stream)
        self.assertEqual(totals.segments, 5)
        self.assertEqual([r for r, _ in await self.store.open_runs("a")], [old_run])


class SqliteLeaseTests(LeaseTestsMixin, unittest.TestCase):
    def open(self) -> SqlStore:
        return open_store("sqlite:", self.mktemp())


class PostgresLeaseTests(LeaseTestsMixin, unittest.TestCase):
    if not DATABASE:
        skip = NO_DATABASE

    def open(self) -> SqlStore:
        self.url = fresh_postgres_url(self)
        return open_store(self.url, self.mktemp())

    @run
    async def test_nodes_claiming_at_once_take_each_stream_once(self):
        stores = [open_store(self.url, self.mktemp()) for _ in range(3)]
        for store in stores:
            self.addCleanup(store.close)
        await self.streams(30)
        rounds = await defer.gatherResults(
            [
                defer.ensureDeferred(store.claim_streams(f"n{i}", LEASE, 30))
                for i, store in enumerate(stores)
                for _ in range(3)
            ]
        )
        taken = [lease.stream_id for leases in rounds for lease in leases]
        self.assertEqual(sorted(taken), sorted(set(taken)))
        self.assertEqual(len(taken), 30)

    @run
    async def test_notifications_reach_other_connections(self):
        other = open_store(self.url, self.mktemp())
        self.addCleanup(other.close)
        heard: list[str] = []
        await other.listen("streamrec_test", heard.append)
        await self.store.notify("streamrec_test", "stop 12")
        for _ in range(100):
            if heard:
                break
            await deferLater(0.05)
        self.assertEqual(heard, ["stop 12"])


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)
