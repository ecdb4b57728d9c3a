"""The run timeline's arithmetic, with plain numbers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from twisted.trial import unittest

from streamrec.recorder.timeline import (
    ANCHOR_EPSILON,
    BOUND_WINDOW,
    CAMERA_WAIT,
    PROGRAM_DATE_TIME,
    REANCHOR_SECONDS,
    SETTLE_LIMIT,
    SLEW_RATE,
    STEP_THRESHOLD,
    Observation,
    RunClock,
    clock_status,
    follow,
)


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
        self.assertEqual(clock.observe(4.95, 1.0), Observation(settled=False, reanchor=True))

    def test_reanchor_shifts_the_indexed_timeline_and_its_end(self):
        clock = RunClock(started_at=0.0, anchor=10.0)
        start, end = clock.place(2.0, 2.0)
        clock.indexed(end)
        self.assertEqual((start, end), (10.0, 12.0))
        clock.observe(11.95, 2.0)  # anchor 9.95
        self.assertAlmostEqual(clock.reanchor(), -0.05)
        self.assertAlmostEqual(clock.last_end, 11.95)
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

    def test_a_segment_that_would_overlap_the_last_one_follows_it(self):
        clock = RunClock(started_at=0.0, anchor=100.0)
        clock.indexed(clock.place(2.0, 2.0)[1])
        self.assertEqual(clock.place(2.6, 4.0), (102.0, 104.0))

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


#: The true wall time of media time 0 in the simulated runs.
T0 = 1_700_000_000.0

#: The least delay from capture to report; the jitter comes on top.
FLOOR = 0.08


@dataclass
class SyntheticRun:
    """A synthetic run fed to a RunClock the way the supervisor feeds it: a
    progress report every 0.5 s of media, a 2 s segment closing every 2 s,
    each arriving ``FLOOR`` plus some jitter late, read off a box clock that
    is ``offset(media)`` off the true time."""

    offset: dict[float, float] = field(default_factory=dict)  # from media time on
    clock: RunClock = field(default_factory=lambda: RunClock(started_at=T0 - 0.5))
    chance: random.Random = field(default_factory=lambda: random.Random(12))
    segments: list[tuple[float, float, float]] = field(
        default_factory=list
    )  # media end, start, end
    held: list[float] = field(default_factory=list)
    shifts: list[tuple[float, float]] = field(default_factory=list)  # media, delta
    media: float = 0.0

    def box_offset(self, media: float) -> float:
        return sum(step for since, step in self.offset.items() if media >= since)

    def report(self, media: float) -> None:
        delay = FLOOR + min(self.chance.expovariate(1 / 0.02), 0.5)
        seen = self.clock.observe(T0 + media + delay + self.box_offset(media), media)
        if seen.settled:
            held, self.held = self.held, []
            for media_end in held:
                self.index(media_end)
        if seen.reanchor:
            self.reanchor()

    def reanchor(self) -> None:
        delta = self.clock.reanchor()
        if delta:
            self.shifts.append((self.media, delta))
            self.segments = [(m, start + delta, end + delta) for m, start, end in self.segments]

    def index(self, media_end: float) -> None:
        self.reanchor()
        start, end = self.clock.place(2.0, media_end)
        self.clock.indexed(end)
        self.segments.append((media_end, start, end))

    def until(self, media: float) -> SyntheticRun:
        while self.media < media:
            self.media += 0.5
            self.report(self.media)
            if self.media % 2.0 == 0:
                if self.clock.settled:
                    self.index(self.media)
                else:
                    self.held.append(self.media)
        return self

    def truth(self, media: float) -> float:
        """Where media time ``media`` lies on the box's clock of now."""
        return T0 + FLOOR + self.box_offset(self.media) + media


class ClockStepTests(unittest.SynchronousTestCase):
    """The box's clock steps during a run: the index follows at a bounded rate."""

    def assertSound(self, run: SyntheticRun) -> None:
        """Monotonic, without gaps or overlaps, slewed by at most 500 ppm once
        the run is older than its reanchoring time."""
        first = run.segments[0][0]
        for (media0, _, end0), (media1, start1, end1) in zip(run.segments, run.segments[1:]):
            self.assertEqual(start1, end0, f"a gap or an overlap at {media1}")
            self.assertGreater(end1, start1)
            if media1 > first + REANCHOR_SECONDS:
                wall, media = end1 - start1, media1 - media0
                self.assertLessEqual(abs(wall - media), media * SLEW_RATE + 1e-6, media1)
        for media, delta in run.shifts:
            self.assertLessEqual(media, first + REANCHOR_SECONDS + 2.0)
            self.assertLessEqual(-delta, STEP_THRESHOLD)

    def assertOnTime(self, run: SyntheticRun, tolerance: float = 0.005) -> None:
        media, _, end = run.segments[-1]
        self.assertLessEqual(abs(end - run.truth(media)), tolerance, media)

    def test_a_steady_clock_keeps_the_index_on_time(self):
        run = SyntheticRun().until(3000)
        self.assertSound(run)
        self.assertOnTime(run)
        self.assertFalse(run.clock.slewing)
        for media, _, end in run.segments:
            self.assertLessEqual(abs(end - run.truth(media)), 0.005, media)

    def test_a_step_back_is_slewed_never_shifted(self):
        run = SyntheticRun(offset={1000.0: -5.0}).until(1000)
        indexed = list(run.segments)
        run.until(1001)
        self.assertLess(abs(run.clock.error + 5.0), 0.05)
        self.assertTrue(run.clock.slewing)
        self.assertEqual(run.clock.reanchor(), 0.0, "the past stays where it is")
        run.until(1100)
        self.assertEqual(run.segments[: len(indexed)], indexed)
        self.assertSound(run)
        # 5 s at 500 ppm: 10,000 s of media.
        run.until(10900)
        self.assertTrue(run.clock.slewing)
        self.assertGreater(run.segments[-1][2] - run.truth(run.segments[-1][0]), 0.04)
        run.until(11100)
        self.assertSound(run)
        self.assertOnTime(run)
        self.assertFalse(run.clock.slewing)
        self.assertLessEqual(abs(run.clock.error), ANCHOR_EPSILON)

    def test_a_step_forward_is_followed(self):
        run = SyntheticRun(offset={1000.0: 5.0}).until(1000)
        anchor = run.clock.anchor
        run.until(1000 + BOUND_WINDOW - 5)
        self.assertLess(run.clock.anchor - anchor, 0.05, "the old bounds are still in the window")
        run.until(1000 + BOUND_WINDOW + 1)
        self.assertLess(abs(run.clock.error - 5.0), 0.05)
        self.assertTrue(run.clock.slewing)
        run.until(11000)
        self.assertTrue(run.clock.slewing)
        run.until(11200)
        self.assertSound(run)
        self.assertOnTime(run)
        self.assertFalse(run.clock.slewing)

    def test_steps_both_ways_in_one_run(self):
        run = SyntheticRun(offset={600.0: 5.0, 2000.0: -5.0, 2500.0: -5.0}).until(3000)
        self.assertSound(run)
        self.assertLess(run.clock.error, -4.0)
        run.until(14000)
        self.assertSound(run)
        self.assertOnTime(run)

    def test_the_error_shrinks_while_slewing(self):
        run = SyntheticRun(offset={500.0: -2.0}).until(502)
        errors = []
        while run.clock.slewing:
            run.until(run.media + 100)
            errors.append(abs(run.clock.error))
        self.assertEqual(errors, sorted(errors, reverse=True))
        self.assertGreater(len(errors), 35)  # 2 s at 500 ppm is 4,000 s
        self.assertSound(run)

    def test_an_early_better_anchor_still_moves_the_run(self):
        run = SyntheticRun(offset={10.0: -0.05}).until(40)
        moved = sum(delta for media, delta in run.shifts if media >= 10.0)
        self.assertLess(abs(moved + 0.05), 0.02)
        self.assertSound(run)
        self.assertOnTime(run)

    def test_an_early_step_is_slewed(self):
        run = SyntheticRun(offset={10.0: -5.0}).until(40)
        self.assertEqual([delta for media, delta in run.shifts if media >= 10.0], [])
        self.assertTrue(run.clock.slewing)
        self.assertLess(abs(run.clock.error + 5.0), 0.05)
        self.assertSound(run)

    def test_an_unreported_segment_is_slewed_too(self):
        clock = RunClock(started_at=0.0, anchor=10.0, settled=True)
        clock.indexed(clock.place(2.0, 2.0)[1])
        clock.observe(10.0 + REANCHOR_SECONDS, REANCHOR_SECONDS + 5.0)  # a step back
        self.assertAlmostEqual(clock.error, -5.0)
        start, end = clock.place(2.0, None)
        self.assertEqual(start, 12.0)
        self.assertAlmostEqual(end, 14.0 - 2.0 * SLEW_RATE)

    def test_a_late_better_anchor_is_slewed(self):
        clock = RunClock(started_at=0.0, anchor=10.0, settled=True)
        clock.indexed(clock.place(2.0, 2.0)[1])
        clock.observe(10.0 + REANCHOR_SECONDS + 4.0, REANCHOR_SECONDS + 4.0)
        clock.observe(10.0 + REANCHOR_SECONDS + 5.95, REANCHOR_SECONDS + 6.0)  # 0.05 better
        self.assertAlmostEqual(clock.error, -0.05)
        self.assertEqual(clock.reanchor(), 0.0)
        start, end = clock.place(2.0, 4.0)
        self.assertEqual(start, 12.0)
        self.assertAlmostEqual(end, 14.0 - 2.0 * SLEW_RATE)


class CameraClockTests(unittest.SynchronousTestCase):
    """A camera that captured media time 0 at 1000.0, seen 0.5 s later."""

    def run_clock(self, mode: str, camera: float = 1000.0) -> RunClock:
        clock = RunClock(started_at=999.0, mode=mode)
        for step in range(8):  # arrival: each report 0.5 s after its media time
            clock.observe(1000.5 + step * 0.5, step * 0.5)
        self.assertTrue(clock.paced)
        clock.observe_camera(camera + 0.3)  # the first sender report disagrees
        self.assertIsNone(clock.camera)
        clock.observe_camera(camera)
        clock.observe_camera(camera)
        return clock

    def test_auto_follows_a_camera_that_agrees_with_arrival(self):
        clock = self.run_clock("auto")
        self.assertEqual((clock.clock, clock.camera), ("camera", 1000.0))
        self.assertAlmostEqual(clock.offset, -0.5)
        self.assertEqual(clock.place(2.0, 2.0), (1000.0, 1002.0))

    def test_auto_falls_back_to_arrival_when_the_camera_is_wrong(self):
        clock = self.run_clock("auto", camera=1030.0)
        self.assertEqual(clock.clock, "arrival")
        self.assertAlmostEqual(clock.offset, 29.5)
        self.assertEqual(clock.place(2.0, 2.0), (1000.5, 1002.5))

    def test_camera_follows_the_camera_whatever_it_says(self):
        clock = self.run_clock("camera", camera=1030.0)
        self.assertEqual(clock.clock, "camera")
        self.assertEqual(clock.place(2.0, 2.0), (1030.0, 1032.0))

    def test_arrival_ignores_the_camera(self):
        clock = self.run_clock("arrival")
        self.assertEqual(clock.clock, "arrival")
        self.assertEqual(clock.place(2.0, 2.0), (1000.5, 1002.5))

    def test_the_first_segments_wait_for_the_cameras_clock(self):
        clock = RunClock(started_at=999.0, mode="auto")
        for step in range(8):
            clock.observe(1000.5 + step * 0.5, step * 0.5)
        self.assertEqual((clock.paced, clock.settled), (True, False))
        self.assertEqual(clock.observe_camera(1000.0), Observation())
        self.assertEqual(clock.observe_camera(1000.0).settled, True)
        self.assertTrue(clock.settled)

    def test_a_camera_without_a_clock_is_given_up_on(self):
        clock = RunClock(started_at=999.0, mode="auto")
        wall = 1000.5
        while not clock.settled:
            clock.observe(wall, wall - 1000.5)
            wall += 0.5
        self.assertGreater(wall - 999.0, CAMERA_WAIT)
        self.assertEqual(clock.clock, "arrival")

    def test_a_camera_that_stops_agreeing_is_left_by_slewing(self):
        clock = self.run_clock("auto")
        start, end = clock.place(2.0, 2.0)
        clock.indexed(end)
        clock.observe_camera(1030.0)
        clock.observe_camera(1030.0)
        self.assertEqual(clock.clock, "arrival")
        self.assertTrue(clock.slewing)
        start, end = clock.place(2.0, 4.0)
        self.assertEqual(start, 1002.0)
        self.assertAlmostEqual(end - start, 2.0 + 2.0 * SLEW_RATE)

    def test_a_playlists_date_counts_at_once(self):
        clock = RunClock(started_at=999.0, mode="auto")
        for step in range(8):
            clock.observe(1002.0 + step * 0.5, step * 0.5)  # HLS arrives 2 s late
        seen = clock.observe_camera(1000.0, declared=True, source=PROGRAM_DATE_TIME)
        self.assertTrue(seen.settled)
        self.assertEqual((clock.clock, clock.camera_source), ("camera", PROGRAM_DATE_TIME))
        self.assertIn("HLS EXT-X-PROGRAM-DATE-TIME", clock_status(clock)["clock_reason"])
        self.assertEqual(clock_status(clock)["camera_offset_ms"], -2000)
