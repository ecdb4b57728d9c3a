"""The ``transcode`` encoder: ffmpeg re-encodes as child processes, progress
parsing, option validation, and end to end through the API with real sources."""

from __future__ import annotations

import datetime
import os
import stat
import struct
import subprocess
import time
from typing import Any

from twisted.internet import defer, error, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from streamrec.builtin.transcode_encoder import TranscodeEncoder, video_filters
from streamrec.clips import reencode as reencode_module
from streamrec.clips.reencode import (
    OptionError,
    drawtext_filter,
    timestamp_filter,
    timestamp_font,
    timestamp_option,
    video_options,
)
from streamrec.errors import BadRequest
from streamrec.media.ffmpeg import (
    FfmpegChild,
    FfmpegFailed,
    death_launcher,
    find_ffmpeg,
    run_ffmpeg,
)
from streamrec.media.mp4 import ClipResult
from streamrec.plugins import EncodeRequest, PluginContext

from ..support.harness import Service, ServiceTestCase, decode, sleep, until
from ..support.livesource import FPS, RtspServer, UdpTsSource

# --------------------------------------------------------------------------
# A fake process reactor (procmon-style): a Clock that records spawnProcess.
# --------------------------------------------------------------------------


class FakeTransport:
    def __init__(self, protocol: FfmpegChild) -> None:
        self.protocol = protocol
        self.signals: list[str] = []
        self.stdin_closed = False
        self.exited = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        self.exited = True
        if code == 0:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(exitCode=code, signal=signal))
        self.protocol.processEnded(reason)


class FakeProcessReactor(task.Clock):
    def __init__(self, fail_spawn: bool = False) -> None:
        super().__init__()
        self.fail_spawn = fail_spawn
        self.spawned: list[tuple[list[str], FakeTransport]] = []
        self.triggers: dict[int, Any] = {}

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        if self.fail_spawn:
            raise OSError(2, "No such file or directory")
        transport = FakeTransport(protocol)
        protocol.makeConnection(transport)
        self.spawned.append((args, transport))
        return transport

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> int:
        handle = len(self.triggers) + 1
        self.triggers[handle] = f
        return handle

    def removeSystemEventTrigger(self, handle: int) -> None:
        del self.triggers[handle]


PROGRESS_BLOCK = (
    "frame=12\nfps=0.0\nout_time_us={us}\nout_time_ms={us}\n"
    "out_time=00:00:00.480000\nspeed=1x\nprogress={state}\n"
)


class ProgressTests(unittest.SynchronousTestCase):
    def run_fake(
        self, duration: float = 4.0
    ) -> tuple[FakeProcessReactor, FakeTransport, list[float], defer.Deferred[None]]:
        reactor = FakeProcessReactor()
        seen: list[float] = []
        d = run_ffmpeg(reactor, ["ffmpeg", "-i", "x"], duration, seen.append)
        [(args, transport)] = reactor.spawned
        # The kernel kills the encoder if the service dies (kill -9 included).
        self.assertEqual(args, [*death_launcher("KILL"), "ffmpeg", "-i", "x"])
        self.assertTrue(transport.stdin_closed)
        return reactor, transport, seen, d

    def test_out_time_becomes_fractions(self):
        reactor, transport, seen, d = self.run_fake(duration=4.0)
        proto = transport.protocol
        proto.childDataReceived(1, b"out_time_us=N/A\nprogress=continue\n")
        self.assertEqual(seen, [])
        # Lines split across reads, both microsecond keys: one report per change.
        block = PROGRESS_BLOCK.format(us=1_000_000, state="continue").encode()
        proto.childDataReceived(1, block[:20])
        proto.childDataReceived(1, block[20:])
        self.assertEqual(seen, [0.25])
        proto.childDataReceived(1, PROGRESS_BLOCK.format(us=3_000_000, state="continue").encode())
        proto.childDataReceived(1, PROGRESS_BLOCK.format(us=2_000_000, state="continue").encode())
        self.assertEqual(seen, [0.25, 0.75])  # never goes back
        proto.childDataReceived(1, PROGRESS_BLOCK.format(us=9_000_000, state="end").encode())
        self.assertEqual(seen, [0.25, 0.75, 1.0])  # capped
        self.assertNoResult(d)
        transport.exit(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(reactor.triggers, {})  # shutdown trigger removed

    def test_failure_names_ffmpegs_last_error_line(self):
        reactor, transport, seen, d = self.run_fake()
        proto = transport.protocol
        proto.childDataReceived(2, b"x264 [error]: invalid preset 'bogus'\n[libx264 @ 0x5652")
        proto.childDataReceived(2, b"7acc4cc0] Error setting preset/tune bogus/(null).")
        transport.exit(1)  # the unterminated last line still counts
        failure = self.failureResultOf(d, FfmpegFailed)
        message = str(failure.value)
        self.assertIn("exit status 1", message)
        self.assertIn("Error setting preset/tune bogus/(null).", message)
        self.assertNotIn("0x5652", message)
        self.assertIn("invalid preset 'bogus'", message)

    def test_cancel_kills_at_once(self):
        reactor, transport, seen, d = self.run_fake()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(transport.signals, ["KILL"])  # its output is thrown away
        transport.exit(None, signal=9)  # the late end does not fire d again
        self.assertEqual(reactor.triggers, {})

    def test_shutdown_stops_the_child(self):
        reactor, transport, seen, d = self.run_fake()
        [stop] = reactor.triggers.values()
        stop()
        self.assertEqual(transport.signals, ["KILL"])
        transport.exit(None, signal=9)
        self.assertIn("signal 9", str(self.failureResultOf(d, FfmpegFailed).value))
        self.assertEqual(reactor.getDelayedCalls(), [])  # the KILL was cancelled

    def test_spawn_failure(self):
        reactor = FakeProcessReactor(fail_spawn=True)
        d = run_ffmpeg(reactor, ["/no/ffmpeg"], 1.0, lambda f: None)
        self.assertIn("cannot run ffmpeg", str(self.failureResultOf(d, FfmpegFailed).value))


class RealProcessTests(unittest.TestCase):
    """run_ffmpeg with the real reactor and a real ffmpeg."""

    timeout = 30

    @defer.inlineCallbacks
    def test_cancel_kills_a_real_ffmpeg(self):
        from twisted.internet import reactor

        from streamrec.media.ffmpeg import find_ffmpeg

        spawned: list[Any] = []

        class Recording:  # the real reactor, remembering the process it spawns
            def __getattr__(self, name: str) -> Any:
                return getattr(reactor, name)

            def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
                spawned.append(reactor.spawnProcess(*args, **kwargs))
                return spawned[-1]

        seen: list[float] = []
        args = [find_ffmpeg(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
        args += ["-progress", "pipe:1", "-stats_period", "0.1", "-re", "-f", "lavfi"]
        args += ["-i", "testsrc2=size=160x120:rate=25", "-t", "30", "-f", "null", "-"]
        d = run_ffmpeg(Recording(), args, 30.0, seen.append)
        yield until_deferred(lambda: bool(seen), 10)
        [process] = spawned
        self.assertIsNotNone(process.pid)
        started = time.monotonic()
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield until_deferred(lambda: process.pid is None, 10)  # reaped
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(0 < seen[-1] < 0.5, seen)  # no "progress=end" after a stop

    @defer.inlineCallbacks
    def test_an_encoder_dies_with_the_service(self):
        """kill -9 of the process that ran an encoder kills the encoder too."""
        import subprocess
        import sys

        from streamrec.media.ffmpeg import find_ffmpeg, pid_alive

        if not death_launcher("KILL"):
            raise unittest.SkipTest("setpriv (util-linux) is not installed")
        script = (
            "import subprocess, sys, time\n"
            "from streamrec.media.ffmpeg import death_launcher\n"
            "args = [*death_launcher('KILL'), sys.argv[1], '-nostdin', '-loglevel', 'error',"
            " '-re', '-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=5', '-t', '120',"
            " '-f', 'null', '-']\n"
            "child = subprocess.Popen(args)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n"
        )
        parent = subprocess.Popen(
            [sys.executable, "-c", script, find_ffmpeg()], stdout=subprocess.PIPE, text=True
        )
        self.addCleanup(parent.kill)
        encoder = int(parent.stdout.readline())
        yield until_deferred(lambda: pid_alive(encoder), 10)
        parent.kill()  # SIGKILL: no cleanup code of the service runs
        parent.wait(30)
        try:
            yield until_deferred(lambda: not pid_alive(encoder), 30)
        except AssertionError:
            with open(f"/proc/{encoder}/status", encoding="ascii") as handle:
                self.fail(f"the encoder outlived the service:\n{handle.read()}")

    # A Python and an ffmpeg start, then the kernel's signal: slow on a busy machine.
    test_an_encoder_dies_with_the_service.timeout = 90  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_real_failure_message(self):
        from twisted.internet import reactor

        from streamrec.media.ffmpeg import find_ffmpeg

        args = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error"]
        args += ["-progress", "pipe:1", "-i", "/nonexistent/input.mp4", "-f", "null", "-"]
        failure = yield self.assertFailure(
            run_ffmpeg(reactor, args, 1.0, lambda f: None), FfmpegFailed
        )
        self.assertIn("No such file or directory", str(failure))


def until_deferred(check: Any, timeout: float) -> defer.Deferred[None]:
    return defer.ensureDeferred(_until(check, timeout))


async def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await sleep(0.05)


class BoundTests(unittest.TestCase):
    """A real re-encode keeps within the pixels and the rate a clip may have,
    whatever the source (the bounds made small here, for a small source)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_large_and_fast_sources_are_scaled_and_thinned(self):
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from streamrec.clips import reencode
        from streamrec.media.ffmpeg import find_ffmpeg
        from streamrec.plugins import EncodeRequest, PluginContext

        from ..support.recordings import decoded_numbers, ffprobe, recording

        rec = yield deferToThread(recording, "transcode_bounds", seconds=4, audio=False)
        self.patch(reencode, "MAX_PIXELS", 160 * 120)  # the source is 320x240 at 25 fps
        self.patch(reencode, "MAX_FPS", 10)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        context = PluginContext(reactor, work, "http://127.0.0.1:1", find_ffmpeg(), {})
        encoder = TranscodeEncoder(context)
        start = rec.pieces[0].wall_start + 0.52
        for options in ({}, {"width": "320"}):
            out = os.path.join(work, f"clip{len(options)}.mp4")
            request = EncodeRequest(
                pieces=rec.pieces,
                start=start,
                stop=start + 2,
                out_path=out,
                options={**options, "preset": "ultrafast"},
                progress=lambda fraction: None,
            )
            result = yield defer.ensureDeferred(encoder.encode(request))
            self.assertAlmostEqual(result.stop - result.start, 2, delta=0.05)
            [video] = [s for s in ffprobe(out)["streams"] if s["codec_type"] == "video"]
            self.assertEqual((video["width"], video["height"]), (160, 120), options)
            # Every third frame of 25 a second: no two closer than a tenth of a second.
            numbers = decoded_numbers(out)
            self.assertEqual(numbers, list(range(numbers[0], numbers[0] + 3 * len(numbers), 3)))
            self.assertIn(len(numbers), (16, 17, 18), options)


class OptionTests(unittest.SynchronousTestCase):
    def test_defaults(self):
        choice = video_options({})
        self.assertEqual((choice.preset, choice.crf, choice.video_bitrate), ("veryfast", 23, None))
        # The source's size and rate are kept, up to 3840x2160 pixels and 60 fps.
        self.assertEqual(video_filters(choice), [choice.rate_filter(), choice.bound_filter()])
        self.assertIn("8294400", str(choice.bound_filter()))
        self.assertIn("0.015", str(choice.rate_filter()))
        self.assertEqual(choice.rate_args(), ["-fps_mode", "vfr"])
        self.assertIn("-bf", choice.x264_args())

    def test_values(self):
        choice = video_options(
            {
                "size": "640x360",
                "fps": "12.5",
                "video_bitrate": "1.5M",
                "preset": "UltraFast",
                "audio_bitrate": "64k",
            }
        )
        self.assertEqual((choice.width, choice.height, choice.fps), (640, 360, 12.5))
        self.assertEqual((choice.video_bitrate, choice.audio_bitrate), (1_500_000, 64_000))
        self.assertEqual(video_filters(choice), ["fps=12.5:round=up", "scale=640:360"])
        self.assertEqual(choice.rate_args(), [])
        one_side = video_options({"height": "480"})
        self.assertEqual(one_side.scale_filter(), "scale=-2:480")
        self.assertIsNotNone(one_side.bound_filter())  # the other side follows the source

    def test_bad_values(self):
        for options, words in [
            ({"crf": "abc"}, "crf must be an integer"),
            ({"crf": "60"}, "crf must be between 10 and 51"),
            ({"fps": "nan"}, "fps must be between"),
            ({"width": "641"}, "width must be even"),
            ({"size": "big"}, "size must be WIDTHxHEIGHT"),
            ({"size": "640x360", "width": "640"}, "not both"),
            ({"crf": "20", "video_bitrate": "1M"}, "crf or video_bitrate"),
            ({"video_bitrate": "fast"}, "video_bitrate must be bits per second"),
            ({"video_bitrate": "1k"}, "video_bitrate must be between"),
            ({"preset": "placebo"}, "preset must be one of"),
            ({"preset": "veryslow"}, "preset must be one of ultrafast"),
            ({"size": "7680x4320"}, "width must be between 16 and 3840"),
            ({"size": "3840x3840"}, "more pixels than 3840x2160"),
            ({"fps": "120"}, "fps must be between 1 and 60"),
            ({"crf": "0"}, "crf must be between 10 and 51"),
            ({"audio_bitrate": "1M"}, "audio_bitrate must be between 16k and 512k, not 1M"),
            ({"video_bitrate": "80M"}, "video_bitrate must be between 50k and 50M, not 80M"),
            ({"timestamp": "yes"}, "timestamp must be 0 or 1, not 'yes'"),
            ({"timestamp": "2"}, "timestamp must be 0 or 1, not '2'"),
            ({"timestamp": "true"}, "timestamp must be 0 or 1"),
            ({"timestamp": "1.0"}, "timestamp must be 0 or 1"),
        ]:
            encoder = TranscodeEncoder(PluginContext(task.Clock(), "/nowhere", "", "ffmpeg"))
            with self.assertRaises(OptionError, msg=options) as caught:
                encoder.validate(options)
            self.assertIn(words, str(caught.exception))
            self.assertIsInstance(caught.exception, BadRequest)

    def test_encoder_declares_its_options(self):
        for name in ("size", "width", "height", "fps", "crf", "video_bitrate", "preset"):
            self.assertIn(name, TranscodeEncoder.options)
        self.assertIn("timestamp", TranscodeEncoder.options)

    def test_timestamp_values(self):
        for raw, wanted in [(None, False), ("", False), ("0", False), (" 1 ", True), ("1", True)]:
            options = {} if raw is None else {"timestamp": raw}
            self.assertIs(timestamp_option(options), wanted, raw)
        # Without it, no ffmpeg is asked whether it can draw (this one does not exist).
        encoder = TranscodeEncoder(PluginContext(task.Clock(), "/nowhere", "", "/no/ffmpeg"))
        choice, timestamp = encoder.validate({"timestamp": "0", "crf": "30"})
        self.assertEqual((choice.crf, timestamp), (30, False))


# --------------------------------------------------------------------------
# timestamp=1: the wall-clock time of each frame, burnt in
# --------------------------------------------------------------------------


def fake_ffmpeg(testcase: unittest.TestCase, stderr: str) -> str:
    """An executable that fails as an ffmpeg would, saying ``stderr``."""
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w", encoding="utf-8") as script:
        script.write(f"#!/bin/sh\ncat >&2 <<'EOF'\n{stderr}\nEOF\nexit 1\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def utc_label(moment: float) -> str:
    """What the picture should say for the POSIX time ``moment``."""
    millis = (round(moment * 1_000_000) + 500) // 1000  # to the nearest millisecond
    shown = datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC)
    return shown.strftime("%Y-%m-%d %H:%M:%S.") + f"{millis % 1000:03d} UTC"


def ffmpeg_lumas(args: list[str], width: int, height: int) -> list[bytes]:
    """The luma planes of the frames ffmpeg ``args`` (inputs and filters) make."""
    command = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    command += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    size = width * height * 3 // 2
    return [raw[at : at + width * height] for at in range(0, len(raw), size)]


def decoded_frames(path: str) -> list[tuple[float, Any]]:
    """(time in seconds, luma plane as a 2-D int16 array) of each frame of an MP4."""
    import av
    import numpy

    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            rows = numpy.frombuffer(plane, dtype=numpy.uint8).reshape(-1, plane.line_size)
            frames.append((frame.time, rows[: frame.height, : frame.width].astype(numpy.int16)))
    return frames


class TimestampTests(unittest.SynchronousTestCase):
    def test_refused_when_ffmpeg_has_no_drawtext(self):
        """get_clip validates: an ffmpeg without drawtext (or a font) is a 400
        naming the parameter, found out once per ffmpeg."""
        no_filter = fake_ffmpeg(
            self,
            "[AVFilterGraph @ 0x55d0] No such filter: 'drawtext'\nError reinitializing filters!",
        )
        encoder = TranscodeEncoder(PluginContext(task.Clock(), "/nowhere", "", no_filter))
        with self.assertRaises(OptionError) as caught:
            encoder.validate({"timestamp": "1"})
        self.assertIn("timestamp=1 needs ffmpeg's drawtext filter", str(caught.exception))
        self.assertIn(no_filter, str(caught.exception))
        os.remove(no_filter)  # the answer was kept: the ffmpeg is not asked again
        with self.assertRaises(OptionError) as again:
            encoder.validate({"timestamp": "1"})
        self.assertEqual(str(again.exception), str(caught.exception))
        no_font = fake_ffmpeg(self, '[Parsed_drawtext_0 @ 0x1] Could not load font "x"')
        with self.assertRaises(OptionError) as caught:
            TranscodeEncoder(PluginContext(task.Clock(), "/", "", no_font)).validate(
                {"timestamp": "1"}
            )
        self.assertIn('Could not load font "x"', str(caught.exception))
        self.assertIn("fonts-dejavu-core", str(caught.exception))

    def test_this_ffmpeg_can_draw_it(self):
        font = timestamp_font(find_ffmpeg())
        self.assertTrue(font is None or os.path.isfile(font), font)

    def test_the_filter_reencode_runs(self):
        """The time is drawn last (at the output's size), from the copy clip's
        start (the frame-snapped first frame), with the font's path escaped."""
        reactor = FakeProcessReactor()
        font = "/fonts/odd, name: it's [1].ttf"
        exact = ClipResult(1700092799.96, 1700092801.96, 2.0, 1000)
        asked: list[Any] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            asked.append(fn)
            return defer.succeed(font if fn is timestamp_font else exact)

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        context = PluginContext(reactor, work, "", "/usr/bin/ffmpeg", run_blocking=run_blocking)
        request = EncodeRequest([], 1700092799.97, 1700092801.97, f"{work}/c.mp4", {}, print)
        d = defer.Deferred.fromCoroutine(
            reencode_module.reencode(
                context,
                request,
                video_filters=["fps=5:round=up", "scale=640:360"],
                video_args=["-c:v", "libx264"],
                audio_args=None,
                timestamp=True,
            )
        )
        [(args, transport)] = reactor.spawned
        self.assertEqual(asked[0], timestamp_font)  # before any work
        chain = args[args.index("-filter:v") + 1]
        drawn = timestamp_filter(exact.start, font)
        self.assertEqual(chain, f"fps=5:round=up,scale=640:360,{drawn}")
        # Escaped twice: for drawtext's options (: ' \), then for the graph (, [ ] ; ' \).
        self.assertTrue(
            drawn.startswith(r"drawtext=fontfile=/fonts/odd\, name\\: it\\\'s \[1\].ttf:")
        )
        self.assertIn(":box=1:", drawn)
        self.assertIn("y=h-th-12", drawn)  # the bottom-left corner
        self.assertIn("t+86399.960000", drawn)  # 23:59:59.960 of 2023-11-15
        self.assertIn("st(1\\,19676+", drawn)  # that day, counted from 1970
        with open(f"{work}/.c.mp4.part", "wb") as part:
            part.write(b"clip")
        transport.exit(0)
        self.assertEqual(self.successResultOf(d), ClipResult(exact.start, exact.stop, 2.0, 4))

    def test_drawn_text_is_each_frames_time(self):
        """Rendered by the ffmpeg the service runs, frame by frame, the text is
        the frame's time to the millisecond: pixel for pixel the same as that
        time written out, across a new year, a leap day and a rounding."""
        font = timestamp_font(find_ffmpeg())
        source = ["-f", "lavfi", "-i", "color=c=gray:size=320x48:rate=25", "-frames:v", "4"]
        for start in (1704067199.95, 1709251199.9204, 1700000002.3606):
            drawn = ffmpeg_lumas([*source, "-filter:v", timestamp_filter(start, font)], 320, 48)
            self.assertEqual(len(drawn), 4)
            for number, picture in enumerate(drawn):
                label = utc_label(start + number / 25)
                written = ffmpeg_lumas(
                    [*source, "-filter:v", drawtext_filter(label, font)], 320, 48
                )
                self.assertEqual(picture, written[0], label)
        self.assertEqual(utc_label(1704067199.95 + 2 / 25), "2024-01-01 00:00:00.030 UTC")
        self.assertEqual(utc_label(1709251199.9204 + 2 / 25), "2024-03-01 00:00:00.000 UTC")
        self.assertEqual(utc_label(1700000002.3606), "2023-11-14 22:13:22.361 UTC")


class TimestampReencodeTests(unittest.TestCase):
    """timestamp=1 on a real recording: the corner changes, nothing else does."""

    timeout = 90

    @defer.inlineCallbacks
    def test_the_corner_carries_the_time(self):
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from ..support.recordings import decoded_numbers, recording

        rec = yield deferToThread(recording, "transcode_timestamp", seconds=4, audio=True)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        context = PluginContext(reactor, work, "http://127.0.0.1:1", find_ffmpeg(), {})
        encoder = TranscodeEncoder(context)
        start = rec.pieces[0].wall_start + 1.23  # between frames and keyframes
        paths = {}
        for stamp in ("0", "1"):
            paths[stamp] = os.path.join(work, f"clip{stamp}.mp4")
            request = EncodeRequest(
                pieces=rec.pieces,
                start=start,
                stop=start + 2,
                out_path=paths[stamp],
                options={"timestamp": stamp, "preset": "ultrafast"},
                progress=lambda fraction: None,
            )
            result = yield defer.ensureDeferred(encoder.encode(request))
            self.assertLess(abs(result.start - start), 0.021)  # a frame's start
        # The same frames (their numbers are painted at the top, left alone).
        numbers = decoded_numbers(paths["0"])
        self.assertEqual(decoded_numbers(paths["1"]), numbers)
        self.assertIn(len(numbers), (50, 51))
        plain, stamped = decoded_frames(paths["0"]), decoded_frames(paths["1"])
        self.assertEqual([time for time, _ in plain], [time for time, _ in stamped])
        # 320x240: 12 px text, its box from about x=6 to 210 and y=214 to 234.
        for number, ((_, before), (_, after)) in enumerate(zip(plain, stamped)):
            corner = abs(after[216:232, 12:190] - before[216:232, 12:190]).mean()
            rest = abs(after[:200] - before[:200]).mean()
            right = abs(after[200:, 240:] - before[200:, 240:]).mean()
            self.assertGreater(corner, 25, f"frame {number}: the corner is unchanged")
            self.assertLess(max(rest, right), 1.5, f"frame {number}: the picture changed")

    @defer.inlineCallbacks
    def test_each_frame_says_when_it_was_shown(self):
        """Encoded losslessly, each frame of the clip is, pixel for pixel, the
        same frame without the time with its wall-clock time written on it:
        the copy clip's start (the instant its first frame is shown) plus the
        frame's time in the copy clip (the recording's timeline, before the
        encoder rounds times to its frame rate)."""
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from streamrec.media.mp4 import build_clip

        from ..support.recordings import FPS, recording

        rec = yield deferToThread(recording, "transcode_timestamp", seconds=4, audio=True)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        context = PluginContext(reactor, work, "http://127.0.0.1:1", find_ffmpeg(), {})
        lossless = ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p"]
        lossless += ["-fps_mode", "vfr"]  # no frame repeated or dropped, as in transcode
        start = rec.pieces[0].wall_start + 1.23
        results = {}
        for stamp in (False, True):
            request = EncodeRequest(
                pieces=rec.pieces,
                start=start,
                stop=start + 1,
                out_path=os.path.join(work, f"clip{int(stamp)}.mp4"),
                options={},
                progress=lambda fraction: None,
            )
            results[stamp] = yield defer.ensureDeferred(
                reencode_module.reencode(
                    context,
                    request,
                    video_args=lossless,
                    audio_args=["-c:a", "aac"],
                    timestamp=stamp,
                )
            )
        copy = os.path.join(work, "copy.mp4")
        exact = yield deferToThread(build_clip, rec.pieces, start, start + 1, copy)
        first = results[True].start
        self.assertEqual((first, results[False].start), (exact.start, exact.start))
        times = [time for time, _ in decoded_frames(copy)]
        stamped = decoded_frames(request.out_path)
        plain = os.path.join(work, "clip0.mp4")
        self.assertEqual(len(stamped), len(decoded_frames(plain)))
        self.assertEqual(len(stamped), len(times))
        self.assertIn(len(stamped), (FPS, FPS + 1))
        self.assertEqual(times[0], 0.0)
        font = timestamp_font(find_ffmpeg())
        for number in (0, 1, len(stamped) - 2, len(stamped) - 1):
            picture = stamped[number][1]
            label = utc_label(first + times[number])
            args = ["-i", plain, "-filter:v", f"select=eq(n\\,{number}),"]
            args[-1] += drawtext_filter(label, font)
            [written] = ffmpeg_lumas([*args, "-frames:v", "1"], 320, 240)
            self.assertEqual(picture.astype("uint8").tobytes(), written, label)


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------


def top_level_boxes(path: str) -> list[bytes]:
    boxes, pos = [], 0
    with open(path, "rb") as f:
        data = f.read()
    while pos + 8 <= len(data):
        size, typ = struct.unpack_from(">I4s", data, pos)
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
        boxes.append(typ)
        if size < 8:
            break
        pos += size
    return boxes


class TranscodeEndToEndTests(ServiceTestCase):
    timeout = 120

    async def check_transcoded(
        self, service: Service, stream_id: int, start: float, stop: float, audio: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Transcode and copy the same range; compare what a player shows."""
        params = {"start": start, "stop": stop}
        seen: list[float] = []

        job = await service.clip(
            stream_id, timeout=60, seen=seen, encoder="transcode", preset="ultrafast", **params
        )
        self.assertEqual(job["progress"], 1.0)
        self.assertEqual(seen, sorted(seen), "progress went backwards")
        self.assertTrue(all(0 <= p <= 1 for p in seen), seen)
        copy_job = await service.clip(stream_id, encoder="copy", **params)
        [clip], [copy_clip] = job["clips"], copy_job["clips"]
        path = await service.download(clip["link"], self.mktemp())
        self.assertNotIn(b"elst", open(path, "rb").read(), "an edit list was written")
        boxes = top_level_boxes(path)
        self.assertLess(boxes.index(b"moov"), boxes.index(b"mdat"), boxes)
        shown = decode(path)
        numbers = shown["numbers"]
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + len(numbers))))
        self.assertEqual((shown["video"], shown["audio"]), ("h264", audio))
        reference = await self.fetch(service, copy_clip)
        ref = reference["numbers"]
        print(
            f"\ntranscode: frames {numbers[0]}..{numbers[-1]} ({len(numbers)}),"
            f" copy: {ref[0]}..{ref[-1]} ({len(ref)}), progress seen {sorted(set(seen))}"
        )
        self.assertNear(numbers[0], ref[0], 1, "first frame")
        self.assertNear(len(numbers), len(ref), 1, "frame count")
        self.assertNear(len(numbers), (stop - start) * FPS, 1.5, "frames for the range")
        return shown, reference

    async def recording_udp(self) -> tuple[Any, int, float]:
        """A service recording a UDP H.264 + AAC source: it, the stream, its first instant."""
        source = UdpTsSource.running(self, audio="aac")
        service = await self.service()
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first() -> Any:
            return (await service.status(stream_id))["recorded"]["first"]

        return service, stream_id, await until(first, 20, "the first segment")

    @defer.inlineCallbacks
    def test_udp_h264_aac_and_bad_options(self):
        yield defer.ensureDeferred(self._udp())

    async def _udp(self) -> None:
        service, stream_id, begin = await self.recording_udp()
        start = begin + 1.37  # between keyframes
        await service.recorded_until(stream_id, start + 4.5)
        await self.check_transcoded(service, stream_id, start, start + 4, "aac")

        def ask(**option: str) -> Any:
            return service.call(
                "GET",
                f"/streams/{stream_id}/get_clip",
                start=start,
                stop=start + 2,
                encoder="transcode",
                **option,
            )

        # A bad value: refused up front (400) or a failed job naming the parameter.
        code, body = await ask(crf="abc")
        if code == 200:

            async def failed() -> Any:
                _code, job = await ask(crf="abc")
                return job if job["status"] in ("done", "failed") else None

            body = await until(failed, 20, "the bad job to fail")
            self.assertEqual(body["status"], "failed", body)
            self.flushLoggedErrors(OptionError)  # the worker logs the job's failure
        else:
            self.assertEqual(code, 400, body)
        self.assertIn("crf must be an integer", body["error_message"])
        code, body = await ask(timestamp="yes")
        self.assertEqual(
            (code, body["error_message"]), (400, "timestamp must be 0 or 1, not 'yes'")
        )
        # Nothing left behind in the scratch directory.
        await sleep(0.2)
        scratch = os.path.join(service.data_dir, "tmp")
        self.assertEqual([n for n in os.listdir(scratch) if n.startswith(".")], [])

    @defer.inlineCallbacks
    def test_h265_camera_becomes_h264(self):
        yield defer.ensureDeferred(self._h265())

    async def _h265(self) -> None:
        camera = RtspServer.running(self)
        if "h265" not in camera.mounts:
            raise unittest.SkipTest("no H.265 mount (libx265 or GStreamer's rtph265pay missing)")
        service = await self.service()
        body = await service.ok("POST", "/streams/create", url=camera.url("h265"))
        stream_id = body["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")
        started = time.time()
        await service.recorded_until(stream_id, started + 5.5)
        shown, reference = await self.check_transcoded(
            service, stream_id, started + 1.3, started + 5.3, "aac"
        )
        self.assertEqual(reference["video"], "hevc")

    @defer.inlineCallbacks
    def test_cancel_kills_the_encoder(self):
        yield defer.ensureDeferred(self._cancel())

    async def _cancel(self) -> None:
        from streamrec.recorder.recovery import find_encoders

        service, stream_id, begin = await self.recording_udp()
        start = begin + 0.5
        await service.recorded_until(stream_id, start + 4.5)
        # Minutes of work on two cores: 4 s of 320x240 made 3840x2160 at "medium".
        params = {"start": start, "stop": start + 4, "encoder": "transcode"}
        params.update(size="3840x2160", preset="medium", crf="10")
        job = await service.ok("GET", f"/streams/{stream_id}/get_clip", **params)

        async def encoding() -> Any:
            return find_encoders(service.data_dir)

        [pid] = await until(encoding, 30, "the encoder to run")
        cancelled = await service.ok(
            "POST", f"/streams/{stream_id}/cancel_clip", job_id=job["job_id"]
        )
        self.assertEqual(
            (cancelled["job_id"], cancelled["status"], cancelled["error_message"]),
            (job["job_id"], "failed", "cancelled through the API"),
        )

        async def ended() -> bool:
            return not find_encoders(service.data_dir)

        await until(ended, 5, "the encoder to be killed")
        again = await service.ok("GET", f"/streams/{stream_id}/get_clip", **params)
        self.assertEqual((again["job_id"], again["status"]), (job["job_id"], "failed"))
        await sleep(0.2)
        scratch = os.path.join(service.data_dir, "tmp")
        self.assertEqual(os.listdir(scratch), [])
        # Cancelling what has ended changes nothing.
        code, body = await service.call(
            "POST", f"/streams/{stream_id}/cancel_clip", job_id=job["job_id"]
        )
        self.assertEqual((code, body["status"]), (200, "failed"))
