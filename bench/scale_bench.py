#!/usr/bin/env python3
"""Many cameras on one box: streamrec against the same number of bare segmenters.

Usage::

    python bench/scale_bench.py [--streams 10,50,100,200] [--warmup 20] [--window 30]

For each N in ``--streams``, in one run:

1. One cheap sender, ``ffmpeg -re -stream_loop -1 -i loop.ts -map 0 -c copy
   -f tee "[f=mpegts:onfail=ignore]udp://127.0.0.1:P1?pkt_size=1316|..."``,
   feeds N live UDP MPEG-TS sources (720p H.264 2 Mb/s, GOP 2 s, + AAC 64k;
   the loop is encoded once and cached under TMP).
2. **Baseline:** N bare segmenters, the service's own ffmpeg command
   (``streamrec.recorder.command.segmenter_args``, AAC copied as the service
   does for these sources), each in a directory of its own, without the
   service. After ``--warmup`` s, ``--window`` s of CPU (utime+stime from
   ``/proc``) and memory (RSS and PSS) are sampled.
3. **streamrec:** ``twistd streamrec`` as a real process on an empty data
   dir; N streams are created and started over the API (8 at a time, each
   start timed);
   after ``--warmup`` s the same sampling, for the service and for its
   ffmpeg children apart, with nobody asking; then, for up to 20 s more,
   one client times ``status`` of every stream in turn (every 20 ms) and
   ``/streams/`` every second (p50/p99), and the service's CPU is sampled
   again under that load. After both windows, one
   ``get_clip`` per stream over the whole window must come back as exactly
   one clip covering it: its coverage is the clip's duration over the
   window's.

It prints one table per N and a summary. Nothing is asserted: the numbers
are for reading (these machines are shared). Standard library only; ffmpeg
from PATH. Everything listens and connects on 127.0.0.1; every wait is
bounded; every process is stopped at the end, even after an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from service_bench import (  # noqa: E402
    Api,
    BenchError,
    ServiceProcess,
    children_of,
    free_tcp_port,
    proc_stat,
)

from streamrec.recorder.command import (  # noqa: E402
    MAX_PROBE_SECONDS,
    PROGRESS_FD,
    SegmenterSettings,
    segmenter_args,
)

HOST = "127.0.0.1"
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
LOOP_SECONDS = 20


# --------------------------------------------------------------------------
# Processes and their cost
# --------------------------------------------------------------------------


def pss(pid: int) -> int | None:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sample:
    """CPU seconds and memory of a set of processes, taken twice."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.begin = self._cpu()
        self.t0 = time.monotonic()

    def _cpu(self) -> dict[int, float]:
        found = {}
        for pid in self.pids:
            stat = proc_stat(pid)
            if stat is not None:
                found[pid] = stat["cpu"]
        return found

    def end(self) -> dict[str, float]:
        cpu = self._cpu()
        seconds = time.monotonic() - self.t0
        used = sum(cpu[pid] - self.begin[pid] for pid in cpu if pid in self.begin)
        rss = [s["rss"] for s in (proc_stat(pid) for pid in self.pids) if s is not None]
        shares = [p for p in (pss(pid) for pid in self.pids) if p is not None]
        alive = len(cpu)
        return {
            "cpu": 100.0 * used / seconds,  # percent of one core
            "alive": alive,
            "rss": sum(rss) / max(1, len(rss)),
            "pss": sum(shares) / max(1, len(shares)),
            "rss_total": sum(rss),
        }


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------
# The sources
# --------------------------------------------------------------------------


def loop_file(work: str) -> str:
    """720p H.264 2 Mb/s (GOP 2 s) + AAC 64k, MPEG-TS, encoded once and cached."""
    cache = os.path.join(tempfile.gettempdir(), "streamrec-scale-bench")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"loop-720p-{LOOP_SECONDS}s.ts")
    if not os.path.exists(path):
        partial = path + ".partial.ts"
        subprocess.run(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
            + ["-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=25:duration={LOOP_SECONDS}"]
            + ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={LOOP_SECONDS}"]
            + ["-c:v", "libx264", "-preset", "veryfast", "-b:v", "2M", "-maxrate", "2M"]
            + ["-bufsize", "4M", "-g", "50", "-keyint_min", "50", "-bf", "0"]
            + ["-c:a", "aac", "-b:a", "64k", "-f", "mpegts", partial],
            check=True,
            timeout=600,
        )
        os.replace(partial, path)
    return path


class Sender:
    """One ffmpeg that feeds every port with the loop, copying (no encoding)."""

    def __init__(self, loop: str, ports: list[int], log_path: str) -> None:
        outputs = "|".join(f"[f=mpegts:onfail=ignore]udp://{HOST}:{p}?pkt_size=1316" for p in ports)
        cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re"]
        cmd += ["-stream_loop", "-1", "-i", loop, "-map", "0", "-c", "copy", "-f", "tee", outputs]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.log.close()


def free_udp_ports(count: int, first: int = 20000) -> list[int]:
    """Ports for the receivers, below the kernel's ephemeral range: the sender's
    own sockets take ephemeral ports and must not land on a receiver's."""
    import socket

    ports: list[int] = []
    port = first
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((HOST, port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


def progress_to_devnull() -> None:
    """In the child: the progress descriptor the command writes to, read by nobody."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != PROGRESS_FD:
        os.dup2(devnull, PROGRESS_FD)
        os.close(devnull)


def bare_segmenters(ports: list[int], work: str, warmup: float, window: float) -> dict:
    """The service's own segmenter command, run N times without the service (with
    the longest probe, as the service ends up using for a source that needs it)."""
    settings = SegmenterSettings(probe_seconds=MAX_PROBE_SECONDS)
    procs = []
    try:
        for i, port in enumerate(ports):
            directory = os.path.join(work, f"bare-{i}")
            os.makedirs(directory)
            args = segmenter_args(FFMPEG, f"udp://{HOST}:{port}", settings, copy_audio=True)
            log = open(os.path.join(directory, "ffmpeg.log"), "wb")
            procs.append(
                subprocess.Popen(
                    args,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    preexec_fn=progress_to_devnull,
                    close_fds=False,  # else the descriptor set up above is closed again
                )
            )
            log.close()
        time.sleep(warmup)
        sample = Sample([p.pid for p in procs])
        time.sleep(window)
        result = sample.end()
        dead = [i for i, proc in enumerate(procs) if proc.poll() is not None]
        result["alive"] = len(procs) - len(dead)
        if dead:
            with open(os.path.join(work, f"bare-{dead[0]}", "ffmpeg.log"), errors="replace") as log:
                print(f"  {len(dead)} bare segmenters died; one said: {log.read()[-300:]}")
        return result
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


class FloorServer:
    """The latency floor of the box under the same load: a bare ``twistd web``
    serving a file as large as a status answer, asked by the same client in
    turn with the service. What it takes is the client's, the kernel's and
    Twisted's share; the rest of the service's time is its own."""

    def __init__(self, work: str, body: bytes) -> None:
        self.root = os.path.join(work, "floor")
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, "status.json"), "wb") as handle:
            handle.write(body)
        self.port = free_tcp_port()
        self.log = open(os.path.join(work, "floor.log"), "ab")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "web", "--path", self.root]
            + ["--listen", f"tcp:{self.port}:interface={HOST}"],
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://{HOST}:{self.port}/status.json"

    def wait(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    answer.read()
                    return
            except OSError:
                time.sleep(0.2)
        raise BenchError("the floor server did not answer")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.log.close()


class Prober(threading.Thread):
    """One client: status of every stream in turn, and the list once a second;
    the floor server after each status."""

    def __init__(self, api: Api, stream_ids: list[int], floor: FloorServer) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.stream_ids = stream_ids
        self.floor = floor
        self.status_ms: list[float] = []
        self.list_ms: list[float] = []
        self.floor_ms: list[float] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        next_list = time.monotonic()
        i = 0
        while not self.halt.is_set():
            now = time.monotonic()
            if now >= next_list:
                self._time(self.list_ms, "/streams/")
                next_list = now + 1.0
            self._time(
                self.status_ms, f"/streams/{self.stream_ids[i % len(self.stream_ids)]}/status"
            )
            self._time_floor()
            i += 1
            self.halt.wait(0.02)

    def _time_floor(self) -> None:
        import urllib.request

        t = time.monotonic()
        try:
            with urllib.request.urlopen(self.floor.url, timeout=10) as answer:
                answer.read()
        except OSError:
            self.errors += 1
        self.floor_ms.append(1000 * (time.monotonic() - t))

    def _time(self, into: list[float], path: str) -> None:
        t = time.monotonic()
        try:
            code, _ = self.api.call("GET", path)
        except OSError:
            code = 0
        if code != 200:
            self.errors += 1
        into.append(1000 * (time.monotonic() - t))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def coverage(api: Api, stream_id: int, start: float, stop: float, timeout: float = 120) -> float:
    """How much of [start, stop] one get_clip covers; 0 unless it is exactly one clip."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.ok(
            "GET", f"/streams/{stream_id}/get_clip", start=f"{start:.3f}", stop=f"{stop:.3f}"
        )
        if job["status"] == "done":
            clips = job["clips"]
            if len(clips) != 1:
                return 0.0
            return min(1.0, clips[0]["duration"] / (stop - start))
        if job["status"] == "failed":
            return 0.0
        time.sleep(0.2)
    return 0.0


def start_all(api: Api, ids: list[int], parallel: int = 8) -> list[float]:
    """Start every stream, ``parallel`` requests at a time; each answer's time."""
    from concurrent.futures import ThreadPoolExecutor

    def start(sid: int) -> float:
        t = time.monotonic()
        code, body = api.call("POST", f"/streams/{sid}/start")
        if code != 200:
            print(f"  start of stream {sid}: {code} {body}", flush=True)
            return float("nan")
        return time.monotonic() - t

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(start, ids))


def profile(pid: int, seconds: float, into: str) -> subprocess.Popen | None:
    """py-spy, sampling the service (all threads, raw stacks) for ``seconds``."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print("  --profile: py-spy is not installed", flush=True)
        return None
    return subprocess.Popen(
        [spy, "record", "--nonblocking", "--threads", "--format", "raw", "--rate", "200"]
        + ["--duration", str(int(seconds)), "--pid", str(pid), "--output", into],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def with_service(
    ports: list[int],
    work: str,
    warmup: float,
    window: float,
    repo: str | None = None,
    profile_to: str | None = None,
) -> dict:
    os.makedirs(work)
    service = ServiceProcess(work, free_tcp_port(), repo or REPO)
    api = service.start()
    prober = floor = spy = None
    try:
        ids = [
            api.ok("POST", "/streams/create", url=f"udp://{HOST}:{port}")["stream_id"]
            for port in ports
        ]
        starts = start_all(api, ids)
        time.sleep(warmup)
        children = [
            pid for pid, stat in children_of(service.pid).items() if stat["comm"] == "ffmpeg"
        ]
        # CPU while recording, with nobody asking; then the API under a client.
        mine, theirs = Sample([service.pid]), Sample(children)
        begin = time.time()
        time.sleep(window)
        result = {"service": mine.end(), "ffmpeg": theirs.end()}
        floor = FloorServer(work, json.dumps(api.ok("GET", f"/streams/{ids[0]}/status")).encode())
        floor.wait()
        prober = Prober(api, ids, floor)
        busy_seconds = min(window, 20.0)
        if profile_to:
            spy = profile(service.pid, busy_seconds, profile_to)
        prober.start()
        busy = Sample([service.pid])
        time.sleep(busy_seconds)
        result["service_busy"] = busy.end()
        prober.halt.set()
        prober.join(10)
        if spy is not None:
            spy.wait(30)
        end = time.time()
        time.sleep(3)  # the last segment of the window closes
        covered = [coverage(api, sid, begin, end) for sid in ids]
        result.update(
            starts=starts,
            status_p50=percentile(prober.status_ms, 0.5),
            status_p99=percentile(prober.status_ms, 0.99),
            list_p50=percentile(prober.list_ms, 0.5),
            list_p99=percentile(prober.list_ms, 0.99),
            floor_p50=percentile(prober.floor_ms, 0.5),
            floor_p99=percentile(prober.floor_ms, 0.99),
            api_errors=prober.errors,
            covered=covered,
            window=end - begin,
        )
        return result
    finally:
        if prober is not None:
            prober.halt.set()
        if floor is not None:
            floor.stop()
        print(f"  service: {service.stop(timeout=60)}", flush=True)
        relaunches = subprocess.run(
            ["grep", "-c", "relaunched\\|probing", service.log_path], capture_output=True, text=True
        ).stdout.strip()
        print(f"  relaunches and longer probes in the service log: {relaunches}", flush=True)
        shutil.rmtree(work, ignore_errors=True)


def report(n: int, bare: dict, svc: dict) -> list[str]:
    per_bare = bare["cpu"] / n
    per_ffmpeg = svc["ffmpeg"]["cpu"] / n
    fully = sum(1 for c in svc["covered"] if c >= 0.999)
    started = [t for t in svc["starts"] if t == t] or [float("nan")]
    lines = [
        f"## {n} streams",
        "",
        "| | bare segmenters | streamrec |",
        "|---|---|---|",
        f"| ffmpeg CPU (all) | {bare['cpu']:.1f} % | {svc['ffmpeg']['cpu']:.1f} % |",
        f"| ffmpeg CPU per stream | {per_bare:.2f} % | {per_ffmpeg:.2f} % "
        f"({per_ffmpeg / per_bare:.2f}x) |",
        f"| service CPU | - | {svc['service']['cpu']:.1f} % "
        f"({svc['service']['cpu'] / max(svc['ffmpeg']['cpu'], 1e-9):.1%} of its ffmpegs) |",
        f"| ffmpeg RSS / PSS each | {bare['rss'] / 2**20:.1f} / {bare['pss'] / 2**20:.1f} MiB "
        f"| {svc['ffmpeg']['rss'] / 2**20:.1f} / {svc['ffmpeg']['pss'] / 2**20:.1f} MiB |",
        f"| service CPU answering the API | - | {svc['service_busy']['cpu']:.1f} % |",
        f"| service RSS | - | {svc['service']['rss'] / 2**20:.1f} MiB |",
        f"| ffmpegs alive | {bare['alive']} | {svc['ffmpeg']['alive']} |",
        f"| start p50 / p90 / max | - | {statistics.median(started):.2f} / "
        f"{percentile(started, 0.9):.2f} / {max(started):.2f} s"
        f"{f' ({n - len(started)} failed)' if len(started) < n else ''} |",
        f"| status p50 / p99 | - | {svc['status_p50']:.1f} / {svc['status_p99']:.1f} ms |",
        f"| /streams/ p50 / p99 | - | {svc['list_p50']:.1f} / {svc['list_p99']:.1f} ms |",
        f"| same-size file from a bare twistd web, p50 / p99 | {svc['floor_p50']:.1f} / "
        f"{svc['floor_p99']:.1f} ms | (asked in turn with status) |",
        f"| coverage of a {svc['window']:.0f} s window | - | {fully}/{n} streams >= 99.9 %, "
        f"min {min(svc['covered']):.2%} |",
        f"| API errors | - | {svc['api_errors']} |",
        "",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="10,50,100,200")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument(
        "--service-repo",
        help="run the service from this checkout (e.g. an older release) instead of this tree",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the service with py-spy while the API is asked (raw stacks, DIR/N.txt)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    work = tempfile.mkdtemp(prefix="streamrec-scale-")
    loop = loop_file(work)
    print(f"# scale bench: {FFMPEG}, loop {loop}, {os.cpu_count()} cores", flush=True)
    out: list[str] = []
    try:
        for n in counts:
            ports = free_udp_ports(n)
            sender = Sender(loop, ports, os.path.join(work, f"sender-{n}.log"))
            try:
                time.sleep(2)
                if sender.proc.poll() is not None:
                    raise BenchError(f"the sender exited with {sender.proc.returncode}")
                sent = Sample([sender.proc.pid])
                print(f"{n} streams: bare segmenters...", flush=True)
                bare = bare_segmenters(
                    ports, os.path.join(work, f"bare-{n}"), args.warmup, args.window
                )
                print(f"{n} streams: streamrec...", flush=True)
                svc = with_service(
                    ports,
                    os.path.join(work, f"svc-{n}"),
                    args.warmup,
                    args.window,
                    args.service_repo,
                    os.path.join(args.profile, f"{n}.txt") if args.profile else None,
                )
                sender_cpu = sent.end()["cpu"]
            finally:
                sender.stop()
            lines = report(n, bare, svc) + [f"(the sender: {sender_cpu:.1f} % of a core)", ""]
            print("\n".join(lines), flush=True)
            out += lines
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
