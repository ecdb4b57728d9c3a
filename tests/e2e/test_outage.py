"""Recording through database trouble: real ``twistd streamrec`` nodes, a real
PostgreSQL server that restarts, and a node whose network to the database is
cut (a TCP proxy in front of PostgreSQL), with real live sources.

What an operator relies on: the segmenters never stop for the database, the
API says clearly that the database is away, and once it is back the index
holds every second that was recorded, with no hole where a stream moved.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

import psycopg2
from twisted.internet import threads
from twisted.trial import unittest

from ..store.test_store import DATABASE, NO_DATABASE, fresh_postgres_url, run
from ..support.harness import sleep, until
from ..support.livesource import RtspServer, free_port
from ..support.service_process import ROOT, ServiceProcess
from ..support.tcpproxy import CuttableProxy
from .test_nodes import LEASE, Nodes

#: Largest hole (seconds) in a stream's index that is not a loss: segment
#: edges are placed to the millisecond, and a frame lasts 40 ms.
JOIN = 0.3


def coverage_holes(
    url: str, stream_id: int, start: float, stop: float
) -> list[tuple[float, float]]:
    """The holes in the union of a stream's indexed segments within [start, stop]."""
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT start_time, end_time FROM segments WHERE stream_id = %s"
            " AND end_time > %s AND start_time < %s ORDER BY start_time",
            (stream_id, start, stop),
        )
        rows = cursor.fetchall()
    connection.close()
    holes = []
    reached = start
    for first, end in rows:
        if first - reached > JOIN:
            holes.append((reached, first))
        reached = max(reached, end)
    if stop - reached > JOIN:
        holes.append((reached, stop))
    return holes


def indexed_paths(url: str) -> set[str]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT path FROM segments")
        found = {row[0] for row in cursor.fetchall()}
    connection.close()
    return found


def segment_files(data_dir: str, older_than: float) -> set[str]:
    """Closed segment files under a node's data dir (not the one being written)."""
    found = set()
    for directory, _dirs, files in os.walk(os.path.join(data_dir, "segments")):
        for name in files:
            path = os.path.join(directory, name)
            if name.startswith("seg") and os.path.getmtime(path) < older_than:
                found.add(path)
    return found


def journaled(log: str) -> int:
    return sum(int(n) for n in re.findall(r"journal: (\d+) segments indexed", log))


class PostgresServer:
    """A PostgreSQL server of the test's own, which it may stop and start again."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        # Not under trial's temp dir: the server runs as another user, which
        # must reach its directory.
        self.dir = tempfile.mkdtemp(prefix="streamrec-pg-")
        self.port = free_port("tcp")
        self.script = os.path.join(ROOT, "scripts", "start-postgres")
        self.url = ""
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        testcase.addCleanup(self.stop)

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", self.script, *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode:
            raise AssertionError(f"{self.script} {' '.join(args)}: {done.stderr[-3000:]}")
        return done.stdout.strip()

    async def start(self) -> str:
        self.url = await threads.deferToThread(self._run, self.dir, str(self.port))
        return self.url

    async def stop(self) -> None:
        await threads.deferToThread(self._run, "--stop", self.dir)


class OutageTests(Nodes, unittest.TestCase):
    """Three nodes; the database goes away for all, or for one."""

    if not DATABASE:
        skip = NO_DATABASE
    timeout = 300

    def setUp(self) -> None:
        self.nodes = []  # each test starts its own nodes, on its own database

    async def on(self, url: str, names: list[str], via: dict[str, str] | None = None) -> None:
        self.url = url
        for name in names:
            node = await self.start_node(name, database=(via or {}).get(name, url))
            self.assertTrue(node.running())

    async def recording_everywhere(self, ids: list[int]) -> None:
        names = [node.name for node in self.nodes]  # type: ignore[attr-defined]
        for stream_id in ids:
            await until(lambda s=stream_id: self.recording_on(s, names), 40, "recording")

    def report(self, text: str) -> None:
        print(f"\n  {text}")

    @run
    async def test_a_database_restart_of_10_seconds_loses_nothing(self):
        server = PostgresServer(self)
        url = await server.start()
        await self.on(url, ["node0", "node1", "node2"])
        ids = await self.started(3)
        await self.recording_everywhere(ids)
        owners = {s: (await self.nodes[0].status(s))["node"] for s in ids}
        await sleep(3)
        began = time.time() - 2
        await server.stop()
        down = time.time()
        for _ in range(20):  # 10 s without the database, sampled every 0.5 s
            for stream_id in ids:
                self.assertEqual(len(self.recording_where(stream_id)), 1, "ffmpeg records on")
            await sleep(0.5)
        code, body = await self.nodes[1].call("GET", f"/streams/{ids[0]}/status")
        self.assertEqual(code, 503)
        self.assertEqual(body["error_message"], "Database unavailable")
        code, body = await self.nodes[2].call("GET", "/streams/")
        self.assertEqual(code, 503)
        await server.start()
        back = time.time()
        self.report(f"database down {back - down:.1f} s")
        for node in self.nodes:
            await until(lambda n=node: self.answers(n), 30, "the API answers again")
        self.report(f"API answering again {time.time() - back:.1f} s after the restart")
        for stream_id in ids:
            await until(
                lambda s=stream_id: self._recorded_after(s, back + 2), 40, "recording after"
            )
        ended = time.time() - 3
        for stream_id in ids:
            holes = await threads.deferToThread(coverage_holes, url, stream_id, began, ended)
            self.assertEqual(holes, [], f"stream {stream_id}: nothing lost")
            self.assertEqual(len(self.recording_where(stream_id)), 1)
        moved = {s: (await self.nodes[0].status(s))["node"] for s in ids}
        self.assertEqual(moved, owners, "each node kept its streams")
        indexed = await threads.deferToThread(indexed_paths, url)
        for node in self.nodes:
            missing = segment_files(node.data_dir, ended) - indexed
            self.assertEqual(missing, set(), f"{node.name}: every closed segment is indexed")
        counts = [journaled(node.log_text()) for node in self.nodes]
        self.report(f"segments journaled during the outage and indexed after it: {counts}")
        self.assertGreater(sum(counts), 0)

    @run
    async def test_a_node_cut_off_from_the_database_leaves_no_hole(self):
        url = fresh_postgres_url(self)
        proxy = CuttableProxy("127.0.0.1", int(re.search(r":(\d+)/", url).group(1)))
        self.addCleanup(proxy.close)
        port = proxy.listen()
        via_proxy = re.sub(r":\d+/", f":{port}/", url, count=1)
        await self.on(url, ["node0", "node1", "node2"], via={"node2": via_proxy})
        # An RTSP camera takes several clients (a UDP source has one receiver),
        # as the cut-off node and the new owner both record for a while.
        camera = RtspServer.running(self, h265=False)
        ids = await self.started_from([camera.url("h264")] * 3)
        await self.recording_everywhere(ids)
        cut_off = self.nodes[2]
        theirs = [s for s in ids if (await self.nodes[0].status(s))["node"] == "node2"]
        self.assertTrue(theirs)
        await sleep(3)
        began = time.time() - 2
        proxy.sever()
        cut = time.time()
        code, _ = await cut_off.call("GET", f"/streams/{theirs[0]}/status")
        self.assertEqual(code, 503)
        for stream_id in theirs:
            new = await until(
                lambda s=stream_id: self.recording_on_as_seen_by(s, ["node0", "node1"]),
                LEASE + 40,
                "taken over",
            )
            self.assertIn(new, ("node0", "node1"))
        taken = time.time()
        self.report(f"streams taken over {taken - cut:.1f} s after the cut")
        for stream_id in theirs:
            self.assertIn("node2", self.recording_where(stream_id), "still recording, cut off")
        await sleep(4)
        proxy.mend()
        mended = time.time()
        for stream_id in theirs:
            await until(
                lambda s=stream_id: self.not_recorded_on(s, "node2"),
                40,
                "node2 stops once it learns",
            )
        stopped = time.time()
        self.report(f"node2 stopped its segmenters {stopped - mended:.1f} s after reconnecting")
        await sleep(3)
        ended = time.time() - 2
        for stream_id in theirs:
            holes = await threads.deferToThread(coverage_holes, url, stream_id, began, ended)
            self.assertEqual(holes, [], f"stream {stream_id}: no hole across the takeover")
        self.report(f"node2 indexed {journaled(cut_off.log_text())} journaled segments")

    async def answers(self, node: ServiceProcess) -> bool:
        code, _ = await node.call("GET", "/streams/")
        return code == 200

    async def not_recorded_on(self, stream_id: int, name: str) -> bool:
        return name not in self.recording_where(stream_id)

    async def recording_on_as_seen_by(self, stream_id: int, nodes: list[str]) -> str | None:
        """The node recording ``stream_id`` according to the nodes in ``nodes``."""
        answers = [
            await node.status(stream_id)
            for node in self.nodes
            if node.name in nodes  # type: ignore[attr-defined]
        ]
        owners = {answer["node"] for answer in answers}
        states = {answer["state"] for answer in answers}
        if len(owners) == 1 and owners <= set(nodes) and states == {"recording"}:
            return owners.pop()
        return None
