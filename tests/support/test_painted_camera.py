"""Prove the clock test tools work (tests/support/painted_camera.py,
clockproxy.py, livesource.PaintedCamera): the sender reports say when a frame
was captured, the proxy delays by what it says and moves the camera's clock
by what it says.

Run: cd /work/main && python -m twisted.trial tests.support.test_painted_camera
"""

import struct
import time

import av
from twisted.internet import task
from twisted.trial import unittest

from tests.support import framecode
from tests.support.clockproxy import DelayLine, InterleavedRewriter, shift_sender_reports
from tests.support.livesource import PaintedCamera

FRAME = 1.0 / PaintedCamera.fps
NTP_UNIX = 2208988800  # seconds from 1900 to 1970


# ----------------------------------------------------------- byte-level parts


def sender_report(ntp_seconds, fraction=0, rtp=1234):
    """An RTCP SR (no report blocks) followed by an SDES, as one compound packet."""
    sr = struct.pack(">BBHIIIIII", 0x80, 200, 6, 0xCAFE, ntp_seconds, fraction, rtp, 10, 1000)
    sdes = struct.pack(">BBHIBB6s", 0x81, 202, 3, 0xCAFE, 1, 6, b"camera") + b"\x00\x00"
    return sr + sdes


def interleaved(channel, payload):
    return b"$" + bytes([channel]) + struct.pack(">H", len(payload)) + payload


SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=$ not a frame\r\n\r\n\r\nm=video 0 RTP/AVP 96\r\n"
DESCRIBE = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
    b"content-length:  %d\r\n\r\n" % len(SDP)
) + SDP
PLAY = b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nSession: abc\r\n\r\n"
# an RTP packet whose payload looks like a sender report: never touched
RTP = struct.pack(">BBHII", 0x80, 96, 1, 90000, 0xCAFE) + sender_report(1000)


def camera_stream(ntp_seconds):
    return (
        DESCRIBE
        + PLAY
        + interleaved(0, RTP)
        + interleaved(1, sender_report(ntp_seconds, 0x80000000))
        + interleaved(0, RTP)
        + PLAY
        + interleaved(3, sender_report(ntp_seconds + 1))
    )


class RewriterTest(unittest.SynchronousTestCase):
    def test_shift(self):
        out, reports = shift_sender_reports(sender_report(5000, 0xC0000000), 30.5)
        self.assertEqual(reports, 1)
        self.assertEqual(out, sender_report(5031, 0x40000000))
        out, reports = shift_sender_reports(sender_report(5000, 0), -0.25)
        self.assertEqual(out, sender_report(4999, 0xC0000000))

    def test_cut_anywhere(self):
        """Sender reports are moved, nothing else changes, however TCP cuts
        the stream: in two at every position, and byte by byte."""
        stream, want = camera_stream(3_900_000_000), camera_stream(3_900_000_030)
        for cut in range(len(stream) + 1):
            rewriter = InterleavedRewriter(30.0)
            got = rewriter.feed(stream[:cut]) + rewriter.feed(stream[cut:])
            self.assertEqual(got, want, "cut at %d" % cut)
            self.assertEqual(rewriter.sender_reports, 2)
        rewriter = InterleavedRewriter(30.0)
        got = b"".join(rewriter.feed(stream[i : i + 1]) for i in range(len(stream)))
        self.assertEqual(got, want)
        self.assertFalse(rewriter.raw)

    def test_passes_what_cannot_hold_a_report_at_once(self):
        rewriter = InterleavedRewriter(30.0)
        frame = interleaved(0, RTP)
        self.assertEqual(rewriter.feed(frame[:10]), frame[:10])
        self.assertEqual(rewriter.feed(frame[10:]), frame[10:])
        self.assertEqual(rewriter.feed(DESCRIBE[:20]), b"")  # an RTSP head comes whole
        self.assertEqual(rewriter.feed(DESCRIBE[20:]), DESCRIBE)
        rtcp = interleaved(1, sender_report(100))
        rewriter = InterleavedRewriter(30.0)
        self.assertEqual(rewriter.feed(rtcp[:-1]), rtcp[:4])  # header only, report held
        self.assertEqual(rewriter.feed(rtcp[-1:]), interleaved(1, sender_report(130))[4:])

    def test_no_offset_counts_only(self):
        rewriter = InterleavedRewriter(0.0)
        stream = camera_stream(1000)
        self.assertEqual(rewriter.feed(stream), stream)
        self.assertEqual(rewriter.sender_reports, 2)


class DelayLineTest(unittest.SynchronousTestCase):
    def test_order_and_delay(self):
        clock = task.Clock()
        written, done = [], []
        line = DelayLine(
            clock,
            0.5,
            lambda data: written.append((clock.seconds(), data)),
            lambda: done.append(clock.seconds()),
        )
        line.put(b"a")
        clock.advance(0.1)
        line.put(b"b")
        line.put(b"c")
        line.finish()
        clock.advance(0.39)
        self.assertEqual(written, [])
        clock.advance(0.01)
        self.assertEqual(written, [(0.5, b"a")])
        clock.advance(0.1)
        self.assertEqual([d for _, d in written], [b"a", b"b", b"c"])
        self.assertAlmostEqual(written[-1][0], 0.6)
        self.assertEqual(done, [0.6])


# ------------------------------------------------------------ the live camera


def watch(url, frames=100, max_packets=500):
    """Read ``frames`` decoded frames from ``url`` (RTSP over TCP) with PyAV.

    Returns (frames, start_time_realtime in s) where each frame is
    (painted number, capture instant, pts in s, arrival): arrival is the
    time.time() at which its packet was demuxed."""
    seen = []
    arrival = {}
    with av.open(url, options={"rtsp_transport": "tcp", "fflags": "nobuffer"}, timeout=10) as c:
        for count, packet in enumerate(c.demux(video=0)):
            arrival[packet.pts] = time.time()
            for frame in packet.decode():
                if frame.pts is not None:
                    number = framecode.read_frame_number(frame)
                    pts = float(frame.pts * frame.time_base)
                    seen.append((number, frame.key_frame, pts, arrival[frame.pts], frame))
            if len(seen) >= frames or count >= max_packets:
                break
        start = c.start_time_realtime
    return seen, None if start is None else start / 1e6


class PaintedCameraTest(unittest.TestCase):
    def read(self, camera, frames=100):
        seen, start = watch(camera.url, frames)
        self.assertGreaterEqual(len(seen), frames, camera.logs())
        self.assertIsNotNone(start, "no sender report within %d frames" % frames)
        numbers = [number for number, *_ in seen]
        self.assertEqual({b - a for a, b in zip(numbers, numbers[1:])}, {1}, numbers)
        keys = [number for number, key, *_ in seen if key]
        self.assertGreaterEqual(len(keys), 2, numbers)
        self.assertEqual({b - a for a, b in zip(keys, keys[1:])}, {camera.gop}, keys)
        # the camera's clock as the sender reports give it, per frame
        said = [start + pts - camera.capture_time(frame) for _, _, pts, _, frame in seen]
        late = [arrived - camera.capture_time(frame) for _, _, _, arrived, frame in seen]
        return said, late

    def test_sender_reports_give_the_painted_instant(self):
        """(a) start_time_realtime + pts is the painted capture instant
        within one frame; (b) frames arrive the proxy's delay after it."""
        camera = PaintedCamera.running(self, delay=0.5)
        said, late = self.read(camera)
        self.assertLess(max(abs(e) for e in said), FRAME, said)
        # ffmpeg's H.264 parser gives a frame out when the next begins: one
        # frame on top of the delay (and a bit more for frames read while probing)
        self.assertGreaterEqual(min(late), 0.45, late)
        self.assertLess(min(late), 0.5 + 0.4, late)

    def test_ntp_offset_moves_the_cameras_clock(self):
        """(c) with ntp_offset=30 the sender reports say 30 s later; the
        picture still shows the true instant; a GOP of 10 frames."""
        camera = PaintedCamera.running(self, delay=0.2, ntp_offset=30.0, gop=10)
        said, late = self.read(camera, frames=40)
        self.assertLess(max(abs(e - 30.0) for e in said), FRAME, said)
        self.assertGreaterEqual(min(late), 0.15, late)
