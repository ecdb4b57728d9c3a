"""Judging a segment from its structure, decoding only when in doubt or asked."""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from streamrec.media import fmp4
from streamrec.media.sampleentry import video_config
from streamrec.recorder.indexing import SegmentChecker, paced
from streamrec.recorder.layout import SegmentLayout
from streamrec.recorder.validate import (
    InvalidSegment,
    inspect_segment,
    structure_problems,
    validate_segment,
)

from ..support.recordings import recording


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
