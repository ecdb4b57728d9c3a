#!/usr/bin/env python3
"""Benchmark seeing the archive: ``snapshot`` and the first byte of ``archive.mp4``.

Usage::

    python bench/view_bench.py [--repeat 15] [--snapshots 31]

What it does:

1. Records 610 s of 720p H.264 (libx264 veryfast, 2 Mb/s, 25 fps, GOP 2 s)
   + AAC into 2 s fragmented-MP4 segments, as ``clip_bench.py`` does (and
   cached in the same place), and indexes them into a SQLite store as one
   stream's run.
2. Starts a process serving streamrec's API over that store on 127.0.0.1
   (the real Klein app, core, playback and ``byteranges``, no recorder),
   which also serves, as static files, the ``copy`` clips of the ranges
   measured: the same bytes as the archive answers.
3. ``archive.mp4`` first byte, for a 10 s and a 10 min range starting mid-GOP:
   time from sending ``GET`` (``Range: bytes=0-``, as Chromium asks) to the
   first byte of the body, over a fresh connection:

   * ``first URL``: the first archive a fresh server answers (no fragment
     table parsed yet: index, every segment's tables, moov);
   * ``new URL``: a start not asked before, on segments parsed for an earlier
     answer (index, moov);
   * ``same URL``: the URL asked again (its pinned plan, files checked);
   * ``static file``: the same bytes as a file on disk (``twisted.web.static``),
     the baseline; and the time to read each answer to its end.
4. ``snapshot`` at random instants (never the same twice), full size (1280)
   and ``width=320``, over HTTP, beside ``ffmpeg -ss T -i SEGMENT -frames:v 1``
   (same scale, JPEG), the baseline, run as a process at the same instants.

Timings are informative only (shared machines): nothing is asserted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
for path in (REPO, BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)

import clip_bench  # noqa: E402

SECONDS = 610
SIZE = "1280x720"
RANGES = {"10 s": 10.0, "10 min": 600.0}
START = 3.0  # seconds after T0: 1 s into a GOP


# --------------------------------------------------------------------------
# The server (a child process)
# --------------------------------------------------------------------------


def serve(directory: str, port_file: str) -> None:
    """Index the recording into a store under ``directory`` and serve the API."""
    from twisted.internet import defer, reactor
    from twisted.web import resource, server, static

    from streamrec.api import StreamrecAPI
    from streamrec.cluster import Node, StreamLocks
    from streamrec.core import RecorderEvents, Streams
    from streamrec.plugins import Encoder
    from streamrec.recorder.fleet import Recorders
    from streamrec.store import open_store

    _, paths = clip_bench.record(clip_bench.ffmpeg_path(), SECONDS, SIZE)
    pieces = clip_bench.make_pieces(paths)

    class Root(resource.Resource):
        def __init__(self, api: resource.IResource) -> None:
            super().__init__()
            self.api = api
            self.files = static.File(os.path.join(directory, "clips"))

        def getChildWithDefault(self, path: bytes, request: object) -> resource.IResource:
            if path == b"clips":
                return self.files
            request.postpath.insert(0, request.prepath.pop())  # type: ignore[attr-defined]
            return self.api

    async def start() -> None:
        store = open_store("sqlite:", directory)
        await store.migrate()
        stream_id = await store.create_stream("rtsp://127.0.0.1/bench", "", clip_bench.T0)
        run_id = await store.open_run(stream_id, clip_bench.T0)
        for piece, duration in pieces:
            size = os.path.getsize(piece.path)
            await store.add_segment(
                stream_id, run_id, piece.path, piece.wall_start, piece.wall_start + duration, size
            )
        recorders = Recorders(make=lambda *a, **k: None)
        events = RecorderEvents(store=store, node="bench", notify=lambda *a, **k: None)
        node = Node(
            reactor=reactor,
            store=store,
            recorders=recorders,
            listener=events,
            locks=StreamLocks(),
            name="bench",
            public_url="http://127.0.0.1:1",
        )
        streams = Streams(
            reactor=reactor,
            store=store,
            recorders=recorders,
            node=node,
            events=events,
            notify=lambda *a, **k: None,
            encoders={"copy": Encoder()},
            default_encoder="copy",
            max_clip_seconds=4 * 3600,
        )
        api = StreamrecAPI(streams, None, {"plugins": []})
        port = reactor.listenTCP(0, server.Site(Root(api.resource())), interface="127.0.0.1")
        with open(port_file + ".tmp", "w") as f:
            f.write(f"{port.getHost().port} {stream_id}")
        os.replace(port_file + ".tmp", port_file)

    defer.ensureDeferred(start()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------


def first_byte(port: int, path: str) -> tuple[float, float, int, int]:
    """(seconds to the first body byte, seconds to the last, bytes, status) of one GET."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    connection.request("GET", path, headers={"Range": "bytes=0-"})
    response = connection.getresponse()
    response.read(1)
    t1 = time.perf_counter()
    size = 1
    while chunk := response.read(1 << 20):
        size += len(chunk)
    t2 = time.perf_counter()
    connection.close()
    return t1 - t0, t2 - t0, size, response.status


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f}"


def bench_archive(port: int, stream_id: int, directory: str, repeat: int) -> None:
    from streamrec.media.mp4 import build_clip

    _, paths = clip_bench.record(clip_bench.ffmpeg_path(), SECONDS, SIZE)
    pieces = clip_bench.make_pieces(paths)
    print("\narchive.mp4, first byte and last byte (median ms over", repeat, "runs)")
    print(f"{'range':>8} {'way':>12} {'first':>8} {'last':>8} {'bytes':>11}")
    for label, seconds in RANGES.items():
        start = clip_bench.T0 + START
        stop = start + seconds
        name = f"clip-{int(seconds)}.mp4"
        build_clip(
            clip_bench.overlapping(pieces, start, stop),
            start,
            stop,
            os.path.join(directory, "clips", name),
        )
        rows: dict[str, list[tuple[float, float, int, int]]] = {
            "new URL": [],
            "same URL": [],
            "static file": [],
        }
        same = f"/streams/{stream_id}/archive.mp4?start={start:.3f}&stop={stop:.3f}"
        first_byte(port, same)  # pins it; warms the page cache
        for n in range(repeat):
            shifted = start + 0.001 * (n + 1)  # a URL not asked before
            rows["new URL"].append(
                first_byte(
                    port, f"/streams/{stream_id}/archive.mp4?start={shifted:.3f}&stop={stop:.3f}"
                )
            )
            rows["same URL"].append(first_byte(port, same))
            rows["static file"].append(first_byte(port, f"/clips/{name}"))
        for way, runs in rows.items():
            assert all(status in (200, 206) for *_x, status in runs), (way, runs[:1])
            print(
                f"{label:>8} {way:>12} {ms([r[0] for r in runs])} {ms([r[1] for r in runs])}"
                f" {runs[0][2]:>11}"
            )


def bench_snapshots(port: int, stream_id: int, count: int) -> None:
    ffmpeg = clip_bench.ffmpeg_path()
    _, paths = clip_bench.record(ffmpeg, SECONDS, SIZE)
    pieces = clip_bench.make_pieces(paths)
    rng = random.Random(11)
    instants = []
    for _ in range(count):
        piece, duration = rng.choice(pieces[1:-1])
        instants.append((piece, rng.uniform(0, duration - 0.05)))
    out = tempfile.mkdtemp(prefix="streamrec-view-bench-")
    print(f"\nsnapshot at {count} random instants (median ms; p90)")
    for width in (None, 320):
        api, baseline = [], []
        for piece, offset in instants:
            t = piece.wall_start + offset
            path = f"/streams/{stream_id}/snapshot?t={t:.3f}" + (f"&width={width}" if width else "")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            t0 = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            api.append(time.perf_counter() - t0)
            connection.close()
            assert response.status == 200 and body[:2] == b"\xff\xd8", (response.status, body[:80])
            command = [
                ffmpeg,
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-ss",
                f"{offset:.3f}",
                "-i",
                piece.path,
                "-frames:v",
                "1",
            ]
            if width:
                command += ["-vf", f"scale={width}:-2"]
            t0 = time.perf_counter()
            subprocess.run([*command, os.path.join(out, "frame.jpg")], check=True)
            baseline.append(time.perf_counter() - t0)
        label = f"width {width}" if width else "full size"
        for way, times in (("snapshot", api), ("ffmpeg -ss", baseline)):
            p90 = sorted(times)[int(0.9 * (len(times) - 1))] * 1000
            print(f"{label:>10} {way:>11} {ms(times)} {p90:8.1f}")
    shutil.rmtree(out, ignore_errors=True)


class Server:
    """A child process serving the API over the indexed recording."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        port_file = os.path.join(directory, "port")
        if os.path.exists(port_file):
            os.remove(port_file)
        for name in os.listdir(directory):
            if name.startswith("streamrec.sqlite"):
                os.remove(os.path.join(directory, name))
        self.child = subprocess.Popen([sys.executable, __file__, "--serve", directory, port_file])
        deadline = time.monotonic() + 120
        while not os.path.exists(port_file):
            if self.child.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        with open(port_file) as f:
            self.port, self.stream_id = (int(x) for x in f.read().split())
        # Anything that is only done once per process, not per archive.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request("GET", f"/streams/{self.stream_id}/status")
        connection.getresponse().read()
        connection.close()

    def stop(self) -> None:
        self.child.terminate()
        self.child.wait(10)


def bench_fresh(directory: str, runs: int) -> None:
    """The first archive.mp4 of a server: no segment parsed yet."""
    print(f"\narchive.mp4 from a fresh server, first byte (median ms over {runs} servers)")
    times: dict[str, list[float]] = {label: [] for label in RANGES}
    for _ in range(runs):
        server = Server(directory)
        try:
            for label, seconds in RANGES.items():
                start = clip_bench.T0 + START
                path = (
                    f"/streams/{server.stream_id}/archive.mp4"
                    f"?start={start:.3f}&stop={start + seconds:.3f}"
                )
                first, _last, _size, status = first_byte(server.port, path)
                assert status in (200, 206), status
                times[label].append(first)
        finally:
            server.stop()
    for label, values in times.items():
        print(f"{label:>8} {'first URL':>12} {ms(values)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--snapshots", type=int, default=31)
    parser.add_argument("--fresh", type=int, default=5, help="fresh servers for the first URL")
    parser.add_argument("--serve", nargs=2, metavar=("DIR", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    clip_bench.record(clip_bench.ffmpeg_path(), SECONDS, SIZE)
    directory = tempfile.mkdtemp(prefix="streamrec-view-bench-")
    os.makedirs(os.path.join(directory, "clips"))
    try:
        bench_fresh(directory, args.fresh)
        server = Server(directory)
        try:
            bench_archive(server.port, server.stream_id, directory, args.repeat)
            bench_snapshots(server.port, server.stream_id, args.snapshots)
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
