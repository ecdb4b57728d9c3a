#!/usr/bin/env python3
"""What leases and heartbeats cost the database, against the number of streams.

Usage::

    python bench/lease_bench.py [--streams 30,300,3000] [--seconds 20] [--lease 15]
    bash scripts/with-postgres .venv/bin/python bench/lease_bench.py   # PostgreSQL too

For each engine (SQLite always; PostgreSQL when ``STREAMREC_TEST_DATABASE``
names one, as ``scripts/with-postgres`` does, in a schema of its own) and
each number of started streams, three :class:`streamrec.cluster.Node` objects
share one database and run their lease rounds on the real reactor for
``--seconds``, with recorders that only say yes (no ffmpeg: what is measured
is the database's side). Every statement the nodes send is counted.

It prints, per engine and stream count: the statements per second of one
node, the same per stream, and the median time of a round. Beside them, the
baseline measured in the same run: renewing each lease with its own
statement (one per stream, as a lease table without a bulk renew would),
timed for one node's share of the streams. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import quote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet import defer, task  # noqa: E402

from streamrec.cluster import Node  # noqa: E402
from streamrec.recorder.fleet import Recorders  # noqa: E402
from streamrec.store import open_store  # noqa: E402
from tests.support.fakes import FakeRecorder  # noqa: E402
from tests.support.harness import one_node  # noqa: E402

NODES = 3


class Counted:
    """Wraps a store driver and counts the statements sent through it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def query(self, *args: Any) -> Any:
        self.statements += 1
        return self.driver.query(*args)

    def operation(self, *args: Any) -> Any:
        self.statements += 1
        return self.driver.operation(*args)

    def transaction(self, steps: Any) -> Any:
        def counted() -> Any:
            result = None
            while True:
                try:
                    step = steps.send(result)
                except StopIteration as done:
                    return done.value
                self.statements += 1
                result = yield step

        return self.driver.transaction(counted())


async def measure(reactor: Any, url: str, streams: int, seconds: float, lease: float) -> dict:
    store = open_store(url, tempfile.mkdtemp(prefix="streamrec-lease-bench-"), reactor=reactor)
    await store.migrate()
    for n in range(streams):
        stream_id = await store.create_stream(f"rtsp://cam/{n}", "", time.time())
        await store.mark_started(stream_id, time.time())
    counted = Counted(store._driver)
    store._driver = counted
    nodes: list[Node] = []
    for n in range(NODES):
        recorders = Recorders(make=lambda *a, **k: FakeRecorder())
        node = one_node(reactor, store, recorders, name=f"node{n}", lease_seconds=lease)["node"]
        nodes.append(node)
    # The nodes come up together, so each takes its share.
    for node in nodes:
        await store.register_node(node.node_name, node.public_url, None, lease)
    for node in nodes:
        await node.join()
    # Let the first claims settle, then count.
    await task.deferLater(reactor, lease / 3 + 1, lambda: None)
    rounds: list[float] = []
    original = Node._round

    async def timed(self: Node) -> float:
        began = time.perf_counter()
        try:
            return await original(self)
        finally:
            rounds.append(time.perf_counter() - began)

    Node._round = timed  # type: ignore[method-assign]
    before = counted.statements
    await task.deferLater(reactor, seconds, lambda: None)
    sent = counted.statements - before
    Node._round = original  # type: ignore[method-assign]
    held = [len(node.held) for node in nodes]
    for node in nodes:
        node.stopService()
    # The baseline: one node's share renewed one statement each.
    share = await store._query("SELECT id FROM streams WHERE owner = ?", ("node0",))
    singles = []
    for _ in range(3):
        began = time.perf_counter()
        for (stream_id,) in share:
            await store._query(
                "UPDATE streams SET lease_expires = db_now() + ? WHERE id = ? AND owner = ?"
                " RETURNING id",
                (lease, stream_id, "node0"),
            )
        singles.append(time.perf_counter() - began)
    await store.close()
    per_node = sent / seconds / NODES
    return {
        "held": held,
        "per_node": per_node,
        "per_stream": sent / seconds / streams,
        "round_ms": statistics.median(rounds) * 1000 if rounds else float("nan"),
        "rounds": len(rounds),
        "single_ms": statistics.median(singles) * 1000,
        "single_per_node": len(share) / (lease / 3),
    }


def postgres_schema_url(base: str) -> str:
    import psycopg2

    schema = "lease_bench_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(base)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    admin.close()
    separator = "&" if "?" in base else "?"
    return base + separator + "options=" + quote(f"-c search_path={schema}")


async def main(reactor: Any, args: argparse.Namespace) -> None:
    engines = [("SQLite", lambda: "sqlite:")]
    if os.environ.get("STREAMREC_TEST_DATABASE"):
        engines.append(
            ("PostgreSQL", lambda: postgres_schema_url(os.environ["STREAMREC_TEST_DATABASE"]))
        )
    print(
        f"{NODES} nodes, leases of {args.lease:g} s (renewed every {args.lease / 3:g} s),"
        f" counted over {args.seconds:g} s\n"
    )
    print(
        "| engine | streams | held per node | statements/s per node | per stream"
        " | round median ms | baseline: one statement per lease, statements/s per node"
        " | its renew of one node's share, ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for engine, url in engines:
        for streams in args.streams:
            found = await measure(reactor, url(), streams, args.seconds, args.lease)
            print(
                f"| {engine} | {streams} | {found['held']} | {found['per_node']:.2f}"
                f" | {found['per_stream']:.4f} | {found['round_ms']:.1f}"
                f" | {found['single_per_node']:.1f} | {found['single_ms']:.1f} |",
                flush=True,
            )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="30,300,3000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lease", type=float, default=15.0)
    args = parser.parse_args()
    args.streams = [int(n) for n in args.streams.split(",")]
    return args


if __name__ == "__main__":
    options = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
