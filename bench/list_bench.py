#!/usr/bin/env python3
"""``/streams/`` with thousands of streams, beside serving the same bytes as a file.

Usage::

    python bench/list_bench.py [--streams 5000] [--requests 20] [--profile FILE]

In one run:

1. ``twistd streamrec`` as a real process on an empty data dir (SQLite);
   ``--streams`` streams are created over the API, each with a camera
   password in its URL and a description (none is started: the list's cost is
   the index and the JSON, not the recorders).
2. ``/streams/`` is asked ``--requests`` times in turn by one client: p50 and
   p99 of the whole answer, and its size.
3. **Baseline:** a bare ``twistd web`` serves the very bytes of that answer as a
   file, asked by the same client the same number of times: what the client,
   the kernel and Twisted take for that many bytes.
4. ``json.dumps`` of the same answer in this process: the encoding's share.

With ``--profile FILE``, py-spy samples the service while it answers (raw
format, for flamegraph tools). Nothing is asserted. Standard library only;
127.0.0.1 only; every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from scale_bench import FloorServer, percentile, profile  # noqa: E402
from service_bench import ServiceProcess, free_tcp_port  # noqa: E402


def timed_get(url: str) -> tuple[float, bytes]:
    begin = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        body = answer.read()
    return (time.perf_counter() - begin) * 1000, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--profile", default="")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="streamrec-list-bench-")
    service = ServiceProcess(os.path.join(work, "data"), free_tcp_port(), REPO)
    floor = spy = None
    try:
        os.makedirs(service.data_dir, exist_ok=True)
        api = service.start()
        begin = time.monotonic()
        for n in range(args.streams):
            api.ok(
                "POST",
                "/streams/create",
                url=f"rtsp://admin:secret{n}@10.0.{n // 250}.{n % 250 + 1}:554/Streaming/101",
                description=f"camera {n}, gate {n % 17}",
            )
        created = time.monotonic() - begin
        url = api.base + "/streams/"
        timed_get(url)  # warm
        if args.profile:
            spy = profile(service.pid, 10 + args.requests, args.profile)
            time.sleep(1)
        answers = [timed_get(url) for _ in range(args.requests)]
        if spy is not None:
            spy.wait(60)
        list_ms = [ms for ms, _ in answers]
        body = answers[-1][1]
        floor = FloorServer(work, body)
        floor.wait()
        floor_ms = [timed_get(floor.url)[0] for _ in range(args.requests)]
        decoded = json.loads(body)
        encode_ms = []
        for _ in range(args.requests):
            begin = time.perf_counter()
            json.dumps(decoded)
            encode_ms.append((time.perf_counter() - begin) * 1000)
        leaked = sum("secret" in json.dumps(s) for s in decoded["result"])
        print(
            f"\n{args.streams} streams (created in {created:.0f} s), {len(body)} bytes per answer\n"
        )
        print("| | p50 | p99 |")
        print("|---|---|---|")
        print(
            f"| `/streams/` from streamrec | {statistics.median(list_ms):.0f} ms"
            f" | {percentile(list_ms, 0.99):.0f} ms |"
        )
        print(
            f"| the same bytes as a file (`twistd web`) | {statistics.median(floor_ms):.0f} ms"
            f" | {percentile(floor_ms, 0.99):.0f} ms |"
        )
        print(
            f"| `json.dumps` of the same answer | {statistics.median(encode_ms):.0f} ms"
            f" | {percentile(encode_ms, 0.99):.0f} ms |"
        )
        print(f"\nstreams whose answer holds a camera password: {leaked}")
        return 0
    finally:
        if floor is not None:
            floor.stop()
        print(f"service: {service.stop(timeout=60)}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
