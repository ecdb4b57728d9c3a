"""Judging a segment from its structure, decoding only when in doubt or asked."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from streamrec.media import fmp4
from streamrec.media.sampleentry import video_config
from streamrec.recorder.indexing import RETRY_FIRST, SegmentChecker, paced, retry_delays
from streamrec.recorder.layout import SegmentLayout
from streamrec.recorder.supervisor import RECONNECTING, Backoff, Recorder
from streamrec.recorder.validate import (
    InvalidSegment,
    decodes,
    inspect_segment,
    structure_problems,
    transient,
    validate_segment,
)

from ..support.recordings import recording
from .test_supervisor import FakeStore, Listener, ProcessReactor


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[Callable[[], None]]:
    """This process out of file descriptors for real (EMFILE from the kernel)
    until the ``release`` it yields is called, or the block ends.

    The soft RLIMIT_NOFILE is lowered for the while and what it still allows
    is taken; nothing else runs meanwhile (no reactor, no thread).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []

    def release() -> None:
        while held:
            os.close(held.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 64), hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as error:
                if error.errno != errno.EMFILE:
                    raise
                break
        yield release
    finally:
        release()


class StructureTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.good = recording("h264_bf2_aac", bf=2, audio=True).pieces[1].path
        self.segment = fmp4.read_segment(self.good)
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def variant(self, change) -> str:
        """A copy of the good segment with ``change(bytearray)`` applied."""
        path = os.path.join(self.dir, f"v{len(os.listdir(self.dir))}.mp4")
        data = bytearray(open(self.good, "rb").read())
        change(data)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def test_a_recorded_segment_passes(self):
        self.assertEqual(structure_problems(self.segment), ([], []))
        self.assertEqual(video_config(self.segment.init.video.stsd).parameter_sets, 2)
        first, end = validate_segment(self.good, 30)
        self.assertAlmostEqual(end - first, 2.0, places=2)

    def test_h265_parameter_sets_are_found_too(self):
        rec = recording("h265_bf2_aac", bf=2, audio=True, codec="libx265")
        segment = fmp4.read_segment(rec.pieces[0].path)
        config = video_config(segment.init.video.stsd)
        self.assertEqual(config.fourcc, b"hvc1")
        self.assertGreaterEqual(config.parameter_sets, 3)  # VPS, SPS, PPS
        self.assertEqual(structure_problems(segment), ([], []))

    def test_garbage_pictures_pass_the_structure_and_fail_the_decode(self):
        def zero_pictures(data: bytearray) -> None:
            video = self.segment.video
            for offset, size in zip(video.offset, video.size):
                data[offset : offset + size] = bytes(size)

        path = self.variant(zero_pictures)
        validate_segment(path, 30)  # the structure cannot tell
        self.assertRaises(InvalidSegment, validate_segment, path, 30, True)

    def test_no_parameter_sets_is_refused_without_a_decode(self):
        def drop_sps(data: bytearray) -> None:
            at = bytes(data).index(b"avcC") + 4
            data[at + 5] &= 0xE0  # numOfSequenceParameterSets = 0

        error = self.assertRaises(InvalidSegment, validate_segment, self.variant(drop_sps), 30)
        self.assertIn("no parameter sets", str(error))

    def test_a_segment_not_starting_with_a_key_frame_is_decoded(self):
        segment = fmp4.read_segment(self.good)
        segment.video.sync[0] = False
        problems, doubts = structure_problems(segment)
        self.assertEqual((problems, doubts), ([], ["does not start with a key frame"]))

    def test_truncated_and_absurd_segments_are_refused(self):
        size = os.path.getsize(self.good)
        truncated = self.variant(lambda data: data.__delitem__(slice(size // 3, None)))
        error = self.assertRaises(InvalidSegment, validate_segment, truncated, 30)
        self.assertIn("no complete video fragment", str(error))
        error = self.assertRaises(InvalidSegment, validate_segment, self.good, 1.0)
        self.assertIn("not plausible", str(error))


class CheckerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.layout = SegmentLayout(self.mktemp())
        run = self.layout.run_dir(1, 1)
        os.makedirs(run)
        self.path = self.layout.segment_path(run, 0)
        shutil.copy(recording("h264_bf2_aac", bf=2, audio=True).pieces[1].path, self.path)
        self.decoded: list[bool] = []

    def validate(self, path: str, max_duration: float, decode: bool) -> tuple[float, float]:
        self.decoded.append(decode)
        return validate_segment(path, max_duration, decode)

    def inspect(self, path: str, max_duration: float) -> tuple[float, float, list[str]]:
        self.decoded.append(False)
        return inspect_segment(path, max_duration)

    @defer.inlineCallbacks
    def test_one_in_n_is_decoded_and_thorough_checks_always(self):
        checker = SegmentChecker(
            layout=self.layout,
            run_blocking=defer.maybeDeferred,
            max_duration=30,
            validate=self.validate,
            inspect=self.inspect,
            decode_every=3,
        )
        for _ in range(6):
            checked = yield defer.ensureDeferred(checker.check(self.path))
            self.assertTrue(checked.ok)
        yield defer.ensureDeferred(checker.check(self.path, thorough=True))
        self.assertEqual(self.decoded, [True, False, False, True, False, False, True])

    @defer.inlineCallbacks
    def test_decodes_asked_together_go_together(self):
        trips: list[tuple[Any, defer.Deferred[Any]]] = []

        def run_blocking(fn: Any, files: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            trips.append((lambda: fn(files), d))
            return d

        checker = SegmentChecker(layout=self.layout, run_blocking=run_blocking, max_duration=30)
        bad = self.layout.segment_path(self.layout.run_dir(1, 1), 1)
        with open(bad, "wb") as handle:
            handle.write(b"garbage")
        checks = [
            defer.ensureDeferred(checker.check(p, thorough=True))
            for p in (self.path, self.path, bad)
        ]
        self.assertEqual(len(trips), 1, "the others wait for the first trip")
        work, d = trips.pop()
        d.callback(work())
        self.assertEqual(len(trips), 1, "then go together")
        work, d = trips.pop()
        d.callback(work())
        results = yield defer.gatherResults(checks)
        self.assertEqual([r.ok for r in results], [True, True, False])
        self.assertIsNotNone(results[2].quarantined_to)

    def test_many_segments_are_read_a_slice_at_a_time(self):
        """Segments closing together are read in slices of the reactor's time:
        between two slices, the reactor handles what is waiting (the API)."""
        clock = Clock()
        turns: list[Any] = []  # the reactor's turns the checker asked for

        class Reactor:
            seconds = clock.seconds

            def callLater(self, delay: float, work: Any) -> None:
                turns.append(work)

        read: list[str] = []

        def inspect(path: str, longest: float) -> tuple[float, float, list[str]]:
            read.append(path)
            clock.advance(0.003)  # each takes 3 ms of the slice's 4
            return inspect_segment(path, longest)

        checker = SegmentChecker(
            layout=self.layout,
            run_blocking=defer.maybeDeferred,
            max_duration=30,
            inspect=inspect,
            decode_every=1_000_000,
            cooperator=paced(Reactor()),
        )
        checker.checked = 1  # none of them is the one decoded
        checks = [defer.ensureDeferred(checker.check(self.path)) for _ in range(5)]
        self.assertEqual(read, [], "nothing is read before the reactor's next turn")
        done_by_turn = []
        while turns:
            turns.pop(0)()
            done_by_turn.append(len(read))
        self.assertEqual(done_by_turn, [2, 4, 5], "two a turn: the slice ends within the second")
        self.assertTrue(all(self.successResultOf(d).ok for d in checks))

    @defer.inlineCallbacks
    def test_an_empty_file_is_removed(self):
        open(self.path, "wb").close()
        checker = SegmentChecker(
            layout=self.layout, run_blocking=defer.maybeDeferred, max_duration=30
        )
        checked = yield defer.ensureDeferred(checker.check(self.path))
        self.assertEqual((checked.ok, checked.quarantined_to), (False, None))
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(os.path.exists(self.layout.quarantine_root))

    @defer.inlineCallbacks
    def test_bad_segments_go_to_quarantine(self):
        with open(self.path, "r+b") as handle:
            handle.truncate(100)
        checker = SegmentChecker(
            layout=self.layout, run_blocking=defer.maybeDeferred, max_duration=30
        )
        checked = yield defer.ensureDeferred(checker.check(self.path))
        self.assertFalse(checked.ok)
        self.assertEqual(
            checked.quarantined_to,
            os.path.join(self.layout.quarantine_root, "1", "1", "seg000000.mp4"),
        )
        self.assertFalse(os.path.exists(self.path))


class NotReadableForNowTests(unittest.SynchronousTestCase):
    """A file that cannot be opened for a moment (EMFILE while a flood of
    connections holds every descriptor) is tried again, never quarantined."""

    def setUp(self) -> None:
        self.layout = SegmentLayout(self.mktemp())
        run = self.layout.run_dir(1, 1)
        os.makedirs(run)
        self.path = self.layout.segment_path(run, 0)
        shutil.copy(recording("h264_bf2_aac", bf=2, audio=True).pieces[1].path, self.path)
        self.clock = Clock()

    def checker(self, **options: Any) -> SegmentChecker:
        return SegmentChecker(
            layout=self.layout,
            run_blocking=defer.maybeDeferred,
            max_duration=30,
            clock=self.clock,
            **options,
        )

    def test_emfile_is_transient_and_corruption_is_not(self):
        with descriptors_exhausted():
            error = self.assertRaises(OSError, inspect_segment, self.path, 30)
            decode_error = self.assertRaises(OSError, decodes, self.path)
        self.assertEqual((error.errno, decode_error.errno), (errno.EMFILE, errno.EMFILE))
        self.assertTrue(transient(error) and transient(decode_error))
        self.assertFalse(transient(OSError(errno.ENOENT, "gone")))
        self.assertFalse(transient(InvalidSegment("bad")))

    def test_a_segment_read_during_emfile_is_tried_again_and_passes(self):
        for thorough in (False, True):  # the structure alone, and with a decode
            checker = self.checker(decode_every=1_000_000)
            checker.checked = 1
            with descriptors_exhausted() as release:
                checking = defer.ensureDeferred(checker.check(self.path, thorough=thorough))
                self.assertNoResult(checking)
                self.clock.advance(RETRY_FIRST)
                self.assertNoResult(checking)  # tried again: still no descriptor
                release()
            for _ in range(10):
                self.clock.advance(1)
            checked = self.successResultOf(checking)
            self.assertTrue(checked.ok, checked.problem)
            self.assertAlmostEqual(checked.duration, 2.0, places=1)
            self.assertEqual(checker.retried, 1)
            self.assertTrue(os.path.exists(self.path))
            self.assertFalse(os.path.exists(self.layout.quarantine_root))

    def test_a_shortage_that_lasts_leaves_the_file_in_place(self):
        checker = self.checker(retry_for=3.0)
        with descriptors_exhausted():
            checking = defer.ensureDeferred(checker.check(self.path))
            for _ in range(10):
                self.clock.advance(1)
            checked = self.successResultOf(checking)
        self.assertFalse(checked.ok)
        self.assertIn("Too many open files", checked.problem or "")
        self.assertIsNone(checked.quarantined_to)
        self.assertTrue(os.path.exists(self.path))
        self.assertFalse(os.path.exists(self.layout.quarantine_root))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_file_gone_is_not_tried_again(self):
        checked = self.successResultOf(
            defer.ensureDeferred(self.checker().check(self.path + ".gone"))
        )
        self.assertEqual((checked.ok, checked.quarantined_to), (False, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backoff_doubles_to_its_cap_within_the_total(self):
        delays = list(retry_delays(first=0.05, cap=2.0, total=10.0))
        self.assertEqual(delays[:6], [0.05, 0.1, 0.2, 0.4, 0.8, 1.6])
        self.assertEqual(set(delays[6:]), {2.0})
        self.assertLessEqual(sum(delays), 10.0)


class RecorderDuringEmfileTests(unittest.SynchronousTestCase):
    """The recorder with a real checker while the process is out of descriptors:
    the segment is indexed once they are back, and a segmenter that cannot be
    launched for want of one is launched again."""

    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.reactor.advance(1_000_000)
        self.store = FakeStore()
        self.listener = Listener()
        self.layout = SegmentLayout(os.path.abspath(self.mktemp()))
        checker = SegmentChecker(
            layout=self.layout,
            run_blocking=defer.maybeDeferred,
            max_duration=30,
            clock=self.reactor,
        )
        self.recorder = Recorder(
            7,
            "rtsp://127.0.0.1:8554/cam",
            reactor=self.reactor,
            store=self.store,  # type: ignore[arg-type]
            ffmpeg="/usr/bin/ffmpeg",
            layout=self.layout,
            checker=checker,
            listener=self.listener,
            backoff=Backoff(initial=1, factor=2, cap=30, jitter=0),
            clock="arrival",  # no camera clock to wait for
        )
        self.segment = recording("h264_bf2_aac", bf=2, audio=True).pieces[1].path

    def recording(self) -> Any:
        started = defer.ensureDeferred(self.recorder.start())
        process = self.reactor.processes[-1]
        self.reactor.advance(0.5)
        process.opened()
        self.successResultOf(started)
        self.reactor.advance(0.5)
        process.say(3, "out_time_us=1000000\nprogress=continue\n")
        self.reactor.advance(1.5)
        return process

    def test_a_segment_closed_during_emfile_is_indexed_not_quarantined(self):
        process = self.recording()
        shutil.copy(self.segment, os.path.join(process.path, "seg000000.mp4"))
        with descriptors_exhausted() as release:
            process.say(1, "seg000000.mp4,0.000000,2.000000\n")
            self.reactor.advance(1)
            self.assertEqual(self.store.segments, {})
            release()
        self.reactor.advance(2)
        self.assertEqual([s[1] for s in self.store.segments.values()], ["seg000000.mp4"])
        self.assertEqual(len(self.listener.segments), 1)
        self.assertFalse(os.path.exists(self.layout.quarantine_root))

    def test_a_relaunch_failing_with_emfile_is_tried_again(self):
        process = self.recording()
        shutil.copy(self.segment, os.path.join(process.path, "seg000000.mp4"))
        process.say(1, "seg000000.mp4,0.000000,2.000000\n")
        spawn = self.reactor.spawnProcess
        failures = [OSError(errno.EMFILE, "Too many open files")] * 3

        def short_of_descriptors(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return spawn(*args, **kwargs)

        self.reactor.spawnProcess = short_of_descriptors  # type: ignore[method-assign]
        process.exit(1)  # the segmenter died: launched again at once, which fails
        self.reactor.advance(0.2)
        self.assertEqual(self.recorder.state, RECONNECTING)
        self.assertIn("Too many open files", self.recorder.last_error or "")
        self.assertTrue(self.recorder.wanted)
        for _ in range(20):
            self.reactor.advance(0.5)
        self.assertEqual(failures, [])
        self.assertEqual(len(self.reactor.processes), 2, "launched once descriptors are back")
        self.reactor.processes[-1].opened()
        self.assertEqual(self.recorder.state, "recording")
