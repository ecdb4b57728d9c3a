"""Prove the test live sources work (tests/support/livesource.py, rtsp_server.py,
framecode.py): record a few seconds with a plain ffmpeg and look at the
result with PyAV.

Run: cd /work/main && python -m twisted.trial tests.support.test_livesource
"""

import os
import shutil
import subprocess
import tempfile
import time

import av
from twisted.trial import unittest

from tests.support import framecode, livesource
from tests.support.livesource import FFMPEG, FFPROBE, RtspServer, UdpTsSource

REC_SECONDS = 3.0


def start_recording(url, out, seconds=REC_SECONDS, audio="copy", log=None):
    """Start a plain ffmpeg recording ``url`` to ``out`` (mp4)."""
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-y"]
    if url.startswith("rtsp:"):
        cmd += ["-rtsp_transport", "tcp", "-timeout", "5000000"]
    else:
        cmd += ["-timeout", "5000000"]
    cmd += ["-i", url, "-t", str(seconds), "-map", "0", "-c:v", "copy"]
    cmd += ["-c:a", audio] + (["-b:a", "64k"] if audio != "copy" else [])
    cmd += [out]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL
    )


def finish(proc, timeout=20):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def probe_codecs(url, timeout=10):
    """Codec names of the streams at ``url`` (RTSP over TCP)."""
    cmd = [FFPROBE, "-v", "error"]
    if url.startswith("rtsp:"):
        cmd += ["-rtsp_transport", "tcp", "-timeout", "5000000"]
    cmd += ["-show_entries", "stream=codec_name", "-of", "csv=p=0", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return [line.strip().strip(",") for line in r.stdout.splitlines() if line.strip()]


def analyse(path):
    """(codecs, frame numbers, frame pts in seconds) of a recording."""
    with av.open(path) as c:
        codecs = [s.codec_context.name for s in c.streams]
        numbers, times = [], []
        margin = 255
        for frame in c.decode(video=0):
            numbers.append(framecode.read_frame_number(frame))
            times.append(float(frame.pts * frame.time_base))
            margin = min(margin, framecode.code_margin(frame))
    return codecs, numbers, times, margin


class LiveSourceMixin:
    def mktemp_dir(self):
        d = tempfile.mkdtemp(prefix="test-livesource-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def check_recording(self, src, path, t_launch, t_end, video, audio, max_ts_jumps=0):
        codecs, numbers, times, margin = analyse(path)
        self.assertEqual(codecs[0], video, path)
        if audio:
            self.assertEqual(codecs[1:], [audio], path)
        else:
            self.assertEqual(codecs[1:], [], path)
        n = len(numbers)
        # -t 3 s of output at 25 fps; ffmpeg -c copy drops video until the
        # first key frame (GOP 1 s) while audio may start at once, so up to
        # one GOP of video can be missing.
        self.assertTrue(
            (REC_SECONDS - 1.1) * 25 <= n <= REC_SECONDS * 25 + 2, "%d frames in %s" % (n, path)
        )
        steps = {b - a for a, b in zip(numbers, numbers[1:])}
        self.assertEqual(steps, {1}, "frame numbers %s" % numbers)
        self.assertGreater(margin, 60, "weak frame code")
        # timestamps follow the frame numbers (1/25 s per frame).  Over RTSP
        # ffmpeg's RTP demuxer re-bases its timestamps once the first RTCP
        # sender report arrives (A/V mounts: one jump of ~0.5-0.8 s) or
        # leaves the very first packet without pts (video only: 0.0, 0.0):
        # allow one such irregularity there.
        bad = [i for i in range(1, n) if abs((times[i] - times[i - 1]) - 0.04) > 0.02]
        self.assertLessEqual(len(bad), max_ts_jumps, "pts %s" % [round(t, 3) for t in times])
        # live: the first recorded frame was emitted around/after the
        # launch of the recorder (not an old, buffered one), the last one
        # before the recorder ended, and recording took real time.
        first_t = src.frame_time(numbers[0])
        last_t = src.frame_time(numbers[-1])
        self.assertGreater(
            first_t,
            t_launch - 0.5,
            "first frame %d is old (emitted %.2f s before "
            "launch)" % (numbers[0], t_launch - first_t),
        )
        self.assertLess(first_t, t_launch + 3.0)
        self.assertLess(last_t, t_end + 0.1)
        self.assertGreaterEqual(t_end - t_launch + 0.1, (n - 1) / 25.0)
        return numbers


class FrameCodeTest(unittest.TestCase, LiveSourceMixin):
    def test_roundtrip_x264(self):
        """The frame code survives libx264 at crf 28 and at 150 kbit/s."""
        d = self.mktemp_dir()
        for name, rc in [("crf", ["-crf", "28"]), ("cbr", ["-b:v", "150k"])]:
            out = os.path.join(d, name + ".mp4")
            subprocess.run(
                [
                    FFMPEG,
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    framecode.source_filter(offset=65000),
                    "-t",
                    "1",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "veryfast",
                ]
                + rc
                + [out],
                check=True,
                timeout=30,
            )
            _, numbers, _, margin = analyse(out)
            self.assertEqual(numbers, list(range(65000, 65025)))
            self.assertGreater(margin, 80)


class UdpTsSourceTest(unittest.TestCase, LiveSourceMixin):
    def test_record_aac(self):
        src = UdpTsSource.running(self, audio="aac")
        d = self.mktemp_dir()
        out = os.path.join(d, "udp.mp4")
        t_launch = time.time()
        rc = finish(start_recording(src.url, out))
        t_end = time.time()
        self.assertEqual(rc, 0, src.logs())
        self.check_recording(src, out, t_launch, t_end, "h264", "aac")

    def test_outage_restart(self):
        """stop()/start() on the same port; numbering follows the clock."""
        src = UdpTsSource.running(self, audio=None)
        time.sleep(0.5)
        src.stop()
        self.assertFalse(src.is_running())
        time.sleep(1.0)
        src.start()
        self.assertEqual(len(src.outages), 1)
        down, up = src.outages[0]
        self.assertTrue(0.9 < up - down < 2.0, up - down)
        d = self.mktemp_dir()
        out = os.path.join(d, "udp.mp4")
        t_launch = time.time()
        rc = finish(start_recording(src.url, out, seconds=1.0))
        self.assertEqual(rc, 0)
        _, numbers, _, _ = analyse(out)
        # numbering continued: first frame after restart ~ 1.5 s + startup
        self.assertGreater(src.first_frame, 25)
        self.assertGreaterEqual(numbers[0], src.first_frame)
        self.assertTrue(abs(src.frame_time(numbers[0]) - t_launch) < 1.5)


class RtspServerTest(unittest.TestCase, LiveSourceMixin):
    def test_all_mounts(self):
        src = RtspServer.running(self)
        for m in ("h264aac", "h264alaw", "h264mulaw", "h264"):
            self.assertIn(m, src.mounts)
        if livesource.ffmpeg_has_encoder("libx265"):
            self.assertIn("h265", src.mounts)
        d = self.mktemp_dir()
        log = open(os.path.join(d, "ffmpeg.log"), "wb")
        self.addCleanup(log.close)
        # codecs as they come from the server
        probes = {
            m: subprocess.Popen(
                [
                    FFPROBE,
                    "-v",
                    "error",
                    "-rtsp_transport",
                    "tcp",
                    "-timeout",
                    "5000000",
                    "-show_entries",
                    "stream=codec_name",
                    "-of",
                    "csv=p=0",
                    src.url(m),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for m in src.mounts
        }
        for m, p in probes.items():
            try:
                out, _ = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                self.fail("ffprobe %s timed out" % m)
            got = [x.strip(",") for x in out.split()]
            self.assertEqual(got, [c for c in src.codecs[m] if c], m)
        # record every mount at the same time (shared media per mount)
        recs = {}
        t_launch = time.time()
        for m in src.mounts:
            acodec = src.codecs[m][1]
            audio = "aac" if acodec and acodec.startswith("pcm_") else "copy"
            out = os.path.join(d, m + ".mp4")
            recs[m] = (out, start_recording(src.url(m), out, audio=audio, log=log))
        for m, (_out, proc) in recs.items():
            self.assertEqual(finish(proc), 0, m)
        t_end = time.time()
        for m, (out, _proc) in recs.items():
            video, acodec = src.codecs[m]
            self.check_recording(
                src, out, t_launch, t_end, video, "aac" if acodec else None, max_ts_jumps=1
            )

    def test_restart_same_port(self):
        src = RtspServer.running(self, h265=False)
        port = src.port
        self.assertNotIn("h265", src.mounts)
        src.stop()
        self.assertFalse(src.probe("h264", timeout=2))
        src.start()
        self.assertEqual(src.port, port)
        self.assertEqual(probe_codecs(src.url("h264")), ["h264"])
        # feed outage: server stays up, a new client gets no stream ...
        src.stop_feed()
        self.assertFalse(src.probe("h264", timeout=2))
        # ... and gets it again once the feed is back
        src.start_feed()
        self.assertTrue(src.probe("h264", timeout=5))
        self.assertGreater(src.first_frame, 0)

    def test_outage_deferred(self):
        """outage() does not block the reactor and fires when back up."""
        src = UdpTsSource.running(self, audio=None)
        d = src.outage(0.5)

        def check(result):
            down, up = result
            self.assertTrue(0.4 < up - down < 2.0, up - down)
            self.assertTrue(src.is_running())
            self.assertGreater(src.first_frame, 0)

        return d.addCallback(check)
