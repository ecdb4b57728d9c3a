#!/usr/bin/python3
"""A test RTSP camera whose clock we know: it paints the capture instant of
every frame into the frame and sends RTCP sender reports in the same clock.

Must run with the *system* python (``/usr/bin/python3``), which has
python3-gi and gir1.2-gst-rtsp-server-1.0 (see scripts/install-system-packages).
It listens on 127.0.0.1 only and serves one mount (``/cam`` by default)::

    /usr/bin/python3 tests/support/painted_camera.py --port 8554 [--gop 25]

Picture: 320x240 I420 at 25 fps, painted here in pure Python. The top 16 rows
carry the frame code of ``framecode.py`` (16 blocks, MSB first, white = 1), so
``framecode.read_frame_number`` reads it; below it a pattern that moves, so
the encoder has work to do.

Clock: at start the camera picks ``T0`` (unix time) and prints ``T0 <t0>``.
Frame ``k`` (painted number ``k mod 65536``) is captured at exactly
``T0 + k / FPS`` of the real-time clock: the feeder thread waits for that
instant, paints the frame and pushes it with the buffer PTS set by hand to the
pipeline running time of that instant (``clock time - base time``). Every
media of the mount (a new one after all clients left) numbers its frames from
the same ``T0``, so the number alone gives the capture instant.

Sender reports: rtpbin with ``rtcp-sync-send-time=FALSE`` (the NTP/RTP pair
in a sender report maps RTP time to *capture* time, not send time) and
``ntp-time-source=ntp`` (the real-time clock, NTP epoch). Both are set from
the ``deep-element-added`` signal of the media pipeline, caught in
``media-configure`` (subclassing RTSPMedia from Python breaks preparation).
Sender reports go out every ``--rtcp-interval`` seconds (rtpsession's
``rtcp-min-interval``; the first one after about half of it).

Encoding: x264enc ``tune=zerolatency`` (no lookahead), no B-frames, a key
frame every ``--gop`` frames (no scene cuts), byte-stream into
``rtph264pay config-interval=-1`` (SPS/PPS before every IDR).

On stdout: ``T0 <unix time>``, ``FPS <fps>``, ``MOUNT /cam`` then ``READY``
once listening. SIGTERM/SIGINT stop it (exit status 0).
"""

import argparse
import math
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
import rtsp_server  # noqa: E402  (beside this script: its serving loop)
from gi.repository import Gst, GstRtspServer  # noqa: E402

BITS = 16  # framecode.BITS
BLOCK_H = 16  # framecode.BLOCK_H for a 240-row picture (REF_HEIGHT)


class Painter:
    """I420 frames with the frame code on top, in pure Python bytes."""

    def __init__(self, width, height):
        if width % BITS or width % 2 or height % 2:
            raise ValueError("width must be a multiple of %d, height even" % BITS)
        self.width, self.height = width, height
        self.block_w = width // BITS
        bh = max(2, (BLOCK_H * height) // 240)
        self.block_h = bh - bh % 2
        # a diagonal pattern twice as wide as the picture, slid sideways per frame
        rows = []
        for y in range(self.block_h, height):
            rows.append(bytes(((x * 3 + y * 2) ^ ((x * y) >> 6)) & 0xFF for x in range(2 * width)))
        self.pattern = rows
        cw, ch = width // 2, height // 2
        top = bytes([128]) * (cw * (self.block_h // 2))
        self.u = top + bytes(
            (64 + (x + y) // 3) & 0xFF for y in range(self.block_h // 2, ch) for x in range(cw)
        )
        self.v = top + bytes(
            (192 - (x * 2 + y) // 5) & 0xFF for y in range(self.block_h // 2, ch) for x in range(cw)
        )
        self.white = b"\xff" * self.block_w
        self.black = b"\x00" * self.block_w

    def frame(self, number):
        number &= (1 << BITS) - 1
        strip = b"".join(
            self.white if (number >> (BITS - 1 - i)) & 1 else self.black for i in range(BITS)
        )
        shift = (number * 4) % self.width
        body = b"".join(row[shift : shift + self.width] for row in self.pattern)
        return strip * self.block_h + body + self.u + self.v


class Feeder(threading.Thread):
    """Feeds one media's appsrc: frame k at exactly T0 + k / fps (real time).

    Runs in a thread of its own: the main loop is blocked while the media
    prepares. ``push-buffer`` returns FLUSHING while the media changes state;
    that is not a reason to stop (``stop()`` is, from the media's
    ``unprepared`` signal)."""

    def __init__(self, appsrc, painter, t0, fps, log):
        super().__init__(daemon=True)
        self.appsrc, self.painter, self.t0, self.fps, self.log = appsrc, painter, t0, fps, log
        self.stopped = threading.Event()
        self.pushed = 0

    def stop(self):
        self.stopped.set()

    def offset(self, clock):
        """unix time - pipeline clock time, in seconds (read tightly)."""
        best = None
        for _ in range(3):
            a = clock.get_time()
            now = time.time()
            b = clock.get_time()
            if best is None or b - a < best[0]:
                best = (b - a, now - (a + b) / 2e9)
        return best[1]

    def run(self):
        last = None
        duration = int(round(Gst.SECOND / self.fps))
        while not self.stopped.is_set():
            clock = self.appsrc.get_clock()
            if clock is None:  # not PLAYING yet: no clock, no base time
                self.stopped.wait(0.005)
                continue
            base = self.appsrc.get_base_time()
            off = self.offset(clock)
            now = time.time()
            k = math.ceil((now - self.t0) * self.fps - 1e-6)
            if last is not None and k <= last:
                k = last + 1
            capture = self.t0 + k / self.fps
            if capture - now > 1.0:  # the real-time clock stepped back: follow it
                last = None
                continue
            if capture > now:
                self.stopped.wait(capture - now)
                if self.stopped.is_set():
                    break
            pts = int(round((capture - off) * Gst.SECOND)) - base
            if pts < 0:  # captured before this pipeline ran; skip it
                last = k
                continue
            buf = Gst.Buffer.new_wrapped(self.painter.frame(k))
            buf.pts = pts
            buf.dts = pts
            buf.duration = duration
            ret = self.appsrc.emit("push-buffer", buf)
            last = k
            if ret == Gst.FlowReturn.OK:
                self.pushed += 1
            elif ret != Gst.FlowReturn.FLUSHING:
                self.log("push-buffer: %s" % ret)
                self.stopped.wait(0.04)


def launch_line(width, height, fps, gop, bitrate):
    return (
        "( appsrc name=src is-live=true format=time do-timestamp=false block=false "
        'caps="video/x-raw,format=I420,width=%d,height=%d,framerate=%d/1" ! '
        "x264enc tune=zerolatency speed-preset=veryfast bitrate=%d key-int-max=%d "
        'bframes=0 threads=1 sliced-threads=false option-string="scenecut=0" ! '
        "video/x-h264,stream-format=byte-stream,alignment=au ! "
        "rtph264pay name=pay0 pt=96 config-interval=-1 )" % (width, height, fps, bitrate, gop)
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--mount", default="/cam")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--gop", type=int, default=25, help="key frame every GOP frames")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--bitrate", type=int, default=500, help="kbit/s")
    ap.add_argument(
        "--rtcp-interval", type=float, default=1.0, help="seconds between sender reports"
    )
    ap.add_argument(
        "--t0", type=float, default=None, help="unix time of frame 0 (default: now, in ms)"
    )
    args = ap.parse_args()

    Gst.init(None)
    painter = Painter(args.width, args.height)
    t0 = args.t0 if args.t0 is not None else round(time.time(), 3)
    feeders = []

    def log(message):
        sys.stderr.write("painted_camera: %s\n" % message)
        sys.stderr.flush()

    def on_element(_bin, _sub, element):
        factory = element.get_factory()
        name = factory.get_name() if factory is not None else ""
        if name == "rtpbin":
            element.set_property("rtcp-sync-send-time", False)
            Gst.util_set_object_arg(element, "ntp-time-source", "ntp")
        elif name == "rtpsession":
            element.set_property("rtcp-min-interval", int(args.rtcp_interval * Gst.SECOND))

    def on_media_configure(_factory, media):
        pipeline = media.get_element().get_parent()
        pipeline.connect("deep-element-added", on_element)
        appsrc = media.get_element().get_by_name("src")
        feeder = Feeder(appsrc, painter, t0, args.fps, log)
        feeders.append(feeder)
        media.connect("unprepared", lambda _media: feeder.stop())
        feeder.start()

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.width, args.height, args.fps, args.gop, args.bitrate))
    factory.set_shared(True)
    factory.connect("media-configure", on_media_configure)
    mount = "/" + args.mount.strip("/")
    server.get_mount_points().add_factory(mount, factory)
    server.get_thread_pool().set_max_threads(16)

    def stop_feeders():
        for feeder in feeders:
            feeder.stop()

    announce = ["T0 %.6f" % t0, "FPS %d" % args.fps, "MOUNT %s" % mount]
    return rtsp_server.serve(server, announce, stop_feeders)


if __name__ == "__main__":
    sys.exit(main())
