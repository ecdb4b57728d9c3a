"""What the supervisor makes of ffmpeg's stderr: a source that ended, masked
secrets, a log within its budget. Driven with a fake process reactor and a clock."""

from __future__ import annotations

from twisted.internet import defer

from streamrec.errors import CannotStart
from streamrec.recorder.childlog import LINES_PER_INTERVAL
from streamrec.recorder.supervisor import ENDED, RECONNECTING, RECORDING, STOPPED

from .test_childlog import logged_lines
from .test_supervisor import FakeProcess, RecorderBase

HLS_REPORT = """Input #0, hls, from 'http://127.0.0.1:8765/vod.m3u8':
  Duration: {duration}, start: 1.480000, bitrate: 0 kb/s
  Program 0
    Metadata:
      variant_bitrate : 0
  Stream #0:0: Video: h264 (High) ([27][0][0][0] / 0x001B), yuv420p, 320x240, 25 fps
Output #0, segment, to 'seg%06d.mp4':
"""

SECRET_URL = "rtsp://admin:hunter2@127.0.0.1:8554/cam"


class SourceEndTests(RecorderBase):
    def recorded(self, duration: str) -> FakeProcess:
        """A segmenter that reported its input and wrote one segment."""
        started = self.start()
        process = self.reactor.processes[-1]
        process.say(2, HLS_REPORT.format(duration=duration))
        self.successResultOf(started)
        self.assertEqual(self.recorder.state, RECORDING)
        self.reactor.advance(2.05)
        self.write_segment(process, "seg000000.mp4", (0.0, 2.0))
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        return process

    def test_a_finished_hls_playlist_ends_and_is_not_recorded_again(self):
        process = self.recorded("00:00:06.00")
        process.exit(0)
        why = "the source ended (HLS playlist with EXT-X-ENDLIST)"
        self.assertEqual((self.recorder.state, self.recorder.last_error), (ENDED, why))
        self.assertEqual(self.listener.states[-1], (ENDED, why))
        self.assertEqual(self.store.closed_runs, [(1, f"exit 0: {why}")])
        self.assertEqual(len(self.store.segments), 1)
        self.reactor.advance(600)
        self.assertEqual(len(self.reactor.processes), 1, "ended: never launched again")
        self.assertTrue(self.recorder.wanted, "still started: stop answers as usual")
        self.successResultOf(defer.ensureDeferred(self.recorder.stop()))
        self.assertEqual(self.recorder.state, STOPPED)

    def test_a_live_source_that_ends_is_recorded_again(self):
        process = self.recorded("N/A")
        process.exit(0)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_a_finished_playlist_that_fails_midway_is_retried(self):
        process = self.recorded("00:00:06.00")
        process.say(2, "http://127.0.0.1:8765/vod1.ts: Connection refused\n")
        process.exit(1)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 2)


class SecretTests(RecorderBase):
    def test_the_password_reaches_no_log_state_or_run(self):
        lines = logged_lines(self)
        self.recorder.url = SECRET_URL
        started = self.start()
        process = self.reactor.processes[-1]
        self.assertIn(SECRET_URL, process.args, "ffmpeg itself needs it")
        process.say(2, f"Input #0, rtsp, from '{SECRET_URL}':\n  Stream #0:0: Video: h264\n")
        process.say(3, "out_time_us=0\nprogress=continue\n")
        self.successResultOf(started)
        process.say(2, f"[rtsp @ 0x1] {SECRET_URL}: method PLAY failed: 401 Unauthorized\n")
        process.exit(1)
        masked = "rtsp://admin:***@127.0.0.1:8554/cam: method PLAY failed: 401 Unauthorized"
        self.assertIn(masked, self.recorder.last_error)
        self.assertIn((RECONNECTING, self.recorder.last_error), self.listener.states)
        self.assertIn(masked, self.store.closed_runs[0][1])
        self.assertTrue(any("recording rtsp://admin:***@127.0.0.1" in line for line in lines))
        self.assertTrue(any("Input #0, rtsp, from 'rtsp://admin:***@" in line for line in lines))
        everything = [*lines, *map(str, self.listener.states), *map(str, self.store.closed_runs)]
        self.assertEqual([text for text in everything if "hunter2" in text], [])

    def test_a_url_refused_since_it_was_stored_is_not_recorded(self):
        self.recorder.url = "udp://@:5000"
        failure = self.failureResultOf(self.start(), CannotStart)
        self.assertIn("Invalid URL: udp://@:5000 listens", failure.value.reason)
        self.assertEqual((self.reactor.processes, self.store.runs), ([], []))

    def test_a_start_failure_is_masked(self):
        self.recorder.url = SECRET_URL
        started = self.start()
        process = self.reactor.processes[-1]
        process.say(2, f"{SECRET_URL}: Connection refused\n")
        process.exit(1)
        self.assertEqual(
            self.failureResultOf(started).value.reason,
            "rtsp://admin:***@127.0.0.1:8554/cam: Connection refused",
        )
        self.assertNotIn("hunter2", self.recorder.last_error)


class LogBudgetTests(RecorderBase):
    def test_a_noisy_ffmpeg_is_logged_within_the_budget(self):
        lines = logged_lines(self)
        started = self.start()
        process = self.reactor.processes[-1]
        process.opened()
        self.successResultOf(started)
        launch = len(lines)
        process.say(2, "[h264 @ 0x1] decode_slice_header error\n" * 500)
        process.say(2, "[h264 @ 0x1] error while decoding MB 3 7\n")
        child = [line for line in lines[launch:] if "decode_slice_header" in line]
        self.assertEqual(len(child), LINES_PER_INTERVAL)
        # Every line still counts for why ffmpeg stopped.
        process.exit(1)
        self.assertEqual(self.recorder.last_error, "[h264 @ 0x1] error while decoding MB 3 7")
        stopped = defer.ensureDeferred(self.recorder.stop())
        self.successResultOf(stopped)
        self.assertIn(
            f"stream 7: {501 - LINES_PER_INTERVAL} lines of ffmpeg not logged"
            f" (at most {LINES_PER_INTERVAL} every 60 s)",
            lines,
        )
