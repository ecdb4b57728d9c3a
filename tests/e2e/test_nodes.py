"""Several nodes on one PostgreSQL: three real ``twistd streamrec`` processes,
each with its own data dir, on 127.0.0.1, recording real live sources.

What is checked is what an operator relies on: every started stream is
recorded by exactly one live node, any node answers for any stream, and a
dead or stopping node's streams keep recording elsewhere. Needs
``STREAMREC_TEST_DATABASE`` (``make test`` starts a server).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg2
from twisted.internet import defer, threads
from twisted.trial import unittest

from ..store.test_store import DATABASE, NO_DATABASE, fresh_postgres_url, run
from ..support.harness import decode, sleep, until
from ..support.livesource import UdpTsSource
from ..support.service_process import ServiceProcess, kill_processes_under, processes_under

#: Short leases, so that a failover fits in a test (the default is 15 s).
LEASE = 4.0

#: How long a clip job waits for a node that is gone (--clip-wait).
CLIP_WAIT = 15.0

#: The nodes' --segment-seconds (the default).
SEGMENT_SECONDS = 2.0


def handover(url: str, stream_id: int, old: str) -> tuple[float, float]:
    """(end of the last segment ``old`` recorded, start of the first segment
    another node recorded after it) of a stream, from the index."""
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT runs.node, segments.start_time, segments.end_time FROM segments"
            " JOIN runs ON runs.id = segments.run_id WHERE segments.stream_id = %s"
            " ORDER BY segments.start_time",
            (stream_id,),
        )
        rows = cursor.fetchall()
    connection.close()
    last_old = max(end for node, _, end in rows if node == old)
    first_new = min(start for node, start, _ in rows if node != old and start >= last_old - 1)
    return last_old, first_new


class Nodes:
    """Real nodes on one database, and what the tests ask of them."""

    url: str
    nodes: list[ServiceProcess]

    async def start_node(
        self, name: str, data_dir: str | None = None, database: str | None = None, **options: Any
    ) -> ServiceProcess:
        testcase: Any = self
        node = ServiceProcess(
            testcase,
            data_dir or os.path.abspath(testcase.mktemp()),
            database=database or self.url,
            node=name,
            lease_seconds=LEASE,
            clip_wait=CLIP_WAIT,
            **options,
        )
        node.name = name  # type: ignore[attr-defined]
        testcase.addCleanup(kill_processes_under, node.data_dir)
        testcase.addCleanup(node.stop)
        await node.start()
        self.nodes.append(node)
        return node

    def sources(self, count: int) -> list[UdpTsSource]:
        testcase: Any = self
        return [UdpTsSource.running(testcase, audio=None, bitrate="200k") for _ in range(count)]

    def recording_where(self, stream_id: int) -> list[str]:
        """The nodes with a live segmenter of ``stream_id`` (from /proc)."""
        where = []
        for node in self.nodes:
            directory = os.path.join(node.data_dir, "segments", str(stream_id))
            if os.path.isdir(directory) and processes_under(directory):
                where.append(node.name)  # type: ignore[attr-defined]
        return where

    async def started(self, count: int) -> list[int]:
        """``count`` live sources, created through the first node and started
        through each node in turn."""
        return await self.started_from([source.url for source in self.sources(count)])

    async def started_from(self, urls: list[str]) -> list[int]:
        ids = []
        for url in urls:
            answer = await self.nodes[0].ok("POST", "/streams/create", url=url)
            ids.append(answer["stream_id"])
        for n, stream_id in enumerate(ids):
            await self.nodes[n % len(self.nodes)].ok("POST", f"/streams/{stream_id}/start")
        return ids

    async def status_everywhere(self, stream_id: int) -> list[dict[str, Any]]:
        return [await node.status(stream_id) for node in self.nodes if node.running()]

    async def recording_on(self, stream_id: int, nodes: list[str]) -> str | None:
        """The node recording ``stream_id`` if it is one of ``nodes`` and every
        node says so, with a segment indexed since; None otherwise."""
        answers = await self.status_everywhere(stream_id)
        owners = {answer["node"] for answer in answers}
        states = {answer["state"] for answer in answers}
        if len(owners) == 1 and owners <= set(nodes) and states == {"recording"}:
            return owners.pop()
        return None

    async def _recorded_after(self, stream_id: int, moment: float) -> Any:
        answer = await self.nodes[1].status(stream_id)
        last = answer["recorded"]["last"]
        return answer if last is not None and last > moment + 1 else None


class NodesTests(Nodes, unittest.TestCase):
    if not DATABASE:
        skip = NO_DATABASE
    timeout = 240

    def setUp(self) -> defer.Deferred[None]:
        self.url = fresh_postgres_url(self)
        self.nodes = []
        return defer.ensureDeferred(self._start_nodes(3))

    async def _start_nodes(self, count: int) -> None:
        for n in range(count):
            await self.start_node(f"node{n}")

    @run
    async def test_every_started_stream_is_recorded_by_exactly_one_node(self):
        ids = await self.started(6)
        names = [node.name for node in self.nodes]  # type: ignore[attr-defined]
        for stream_id in ids:
            await until(lambda s=stream_id: self.recording_on(s, names), 30, "recording")
        seen: dict[int, set[str]] = {stream_id: set() for stream_id in ids}
        for _ in range(12):  # every 0.5 s for 6 s
            for stream_id in ids:
                where = self.recording_where(stream_id)
                self.assertEqual(len(where), 1, f"stream {stream_id} recorded on {where}")
                seen[stream_id].update(where)
            await sleep(0.5)
        for stream_id in ids:
            [answer, *others] = await self.status_everywhere(stream_id)
            self.assertEqual({a["node"] for a in others}, {answer["node"]})
            self.assertEqual(seen[stream_id], {answer["node"]}, "no stream moved")
        spread = {answer["node"] for s in ids for answer in await self.status_everywhere(s)}
        self.assertEqual(len(spread), 3, "each node records some: the one asked had room")
        # A stop through any node stops it where it records.
        for n, stream_id in enumerate(ids):
            await self.nodes[(n + 1) % 3].ok("POST", f"/streams/{stream_id}/stop")
            self.assertEqual(self.recording_where(stream_id), [], "stopped when stop answers")
            answer = await self.nodes[n % 3].status(stream_id)
            self.assertEqual((answer["state"], answer["node"]), ("stopped", None))

    @run
    async def test_a_killed_nodes_streams_record_on_the_others(self):
        ids = await self.started(3)
        names = [node.name for node in self.nodes]  # type: ignore[attr-defined]
        for stream_id in ids:
            await until(lambda s=stream_id: self.recording_on(s, names), 30, "recording")
        victim = self.nodes[0]
        mine = [s for s in ids if (await victim.status(s))["node"] == "node0"]
        self.assertTrue(mine)
        await sleep(3)  # some segments on the victim
        killed = time.time()
        await victim.kill(signal.SIGKILL)
        survivors = ["node1", "node2"]
        for stream_id in mine:
            owner = await until(
                lambda s=stream_id: self.recording_on(s, survivors), LEASE + 30, "taken over"
            )
            self.assertIn(owner, survivors)
        moved = time.time() - killed
        for stream_id in ids:
            self.assertEqual(len(self.recording_where(stream_id)), 1)
        # The new owner's first segment follows the dead one's last: a gap of
        # about the lease and a start, then recording again.
        for stream_id in mine:
            status = await until(
                lambda s=stream_id: self._recorded_after(s, killed), 30, "a segment after"
            )
            self.assertGreater(status["recorded"]["segments"], 1)
            last, first = await threads.deferToThread(handover, self.url, stream_id, "node0")
            print(
                f"\n  stream {stream_id}: killed {killed - last:.2f} s after its last indexed"
                f" segment ended; recording again {first - killed:.2f} s after the kill;"
                f" gap in the archive {first - last:.2f} s (lease {LEASE:g} s)"
            )
            self.assertLess(first - last, LEASE + 15)
        self.assertLess(moved, 240)

    @run
    async def test_a_clip_across_a_failover_waits_for_the_dead_node_and_plays(self):
        [stream_id] = await self.started(1)  # through node0, which records it
        await until(lambda: self.recording_on(stream_id, ["node0"]), 30, "recording on node0")
        await sleep(5)
        victim = self.nodes[0]
        killed = time.time()
        await victim.kill(signal.SIGKILL)
        # Its disk is with it: the nodes on this one machine could read its
        # files (and would take it for a shared data dir) unless they are away.
        away = victim.data_dir + ".away"
        os.rename(victim.data_dir, away)
        owner = await until(lambda: self.recording_on_alive(stream_id), LEASE + 30, "taken over")
        await until(lambda: self._recorded_after(stream_id, killed + 4), 30, "a segment after")
        last, first = await threads.deferToThread(handover, self.url, stream_id, "node0")
        asked = {"start": last - 3, "stop": first + 3}
        waiting = await self.nodes[2].ok("GET", f"/streams/{stream_id}/get_clip", **asked)
        await until(
            lambda: self._waits_for(stream_id, asked, "node0"), 30, "the job waits for node0"
        )
        self.assertIn(waiting["status"], ("pending", "processing"))
        os.rename(away, victim.data_dir)
        await victim.start()  # node0 comes back, with its disk
        job = await self.nodes[2].clip(stream_id, timeout=60, **asked)
        self.assertEqual(job["status"], "done")
        before, after = job["clips"]
        # Absolute links to the node that built each clip (on this one machine,
        # whichever node got to it first once node0's disk was back).
        bases = {node.base + "/clips/" for node in self.nodes}
        for clip in (before, after):
            self.assertIn(clip["link"].rsplit("/", 1)[0] + "/", bases)
        self.assertLess(abs(before["start"] - asked["start"]), 0.1)
        self.assertLess(abs(after["stop"] - asked["stop"]), 0.1)
        shown = []
        for clip in (before, after):
            path = await self.nodes[1].download(clip["link"], os.path.abspath(self.mktemp()))
            numbers = decode(path)["numbers"]
            self.assertGreater(len(numbers), 50, f"{clip} shows frames")
            shown.append(numbers)
        self.assertLess(shown[0][-1], shown[1][0], "node0's frames, then the new owner's")
        print(
            f"\n  clip across the failover (new owner {owner}): frames {shown[0][0]}..{shown[0][-1]}"
            f" from node0, {shown[1][0]}..{shown[1][-1]} after"
        )

    @run
    async def test_a_clip_job_waiting_for_a_dead_node_fails_at_its_deadline(self):
        [stream_id] = await self.started(1)
        await until(lambda: self.recording_on(stream_id, ["node0"]), 30, "recording on node0")
        first = await until(lambda: self._first_recorded(stream_id), 30, "a first segment")
        await sleep(4)
        victim = self.nodes[0]
        await victim.kill(signal.SIGKILL)
        os.rename(victim.data_dir, victim.data_dir + ".away")  # its disk is with it
        await until(lambda: self.recording_on_alive(stream_id), LEASE + 30, "taken over")
        asked = {"start": first + 0.5, "stop": first + 2.5}  # only node0 has it
        await until(lambda: self._waits_for(stream_id, asked, "node0"), 30, "waiting for node0")
        waited = time.time()

        async def failed() -> Any:
            job = await self.nodes[1].ok("GET", f"/streams/{stream_id}/get_clip", **asked)
            return job if job["status"] == "failed" else None

        job = await until(failed, CLIP_WAIT + 30, "the job fails at its deadline")
        self.assertEqual(
            job["error_message"],
            f"the recording is on node node0, which has not answered for {CLIP_WAIT:g} s",
        )
        self.assertNotIn("waiting_for", job)
        self.assertLess(time.time() - waited, CLIP_WAIT + 30)

    async def _first_recorded(self, stream_id: int) -> Any:
        return (await self.nodes[1].status(stream_id))["recorded"]["first"]

    async def recording_on_alive(self, stream_id: int) -> str | None:
        names = [n.name for n in self.nodes if n.running()]  # type: ignore[attr-defined]
        return await self.recording_on(stream_id, names)

    async def _waits_for(self, stream_id: int, asked: dict[str, float], node: str) -> bool:
        job = await self.nodes[1].ok("GET", f"/streams/{stream_id}/get_clip", **asked)
        return job.get("waiting_for") == node

    @run
    async def test_a_node_stopping_hands_its_streams_over(self):
        ids = await self.started(3)
        names = [node.name for node in self.nodes]  # type: ignore[attr-defined]
        for stream_id in ids:
            await until(lambda s=stream_id: self.recording_on(s, names), 30, "recording")
        leaving = self.nodes[2]
        theirs = [s for s in ids if (await leaving.status(s))["node"] == "node2"]
        self.assertTrue(theirs)
        await sleep(3)
        await leaving.stop()
        self.assertEqual(leaving.process.returncode in (0, -signal.SIGTERM), True)
        for stream_id in theirs:
            await until(
                lambda s=stream_id: self.recording_on(s, ["node0", "node1"]), 30, "handed over"
            )
            handed = time.time()
            await until(
                lambda s=stream_id, t=handed: self._recorded_after(s, t), 30, "a segment after"
            )
            last, first = await threads.deferToThread(handover, self.url, stream_id, "node2")
            print(f"\n  stream {stream_id}: hand-over gap {first - last:.2f} s")
            self.assertLess(first - last, SEGMENT_SECONDS + 1, "about a segment at most")

    @run
    async def test_parallel_starts_through_every_node_start_one_recorder(self):
        [source] = self.sources(1)
        answer = await self.nodes[0].ok("POST", "/streams/create", url=source.url)
        stream_id = answer["stream_id"]
        calls = [
            defer.ensureDeferred(self.nodes[n % 3].call("POST", f"/streams/{stream_id}/start"))
            for n in range(100)
        ]
        answers = await defer.gatherResults(calls)
        codes = sorted(code for code, _ in answers)
        self.assertEqual(codes.count(200), 1, codes)
        refused = {body.get("error_message") for code, body in answers if code != 200}
        self.assertEqual(refused, {"Stream already started"})
        names = [node.name for node in self.nodes]  # type: ignore[attr-defined]
        await until(lambda: self.recording_on(stream_id, names), 30, "recording")
        for _ in range(6):
            self.assertEqual(len(self.recording_where(stream_id)), 1)
            await sleep(0.5)
