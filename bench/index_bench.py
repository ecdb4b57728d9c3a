#!/usr/bin/env python3
"""The index with a long archive: status, list and clip planning against its size.

Usage::

    python bench/index_bench.py [--sizes 1000,100000,1000000] [--repeat 30]
    bash scripts/with-postgres .venv/bin/python bench/index_bench.py   # PostgreSQL too

For each engine (SQLite always; PostgreSQL when ``STREAMREC_TEST_DATABASE``
names one, as ``scripts/with-postgres`` does) and each size N, a fresh
database gets one stream with N segments of 2 s (N = 1.3 M is a month) and
nine streams with 100 each. Through streamrec's own store it then times:

- ``status``: one stream's row and its kept totals (``stream_with_totals``);
- ``list``: every stream with its totals, one query (``streams_with_totals``);
- ``plan``: the segments of a 60 s clip in the middle (``segments_between``);
- beside them, the baseline: the same totals summed over the segments, the
  way streamrec 0.1 answered ``status`` (and ``/streams/``, once per stream).

It prints the median in ms of ``--repeat`` calls, and for PostgreSQL what a
segment row costs on disk (table and indexes). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet import defer, task  # noqa: E402

from streamrec.store import SqlStore, open_store  # noqa: E402

T0 = 1_700_000_000.0
SMALL = 100
SUMMED = (
    "SELECT COUNT(*), COALESCE(SUM(end_time - start_time), 0), COALESCE(SUM(bytes), 0),"
    " MIN(start_time), MAX(end_time) FROM segments WHERE stream_id = ?"
)


def rows(stream_id: int, run_id: int, count: int) -> list[tuple[Any, ...]]:
    return [
        (
            stream_id,
            run_id,
            f"/data/segments/{stream_id}/{run_id}/seg{i:07d}.mp4",
            T0 + 2 * i,
            T0 + 2 * i + 2,
            500_000,
        )
        for i in range(count)
    ]


def fill_sqlite(path: str, streams: list[tuple[int, int, int]]) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    with db:
        for stream_id, run_id, count in streams:
            for start in range(0, count, 100_000):
                db.executemany(
                    "INSERT INTO segments (stream_id, run_id, path, start_time, end_time, bytes)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows(stream_id, run_id, min(count, start + 100_000))[start:],
                )
    db.close()


def fill_postgresql(url: str, streams: list[tuple[int, int, int]]) -> None:
    import io

    import psycopg2

    db = psycopg2.connect(url)
    with db, db.cursor() as cursor:
        for stream_id, run_id, count in streams:
            buffer = io.StringIO()
            for row in rows(stream_id, run_id, count):
                buffer.write("\t".join(str(v) for v in row) + "\n")
            buffer.seek(0)
            cursor.copy_from(
                buffer,
                "segments",
                columns=("stream_id", "run_id", "path", "start_time", "end_time", "bytes"),
            )
        cursor.execute("ANALYZE segments")
    db.close()


def reset_postgresql(url: str) -> None:
    import psycopg2

    db = psycopg2.connect(url)
    db.autocommit = True
    with db.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    db.close()


def row_cost_postgresql(url: str, count: int) -> str:
    import psycopg2

    db = psycopg2.connect(url)
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size('segments'), pg_indexes_size('segments'),"
            " (SELECT COUNT(*) FROM segments)"
        )
        table, indexes, total = cursor.fetchone()
    db.close()
    return (
        f"{table / total:.0f} B table + {indexes / total:.0f} B indexes per segment row"
        f" ({total:,} rows: {(table + indexes) / 2**20:.0f} MiB;"
        f" 100 M rows: {(table + indexes) / total * 1e8 / 2**30:.0f} GiB)"
    )


async def timed(repeat: int, call: Any) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


async def measure(store: SqlStore, big: int, count: int, repeat: int) -> dict[str, float]:
    middle = T0 + count  # the middle of the big stream's archive

    async def summed() -> None:
        await store._query(SUMMED, (big,))

    async def summed_list() -> None:
        for stream in await store.list_streams():
            await store._query(SUMMED, (stream.id,))

    async def status() -> None:
        await store.stream_with_totals(big)

    async def listing() -> None:
        await store.streams_with_totals()

    async def plan() -> None:
        await store.segments_between(big, middle, middle + 60)

    return {
        "status": await timed(repeat, status),
        "status (summed, 0.1)": await timed(max(3, repeat // 10), summed),
        "list": await timed(repeat, listing),
        "list (summed per stream, 0.1)": await timed(max(3, repeat // 10), summed_list),
        "plan 60 s": await timed(repeat, plan),
    }


async def one(engine: str, url: str, count: int, repeat: int, reactor: Any) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="streamrec-index-")
    if engine == "postgresql":
        reset_postgresql(url)
        store = open_store(url, work, reactor=reactor)
    else:
        store = open_store("sqlite:", work)
    try:
        await store.migrate()
        ids = []
        for n in range(10):
            stream = await store.create_stream(f"rtsp://cam{n}/x", "", T0)
            run = await store.open_run(stream, T0)
            ids.append((stream, run, count if n == 0 else SMALL))
        if engine == "postgresql":
            fill_postgresql(url, ids)
        else:
            fill_sqlite(os.path.join(work, "streamrec.sqlite"), ids)
        # What the totals migration does for an archive that existed before it.
        for stream, _run, _n in ids:
            await store._operation(
                "UPDATE stream_totals SET segments = (SELECT COUNT(*) FROM segments WHERE"
                " stream_id = ?), seconds = (SELECT SUM(end_time - start_time) FROM segments"
                " WHERE stream_id = ?), bytes = (SELECT SUM(bytes) FROM segments WHERE"
                " stream_id = ?), first_start = (SELECT MIN(start_time) FROM segments WHERE"
                " stream_id = ?), last_end = (SELECT MAX(end_time) FROM segments WHERE"
                " stream_id = ?) WHERE stream_id = ?",
                (stream,) * 6,
            )
        result = await measure(store, ids[0][0], count, repeat)
        if engine == "postgresql":
            print(f"  PostgreSQL, {count:,} segments: {row_cost_postgresql(url, count)}")
        return result
    finally:
        await store.close()


async def main(reactor: Any, sizes: list[int], repeat: int) -> None:
    engines = [("sqlite", "")]
    url = os.environ.get("STREAMREC_TEST_DATABASE")
    if url:
        engines.append(("postgresql", url))
    else:
        print("(no STREAMREC_TEST_DATABASE: SQLite only; see the usage)")
    for engine, address in engines:
        results = {}
        for count in sizes:
            print(f"{engine}: {count:,} segments...", flush=True)
            results[count] = await one(engine, address, count, repeat, reactor)
        names = list(results[sizes[0]])
        print(f"\n## {engine} (median ms)\n")
        print("| call | " + " | ".join(f"{n:,} segments" for n in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for name in names:
            print(f"| {name} | " + " | ".join(f"{results[n][name]:.2f}" for n in sizes) + " |")
        print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sizes, args.repeat)))
