#!/usr/bin/env python3
"""The timeline of a month of 2 s segments: the kept spans beside the segments.

Usage::

    python bench/timeline_bench.py [--days 30] [--repeat 30]
    bash scripts/with-postgres .venv/bin/python bench/timeline_bench.py   # PostgreSQL too

For each engine (SQLite always; PostgreSQL when ``STREAMREC_TEST_DATABASE``
names one, as ``scripts/with-postgres`` does), a fresh database gets one
stream with ``--days`` of 2 s segments (30 days: 1.3 M rows), inserted in
bulk, with an outage of 5 s to 10 min every three hours or so (a new run
after each) and now and then 0.1 s between two segments (joined), and a
second stream with a day of its own. The spans of that archive are then built
by the schema file's statement, as for an archive recorded before it (timed).
Through streamrec's own store it times, for the last day, the last week and
the whole archive:

- ``timeline``: the kept spans of the window (``recorded_spans``);
- the baselines, in the same run and through the same connection: the same
  spans merged from the segments in one ordered scan (what a timeline costs
  without the spans table), and ``SELECT COUNT(*)`` of those segments (the
  database alone, nothing sent).

Then what keeping the spans costs the writes, each beside the same call
with the spans' upkeep switched off: ``add_segment`` at the live end of the
archive (one at a time, as a recorder does), a retention batch
(``delete_segments`` of the oldest 500), and ``shift_run`` of a run's first
segments (what a better clock anchor does). It prints the median in ms.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet import defer, task  # noqa: E402

from streamrec.store import SqlStore, open_store  # noqa: E402
from streamrec.store.spans import join_spans  # noqa: E402
from streamrec.store.sqlstore import _schema_files, _split_statements  # noqa: E402

T0 = 1_700_000_000.0
DAY = 86400.0
COLUMNS = ("stream_id", "run_id", "path", "start_time", "end_time", "bytes")

SCAN = (
    "SELECT start_time, end_time FROM segments WHERE stream_id = ? AND end_time > ?"
    " AND end_time < ? AND start_time < ? ORDER BY start_time"
)
COUNT = "SELECT COUNT(*) FROM segments WHERE stream_id = ? AND end_time > ? AND start_time < ?"


def archive(seconds: float, seed: int) -> list[list[tuple[float, float]]]:
    """Runs of 2 s segments over ``seconds``: each run ends in an outage."""
    chance = random.Random(seed)
    runs: list[list[tuple[float, float]]] = [[]]
    t = T0
    while t < T0 + seconds:
        runs[-1].append((t, t + 2.0))
        t += 2.0
        if chance.random() < 2.0 / (3 * 3600):  # an outage every ~3 h
            t += chance.uniform(5, 600)
            runs.append([])
        elif chance.random() < 0.001:
            t += 0.1  # late, but within the join tolerance
    return [run for run in runs if run]


def build_statement(dialect: str) -> str:
    script = next(text for _, text in _schema_files(dialect) if "recorded_spans" in text)
    return next(s for s in _split_statements(script) if s.startswith("INSERT INTO recorded_spans"))


def rows(stream_id: int, runs: list[tuple[int, list[tuple[float, float]]]]) -> Any:
    for run_id, segments in runs:
        for n, (start, end) in enumerate(segments):
            yield (
                stream_id,
                run_id,
                f"/d/{stream_id}/{run_id}/seg{n:06d}.mp4",
                start,
                end,
                500_000,
            )


def fill_sqlite(path: str, streams: dict[int, list[tuple[int, list[Any]]]]) -> float:
    import sqlite3

    db = sqlite3.connect(path)
    with db:
        for stream_id, runs in streams.items():
            db.executemany(
                f"INSERT INTO segments ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                rows(stream_id, runs),
            )
        db.execute("ANALYZE")
    begin = time.perf_counter()
    with db:
        db.execute("DELETE FROM recorded_spans")
        db.execute(build_statement("sqlite"))
    built = time.perf_counter() - begin
    db.close()
    return built


def fill_postgresql(url: str, streams: dict[int, list[tuple[int, list[Any]]]]) -> float:
    import psycopg2

    db = psycopg2.connect(url)
    with db, db.cursor() as cursor:
        for stream_id, runs in streams.items():
            buffer = io.StringIO()
            for row in rows(stream_id, runs):
                buffer.write("\t".join(repr(v) if isinstance(v, float) else str(v) for v in row))
                buffer.write("\n")
            buffer.seek(0)
            cursor.copy_from(buffer, "segments", columns=COLUMNS)
        cursor.execute("ANALYZE segments")
    begin = time.perf_counter()
    with db, db.cursor() as cursor:
        cursor.execute("DELETE FROM recorded_spans")
        cursor.execute(build_statement("postgresql"))
    built = time.perf_counter() - begin
    with db, db.cursor() as cursor:
        cursor.execute("ANALYZE recorded_spans")
    db.close()
    return built


def reset_postgresql(url: str) -> None:
    import psycopg2

    db = psycopg2.connect(url)
    db.autocommit = True
    with db.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    db.close()


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> float:
    await call()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


async def window(
    store: SqlStore, stream: int, name: str, start: float, stop: float, repeat: int
) -> str:
    async def spans() -> list[tuple[float, float]]:
        return await store.recorded_spans(stream, start, stop)

    async def scan() -> list[tuple[float, float]]:
        found = await store._read(SCAN, (stream, start, stop + 600, stop))
        return [(max(a, start), min(b, stop)) for a, b in join_spans(found)]

    async def count() -> int:
        return int((await store._read(COUNT, (stream, start, stop)))[0][0])

    kept, merged, segments = await spans(), await scan(), await count()
    same = "same spans" if kept == merged else f"DIFFERENT: {len(merged)} merged"
    few = max(3, repeat // 10)
    return (
        f"| {name} | {segments:,} | {len(kept)} | {await timed(repeat, spans):.2f} |"
        f" {await timed(few, scan):.1f} | {await timed(few, count):.1f} | {same} |"
    )


async def reads(store: SqlStore, stream: int, end: float, days: float, repeat: int) -> list[str]:
    return [
        await window(store, stream, name, end - length, end, repeat)
        for name, length in (("day", DAY), ("week", 7 * DAY), ("month", days * DAY))
    ]


def switched_off(store: SqlStore, name: str) -> Any:
    """The store with one of its span-keeping steps doing nothing (the baseline)."""

    def nothing(*_: Any) -> Any:
        return
        yield

    setattr(store, name, nothing)
    return lambda: delattr(store, name)


async def writes(store: SqlStore, stream: int, end: float, repeat: int) -> list[str]:
    lines = []
    state = {"t": end, "n": 0}
    run_id = await store.open_run(stream, end)

    async def append() -> None:
        state["n"] += 1
        start = state["t"]
        state["t"] += 2.0
        await store.add_segment(stream, run_id, f"/d/live/{state['n']}.mp4", start, start + 2, 1)

    async def retention() -> None:
        oldest = await store.oldest_segments(500, stream_id=stream)
        await store.delete_segments([s.id for s in oldest])

    async def shift() -> None:  # a fresh run of three segments, moved 5 ms back
        state["t"] += 30
        fresh = await store.open_run(stream, state["t"])
        for _ in range(3):
            state["n"] += 1
            start = state["t"]
            state["t"] += 2.0
            await store.add_segment(stream, fresh, f"/d/live/{state['n']}.mp4", start, start + 2, 1)
        begin = time.perf_counter()
        await store.shift_run(fresh, -0.005)
        shifts.append(time.perf_counter() - begin)

    shifts: list[float] = []
    for name, call, step, times in (
        ("add_segment (live end)", append, "_span_added", repeat * 3),
        ("delete_segments (500 oldest)", retention, "_spans_removed", max(3, repeat // 5)),
        ("shift_run (3 segments)", shift, "_respan", repeat),
    ):
        with_spans = await timed(times, call)
        if shifts:
            with_spans, shifts[:] = 1000 * statistics.median(shifts), []
        restore = switched_off(store, step)
        try:
            without = await timed(times, call)
            if shifts:
                without, shifts[:] = 1000 * statistics.median(shifts), []
        finally:
            restore()
        lines.append(f"| {name} | {with_spans:.2f} | {without:.2f} |")
    return lines


async def one(engine: str, url: str, days: float, repeat: int, reactor: Any) -> None:
    work = tempfile.mkdtemp(prefix="streamrec-timeline-")
    if engine == "postgresql":
        reset_postgresql(url)
        store = open_store(url, work, reactor=reactor)
    else:
        store = open_store("sqlite:", work)
    try:
        await store.migrate()
        streams: dict[int, list[tuple[int, list[Any]]]] = {}
        for n, length in enumerate((days * DAY, DAY)):
            stream = await store.create_stream(f"rtsp://cam{n}/x", "", T0)
            runs = archive(length, seed=n)
            streams[stream] = [(await store.open_run(stream, r[0][0]), r) for r in runs]
        big = next(iter(streams))
        segments = sum(len(r) for _, r in streams[big])
        print(f"{engine}: filling {segments:,} + {DAY / 2:,.0f} segments...", flush=True)
        begin = time.perf_counter()
        if engine == "postgresql":
            built = fill_postgresql(url, streams)
        else:
            built = fill_sqlite(os.path.join(work, "streamrec.sqlite"), streams)
        print(f"  filled in {time.perf_counter() - begin:.0f} s", flush=True)
        for stream in streams:  # the totals, as the migration that made them counts them
            await store._operation(
                "UPDATE stream_totals SET segments = (SELECT COUNT(*) FROM segments WHERE"
                " stream_id = ?), first_start = (SELECT MIN(start_time) FROM segments WHERE"
                " stream_id = ?), last_end = (SELECT MAX(end_time) FROM segments WHERE"
                " stream_id = ?) WHERE stream_id = ?",
                (stream,) * 4,
            )
        end = streams[big][-1][1][-1][1]
        print(f"\n## {engine}: {segments:,} segments in {len(streams[big])} runs\n")
        print(f"The spans of the whole archive built by the schema file: {built:.1f} s.\n")
        print("| window | segments | spans | timeline ms | ordered scan + merge ms |", end="")
        print(" COUNT(*) ms | check |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for line in await reads(store, big, end, days, repeat):
            print(line)
        print("\n| write (median ms) | keeping the spans | without |")
        print("|---|---:|---:|")
        for line in await writes(store, big, end, repeat):
            print(line)
        print(flush=True)
    finally:
        await store.close()


async def main(reactor: Any, days: float, repeat: int) -> None:
    engines = [("sqlite", "")]
    url = os.environ.get("STREAMREC_TEST_DATABASE")
    if url:
        engines.append(("postgresql", url))
    else:
        print("(no STREAMREC_TEST_DATABASE: SQLite only; see the usage)")
    for engine, address in engines:
        await one(engine, address, days, repeat, reactor)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args.days, args.repeat)))
