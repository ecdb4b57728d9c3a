#!/usr/bin/env python3
"""Time: clip start error per clock, loss on kill -9 per GOP, and the live edge.

Usage::

    .venv/bin/python bench/time_bench.py [--record 30] [--clips 5] [--kills 3] [--tries 5]

It prints three Markdown tables. Each has a baseline column measured in the same
run. Everything runs on 127.0.0.1 and every wait is bounded.

1. **Clip start error.** streamrec runs as a real ``twistd`` process and records
   three sources:

   - a UDP MPEG-TS source (``UdpTsSource``), whose clock is always arrival;
   - the painted RTSP camera (``PaintedCamera``) with no delay in front of it;
   - the same camera behind a proxy that holds its bytes back 0.5 s.

   Each camera is recorded twice, with ``clock=camera`` and with ``clock=arrival``.
   ``--clips`` 2 s clips start at random instants of the recorded past. The first
   shown frame's painted number gives its capture instant. The error is that
   instant minus the instant asked. The baseline is the arrival floor of the same
   source, measured over the same window: a plain PyAV receiver (``fflags=nobuffer``,
   ``flags=low_delay``, one decoder thread; RTSP over TCP) stamps every decoded frame
   on arrival, and the floor is arrival minus capture. It runs in a process of its
   own. The UDP source reaches the service and this receiver through a fan-out relay,
   which is also a process of its own.
2. **Loss on kill -9.** GOPs of 1 s, 4 s and 10 s. The service's own segmenter
   command (``segmenter_args``, AAC copied, under the same ``setpriv`` launcher, with
   its progress descriptor on /dev/null) runs bare, without the service. Beside it
   runs the same command with the fragment options streamrec used before
   (``PER_GOP_FRAGMENTS``: one fragment per GOP), on the same source through the
   relay. A segmenter that gave up probing is launched again with twice the probe,
   as the service's supervisor does. Both are killed at the same moment, at random
   points of a GOP, ``--kills`` times per GOP. The loss is the kill instant minus
   the capture instant of the last frame that a decoder finds in the files left.
3. **Live edge.** GOPs of 1 s and 4 s, recorded by the service. A clip whose stop
   is 1 s ago is asked at that moment and polled every 50 ms. The bench measures
   the time until it is done, and how far before the stop its last shown frame
   was captured. The baseline is the time until the index reaches the stop
   (``status`` ``recorded.last`` >= stop), which is what such a clip waited for
   before.

Capture instants: for UDP, ``source.frame_time(n)``, which is the instant the source's
ffmpeg emitted frame ``n``, after it was encoded. For the camera it is
``camera.capture_time(n)``, the instant it painted the frame, before encoding. Nothing
is asserted. The machine is shared, so the figures move with its load.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import av  # noqa: E402
from service_bench import Api, BenchError, ServiceProcess, free_tcp_port  # noqa: E402

from streamrec.recorder.command import (  # noqa: E402
    FRAGMENTED_MP4,
    MAX_PROBE_SECONDS,
    PROBE_SECONDS,
    PROGRESS_FD,
    SegmenterSettings,
    needs_longer_probe,
    parent_death_launcher,
    segmenter_args,
)
from tests.support.framecode import read_frame_number  # noqa: E402
from tests.support.livesource import FPS, PaintedCamera, UdpTsSource, free_port  # noqa: E402

HOST = "127.0.0.1"
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
POLL = 0.05  # get_clip and status polling in the live-edge table
CLIP_TIMEOUT = 30.0
#: The segmenter's fragment options before fragments closed every 0.25 s: a
#: fragment per GOP, written when the next key frame comes.
PER_GOP_FRAGMENTS = (
    "movflags=+frag_keyframe+empty_moov+default_base_moof+delay_moov:flush_packets=1"
)
#: Frames received in the first seconds of a receiver are left out of its floor:
#: the probe delivers them in a burst.
RECEIVER_SETTLE = 2.0


def note(text: str) -> None:
    """Progress, on stderr; the tables go to stdout."""
    print(text, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:+.0f}"


def gop_source(gop: int, **kwargs: Any) -> UdpTsSource:
    """A UDP MPEG-TS source with a key frame every ``gop`` frames."""
    kind = type(f"Gop{gop}Source", (UdpTsSource,), {"gop": gop})
    return kind(**kwargs)


# --------------------------------------------------------------------------
# Helper processes: a UDP fan-out relay and an arrival-stamping receiver
# --------------------------------------------------------------------------


def relay_main(in_port: int, out_ports: list[int]) -> int:
    """Copy every datagram sent to ``in_port`` to each of ``out_ports``."""
    parent = os.getppid()
    targets = [(HOST, port) for port in out_ports]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inbound,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outbound,
    ):
        inbound.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        inbound.bind((HOST, in_port))
        inbound.settimeout(1.0)
        print("READY", flush=True)
        while os.getppid() == parent:
            try:
                data = inbound.recv(65536)
            except TimeoutError:
                continue
            for target in targets:
                try:
                    outbound.sendto(data, target)
                except OSError:
                    pass
    return 0


def receive_main(url: str, seconds: float) -> int:
    """Print ``number arrival`` for every decoded frame for ``seconds``."""
    options = {"fflags": "nobuffer", "flags": "low_delay", "threads": "1"}
    if url.startswith("rtsp:"):
        options["rtsp_transport"] = "tcp"
    else:
        options.update(localaddr=HOST, overrun_nonfatal="1")
    end = time.time() + seconds
    lines = []
    with av.open(url, options=options, timeout=(15.0, 5.0)) as container:
        for frame in container.decode(video=0):
            now = time.time()
            lines.append(f"{read_frame_number(frame)} {now:.6f}")
            if now > end:
                break
    print("\n".join(lines), flush=True)
    return 0


class Helpers:
    """Every helper process and source this bench starts, stopped in ``close``."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.sources: list[Any] = []

    def relay(self, out_ports: list[int]) -> int:
        """Start a fan-out relay; return the port a source should send to."""
        in_port = free_port("udp")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--relay", str(in_port), ",".join(map(str, out_ports))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 15.0)
        if not ready or proc.stdout.readline().strip() != b"READY":
            raise BenchError("the UDP relay did not start")
        return in_port

    def receiver(self, url: str, seconds: float, name: str) -> tuple[subprocess.Popen, str]:
        out = os.path.join(self.work, f"receiver-{name}.txt")
        with open(out, "wb") as stdout, open(out + ".log", "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--receive", url, "--seconds", str(seconds)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        self.procs.append(proc)
        return proc, out

    def start(self, source: Any) -> Any:
        self.sources.append(source)
        source.start()
        return source

    def stop_source(self, source: Any) -> None:
        try:
            source.close()
        finally:
            if source in self.sources:
                self.sources.remove(source)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for source in list(self.sources):
            try:
                self.stop_source(source)
            except Exception as error:
                note(f"stopping a source: {error}")


def arrival_floor(out: str, capture: Callable[[int, float], float]) -> list[float]:
    """arrival - capture (s) of every frame a receiver stamped, after it settled."""
    with open(out) as handle:
        stamped = [(int(n), float(t)) for n, t in (line.split() for line in handle if line.strip())]
    if not stamped:
        raise BenchError(f"the receiver of {out} decoded nothing: {open(out + '.log').read()}")
    settled = stamped[0][1] + RECEIVER_SETTLE
    return [t - capture(n, t) for n, t in stamped if t >= settled]


# --------------------------------------------------------------------------
# The service's side
# --------------------------------------------------------------------------


def create_stream(api: Api, url: str, clock: str | None = None) -> int:
    params = {"url": url} if clock is None else {"url": url, "clock": clock}
    sid = api.ok("POST", "/streams/create", **params)["stream_id"]
    api.ok("POST", f"/streams/{sid}/start")
    return sid


def wait_ready(api: Api, clocks: dict[int, str | None], timeout: float = 60.0) -> dict:
    """Until every stream records and those asked for a clock use it."""
    deadline = time.monotonic() + timeout
    while True:
        states = {sid: api.ok("GET", f"/streams/{sid}/status") for sid in clocks}
        if all(
            s["state"] == "recording"
            and s["recorded"]["segments"]
            and (clocks[sid] in (None, s["clock"]))
            for sid, s in states.items()
        ):
            return states
        if time.monotonic() > deadline:
            raise BenchError(f"streams not ready after {timeout:g} s: {states}")
        time.sleep(0.5)


def clip(api: Api, sid: int, start: float, stop: float) -> dict:
    params = {"start": f"{start:.3f}", "stop": f"{stop:.3f}", "encoder": "copy"}
    deadline = time.monotonic() + CLIP_TIMEOUT
    while True:
        job = api.ok("GET", f"/streams/{sid}/get_clip", **params)
        if job["status"] == "done":
            return job
        if job["status"] == "failed" or time.monotonic() > deadline:
            raise BenchError(f"clip {params} of stream {sid}: {job}")
        time.sleep(POLL)


def shown_numbers(path: str) -> list[int]:
    """The painted numbers of the frames a player shows (the edit list's)."""
    with av.open(path) as container:
        return [
            read_frame_number(frame)
            for frame in container.decode(video=0)
            if frame.pts is None or frame.pts >= 0
        ]


def fetch(link: str, work: str) -> list[int]:
    path = os.path.join(work, "clip.mp4")
    with urllib.request.urlopen(link, timeout=30) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out)
    numbers = shown_numbers(path)
    if not numbers:
        raise BenchError(f"{link} shows no frame")
    return numbers


# --------------------------------------------------------------------------
# 1. Clip start error beside the arrival floor
# --------------------------------------------------------------------------


def start_error_rows(
    api: Api, helpers: Helpers, args: argparse.Namespace, rng: random.Random, port: int
) -> list[str]:
    udp_in = helpers.relay([port, (receiver_port := free_port("udp"))])
    udp = helpers.start(UdpTsSource(port=udp_in, audio="aac"))
    cameras = {
        delay: helpers.start(PaintedCamera(delay=delay)) for delay in (0.0, args.camera_delay)
    }
    # (label, source, receiver's URL, capture instant of painted number n near instant t)
    sources: list[tuple[str, Any, str, Callable[[int, float], float]]] = [
        ("UDP MPEG-TS", udp, f"udp://{HOST}:{receiver_port}", lambda n, t: udp.frame_time(n)),
    ]
    # (label, clock asked, stream id, capture)
    streams: list[tuple[str, str | None, int, Callable[[int, float], float]]] = [
        ("UDP MPEG-TS", None, create_stream(api, f"udp://{HOST}:{port}"), sources[0][3])
    ]
    for delay, camera in cameras.items():
        label = f"RTSP camera, {delay:g} s delay"
        capture = camera.capture_time
        sources.append((label, camera, camera.url, lambda n, t, c=capture: c(n, near=t)))
        for clock in ("camera", "arrival"):
            streams.append((label, clock, create_stream(api, camera.url, clock), sources[-1][3]))
    note(f"table 1: {len(streams)} streams; waiting until they record on their clocks")
    wait_ready(api, {sid: clock for _, clock, sid, _ in streams})

    receivers = [
        (label, *helpers.receiver(url, args.record, f"r{i}"), capture)
        for i, (label, _, url, capture) in enumerate(sources)
    ]
    window = time.time()
    note(f"table 1: receivers and streams side by side for {args.record:g} s")
    time.sleep(args.record + 1.0)
    floors = {}
    for label, proc, out, capture in receivers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        floors[label] = arrival_floor(out, capture)

    lo, hi = window + 1.5, window + args.record - 3.0
    asked = sorted(round(rng.uniform(lo, hi), 3) for _ in range(args.clips))
    rows = []
    for label, clock, sid, capture in streams:
        status = api.ok("GET", f"/streams/{sid}/status")
        if status["recorded"]["first"] > lo:
            raise BenchError(f"stream {sid} recorded only from {status['recorded']['first']}")
        errors, claims, bounds = [], [], []
        for instant in asked:
            [shown] = clip(api, sid, instant, instant + 2.0)["clips"]
            first = capture(fetch(shown["link"], helpers.work)[0], instant)
            errors.append(first - instant)
            if shown["first_frame"] is not None:
                claims.append(shown["first_frame"] - first)
            bounds.append(shown["time_error_ms"])
        floor = floors[label]
        reported = sorted({b for b in bounds if b is not None}) or ["–"]
        rows.append(
            f"| {label} | {clock or 'auto'} → {status['clock']} | {ms(statistics.median(errors))}"
            f" | {max(abs(e) for e in errors) * 1000:.0f}"
            f" | {ms(statistics.median(claims)) if claims else '–'}"
            f" | {'–'.join(str(b) for b in dict.fromkeys((reported[0], reported[-1])))}"
            f" | {statistics.median(floor) * 1000:.0f} | {min(floor) * 1000:.0f} | {len(floor)} |"
        )
        note(f"  {label}, clock {clock or 'auto'}: errors {[ms(e) for e in errors]} ms")
    for _, _, sid, _ in streams:  # table 3 runs on its own streams, with less load
        api.ok("POST", f"/streams/{sid}/stop")
    for source in (udp, *cameras.values()):
        helpers.stop_source(source)
    return rows


# --------------------------------------------------------------------------
# 2. Loss on kill -9, beside a fragment per GOP
# --------------------------------------------------------------------------


def progress_to_devnull() -> None:
    """In the child: the progress descriptor the command writes to, read by nobody."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, PROGRESS_FD)
    os.close(devnull)


class BareSegmenter:
    """The service's segmenter command without the service, in a directory of its own,
    with ``fragments`` as its segment format options. When ffmpeg gave up because it
    had not probed long enough, it is launched again with twice the probe (up to
    ``MAX_PROBE_SECONDS``), as the service's supervisor does."""

    def __init__(self, url: str, directory: str, fragments: str) -> None:
        self.url = url
        self.base = directory
        self.fragments = fragments
        self.probe = PROBE_SECONDS
        self.launches = 0
        self.proc: subprocess.Popen | None = None
        self.directory = ""

    def args(self) -> list[str]:
        settings = SegmenterSettings(probe_seconds=self.probe)
        args = parent_death_launcher() + segmenter_args(FFMPEG, self.url, settings, True)
        args[args.index(FRAGMENTED_MP4)] = self.fragments
        return args

    def launch(self) -> None:
        self.launches += 1
        self.directory = os.path.join(self.base, f"launch{self.launches}")
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "ffmpeg.log"), "wb") as log:
            self.proc = subprocess.Popen(
                self.args(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=progress_to_devnull,
                close_fds=False,  # keep the descriptor made in the child; ours are not inheritable
            )

    def recording(self) -> bool:
        """Whether its first segment holds a fragment; relaunch after a short probe."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            with open(os.path.join(self.directory, "ffmpeg.log"), errors="replace") as log:
                lines = log.read().splitlines()
            if needs_longer_probe(lines) and self.probe < MAX_PROBE_SECONDS:
                self.probe = min(MAX_PROBE_SECONDS, 2 * self.probe)
                self.launch()
                return False
            raise BenchError(f"a bare segmenter exited: {lines[-5:]}")
        first = os.path.join(self.directory, "seg000000.mp4")
        return os.path.exists(first) and os.path.getsize(first) > 0

    def kill(self) -> float:
        assert self.proc is not None
        at = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        return at

    def last_frame(self) -> int:
        """The painted number of the last frame a decoder finds in the files left."""
        assert self.proc is not None
        self.proc.wait(10)
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(".mp4"))
        for name in reversed(names):
            numbers = []
            try:
                with av.open(os.path.join(self.directory, name)) as container:
                    for frame in container.decode(video=0):
                        numbers.append(read_frame_number(frame))
            except (av.FFmpegError, EOFError):
                pass  # a cut fragment at the end: what came before stands
            if numbers:
                return numbers[-1]
        raise BenchError(f"nothing decodable left in {self.directory}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def loss_row(gop: int, helpers: Helpers, args: argparse.Namespace, rng: random.Random) -> str:
    seconds = gop / FPS
    ports = [free_port("udp") for _ in range(2 * args.kills)]
    source = helpers.start(gop_source(gop, port=helpers.relay(ports), audio="aac"))
    pairs = []
    for i in range(args.kills):
        work = os.path.join(helpers.work, f"gop{gop}-{i}")
        ours, before = (
            BareSegmenter(f"udp://{HOST}:{ports[2 * i + k]}", os.path.join(work, name), fragments)
            for k, (name, fragments) in enumerate(
                (("streamrec", FRAGMENTED_MP4), ("per-gop", PER_GOP_FRAGMENTS))
            )
        )
        pairs.append((ours, before))
    everyone = [s for pair in pairs for s in pair]
    try:
        for segmenter in everyone:
            segmenter.launch()
        note(f"table 2: GOP {seconds:g} s, {len(everyone)} bare segmenters, waiting for data")
        deadline = time.monotonic() + 4 * MAX_PROBE_SECONDS + 3 * seconds
        while not all([s.recording() for s in everyone]):
            if time.monotonic() > deadline:
                raise BenchError(f"GOP {seconds:g} s: segmenters not recording in time")
            time.sleep(0.1)
        # A key frame just ahead, then a kill per pair at a random point of that GOP.
        frame0 = source.frame_time(0)
        key = gop * math.ceil((time.time() + 0.2 - frame0) / seconds)
        phases = [rng.uniform(i / args.kills, (i + 1) / args.kills) for i in range(args.kills)]
        kills = []
        for i, ((ours, before), phase) in enumerate(zip(pairs, phases, strict=True)):
            time.sleep(max(0.0, source.frame_time(key) + phase * seconds - time.time()))
            first, second = (ours, before) if i % 2 == 0 else (before, ours)
            at = {id(first): first.kill(), id(second): second.kill()}
            kills.append((phase, at[id(ours)], at[id(before)]))
        losses = []
        for (ours, before), (phase, ours_at, before_at) in zip(pairs, kills, strict=True):
            loss = (
                ours_at - source.frame_time(ours.last_frame()),
                before_at - source.frame_time(before.last_frame()),
            )
            losses.append(loss)
            note(
                f"  GOP {seconds:g} s, kill at {phase:.2f} of the GOP (probes"
                f" {ours.probe:g}/{before.probe:g} s): streamrec lost {loss[0]:.3f} s,"
                f" a fragment per GOP {loss[1]:.3f} s"
            )
    finally:
        for segmenter in everyone:
            segmenter.stop()
        helpers.stop_source(source)
    ours_loss = [a for a, _ in losses]
    before_loss = [b for _, b in losses]
    return (
        f"| {seconds:g} s | {statistics.median(ours_loss):.2f} s | {max(ours_loss):.2f} s"
        f" | {statistics.median(before_loss):.2f} s | {max(before_loss):.2f} s | {len(losses)} |"
    )


# --------------------------------------------------------------------------
# 3. The live edge, beside the index reaching the stop
# --------------------------------------------------------------------------


def live_edge_try(api: Api, sid: int, source: UdpTsSource, work: str) -> tuple[float, ...]:
    stop = round(time.time() - 1.0, 3)
    start = stop - 5.0
    params = {"start": f"{start:.3f}", "stop": f"{stop:.3f}", "encoder": "copy"}
    asked = time.time()
    done = indexed = None
    job: dict = {}
    deadline = asked + 25.0
    while done is None or indexed is None:
        if done is None:
            job = api.ok("GET", f"/streams/{sid}/get_clip", **params)
            if job["status"] == "done":
                done = time.time() - asked
            elif job["status"] == "failed":
                raise BenchError(f"live-edge clip failed: {job}")
        if indexed is None:
            last = api.ok("GET", f"/streams/{sid}/status")["recorded"]["last"]
            if last is not None and last >= stop:
                indexed = time.time() - asked
        if time.time() > deadline:
            raise BenchError(f"live edge of stream {sid}: clip {done}, index {indexed} after 25 s")
        time.sleep(POLL)
    [shown] = job["clips"]
    last_shown = source.frame_time(fetch(shown["link"], work)[-1])
    return done, stop - last_shown, indexed


def live_edge_rows(
    api: Api, streams: dict[int, tuple[int, UdpTsSource]], args: argparse.Namespace, work: str
) -> list[str]:
    rng = random.Random(args.seed + 3)
    results: dict[int, list[tuple[float, ...]]] = {gop: [] for gop in streams}
    note(f"table 3: {args.tries} live-edge clips per GOP")
    for _ in range(args.tries):
        for gop, (sid, source) in streams.items():
            time.sleep(rng.uniform(0.2, 1.5))  # a new phase against the segments
            result = live_edge_try(api, sid, source, work)
            results[gop].append(result)
            note(
                f"  GOP {gop / FPS:g} s: done {result[0]:.2f} s, last frame {result[1]:.3f} s"
                f" before the stop, index at the stop {result[2]:.2f} s"
            )
    rows = []
    for gop, runs in results.items():
        done, before, indexed = zip(*runs, strict=True)
        rows.append(
            f"| {gop / FPS:g} s | {statistics.median(done):.2f} s | {max(done):.2f} s"
            f" | {statistics.median(before):.2f} s | {max(before):.2f} s"
            f" | {statistics.median(indexed):.2f} s | {max(indexed):.2f} s | {len(runs)} |"
        )
    return rows


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="streamrec-time-bench-")
    helpers = Helpers(work)
    service = ServiceProcess(os.path.join(work, "data"), free_tcp_port())
    os.makedirs(service.data_dir)
    sections: dict[int, list[str]] = {}
    status = 0
    try:
        version = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True)
        sections[0] = [
            f"{version.stdout.split(' Copyright')[0]}; {os.cpu_count()} CPUs, load"
            f" {os.getloadavg()[0]:.2f} at the start; seed {args.seed}"
        ]
        api = service.start()
        # The live-edge sources start first, so their probes are over by table 3.
        live = {}
        for gop in (25, 100):
            port = free_port("udp")
            source = helpers.start(gop_source(gop, port=port, audio="aac"))
            live[gop] = (create_stream(api, f"udp://{HOST}:{port}"), source)
        sections[1] = [
            "## Clip start error, beside the arrival floor\n",
            f"{args.clips} clips of 2 s per stream, at random instants of the same"
            f" {args.record:g} s; error = capture of the first shown frame − instant asked.",
            "`first_frame` − capture: the service's claim for that frame minus its true capture.\n",
            "| source | clock asked → used | error median (ms) | worst abs error (ms)"
            " | `first_frame` − capture (ms) | `time_error_ms` | arrival floor median (ms)"
            " | floor min (ms) | frames |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *start_error_rows(api, helpers, args, rng, free_port("udp")),
        ]
        wait_ready(api, {sid: None for sid, _ in live.values()})
        sections[3] = [
            "## Live edge: a clip whose stop is 1 s ago, asked at that moment\n",
            "| GOP | done after, median | max | last frame before the stop, median | max"
            " | baseline: index reaches the stop, median | max | tries |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *live_edge_rows(api, live, args, work),
        ]
        note(f"service: {service.stop()}")
        for _, source in live.values():
            helpers.stop_source(source)

        rows = [loss_row(gop, helpers, args, rng) for gop in (25, 100, 250)]
        sections[2] = [
            "## Loss on kill -9 of the segmenter\n",
            "Bare segmenters (the service's command without the service), both killed at the"
            " same moment; loss = kill − capture of the last frame left on disk.\n",
            "| GOP | streamrec (fragments ≤ 0.25 s), median | max"
            " | baseline: a fragment per GOP, median | max | kills |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
        ]
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        status = 130
    except Exception as error:
        note(f"ERROR: {type(error).__name__}: {error}")
        if service.proc is not None:
            note(f"service log tail:\n{service.log_tail()}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note(f"service: {service.stop()}")
        helpers.close()
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print("\n\n".join("\n".join(sections[k]) for k in sorted(sections)), flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=float, default=30.0, help="seconds side by side")
    parser.add_argument("--clips", type=int, default=5, help="clips per stream (table 1)")
    parser.add_argument("--camera-delay", type=float, default=0.5, help="the proxy's delay")
    parser.add_argument("--kills", type=int, default=3, help="kills per GOP (table 2)")
    parser.add_argument("--tries", type=int, default=5, help="live-edge clips per GOP")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--relay", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--receive", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        return relay_main(int(args.relay[0]), [int(p) for p in args.relay[1].split(",")])
    if args.receive:
        return receive_main(args.receive, args.seconds)
    if args.record < 8 or min(args.clips, args.kills, args.tries) < 1:
        parser.error("--record must be at least 8 s; --clips, --kills, --tries at least 1")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
