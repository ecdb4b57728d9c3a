"""The segmenter supervisor, driven with a fake process reactor and a clock."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from streamrec.errors import CannotStart
from streamrec.recorder.indexing import SegmentChecker
from streamrec.recorder.layout import SegmentLayout
from streamrec.recorder.supervisor import (
    DISK_FULL,
    RECONNECTING,
    RECORDING,
    STARTING,
    STOPPED,
    Backoff,
    Recorder,
    explain,
)
from streamrec.recorder.validate import InvalidSegment


class FakeProcess:
    def __init__(self, protocol: Any, args: list[str], path: str) -> None:
        self.protocol = protocol
        self.args = args
        self.path = path
        self.pid = 4242
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    # what the child does
    def say(self, fd: int, text: str) -> None:
        self.protocol.childDataReceived(fd, text.encode())

    def opened(self) -> None:
        self.say(3, "out_time_us=0\nprogress=continue\n")

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        self.ended = True
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exitCode=code, signal=signal))
        self.protocol.processEnded(reason)


class ProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol, executable, args, env=None, path=None, **kwargs):
        process = FakeProcess(protocol, args, path)
        self.processes.append(process)
        protocol.makeConnection(process)
        return process


class FakeStore:
    def __init__(self) -> None:
        self.runs: list[tuple[int, float]] = []
        self.closed_runs: list[tuple[int, str]] = []
        self.segments: dict[int, list[Any]] = {}
        self.shifts: list[float] = []
        self.run_clocks: dict[int, tuple[str, float]] = {}

    async def open_run(self, stream_id: int, now: float, *lease: Any) -> int:
        self.runs.append((stream_id, now))
        return len(self.runs)

    async def close_run(self, run_id: int, now: float, reason: str) -> None:
        self.closed_runs.append((run_id, reason))

    async def set_run_clock(self, run_id: int, clock: str, time_error: float) -> None:
        self.run_clocks[run_id] = (clock, time_error)

    async def add_segment(self, stream_id, run_id, path, start, end, size) -> int:
        self.segments[len(self.segments) + 1] = [run_id, os.path.basename(path), start, end, size]
        return len(self.segments)

    async def shift_run(self, run_id: int, delta: float) -> None:
        self.shifts.append(delta)
        for segment in self.segments.values():
            if segment[0] == run_id:
                segment[2] += delta
                segment[3] += delta


class Listener:
    def __init__(self) -> None:
        self.states: list[tuple[str, str | None]] = []
        self.segments: list[tuple[float, float]] = []
        self.audio: list[str] = []

    def segment_closed(self, stream_id, segment_id, path, start, end) -> None:
        self.segments.append((start, end))

    def state_changed(self, stream_id, state, error) -> None:
        self.states.append((state, error))

    def disk_full(self, stream_id) -> None:
        self.states.append(("disk_full called", None))

    def audio_found(self, stream_id, codec) -> None:
        self.audio.append(codec)


class RecorderBase(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.reactor.advance(1_000_000)
        self.store = FakeStore()
        self.listener = Listener()
        self.data_dir = os.path.abspath(self.mktemp())
        layout = SegmentLayout(self.data_dir)
        self.spans: dict[str, tuple[float, float]] = {}
        self.recorder = Recorder(
            7,
            "rtsp://127.0.0.1:8554/cam",
            reactor=self.reactor,
            store=self.store,  # type: ignore[arg-type]
            ffmpeg="/usr/bin/ffmpeg",
            layout=layout,
            checker=SegmentChecker(
                layout=layout,
                run_blocking=defer.maybeDeferred,
                max_duration=30,
                validate=self._validate,
                inspect=lambda path, longest: (*self._validate(path, longest, False), []),
            ),
            listener=self.listener,
            start_timeout=8,
            kill_timeout=5,
            backoff=Backoff(initial=1, factor=2, cap=30, jitter=0),
            clock="arrival",  # the fake segments carry no camera clock to wait for
        )

    def _validate(self, path: str, max_duration: float, decode: bool) -> tuple[float, float]:
        name = os.path.basename(path)
        if name not in self.spans:
            raise InvalidSegment(f"{path}: no complete fragment")
        return self.spans[name]

    def write_segment(self, process: FakeProcess, name: str, span: tuple[float, float]) -> None:
        with open(os.path.join(process.path, name), "wb") as handle:
            handle.write(b"\0" * 100)
        self.spans[name] = span

    def start(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.recorder.start())


class RecorderTests(RecorderBase):
    def test_start_waits_for_the_source(self):
        started = self.start()
        self.assertNoResult(started)
        self.assertEqual(self.recorder.state, STARTING)
        [process] = self.reactor.processes
        self.assertEqual(process.path, os.path.join(self.data_dir, "segments", "7", "1"))
        self.assertTrue(os.path.isdir(process.path))
        process.opened()
        self.successResultOf(started)
        self.assertEqual(self.recorder.state, RECORDING)

    def test_start_answers_after_timeout_while_connecting(self):
        started = self.start()
        self.reactor.advance(7.9)
        self.assertNoResult(started)
        self.reactor.advance(0.2)
        self.successResultOf(started)
        self.assertEqual(self.recorder.state, STARTING)
        self.assertTrue(self.recorder.wanted)

    def test_start_failure_reports_ffmpeg_reason(self):
        started = self.start()
        [process] = self.reactor.processes
        process.say(
            2,
            "ffmpeg version 5.1\n[tcp @ 0x1] Connection to tcp://127.0.0.1:8554 failed: Connection refused\n",
        )
        process.say(2, "rtsp://127.0.0.1:8554/cam: Connection refused\n")
        process.exit(1)
        failure = self.failureResultOf(started, CannotStart)
        self.assertEqual(failure.value.reason, "rtsp://127.0.0.1:8554/cam: Connection refused")
        self.assertEqual(self.recorder.state, STOPPED)
        self.assertFalse(self.recorder.wanted)
        self.reactor.advance(120)
        self.assertEqual(len(self.reactor.processes), 1, "a failed start must not retry")

    def test_segments_map_to_wall_clock(self):
        t0 = self.reactor.seconds()
        started = self.start()
        [process] = self.reactor.processes
        self.reactor.advance(0.5)
        process.opened()
        self.successResultOf(started)
        # Media time 1.0 reported 1.2 s after launch (anchor <= t0 + 0.2), then a
        # segment ending at 3.0 closes at +3.1: anchor = t0 + 0.1.
        self.reactor.advance(0.7)
        process.say(3, "out_time_us=1000000\nprogress=continue\n")
        self.reactor.advance(1.9)
        self.write_segment(process, "seg000000.mp4", (0.08, 2.48))
        process.say(1, "seg000000.mp4,0.000000,3.000000\n")
        self.assertEqual(len(self.store.segments), 1)
        _, name, start, end, size = self.store.segments[1]
        self.assertEqual((name, size), ("seg000000.mp4", 100))
        self.assertAlmostEqual(end, t0 + 0.1 + 3.0, places=6)
        self.assertAlmostEqual(end - start, 2.4, places=6)
        # A report with less latency moves the whole run earlier.
        self.reactor.advance(1.95)
        process.say(3, "out_time_us=5000000\nprogress=continue\n")
        _, _, start2, end2, _ = self.store.segments[1]
        self.assertAlmostEqual(end2, t0 + 0.05 + 3.0, places=6)
        self.write_segment(process, "seg000001.mp4", (0.08, 2.08))
        self.reactor.advance(0.1)
        process.say(1, "seg000001.mp4,3.000000,5.000000\n")
        _, _, start3, end3, _ = self.store.segments[2]
        self.assertAlmostEqual(start3, end2, places=6)
        self.assertAlmostEqual(end3, t0 + 0.05 + 5.0, places=6)
        self.assertEqual(len(self.listener.segments), 2)

    def test_segments_written_while_catching_up_wait_for_a_settled_clock(self):
        t0 = self.reactor.seconds()
        started = self.start()
        process = self.reactor.processes[0]
        self.reactor.advance(5.0)  # probing the source
        process.opened()
        self.successResultOf(started)
        process.say(3, "out_time_us=500000\nprogress=continue\n")
        for index, end in enumerate((2.0, 4.0)):  # the burst of what was buffered
            self.reactor.advance(0.01)
            self.write_segment(process, f"seg00000{index}.mp4", (0.0, 2.0))
            process.say(1, f"seg00000{index}.mp4,{end - 2},{end}\n")
        self.assertEqual(self.store.segments, {})
        self.reactor.advance(0.48)
        process.say(3, "out_time_us=4600000\nprogress=continue\n")
        self.assertEqual(self.store.segments, {})
        self.reactor.advance(0.5)
        process.say(3, "out_time_us=5100000\nprogress=continue\n")
        ends = [segment[3] - t0 for segment in self.store.segments.values()]
        self.assertEqual([round(end, 6) for end in ends], [2.9, 4.9])
        self.assertEqual(self.store.shifts, [])

    def test_stop_interrupts_then_kills(self):
        started = self.start()
        [process] = self.reactor.processes
        process.opened()
        self.successResultOf(started)
        stopped = defer.ensureDeferred(self.recorder.stop())
        self.assertEqual(process.signals, ["INT"])
        self.assertNoResult(stopped)
        self.reactor.advance(5)
        self.assertEqual(process.signals, ["INT", "KILL"])
        process.exit(signal=9)
        self.successResultOf(stopped)
        self.assertEqual(self.recorder.state, STOPPED)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_graceful_stop_indexes_last_segment(self):
        started = self.start()
        [process] = self.reactor.processes
        process.opened()
        self.successResultOf(started)
        stopped = defer.ensureDeferred(self.recorder.stop())
        self.write_segment(process, "seg000000.mp4", (0.0, 1.3))
        process.say(1, "seg000000.mp4,0.000000,1.300000\n")
        process.exit(255)
        self.successResultOf(stopped)
        self.assertEqual(len(self.store.segments), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_reconnects_with_capped_backoff(self):
        started = self.start()
        first = self.reactor.processes[0]
        first.opened()
        self.successResultOf(started)
        first.say(2, "rtsp://cam: Connection timed out\n")
        first.exit(1)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.assertEqual(self.recorder.last_error, "rtsp://cam: Connection timed out")
        delays = []
        for _ in range(8):
            before = self.reactor.seconds()
            count = len(self.reactor.processes)
            while len(self.reactor.processes) == count:
                self.reactor.advance(0.25)
            delays.append(self.reactor.seconds() - before)
            self.reactor.processes[-1].exit(1)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30, 30])
        self.assertEqual(self.recorder.reconnects, 8)
        # A run that recorded is launched again at once, and resets the backoff.
        while len(self.reactor.processes) == 9:
            self.reactor.advance(0.25)
        process = self.reactor.processes[-1]
        process.opened()
        self.assertEqual(self.recorder.state, RECORDING)
        self.write_segment(process, "seg000000.mp4", (0.0, 2.0))
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        process.exit(1)
        before = self.reactor.seconds()
        while len(self.reactor.processes) == 10:
            self.reactor.advance(0.05)
        self.assertAlmostEqual(self.reactor.seconds() - before, 0.1)
        self.reactor.processes[-1].exit(1)  # and fails: the backoff starts again
        before = self.reactor.seconds()
        while len(self.reactor.processes) == 11:
            self.reactor.advance(0.25)
        self.assertEqual(self.reactor.seconds() - before, 1)
        stopped = defer.ensureDeferred(self.recorder.stop())
        self.reactor.processes[-1].exit(255)
        self.successResultOf(stopped)

    def test_stop_while_waiting_to_reconnect(self):
        started = self.start()
        self.reactor.processes[0].opened()
        self.successResultOf(started)
        self.reactor.processes[0].exit(1)
        self.successResultOf(defer.ensureDeferred(self.recorder.stop()))
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(self.recorder.state, STOPPED)

    def test_killed_segmenter_keeps_partial_segment(self):
        started = self.start()
        process = self.reactor.processes[0]
        process.opened()
        self.successResultOf(started)
        self.reactor.advance(2.05)
        self.write_segment(process, "seg000000.mp4", (0.0, 2.0))
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        self.write_segment(process, "seg000001.mp4", (0.0, 1.2))  # flushed before the kill
        process.exit(signal=9)
        self.assertEqual(len(self.store.segments), 2)
        _, name, start, end, _ = self.store.segments[2]
        self.assertEqual(name, "seg000001.mp4")
        self.assertAlmostEqual(start, self.store.segments[1][3])
        self.assertAlmostEqual(end - start, 1.2)
        self.assertEqual(self.recorder.state, RECONNECTING)

    def test_resume_retries_until_the_source_answers(self):
        self.recorder.resume()
        self.reactor.advance(0)
        self.reactor.processes[0].exit(1)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.processes[1].opened()
        self.assertEqual(self.recorder.state, RECORDING)


class ExplainTests(unittest.SynchronousTestCase):
    def test_picks_the_error(self):
        lines = [
            "Input #0, rtsp, from 'rtsp://cam'",
            "[rtsp @ 0x5] method DESCRIBE failed: 404 Not Found",
            "rtsp://cam/x: Server returned 404 Not Found",
            "",
        ]
        self.assertEqual(explain(lines), "rtsp://cam/x: Server returned 404 Not Found")

    def test_falls_back_to_last_line(self):
        self.assertEqual(explain(["a", "b", " "]), "b")
        self.assertEqual(explain([]), "ffmpeg exited")


class RecorderFaultTests(RecorderBase):
    """The watchdog, bad segments and a full disk."""

    def opened(self) -> FakeProcess:
        """A segmenter that opened its source and whose clock has settled."""
        started = self.start()
        process = self.reactor.processes[-1]
        process.opened()
        self.successResultOf(started)
        process.say(3, "out_time_us=100000\nprogress=continue\n")
        self.reactor.advance(0.5)
        process.say(3, "out_time_us=600000\nprogress=continue\n")
        return process

    def test_watchdog_restarts_a_stalled_segmenter(self):
        process = self.opened()
        self.reactor.advance(self.recorder.stall_timeout - 1)
        self.write_segment(process, "seg000000.mp4", (0.0, 2.0))
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        self.reactor.advance(self.recorder.stall_timeout - 1)
        self.assertEqual(process.signals, [])
        self.reactor.advance(1)
        self.assertEqual(process.signals, ["INT"])
        self.reactor.advance(self.recorder.kill_timeout)
        self.assertEqual(process.signals, ["INT", "KILL"])
        process.exit(signal=9)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.assertIn("no new segment", self.recorder.last_error)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_watchdog_waits_while_segments_are_retried(self):
        process = self.opened()
        self.recorder.checker.waiting = 1  # a closed segment cannot be read for now
        self.reactor.advance(self.recorder.stall_timeout * 3)
        self.assertEqual(process.signals, [])
        self.recorder.checker.waiting = 0
        self.reactor.advance(self.recorder.stall_timeout)
        self.assertEqual(process.signals, ["INT"])

    def test_bad_segment_is_quarantined_not_indexed(self):
        process = self.opened()
        path = os.path.join(process.path, "seg000000.mp4")
        with open(path, "wb") as handle:
            handle.write(b"garbage")
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        self.assertEqual(self.store.segments, {})
        self.assertFalse(os.path.exists(path))
        moved = os.path.join(self.data_dir, "quarantine", "7", "1", "seg000000.mp4")
        with open(moved, "rb") as handle:
            self.assertEqual(handle.read(), b"garbage")

    def test_disk_full_is_a_state_and_retries(self):
        process = self.opened()
        process.say(2, "[segment @ 0x1] Failure occurred when ending segment 'seg000003.mp4'\n")
        process.say(2, "av_interleaved_write_frame(): No space left on device\n")
        process.exit(1)
        self.assertEqual(self.recorder.state, DISK_FULL)
        self.assertIn("No space left on device", self.recorder.last_error)
        self.assertIn(("disk_full called", None), self.listener.states)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 2)


class SlowStore(FakeStore):
    """open_run answers only when the test says so (or fails if told to)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[defer.Deferred[int]] = []
        self.fail_runs = 0

    async def open_run(self, stream_id: int, now: float, *lease: Any) -> int:
        if self.fail_runs:
            self.fail_runs -= 1
            raise OSError("database or disk is full")
        d: defer.Deferred[int] = defer.Deferred()
        self.pending.append(d)
        await d
        return await super().open_run(stream_id, now)


class RecorderRaceTests(RecorderBase):
    def test_failure_after_start_timed_out_reconnects(self):
        started = self.start()
        self.reactor.advance(8.1)
        self.successResultOf(started)
        self.reactor.processes[0].say(2, "rtsp://cam: Connection timed out\n")
        self.reactor.processes[0].exit(1)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_late_kill_never_hits_the_next_segmenter(self):
        started = self.start()
        old = self.reactor.processes[0]
        old.opened()
        self.successResultOf(started)
        stopping = defer.ensureDeferred(self.recorder.stop())
        self.assertEqual(old.signals, ["INT"])
        old.exit(255)
        self.successResultOf(stopping)
        restarted = self.start()
        new = self.reactor.processes[1]
        new.opened()
        self.successResultOf(restarted)
        self.reactor.advance(self.recorder.kill_timeout + 1)
        self.assertEqual((old.signals, new.signals), (["INT"], []))
        self.assertEqual(self.recorder.state, RECORDING)

    def test_stop_while_a_restart_is_launching(self):
        self.recorder.store = store = SlowStore()
        self.recorder.resume()
        self.assertEqual(len(store.pending), 1)
        stopping = defer.ensureDeferred(self.recorder.stop())
        self.assertNoResult(stopping)
        store.pending[0].callback(None)
        self.successResultOf(stopping)
        self.assertEqual(self.reactor.processes, [], "nothing spawned after the stop")
        self.assertEqual(self.recorder.state, STOPPED)

    def test_restart_survives_a_failing_database(self):
        started = self.start()
        self.reactor.processes[0].opened()
        self.successResultOf(started)
        self.recorder.store = store = SlowStore()
        store.fail_runs = 3
        self.reactor.processes[0].exit(1)
        for _ in range(3):
            self.reactor.advance(30)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.assertIn("database or disk is full", self.recorder.last_error)
        self.reactor.advance(30)
        store.pending[0].callback(None)
        self.assertEqual(len(self.reactor.processes), 2)
        self.flushLoggedErrors(OSError)

    def test_start_failing_in_the_database_is_cannot_start(self):
        self.recorder.store = store = SlowStore()
        store.fail_runs = 1
        failure = self.failureResultOf(self.start(), CannotStart)
        self.assertIn("database or disk is full", failure.value.reason)
        self.assertFalse(self.recorder.wanted)
        self.assertEqual(self.recorder.state, STOPPED)


INPUT_REPORT = """Input #0, rtsp, from 'rtsp://127.0.0.1:8554/cam':
  Metadata:
    title           : Session streamed with GStreamer
  Duration: N/A, start: 0.000000, bitrate: N/A
  Stream #0:0: Video: h264 (Constrained Baseline), yuv420p(progressive), 320x240, 25 fps
  Stream #0:1: Audio: {codec}, 8000 Hz, mono, s16, 64 kb/s
[segment @ 0x5600] Opening 'seg000000.mp4' for writing
"""


class SourceAudioTests(RecorderBase):
    """AAC is copied, the rest encoded; the codec is learned from ffmpeg's report."""

    def audio_of(self, process: FakeProcess) -> list[str]:
        args = process.args
        return args[args.index("-c:a") : args.index("-c:a") + 2]

    def test_unknown_audio_is_copied_and_g711_encoded_once_known(self):
        started = self.start()
        [first] = self.reactor.processes
        self.assertEqual(self.audio_of(first), ["-c:a", "copy"])
        os.makedirs(first.path, exist_ok=True)
        open(os.path.join(first.path, "seg000000.mp4"), "wb").close()  # its header
        first.say(2, INPUT_REPORT.format(codec="pcm_alaw"))
        self.assertEqual(first.signals, ["KILL"])
        self.assertEqual(self.listener.audio, ["pcm_alaw"])
        first.exit(signal=9)
        self.assertNoResult(started)
        second = self.reactor.processes[1]
        self.assertEqual(self.audio_of(second), ["-c:a", "aac"])
        self.assertFalse(os.path.exists(first.path), "the first run left nothing")
        self.assertIn("relaunched: the source's audio is pcm_alaw", self.store.closed_runs[0][1])
        second.opened()
        self.successResultOf(started)
        self.assertEqual(self.recorder.state, RECORDING)
        second.say(2, INPUT_REPORT.format(codec="pcm_alaw"))
        self.assertEqual(second.signals, [])

    def test_aac_is_copied_without_a_relaunch(self):
        started = self.start()
        [first] = self.reactor.processes
        first.say(2, INPUT_REPORT.format(codec="aac (LC)"))
        self.assertEqual((first.signals, self.listener.audio), ([], ["aac"]))
        first.opened()
        self.successResultOf(started)

    def test_start_answers_once_the_source_is_open(self):
        started = self.start()
        [first] = self.reactor.processes
        self.assertNoResult(started)
        first.say(2, INPUT_REPORT.format(codec="aac (LC)"))  # before any output
        self.successResultOf(started)
        self.assertEqual(self.recorder.state, RECORDING)

    def test_known_g711_is_encoded_from_the_start_and_aac_copied_again(self):
        self.recorder.source_audio = "pcm_mulaw"
        started = self.start()
        [first] = self.reactor.processes
        self.assertEqual(self.audio_of(first), ["-c:a", "aac"])
        first.say(2, INPUT_REPORT.format(codec="aac (LC)"))  # the camera was reconfigured
        first.exit(signal=9)
        second = self.reactor.processes[1]
        self.assertEqual(self.audio_of(second), ["-c:a", "copy"])
        self.assertEqual(self.listener.audio, ["aac"])
        second.opened()
        self.successResultOf(started)

    def test_no_relaunch_once_recording(self):
        started = self.start()
        [process] = self.reactor.processes
        process.opened()
        self.successResultOf(started)
        self.reactor.advance(2.05)
        self.write_segment(process, "seg000000.mp4", (0.0, 2.0))
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        process.say(2, INPUT_REPORT.format(codec="pcm_alaw"))
        self.assertEqual(process.signals, [])
        self.assertEqual(self.recorder.source_audio, "pcm_alaw", "the next launch encodes")

    def test_a_source_without_audio(self):
        started = self.start()
        [first] = self.reactor.processes
        report = INPUT_REPORT.format(codec="x").splitlines()
        first.say(2, "\n".join(line for line in report if "Audio" not in line) + "\n")
        self.assertEqual((first.signals, self.listener.audio), ([], ["none"]))
        first.opened()
        self.successResultOf(started)


class ProbeTests(RecorderBase):
    def probe_of(self, process: FakeProcess) -> float:
        return int(process.args[process.args.index("-analyzeduration") + 1]) / 1e6

    def test_a_source_not_learned_in_time_is_probed_longer(self):
        started = self.start()
        [first] = self.reactor.processes
        self.assertEqual(self.probe_of(first), 2.0)
        first.say(
            2, "[h264 @ 0x1] Could not find codec parameters for stream 0: unspecified size\n"
        )
        first.exit(1)
        self.assertNoResult(started)  # still starting: launched again with a longer probe
        second = self.reactor.processes[1]
        self.assertEqual(self.probe_of(second), 4.0)
        second.opened()
        self.successResultOf(started)
        second.exit(1)
        self.reactor.advance(1)
        self.assertEqual(self.probe_of(self.reactor.processes[2]), 4.0, "kept for later runs")

    def test_the_probe_has_a_ceiling(self):
        started = self.start()
        for expected in (2.0, 4.0, 8.0, 10.0):
            process = self.reactor.processes[-1]
            self.assertEqual(self.probe_of(process), expected)
            process.say(2, "Could not find codec parameters for stream 0\n")
            process.exit(1)
        self.failureResultOf(started, CannotStart)
        self.assertEqual(len(self.reactor.processes), 4)
