"""ffmpeg pieces of the test sources: encoder arguments, processes, free ports.

Standard library only: ``rtsp_server.py`` imports it under the system python.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

try:
    from . import framecode
except ImportError:  # imported as a top-level module (rtsp_server.py)
    import framecode

HERE = os.path.dirname(os.path.abspath(__file__))

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = os.path.join(HERE, "rtsp_server.py")

WIDTH, HEIGHT, FPS, GOP = 320, 240, 25, 25
HOST = "127.0.0.1"

#: All mounts rtsp_server.py knows: mount -> (video codec, audio codec)
ALL_MOUNTS = {
    "h264aac": ("h264", "aac"),
    "h264alaw": ("h264", "pcm_alaw"),
    "h264mulaw": ("h264", "pcm_mulaw"),
    "h264": ("h264", None),
    "h265": ("hevc", "aac"),
}


class SourceError(RuntimeError):
    pass


# ---------------------------------------------------------------- helpers


def free_port(kind="tcp"):
    """A currently free port on 127.0.0.1 (``kind``: 'tcp', 'udp' or
    'both').  Racy by nature, but the kernel hands out ports round-robin so
    reuse within a test run is unlikely."""
    kinds = {
        "tcp": [socket.SOCK_STREAM],
        "udp": [socket.SOCK_DGRAM],
        "both": [socket.SOCK_STREAM, socket.SOCK_DGRAM],
    }[kind]
    for _ in range(50):
        s = socket.socket(socket.AF_INET, kinds[0])
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for k in kinds[1:]:
            t = socket.socket(socket.AF_INET, k)
            try:
                t.bind((HOST, port))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return port
    raise SourceError("no free port found")


_encoder_cache = {}


def ffmpeg_has_encoder(name):
    if name not in _encoder_cache:
        try:
            out = subprocess.run(
                [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        _encoder_cache[name] = bool(re.search(r"\s%s\s" % re.escape(name), out))
    return _encoder_cache[name]


def h264_args(bitrate="500k", gop=GOP):
    """libx264 live-camera-like settings: a GOP of ``gop`` frames (1 s), no
    B-frames, one slice per frame (so a receiver joining mid-frame cannot get
    half an IDR)."""
    return [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-x264-params",
        "threads=1:sliced-threads=0:slices=1",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        "-b:v",
        bitrate,
        "-maxrate",
        bitrate,
        "-bufsize",
        bitrate,
        "-pix_fmt",
        "yuv420p",
    ]


def h265_args(bitrate="500k", gop=GOP):
    return [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-x265-params",
        "keyint=%d:min-keyint=%d:bframes=0:scenecut=0:frame-threads=1:log-level=error" % (gop, gop),
        "-b:v",
        bitrate,
        "-pix_fmt",
        "yuv420p",
    ]


def video_input_args(offset=0):
    return ["-re", "-f", "lavfi", "-i", framecode.source_filter(WIDTH, HEIGHT, FPS, offset)]


def audio_input_args(rate=48000):
    # 440 Hz tone with a 1760 Hz beep at every full second
    return ["-re", "-f", "lavfi", "-i", "sine=frequency=440:beep_factor=4:sample_rate=%d" % rate]


_live_procs = set()


@atexit.register
def _kill_leftovers():
    """Last resort: never leave an ffmpeg/server behind when the test
    process exits (even if a test forgot its cleanup)."""
    for proc in list(_live_procs):
        if proc.poll() is None:
            proc.kill()


def spawn(cmd, **kw):
    proc = subprocess.Popen(cmd, **kw)
    _live_procs.add(proc)
    return proc


def kill(proc, timeout=3.0):
    """Terminate a Popen (SIGTERM, then SIGKILL after ``timeout``)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass
    finally:
        _live_procs.discard(proc)


def clean_env():
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(k, None)
    return env


# ----------------------------------------------------------- ffmpeg runner


class FfmpegRun:
    """One ffmpeg process with ``-progress pipe:1``; estimates when its
    first frame was emitted."""

    def __init__(self, args, log_path):
        self.args = args
        self.log_path = log_path
        self.proc = None
        self.run_t0 = None  # wall time of this run's first frame
        self.frames = 0  # frames encoded so far (first output)
        self._started = threading.Event()
        self._thread = None

    def start(self):
        cmd = [
            FFMPEG,
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "warning",
            "-progress",
            "pipe:1",
            "-stats_period",
            "0.1",
        ] + self.args
        self._log = open(self.log_path, "ab")
        self._log.write(("\n$ %s\n" % " ".join(cmd)).encode())
        self._log.flush()
        self.proc = spawn(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, bufsize=0
        )
        self._thread = threading.Thread(target=self._read_progress, daemon=True)
        self._thread.start()

    def _read_progress(self):
        frames = 0
        out = self.proc.stdout
        for line in iter(out.readline, b""):
            now = time.time()
            if line.startswith(b"frame="):
                try:
                    frames = int(line[6:].strip())
                except ValueError:
                    pass
            elif line.startswith(b"progress=") and frames > 0:
                self.frames = frames
                est = now - (frames - 1) / FPS
                if self.run_t0 is None or est < self.run_t0:
                    self.run_t0 = est
                self._started.set()
        out.close()

    def wait_started(self, timeout):
        """Wait (bounded) until the first frame has been encoded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._started.wait(0.05):
                return True
            if self.proc.poll() is not None:
                raise SourceError(
                    "ffmpeg exited with %s, see %s" % (self.proc.returncode, self.log_path)
                )
        raise SourceError("ffmpeg produced no frame in %.0f s, see %s" % (timeout, self.log_path))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        kill(self.proc)
        if self._thread is not None:
            self._thread.join(2)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
