"""A segmenter's stderr in the service log: masked, within a budget, counted."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from streamrec.recorder.childlog import MAX_LINE, ChildLog, clean


def logged_lines(testcase: unittest.SynchronousTestCase) -> list[str]:
    """The text of every event streamrec's recorder logs from now on."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "streamrec.recorder":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


class CleanTests(unittest.SynchronousTestCase):
    def test_secrets_are_masked_and_long_lines_cut(self):
        self.assertEqual(
            clean("rtsp://admin:hunter2@cam/x: 401 Unauthorized"),
            "rtsp://admin:***@cam/x: 401 Unauthorized",
        )
        long = clean("x" * 10_000)
        self.assertEqual(len(long), MAX_LINE + 3)
        self.assertTrue(long.endswith("..."))


class ChildLogTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lines = logged_lines(self)
        self.log = ChildLog(self.clock, 7, limit=3, interval=60)

    def test_lines_beyond_the_budget_are_counted_not_logged(self):
        for number in range(10):
            self.log.write(f"line {number}")
        self.assertEqual(self.lines, ["stream 7: line 0", "stream 7: line 1", "stream 7: line 2"])
        self.clock.advance(59)
        self.log.write("line 10")
        self.assertEqual(len(self.lines), 3)
        self.clock.advance(1)
        self.log.write("line 11")
        self.assertEqual(
            self.lines[3:],
            [
                "stream 7: 8 lines of ffmpeg not logged (at most 3 every 60 s)",
                "stream 7: line 11",
            ],
        )

    def test_flush_logs_the_count_once(self):
        for number in range(5):
            self.log.write(f"line {number}")
        self.log.flush()
        self.log.flush()
        self.assertEqual(
            self.lines[-1], "stream 7: 2 lines of ffmpeg not logged (at most 3 every 60 s)"
        )
        self.assertEqual(len(self.lines), 4)

    def test_segment_openings_and_blank_lines_cost_nothing(self):
        for number in range(10):
            self.log.write(f"[segment @ 0x1] Opening 'seg{number:06d}.mp4' for writing")
            self.log.write("   ")
        self.log.write("the one that counts")
        self.assertEqual(self.lines, ["stream 7: the one that counts"])
