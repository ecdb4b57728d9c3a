"""Real live video sources on 127.0.0.1 for streamrec's tests.

All sources produce 320x240, 25 fps, H.264 (or H.265) with a GOP of 25
frames (1 s, no B-frames), at real time (ffmpeg ``-re``), with the frame
number painted into the picture (see ``tests/support/framecode.py``).

Sources
-------

``UdpTsSource(port=None, audio='aac')``
    ffmpeg lavfi -> MPEG-TS over ``udp://127.0.0.1:PORT?pkt_size=1316``.
    Record ``source.url`` (``udp://127.0.0.1:PORT``).

``RtspServer(port=None, h265=None)``
    ffmpeg "feed" (RTP over local UDP, one port per mount) + the GStreamer
    RTSP server ``tests/support/rtsp_server.py`` run by ``/usr/bin/python3``.
    ``source.mounts`` lists the mounts that exist, ``source.url(mount)``
    gives ``rtsp://127.0.0.1:PORT/<mount>``.

Timing
------

Every source records ``t0``: the wall-clock time (``time.time()``) at which
frame number 0 was (or would have been) emitted, so frame ``n`` left the
source at about ``t0 + n / FPS``.  It is estimated from ffmpeg's
``-progress`` reports (the minimum over reports of ``report_time -
(frames - 1) / FPS``; typically within a few ms of the truth for UDP; the
RTSP server adds its own small latency on top).

Outages
-------

``stop()`` followed by ``start()`` on the same object restarts the source on
the same port(s).  By default the numbering continues with the wall clock
(``continue_numbering=True``): the first frame after the restart has number
``round((now - t0) * FPS)``, so ``t0`` stays valid and the gap in the frame
numbers equals the outage.  ``RtspServer`` also has ``stop_feed()`` /
``start_feed()``: the RTSP server (and the clients' TCP connections) stay up
but no media flows, like a camera whose encoder hangs.

Use from twisted.trial::

    src = UdpTsSource.running(self)      # started, stop() added as cleanup
    ...
    yield src.outage(3.0)                 # Deferred: stop, wait 3 s, start

Blocking methods (``start``, ``stop``) block the reactor for up to a few
seconds; the ``*_deferred`` variants run them in a thread.

This module uses only the standard library (it is also imported by
``rtsp_server.py`` under the system python).
"""

import os
import shutil
import subprocess
import tempfile
import threading
import time

from .encoding import (
    ALL_MOUNTS,
    FFMPEG,
    FFPROBE,
    FPS,
    GOP,
    HEIGHT,
    HOST,
    RTSP_SERVER_SCRIPT,
    SYSTEM_PYTHON,
    WIDTH,
    FfmpegRun,
    SourceError,
    audio_input_args,
    clean_env,
    ffmpeg_has_encoder,
    free_port,
    h264_args,
    h265_args,
    kill,
    spawn,
    video_input_args,
)

__all__ = [
    "FFMPEG",
    "FFPROBE",
    "FPS",
    "GOP",
    "RtspServer",
    "SourceError",
    "UdpTsSource",
    "ffmpeg_has_encoder",
    "free_port",
]

# ------------------------------------------------------------- base class


class _Managed:
    """Start, stop and clean-up plumbing for sources and cameras: subclasses
    have ``start``, ``stop``, ``log_dir`` and ``_own_log_dir``."""

    # ---- context manager / trial integration
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @classmethod
    def running(cls, testcase, *args, **kwargs):
        """Create, start, and register ``close`` as a cleanup of
        ``testcase`` (a trial/unittest TestCase)."""
        src = cls(*args, **kwargs)
        testcase.addCleanup(src.close)
        src.start()
        return src

    def close(self):
        """stop() and remove the log directory (if we created it)."""
        self.stop()
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


class _LiveSource(_Managed):
    """Common start/stop/t0 bookkeeping."""

    fps = FPS
    width = WIDTH
    height = HEIGHT
    gop = GOP
    start_timeout = 10.0

    def __init__(self, continue_numbering=True, log_dir=None):
        self.continue_numbering = continue_numbering
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="livesource-")
        self.t0 = None  # wall time of frame number 0
        self.first_frame = 0  # number of the first frame of this run
        self.starts = 0  # how many times start() was called
        self.outages = []  # [(stop_time, start_time), ...]
        self._feed = None
        self._stopped_at = None

    # subclasses: _feed_args(offset) -> ffmpeg args (after -progress)
    def _start_feed(self):
        if self._feed is not None and self._feed.running():
            return
        if self.t0 is not None and self.continue_numbering:
            offset = max(0, int(round((time.time() - self.t0) * self.fps)))
            # the new ffmpeg needs some time to come up: aim a bit ahead
            offset += int(0.15 * self.fps)
        else:
            offset = 0
        run = FfmpegRun(self._feed_args(offset), os.path.join(self.log_dir, "ffmpeg.log"))
        run.start()
        self._feed = run
        try:
            run.wait_started(self.start_timeout)
        except Exception:
            run.stop()
            raise
        self.first_frame = offset
        self.t0 = run.run_t0 - offset / self.fps
        if self._stopped_at is not None:
            self.outages.append((self._stopped_at, run.run_t0))
            self._stopped_at = None

    def _stop_feed(self):
        if self._feed is not None:
            if self._feed.running():
                self._stopped_at = time.time()
            self._feed.stop()
            self._feed = None

    @property
    def run_t0(self):
        """Wall time of the first frame of the current run (refined while
        the source runs)."""
        return self._feed.run_t0 if self._feed else None

    def refresh_t0(self):
        """Re-read the (continuously refined) estimate of ``t0``."""
        if self._feed is not None and self._feed.run_t0 is not None:
            self.t0 = self._feed.run_t0 - self.first_frame / self.fps
        return self.t0

    def frame_time(self, n):
        """Estimated wall time at which frame number ``n`` was emitted."""
        return self.refresh_t0() + n / self.fps

    def expected_frame(self, when=None):
        """Frame number the source is emitting at wall time ``when``."""
        when = time.time() if when is None else when
        return int((when - self.refresh_t0()) * self.fps)

    def logs(self):
        """Concatenated logs (for failure messages)."""
        out = []
        for name in sorted(os.listdir(self.log_dir)):
            with open(os.path.join(self.log_dir, name), "rb") as f:
                out.append("== %s ==\n%s" % (name, f.read()[-4000:].decode("utf-8", "replace")))
        return "\n".join(out)

    # ---- Twisted helpers
    def start_deferred(self):
        from twisted.internet import threads

        return threads.deferToThread(self.start)

    def stop_deferred(self):
        from twisted.internet import threads

        return threads.deferToThread(self.stop)

    def outage(self, seconds, feed_only=False):
        """Deferred: stop the source (or only the feed), wait ``seconds``
        without blocking the reactor, start it again.  Fires with
        ``(stop_time, restart_time)``."""
        from twisted.internet import reactor, task, threads

        stop = self.stop_feed if feed_only else self.stop
        start = self.start_feed if feed_only else self.start
        d = threads.deferToThread(stop)
        d.addCallback(lambda _: task.deferLater(reactor, seconds, lambda: None))
        d.addCallback(lambda _: threads.deferToThread(start))
        d.addCallback(lambda _: self.outages[-1])
        return d

    def stop_feed(self):
        self._stop_feed()

    def start_feed(self):
        self._start_feed()


# ------------------------------------------------------------ UDP MPEG-TS


class UdpTsSource(_LiveSource):
    """ffmpeg lavfi -> MPEG-TS over UDP to 127.0.0.1:port.

    Attributes: ``port``, ``url`` (what to record), ``audio`` ('aac' or
    None), ``t0``, ``first_frame``, ``outages``, ``log_dir``.
    """

    def __init__(self, port=None, audio="aac", bitrate="500k", **kw):
        super().__init__(**kw)
        if audio not in ("aac", None):
            raise ValueError("audio must be 'aac' or None")
        self.port = port or free_port("udp")
        self.audio = audio
        self.bitrate = bitrate
        self.url = "udp://%s:%d" % (HOST, self.port)
        self.send_url = "udp://%s:%d?pkt_size=1316" % (HOST, self.port)

    def _feed_args(self, offset):
        args = video_input_args(offset)
        if self.audio:
            args += audio_input_args(48000)
        args += ["-map", "0:v"] + h264_args(self.bitrate, self.gop)
        if self.audio:
            args += ["-map", "1:a", "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-ar", "48000"]
        args += ["-f", "mpegts", "-flush_packets", "1", self.send_url]
        return args

    def start(self):
        """Start (or restart) sending; returns when the first frame has
        been sent (bounded by ``start_timeout``)."""
        self.starts += 1
        self._start_feed()

    def stop(self):
        self._stop_feed()

    def is_running(self):
        return self._feed is not None and self._feed.running()


# ------------------------------------------------------------------ RTSP


class RtspServer(_LiveSource):
    """GStreamer RTSP server on 127.0.0.1:port fed by an ffmpeg feed.

    Attributes: ``port``, ``mounts`` (list of mount names that exist, e.g.
    ``['h264aac', 'h264alaw', 'h264mulaw', 'h264', 'h265']``),
    ``codecs`` (mount -> (video codec, audio codec) as ffmpeg names),
    ``feed_ports`` (mount -> local UDP port of the RTP video feed),
    ``t0``, ``first_frame``, ``outages``, ``log_dir``.

    ``h265``: None = auto (if ffmpeg has libx265 and GStreamer has the
    H.265 RTP elements), False = never.
    """

    ready_timeout = 15.0

    def __init__(self, port=None, h265=None, bitrate="500k", **kw):
        super().__init__(**kw)
        self.port = port or free_port("tcp")
        self.bitrate = bitrate
        want = [m for m in ALL_MOUNTS if m != "h265"]
        if h265 is not False and ffmpeg_has_encoder("libx265"):
            want.append("h265")
        self.feed_ports = {m: free_port("udp") for m in want}
        self.mounts = []  # filled from the server's MOUNTS line
        self.codecs = {}
        self.server = None
        self._server_log = None

    def url(self, mount="h264aac"):
        return "rtsp://%s:%d/%s" % (HOST, self.port, mount.strip("/"))

    def _feed_args(self, offset):
        args = video_input_args(offset)
        h264 = [m for m in self.feed_ports if ALL_MOUNTS[m][0] == "h264"]
        tee = "|".join(
            "[f=rtp]rtp://%s:%d?pkt_size=1200" % (HOST, self.feed_ports[m]) for m in h264
        )
        args += ["-map", "0:v"] + h264_args(self.bitrate, self.gop) + ["-f", "tee", tee]
        if "h265" in self.feed_ports:
            args += (
                ["-map", "0:v"]
                + h265_args(self.bitrate, self.gop)
                + ["-f", "rtp", "rtp://%s:%d?pkt_size=1200" % (HOST, self.feed_ports["h265"])]
            )
        return args

    def _start_server(self):
        if self.server is not None and self.server.poll() is None:
            return
        cmd = [SYSTEM_PYTHON, "-u", RTSP_SERVER_SCRIPT, "--port", str(self.port)]
        for m, p in self.feed_ports.items():
            cmd += ["--feed", "%s=%d" % (m, p)]
        self._server_log = open(os.path.join(self.log_dir, "rtsp_server.log"), "ab")
        self.server = spawn(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._server_log,
            env=clean_env(),
            bufsize=0,
        )
        deadline = time.monotonic() + self.ready_timeout
        lines = []
        result = {}

        def reader():
            for line in iter(self.server.stdout.readline, b""):
                line = line.decode("utf-8", "replace").strip()
                lines.append(line)
                if line.startswith("MOUNTS"):
                    result["mounts"] = [m.strip("/") for m in line.split()[1:]]
                if line == "READY" or line.startswith("ERROR"):
                    break
            result["done"] = True
            # drain the rest so the server never blocks on stdout
            for _ in iter(self.server.stdout.readline, b""):
                pass

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        while "done" not in result and time.monotonic() < deadline:
            if self.server.poll() is not None:
                break
            time.sleep(0.02)
        if "READY" not in lines:
            self._stop_server()
            raise SourceError("rtsp_server.py did not become ready: %r\n%s" % (lines, self.logs()))
        self.mounts = result.get("mounts", [])
        self.codecs = {m: ALL_MOUNTS[m] for m in self.mounts}

    def _stop_server(self):
        kill(self.server)
        if self.server is not None and self.server.stdout:
            try:
                self.server.stdout.close()
            except OSError:
                pass
        self.server = None
        if self._server_log:
            self._server_log.close()
            self._server_log = None

    def probe(self, mount="h264aac", timeout=5.0):
        """ffprobe the mount over RTSP/TCP; returns True on success."""
        try:
            r = subprocess.run(
                [
                    FFPROBE,
                    "-v",
                    "error",
                    "-rtsp_transport",
                    "tcp",
                    "-timeout",
                    str(int(timeout * 1e6)),
                    "-show_entries",
                    "stream=codec_name",
                    "-of",
                    "csv=p=0",
                    self.url(mount),
                ],
                capture_output=True,
                text=True,
                timeout=timeout + 2,
            )
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0 and ("h264" in r.stdout or "hevc" in r.stdout)

    def wait_ready(self, mount="h264aac", timeout=None):
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is None or self.server.poll() is not None:
                break
            left = deadline - time.monotonic()
            if self.probe(mount, timeout=max(1.0, min(5.0, left))):
                return True
            time.sleep(0.2)
        raise SourceError(
            "rtsp://...%s not playable within %.0f s\n%s" % (mount, timeout, self.logs())
        )

    def start(self):
        """Start server + feed; returns once ffprobe -rtsp_transport tcp
        succeeds on /h264aac (bounded by ``ready_timeout``)."""
        self.starts += 1
        try:
            self._start_server()
            self._start_feed()
            self.wait_ready()
        except Exception:
            self.stop()
            raise

    def stop(self):
        """Kill the feed and the server (clients see the connection
        close)."""
        self._stop_feed()
        self._stop_server()

    def is_running(self):
        return (
            self.server is not None
            and self.server.poll() is None
            and self._feed is not None
            and self._feed.running()
        )


# --------------------------------------------------------- painted camera


class PaintedCamera(_Managed):
    """An RTSP camera whose clock the test knows, behind a proxy that delays it.

    ``painted_camera.py`` (GStreamer, system python) paints its frame number
    into every frame. Frame ``n`` is captured at exactly ``t0 + n / fps``
    (unix time), and its RTCP sender reports carry that capture time. In
    front of it runs ``clockproxy.py``, a process of its own so that a test
    blocking its reactor cannot stretch the delay. The proxy holds every
    byte from the camera back ``delay`` seconds and moves the NTP time of
    every sender report by ``ntp_offset`` seconds (a camera whose clock is
    that far off).

    Use from twisted.trial::

        cam = PaintedCamera.running(self, delay=0.5, ntp_offset=0.0, gop=25)
        cam.url                    # rtsp://127.0.0.1:PROXY/cam  (record this, over TCP)
        cam.camera_url             # the camera itself, no delay, no offset
        cam.capture_time(frame)    # av.VideoFrame or frame number -> unix time

    ``stop()`` then ``start()`` brings both back on the same ports, with the
    same ``t0``, so the numbering follows the clock across the outage.
    """

    fps = FPS
    mount = "cam"
    ready_timeout = 15.0

    def __init__(self, delay=0.5, ntp_offset=0.0, gop=GOP, rtcp_interval=1.0, log_dir=None):
        self.delay = delay
        self.ntp_offset = ntp_offset
        self.gop = gop
        self.rtcp_interval = rtcp_interval
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="painted-camera-")
        self.camera_port = free_port("tcp")
        self.port = None  # the proxy's, known once it runs
        self.t0 = None  # unix time of frame 0
        self.camera = None
        self.proxy = None
        self._logs = []

    @property
    def url(self):
        return "rtsp://%s:%d/%s" % (HOST, self.port, self.mount)

    @property
    def camera_url(self):
        return "rtsp://%s:%d/%s" % (HOST, self.camera_port, self.mount)

    def frame_time(self, n):
        """Capture instant (unix time) of frame ``n`` (unwrapped)."""
        return self.t0 + n / self.fps

    def expected_frame(self, when=None):
        """Frame number (unwrapped) captured last at unix time ``when``."""
        when = time.time() if when is None else when
        return int((when - self.t0) * self.fps)

    def capture_time(self, frame, near=None):
        """Capture instant (unix time) of a decoded ``av.VideoFrame`` or of a
        painted frame number. Painted numbers wrap at 2**16 (43 min); the
        frame is taken to be the one with that number nearest to unix time
        ``near`` (default: now)."""
        if not isinstance(frame, int):
            from .framecode import read_frame_number

            frame = read_frame_number(frame)
        guess = self.expected_frame(near)
        n = frame + (1 << 16) * round((guess - frame) / (1 << 16))
        return self.frame_time(n)

    def _spawn(self, name, cmd):
        """Start ``cmd``; wait (bounded) for READY; return (proc, its lines)."""
        log = open(os.path.join(self.log_dir, name + ".log"), "ab")
        self._logs.append(log)
        proc = spawn(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=clean_env(),
            bufsize=0,
        )
        lines = []
        done = threading.Event()

        def reader():
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").strip()
                lines.append(line)
                if line == "READY" or line.startswith("ERROR"):
                    done.set()
            done.set()
            proc.stdout.close()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout
        while not done.wait(0.02) and time.monotonic() < deadline:
            if proc.poll() is not None:
                done.wait(1.0)
                break
        if "READY" not in lines:
            kill(proc)
            raise SourceError("%s did not become ready: %r\n%s" % (name, lines, self.logs()))
        return proc, lines

    def start(self):
        """Start the camera, then the proxy (returns once both listen)."""
        import sys

        here = os.path.dirname(os.path.abspath(__file__))
        try:
            if self.camera is None:
                cmd = [SYSTEM_PYTHON, "-u", os.path.join(here, "painted_camera.py")]
                cmd += ["--port", str(self.camera_port), "--mount", self.mount]
                cmd += ["--fps", str(self.fps), "--gop", str(self.gop)]
                cmd += ["--rtcp-interval", str(self.rtcp_interval)]
                if self.t0 is not None:
                    cmd += ["--t0", repr(self.t0)]
                self.camera, lines = self._spawn("painted_camera", cmd)
                self.t0 = float(next(x for x in lines if x.startswith("T0 ")).split()[1])
            if self.proxy is None:
                cmd = [sys.executable, "-u", os.path.join(here, "clockproxy.py")]
                cmd += ["--target-port", str(self.camera_port), "--port", str(self.port or 0)]
                cmd += ["--delay", repr(self.delay), "--ntp-offset", repr(self.ntp_offset)]
                self.proxy, lines = self._spawn("clockproxy", cmd)
                self.port = int(next(x for x in lines if x.startswith("PORT ")).split()[1])
        except Exception:
            self.stop()
            raise

    def stop(self):
        """Stop the proxy and the camera (clients see their connection close)."""
        kill(self.proxy)
        kill(self.camera)
        self.proxy = self.camera = None
        for log in self._logs:
            log.close()
        self._logs = []

    def is_running(self):
        return all(p is not None and p.poll() is None for p in (self.camera, self.proxy))

    def logs(self):
        """The camera's and the proxy's logs (for failure messages)."""
        return _LiveSource.logs(self)
