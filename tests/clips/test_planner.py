"""Planning a clip job: one clip per continuous recorded span inside the range."""

from __future__ import annotations

from twisted.trial import unittest

from streamrec.clips.planner import plan_spans
from streamrec.store import Segment


def segments(*spans: tuple[int, float, float]) -> list[Segment]:
    """Segments from (run, start, end), in order."""
    return [
        Segment(id=i, stream_id=1, run_id=run, path=f"/seg{i}.mp4", start=start, end=end, bytes=1)
        for i, (run, start, end) in enumerate(spans, 1)
    ]


class PlanTests(unittest.SynchronousTestCase):
    def test_one_run_without_holes_is_one_clip_cut_to_the_range(self):
        [span] = plan_spans(segments((1, 0, 2), (1, 2, 4), (1, 4, 6)), 1.5, 4.5)
        self.assertEqual((span.start, span.stop), (1.5, 4.5))
        self.assertEqual([s.id for s in span.segments], [1, 2, 3])

    def test_segments_outside_the_range_are_left_out(self):
        [span] = plan_spans(segments((1, 0, 2), (1, 2, 4), (1, 4, 6)), 2.0, 4.0)
        self.assertEqual([s.id for s in span.segments], [2])

    def test_a_new_run_or_a_hole_splits_the_clip(self):
        spans = plan_spans(segments((1, 0, 2), (1, 2, 4), (2, 4.1, 6), (2, 9, 11)), 1.0, 10.0)
        self.assertEqual([(s.start, s.stop) for s in spans], [(1.0, 4), (4.1, 6), (9, 10.0)])

    def test_tiny_gaps_within_a_run_are_joined(self):
        [span] = plan_spans(segments((1, 0, 2), (1, 2.2, 4)), 0, 4)
        self.assertEqual(len(span.segments), 2)

    def test_slivers_shorter_than_a_frame_are_no_clip(self):
        self.assertEqual(plan_spans(segments((1, 0, 2)), 1.98, 5.0), [])

    def test_nothing_recorded_is_no_clip(self):
        self.assertEqual(plan_spans([], 0, 10), [])

    def test_overlapping_runs_are_one_after_the_other_with_no_instant_twice(self):
        # Run 1 (a node cut off from the database) went on while run 2 (the
        # node that took the stream over) began at 5: run 1 is kept to its
        # end, run 2 follows from there.
        found = segments((1, 0, 2), (1, 2, 4), (1, 4, 6), (2, 5, 7), (1, 6, 8), (2, 7, 9))
        found.sort(key=lambda s: s.start)
        spans = plan_spans(found, 1.0, 9.0)
        self.assertEqual([(s.start, s.stop) for s in spans], [(1.0, 8), (8, 9.0)])
        self.assertEqual([s.run_id for s in spans[1].segments], [2])
        self.assertEqual([s.start for s in spans[1].segments], [7])

    def test_a_run_inside_another_adds_nothing(self):
        found = segments((1, 0, 2), (2, 0.5, 1.5), (1, 2, 4))
        found.sort(key=lambda s: s.start)
        [span] = plan_spans(found, 0, 4)
        self.assertEqual({s.run_id for s in span.segments}, {1})
