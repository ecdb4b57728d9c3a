#!/usr/bin/env python3
"""End-to-end benchmark of a running streamrec service.

Usage::

    python bench/service_bench.py [--streams 2] [--record 75]

What it does:

1. Starts ``--streams`` live UDP MPEG-TS sources (``tests.support.livesource.UdpTsSource``,
   H.264 320x240 25 fps + AAC, on 127.0.0.1) and streamrec as a real process
   (``twistd -n --pidfile= streamrec --listen tcp:PORT:interface=127.0.0.1
   --data-dir TMP``), importing ``streamrec`` from this working tree.
2. Creates and starts one stream per source over the HTTP API and lets them record
   for ``--record`` seconds (counted from the first start request).
3. ``--warmup`` s after all streams are started, samples for ``--window`` s the
   CPU time (utime+stime from ``/proc/PID/stat``) of the service process and of
   its ffmpeg children (the processes whose ppid is the service's pid) and prints
   their CPU% side by side (100 % = one core), plus their RSS.
4. Then, with the streams still recording, times ``get_clip`` with the built-in
   ``copy`` encoder, from the first request until the answer says ``done``,
   polling every 20 ms with the same parameters, for a 10 s and a 60 s clip taken
   from the recorded range. Each is repeated ``--repeat`` times with a different
   start offset (so a new job each time). In the same rounds it times ffmpeg's
   ``-f concat -c copy`` over the segment files that cover each 60 s range, which
   it looks up in ``TMP/streamrec.sqlite``. It prints median/min/max.
5. Stops everything, even after an error: it stops the streams, sends SIGTERM to the
   service (SIGKILL after a bounded wait), and stops the sources. All waits are
   bounded. Everything listens and connects on 127.0.0.1 only.

Timings are informative only (shared machines): nothing is asserted.
Standard library only; ffmpeg from PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support.livesource import UdpTsSource  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
POLL = 0.02  # get_clip polling interval
HTTP_TIMEOUT = 30.0
CLIP_TIMEOUT = 60.0  # one clip job, first request to done
SAMPLE_EVERY = 0.5  # CPU sampling interval during the window
SLICE = 5.0  # the CPU table has one row per SLICE seconds

# twistd as a process of this interpreter. ``python -m twisted.scripts.twistd``
# does nothing (that module has no ``__main__`` block), so call its ``run()``.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------


def proc_stat(pid: int) -> dict | None:
    """ppid, comm, cpu seconds (utime+stime) and RSS bytes of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            data = handle.read()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, rss 24
    return {
        "pid": pid,
        "comm": comm,
        "ppid": int(rest[1]),
        "cpu": (int(rest[11]) + int(rest[12])) / CLK_TCK,
        "rss": int(rest[21]) * PAGE,
    }


def children_of(ppid: int) -> dict[int, dict]:
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = proc_stat(int(name))
        if stat is not None and stat["ppid"] == ppid:
            found[stat["pid"]] = stat
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0")]
    except OSError:
        return []


def vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, **params) -> tuple[int, dict]:
        url = self.base + path
        data = None
        if params and method == "GET":
            url += "?" + urllib.parse.urlencode(params)
        elif method == "POST":
            data = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(url, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, {"raw": body.decode(errors="replace")}

    def ok(self, method: str, path: str, **params) -> dict:
        code, body = self.call(method, path, **params)
        if code != 200:
            raise BenchError(f"{method} {path} {params} -> {code} {body}")
        return body


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------


class ServiceProcess:
    def __init__(self, data_dir: str, port: int, repo: str = REPO) -> None:
        self.data_dir = data_dir
        self.port = port
        self.repo = repo
        self.log_path = os.path.join(data_dir, "twistd.log")
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ)
        # benchmark the working tree (its twisted/plugins dropin and streamrec package)
        self.env["PYTHONPATH"] = repo + (
            os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else ""
        )
        self.seen_children: set[int] = set()

    def check_plugin(self) -> str:
        """twistd must list the streamrec plugin; return where streamrec comes from."""
        out = subprocess.run(
            [sys.executable, "-c", TWISTD, "--help"],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if not any(line.split()[:1] == ["streamrec"] for line in out.stdout.splitlines()):
            raise BenchError(f"twistd --help does not list streamrec:\n{out.stdout}{out.stderr}")
        where = subprocess.run(
            [sys.executable, "-c", "import streamrec; print(streamrec.__file__)"],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return where.stdout.strip()

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "streamrec",
            "--listen",
            f"tcp:{self.port}:interface={HOST}",
            "--data-dir",
            self.data_dir,
        ]

    def start(self, timeout: float = 30.0) -> Api:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.repo,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        api = Api(f"http://{HOST}:{self.port}")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"service exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                if api.call("GET", "/streams/")[0] == 200:
                    return api
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"service not answering after {timeout:g} s\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> dict[int, dict]:
        found = children_of(self.pid)
        self.seen_children.update(found)
        return found

    def stop(self, timeout: float = 20.0) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "not running"
        self.children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            code = self.proc.returncode
            result = f"exited {code} after SIGTERM" + (
                " (twistd re-raises SIGTERM after its shutdown)" if code == -signal.SIGTERM else ""
            )
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            result = f"SIGKILLed after {timeout:g} s"
        # ffmpeg children the service started must not outlive it
        for pid in self.seen_children:
            stat = proc_stat(pid)
            if stat is not None and stat["comm"] == "ffmpeg" and stat["ppid"] in (1, self.pid):
                os.kill(pid, signal.SIGKILL)
                result += f"; killed leftover ffmpeg {pid}"
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


def wait_recording(api: Api, stream_ids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {sid: api.ok("GET", f"/streams/{sid}/status") for sid in stream_ids}
        if all(s["state"] == "recording" and s["recorded"]["segments"] for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"streams not recording after {timeout:g} s: {states}")
        time.sleep(0.25)


def sample_cpu(service: ServiceProcess, seconds: float, stream_of: dict[int, str]) -> None:
    """Sample CPU and RSS of the service and its children; print the table."""
    samples = []  # (monotonic, service stat, {pid: child stat})
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        own = proc_stat(service.pid)
        if own is None:
            raise BenchError("service process vanished during sampling")
        samples.append((now, own, service.children()))
        if now >= end:
            break
        time.sleep(min(SAMPLE_EVERY, max(0.0, end - now)))

    def child_cpu(first: dict, last: dict) -> dict[int, float]:
        """CPU seconds per child between two samples; a child that appears later
        started inside the interval, so it counts from 0."""
        return {
            pid: st["cpu"] - (first[pid]["cpu"] if pid in first else 0.0)
            for pid, st in last.items()
        }

    # one row per SLICE seconds (between the samples nearest to the boundaries);
    # children that exit mid-slice are counted up to their last sample
    print(
        f"  {'t (s)':>9}  {'service CPU%':>12}  {'ffmpeg children CPU% (sum)':>26}  {'children':>8}"
    )
    t0 = samples[0][0]
    cuts = [0]
    boundary = SLICE
    while boundary < seconds - SLICE / 4:
        nearest = min(range(len(samples)), key=lambda i: abs(samples[i][0] - t0 - boundary))
        if nearest > cuts[-1]:
            cuts.append(nearest)
        boundary += SLICE
    if cuts[-1] != len(samples) - 1:
        cuts.append(len(samples) - 1)
    for i, j in zip(cuts, cuts[1:], strict=False):
        a, b = samples[i], samples[j]
        wall = b[0] - a[0]
        seen: dict[int, dict] = {}
        for sample in samples[i : j + 1]:
            seen.update(sample[2])
        kids = sum(child_cpu(a[2], seen).values())
        print(
            f"  {a[0] - t0:4.1f}-{b[0] - t0:4.1f}  {100 * (b[1]['cpu'] - a[1]['cpu']) / wall:12.1f}"
            f"  {100 * kids / wall:26.1f}  {len(b[2]):8d}"
        )

    first, last = samples[0], samples[-1]
    wall = last[0] - first[0]
    seen = {}
    max_rss: dict[int, int] = {}
    for sample in samples:
        seen.update(sample[2])
        for pid, st in sample[2].items():
            max_rss[pid] = max(max_rss.get(pid, 0), st["rss"])
    per_child = child_cpu(first[2], seen)
    service_cpu = 100 * (last[1]["cpu"] - first[1]["cpu"]) / wall
    kids_cpu = 100 * sum(per_child.values()) / wall
    service_max_rss = max(s[1]["rss"] for s in samples)
    print()
    print(f"  whole window: {wall:.1f} s wall, {len(samples)} samples (100 % = one core)")
    print(f"  {'process':<34} {'CPU%':>7} {'RSS end':>11} {'RSS max':>11}")
    print(
        f"  {f'service (twistd pid {service.pid})':<34} {service_cpu:7.1f} "
        f"{mib(last[1]['rss']):>11} {mib(service_max_rss):>11}"
    )
    for pid in sorted(seen):
        st = seen[pid]
        gone = "" if pid in last[2] else " (exited)"
        label = f"{st['comm']} pid {pid} {stream_of.get(pid, '?')}{gone}"
        end_rss = last[2][pid]["rss"] if pid in last[2] else None
        print(
            f"  {label:<34} {100 * per_child[pid] / wall:7.1f} {mib(end_rss):>11} "
            f"{mib(max_rss[pid]):>11}"
        )
    kids_rss = sum(st["rss"] for st in last[2].values())
    print(f"  {'all ffmpeg children':<34} {kids_cpu:7.1f} {mib(kids_rss):>11}")
    if kids_cpu > 0:
        print(f"  service / children CPU: {service_cpu / kids_cpu:.2f}")


def timed_clip(api: Api, sid: int, start: float, stop: float) -> dict:
    params = {"start": f"{start:.3f}", "stop": f"{stop:.3f}", "encoder": "copy"}
    path = f"/streams/{sid}/get_clip"
    began = time.perf_counter()
    deadline = began + CLIP_TIMEOUT
    polls = 0
    first_status = None
    while True:
        job = api.ok("GET", path, **params)
        polls += 1
        first_status = first_status or job["status"]
        if job["status"] in ("done", "failed"):
            elapsed = time.perf_counter() - began
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"clip {params} not done after {CLIP_TIMEOUT:g} s: {job}")
        time.sleep(POLL)
    if job["status"] != "done":
        raise BenchError(f"clip {params} failed: {job}")
    clips = job.get("clips") or []
    return {
        "seconds": elapsed,
        "polls": polls,
        "first_status": first_status,
        "job_id": job.get("job_id"),
        "clips": len(clips),
        "duration": sum(c.get("duration") or 0 for c in clips),
        "bytes": sum(c.get("size") or 0 for c in clips),
    }


def segments_for(db_path: str, sid: int, start: float, stop: float) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "SELECT path, start_time, end_time, run_id FROM segments"
            " WHERE stream_id = ? AND end_time > ? AND start_time < ?"
            " ORDER BY start_time, id",
            (sid, start, stop),
        ).fetchall()
    finally:
        conn.close()


def timed_concat(ffmpeg: str, segments: list[tuple], work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    listing = os.path.join(work, "list.txt")
    out = os.path.join(work, "concat.mp4")
    with open(listing, "w") as handle:
        for path, *_ in segments:
            path = path if os.path.isabs(path) else os.path.join(REPO, path)
            quoted = path.replace("'", "'\\''")
            handle.write(f"file '{quoted}'\n")
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        listing,
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        out,
    ]
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"ffmpeg concat failed: {done.stderr[-2000:]}")
    duration = None
    ffprobe = shutil.which("ffprobe")
    if ffprobe:
        probe = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", out],
            capture_output=True,
            text=True,
            timeout=30,
        )
        try:
            duration = float(probe.stdout.strip())
        except ValueError:
            pass
    result = {
        "seconds": elapsed,
        "bytes": os.path.getsize(out),
        "duration": duration,
        "segments": len(segments),
    }
    os.unlink(out)
    return result


def spread(lo: float, hi: float, length: float, count: int, nudge: float) -> list[float]:
    """``count`` start times for ``length``-s clips inside [lo, hi], spread out,
    each ``nudge`` s past ``lo`` + a step (so they fall mid-GOP)."""
    room = hi - lo - nudge - length
    if room < 0:
        raise BenchError(
            f"recorded range {hi - lo:.1f} s too short for a {length:g} s clip: raise --record"
        )
    step = room / (count - 1) if count > 1 else 0.0
    return [lo + nudge + k * step for k in range(count)]


def summary(label: str, runs: list[dict], extra: str = "") -> None:
    ms = [r["seconds"] * 1000 for r in runs]
    print(f"  {label:<30} {statistics.median(ms):9.1f} {min(ms):9.1f} {max(ms):9.1f}  {extra}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2, help="live sources / streams")
    parser.add_argument("--record", type=float, default=75.0, help="seconds recorded")
    parser.add_argument("--warmup", type=float, default=10.0, help="before the CPU window")
    parser.add_argument("--window", type=float, default=30.0, help="CPU sampling window")
    parser.add_argument("--repeat", type=int, default=3, help="runs per clip length")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if args.streams < 1 or args.repeat < 1:
        parser.error("--streams and --repeat must be at least 1")
    if args.record < args.warmup + args.window:
        parser.error("--record must cover --warmup + --window")

    # SIGTERM/SIGHUP to the benchmark: clean up as for Ctrl-C
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("ffmpeg not found on PATH", file=sys.stderr)
        return 2
    data_dir = tempfile.mkdtemp(prefix="streamrec-service-bench-")
    service = ServiceProcess(data_dir, free_tcp_port())
    sources: list[UdpTsSource] = []
    api: Api | None = None
    stream_ids: list[int] = []
    started_ids: list[int] = []
    status = 0
    try:
        where = service.check_plugin()
        print(f"streamrec: {where}")
        print(
            f"service: {' '.join(service.command()[:2])} <twistd run()> "
            f"{' '.join(service.command()[3:])}"
        )
        print(f"         cwd={REPO} PYTHONPATH={service.env['PYTHONPATH']}")
        print(
            f"ffmpeg: {ffmpeg}; streams: {args.streams}; record: {args.record:g} s; "
            f"CPU window: {args.window:g} s after {args.warmup:g} s; repeat: {args.repeat}"
        )

        for _ in range(args.streams):
            source = UdpTsSource(audio="aac")
            sources.append(source)
            source.start()
        print(f"sources: {', '.join(s.url for s in sources)}")

        api = service.start()
        print(f"service pid {service.pid} on {api.base}, data dir {data_dir}")
        for k, source in enumerate(sources):
            sid = api.ok(
                "POST", "/streams/create", url=source.url, description=f"bench source {k + 1}"
            )["stream_id"]
            stream_ids.append(sid)
        first_start = time.monotonic()
        for sid in stream_ids:
            began = time.monotonic()
            api.ok("POST", f"/streams/{sid}/start")
            started_ids.append(sid)
            print(f"stream {sid} started ({time.monotonic() - began:.1f} s for start to answer)")
        recording_since = time.monotonic()
        wait_recording(api, stream_ids)
        print(
            f"recording {len(stream_ids)} streams "
            f"({time.monotonic() - recording_since:.1f} s to first segments)"
        )

        # which child records which stream: its command line names the source URL
        stream_of = {}
        for pid in service.children():
            line = " ".join(cmdline(pid))
            for sid, source in zip(stream_ids, sources, strict=True):
                if source.url in line:
                    stream_of[pid] = f"stream {sid}"

        time.sleep(max(0.0, recording_since + args.warmup - time.monotonic()))
        print()
        print(f"== CPU while recording: {args.streams} streams, {args.window:g} s window ==")
        sample_cpu(service, args.window, stream_of)

        remaining = first_start + args.record - time.monotonic()
        if remaining > 0:
            print(f"\n(recording {remaining:.0f} s more)")
            time.sleep(remaining)

        sid = stream_ids[0]
        st = api.ok("GET", f"/streams/{sid}/status")
        rec = st["recorded"]
        print(
            f"\nstream {sid} recorded {rec['seconds']:.1f} s in {rec['segments']} segments "
            f"({mib(rec['bytes'])}), {rec['first']:.3f} .. {rec['last']:.3f}; "
            f"state {st['state']}, reconnects {st['reconnects']}"
        )
        lo, hi = rec["first"] + 1.0, rec["last"] - 0.5
        starts10 = spread(lo, hi, 10.0, args.repeat, 0.37)
        starts60 = spread(lo, hi, 60.0, args.repeat, 0.53)

        print(
            f"\n== get_clip (encoder copy) on stream {sid}, still recording; "
            f"first request -> done, polled every {POLL * 1000:.0f} ms =="
        )
        print(
            f"  {'run':<22} {'ms':>8} {'polls':>5} {'first':>10} {'clips':>5} "
            f"{'duration':>9} {'bytes':>10} {'segments':>8}"
        )
        results: dict[str, list[dict]] = {
            "10 s clip": [],
            "60 s clip": [],
            "ffmpeg concat 60 s": [],
        }
        db_path = os.path.join(data_dir, "streamrec.sqlite")
        for k in range(args.repeat):
            for label, start, length in (
                ("10 s clip", starts10[k], 10.0),
                ("60 s clip", starts60[k], 60.0),
            ):
                r = timed_clip(api, sid, start, start + length)
                results[label].append(r)
                print(
                    f"  {label} @+{start - rec['first']:5.2f} s {r['seconds'] * 1000:8.1f} "
                    f"{r['polls']:5d} {r['first_status']:>10} {r['clips']:5d} "
                    f"{r['duration']:9.3f} {r['bytes']:10d}"
                )
            start = starts60[k]
            segments = segments_for(db_path, sid, start, start + 60.0)
            runs = {s[3] for s in segments}
            if len(runs) != 1:
                print(f"  (note: 60 s range spans {len(runs)} ffmpeg runs)")
            r = timed_concat(ffmpeg, segments, os.path.join(data_dir, "bench-concat"))
            results["ffmpeg concat 60 s"].append(r)
            dur = "-" if r["duration"] is None else f"{r['duration']:.3f}"
            print(
                f"  concat  @+{start - rec['first']:5.2f} s {r['seconds'] * 1000:8.1f} "
                f"{'':5} {'':>10} {1:5d} {dur:>9} {r['bytes']:10d} {r['segments']:8d}"
            )

        print(f"\n  {'':<30} {'median':>9} {'min':>9} {'max':>9}  (ms, {args.repeat} runs)")
        summary("get_clip copy, 10 s", results["10 s clip"])
        summary("get_clip copy, 60 s", results["60 s clip"])
        summary(
            "ffmpeg -f concat -c copy, 60 s",
            results["ffmpeg concat 60 s"],
            "(whole segments, not frame-exact)",
        )
        m60 = statistics.median(r["seconds"] for r in results["60 s clip"])
        mcat = statistics.median(r["seconds"] for r in results["ffmpeg concat 60 s"])
        print(f"  60 s: get_clip median / concat median = {m60 / mcat:.2f}")
        print(f"\nservice peak RSS (VmHWM) after the clips: {mib(vm_hwm(service.pid))}")
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted ({interrupt}); cleaning up", file=sys.stderr)
        status = 130
    except Exception as error:  # report, then clean up
        print(f"\nERROR: {type(error).__name__}: {error}", file=sys.stderr)
        if service.proc is not None:
            print(f"service log tail:\n{service.log_tail()}", file=sys.stderr)
        status = 1
    finally:
        # ignore further SIGTERM/SIGINT until cleanup is done; every step is bounded
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\n== cleanup ==")
        for sid in started_ids:
            try:
                code, body = api.call("POST", f"/streams/{sid}/stop")
                print(f"  stop stream {sid}: {code} {body}")
            except Exception as error:
                print(f"  stop stream {sid}: {error}")
        print(f"  service: {service.stop()}")
        if service.proc is not None:
            tail = service.log_tail(2).rstrip().splitlines()
            print("  service log ends: " + "\n                    ".join(tail))
        for source in sources:
            try:
                source.close()  # stop() and remove its log directory
            except Exception as error:
                print(f"  source {source.url}: {error}")
        print(f"  sources stopped: {len(sources)}")
        if args.keep:
            print(f"  data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
