"""The run timeline's arithmetic, with plain numbers."""

from __future__ import annotations

from twisted.trial import unittest

from streamrec.recorder.timeline import SETTLE_LIMIT, Observation, RunClock, follow


class AnchorTests(unittest.SynchronousTestCase):
    def test_the_smallest_bound_is_the_anchor(self):
        clock = RunClock(started_at=100.0)
        clock.observe(101.2, 1.0)
        self.assertAlmostEqual(clock.anchor, 100.2)
        clock.observe(103.5, 3.0)  # more latency: not a better bound
        self.assertAlmostEqual(clock.anchor, 100.2)
        clock.observe(103.15, 3.0)
        self.assertAlmostEqual(clock.anchor, 100.15)

    def test_noise_below_two_milliseconds_is_ignored(self):
        clock = RunClock(started_at=0.0, anchor=10.0, indexed_anchor=10.0)
        self.assertEqual(clock.observe(11.999, 2.0).reanchor, False)
        self.assertEqual(clock.anchor, 10.0)
        self.assertEqual(clock.observe(11.99, 2.0).reanchor, True)

    def test_reanchor_only_once_segments_are_indexed(self):
        clock = RunClock(started_at=0.0, settled=True)
        self.assertEqual(clock.observe(5.0, 1.0), Observation(settled=False, reanchor=False))
        clock.place(2.0, 3.0)  # the first segment fixes the indexed anchor
        self.assertEqual(clock.observe(5.0, 1.5), Observation(settled=False, reanchor=True))

    def test_reanchor_shifts_the_indexed_timeline_and_its_end(self):
        clock = RunClock(started_at=0.0, anchor=10.0)
        start, end = clock.place(2.0, 2.0)
        clock.indexed(end)
        self.assertEqual((start, end), (10.0, 12.0))
        clock.observe(11.5, 2.0)  # anchor 9.5
        self.assertAlmostEqual(clock.reanchor(), -0.5)
        self.assertAlmostEqual(clock.last_end, 11.5)
        self.assertEqual(clock.reanchor(), 0.0, "nothing more to shift")

    def test_a_later_anchor_never_moves_the_timeline(self):
        clock = RunClock(started_at=0.0, anchor=10.0, indexed_anchor=9.0)
        self.assertEqual(clock.reanchor(), 0.0)
        self.assertEqual(clock.indexed_anchor, 9.0)


class SettleTests(unittest.SynchronousTestCase):
    def test_settles_when_media_time_keeps_the_wall_clocks_pace(self):
        clock = RunClock(started_at=0.0)
        self.assertFalse(clock.observe(5.0, 0.5).settled)  # first report
        self.assertFalse(clock.observe(5.1, 4.0).settled)  # too soon to judge
        self.assertFalse(clock.observe(5.5, 4.6).settled)  # 4.1 s of media in 0.5 s
        self.assertTrue(clock.observe(6.0, 5.1).settled)  # 0.5 s in 0.5 s
        self.assertTrue(clock.settled)
        self.assertFalse(clock.observe(6.5, 5.6).settled, "settles once")

    def test_settles_after_the_limit_whatever_the_pace(self):
        clock = RunClock(started_at=0.0)
        clock.observe(SETTLE_LIMIT - 1, 1.0)
        self.assertFalse(clock.observe(SETTLE_LIMIT - 0.5, 10.0).settled)
        self.assertTrue(clock.observe(SETTLE_LIMIT + 0.1, 20.0).settled)

    def test_settle_at_exit(self):
        clock = RunClock(started_at=0.0)
        self.assertTrue(clock.settle())
        self.assertFalse(clock.settle())


class PlaceTests(unittest.SynchronousTestCase):
    def test_without_an_anchor_media_time_zero_is_the_start_of_the_run(self):
        clock = RunClock(started_at=50.0)
        self.assertEqual(clock.place(2.0, 2.0), (50.0, 52.0))

    def test_a_segment_that_nearly_follows_the_last_one_follows_it_exactly(self):
        clock = RunClock(started_at=0.0, anchor=100.0)
        clock.indexed(clock.place(2.0, 2.0)[1])
        start, end = clock.place(1.9, 4.0)  # would start at 102.1
        self.assertEqual((start, end), (102.0, 104.0))

    def test_a_hole_stays_a_hole(self):
        clock = RunClock(started_at=0.0, anchor=100.0)
        clock.indexed(clock.place(2.0, 2.0)[1])
        self.assertEqual(clock.place(2.0, 6.0), (104.0, 106.0))

    def test_an_unreported_segment_follows_the_last_or_ends_at_the_last_report(self):
        clock = RunClock(started_at=0.0, anchor=100.0, last_media=3.5)
        self.assertEqual(clock.place(1.5, None), (102.0, 103.5))
        clock.indexed(103.5)
        self.assertEqual(clock.place(1.2, None), (103.5, 104.7))

    def test_follow_after_a_crash(self):
        self.assertEqual(follow(10.0, 2.0, written_at=99.0), (10.0, 12.0))
        self.assertEqual(follow(None, 2.0, written_at=99.0), (97.0, 99.0))
