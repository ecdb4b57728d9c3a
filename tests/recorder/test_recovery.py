"""Restart after a crash: leftover segmenters ended, unindexed segments indexed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from streamrec.media.ffmpeg import pid_alive
from streamrec.recorder.indexing import SegmentChecker
from streamrec.recorder.layout import SegmentLayout
from streamrec.recorder.recovery import end_orphans, find_encoders, find_orphans, recover
from streamrec.store import open_store

from ..support.recordings import recording


class OrphanTests(unittest.TestCase):
    def test_finds_and_ends_processes_working_in_the_segments_tree(self):
        segments = os.path.join(self.mktemp(), "segments")
        inside = os.path.join(segments, "1", "3")
        os.makedirs(inside)
        elsewhere = self.mktemp()
        os.makedirs(elsewhere)
        sleep = "import time; time.sleep(60)"
        segmenter = ["ffmpeg", "-c", sleep, "-segment_list", "pipe:1"]
        orphan = subprocess.Popen(segmenter, executable=sys.executable, cwd=inside)
        shell = subprocess.Popen([sys.executable, "-c", sleep], cwd=inside)
        bystander = subprocess.Popen(segmenter, executable=sys.executable, cwd=elsewhere)
        for process in (orphan, shell, bystander):
            self.addCleanup(process.kill)
        self.assertEqual(find_orphans(segments), [orphan.pid])

        def check(_: object) -> None:
            orphan.wait(5)
            self.assertFalse(pid_alive(orphan.pid))
            self.assertIsNone(bystander.poll())
            self.assertIsNone(shell.poll())

        return defer.ensureDeferred(end_orphans(reactor, [orphan.pid], grace=2)).addCallback(check)


class EncoderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_encoders_a_dead_service_left_are_killed(self):
        """Clip encoders name scratch files of the data dir on their command line:
        recovery kills them (with no segment tree yet), and nothing else."""
        data_dir = os.path.abspath(self.mktemp())
        scratch = os.path.join(data_dir, "tmp")
        os.makedirs(scratch)
        elsewhere = os.path.abspath(self.mktemp())
        sleep = "import time; time.sleep(60)"

        def ffmpeg(*args: str) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(["ffmpeg", "-c", sleep, *args], executable=sys.executable)
            self.addCleanup(process.kill)
            return process

        encoder = ffmpeg("-i", os.path.join(scratch, ".k.mp4.source.mp4"), "-y", "out.part")
        bystander = ffmpeg("-i", os.path.join(elsewhere, "a.mp4"), "-y", "b.mp4")
        segmenter = ffmpeg("-i", "rtsp://cam/x", "-segment_list", "pipe:1", scratch + "/x")
        self.assertEqual(find_encoders(data_dir), [encoder.pid])
        report = yield defer.ensureDeferred(
            recover(
                reactor=reactor,
                store=None,  # type: ignore[arg-type]  # no segment tree: never asked
                layout=SegmentLayout(data_dir),
                checker=None,  # type: ignore[arg-type]
            )
        )
        self.assertEqual(report.encoders, [encoder.pid])
        yield deferToThread(encoder.wait, 10)
        self.assertEqual(encoder.returncode, -9)  # KILL at once: its output is thrown away
        self.assertIsNone(bystander.poll())
        self.assertIsNone(segmenter.poll())  # segmenters are ended (gently) by cwd instead


class RecoverTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_indexes_what_the_index_lacks(self):
        rec = yield deferToThread(recording, "recovery_h264", seconds=8)
        data_dir = os.path.abspath(self.mktemp())
        layout = SegmentLayout(data_dir)
        store = open_store("sqlite:", os.path.join(data_dir))
        self.addCleanup(store.close)
        yield defer.ensureDeferred(store.migrate())
        stream = yield defer.ensureDeferred(store.create_stream("rtsp://cam/x", "", 1.0))
        run = yield defer.ensureDeferred(store.open_run(stream, 1.0))
        run_dir = os.path.join(data_dir, "segments", str(stream), str(run))
        os.makedirs(run_dir)
        paths = []
        for index, piece in enumerate(rec.pieces):
            path = os.path.join(run_dir, f"seg{index:06d}.mp4")
            shutil.copy(piece.path, path)
            paths.append(path)
        # The dead service had indexed the first segment only.
        yield defer.ensureDeferred(store.add_segment(stream, run, paths[0], 100.0, 102.0, 1))
        garbage = os.path.join(run_dir, f"seg{len(paths):06d}.mp4")
        with open(garbage, "wb") as handle:
            handle.write(b"\0\0\0\x1cftypisom")
        report = yield defer.ensureDeferred(
            recover(
                reactor=reactor,
                store=store,
                layout=layout,
                checker=SegmentChecker(layout=layout, run_blocking=deferToThread, max_duration=30),
            )
        )
        self.assertEqual(report.indexed, paths[1:])
        self.assertEqual(report.quarantined, [garbage])
        self.assertEqual(report.closed_runs, [run])
        self.assertFalse(os.path.exists(garbage))
        self.assertTrue(
            os.path.exists(
                os.path.join(data_dir, "quarantine", "1", "1", os.path.basename(garbage))
            )
        )
        segments = yield defer.ensureDeferred(store.run_segments(run))
        self.assertEqual([s.path for s in segments], paths)
        for before, after in zip(segments, segments[1:]):
            self.assertAlmostEqual(after.start, before.end, places=6)
        self.assertAlmostEqual(segments[-1].end - segments[1].start, 6.0, places=2)
        open_runs = yield defer.ensureDeferred(store.open_runs())
        self.assertEqual(open_runs, [])
