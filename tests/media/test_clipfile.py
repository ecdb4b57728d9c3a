"""A clip planned once, written or read as a virtual file: the same bytes.

``plan_clip`` and ``write_clip`` split what ``build_clip`` did; the ``copy``
clip is the plan written out, and :class:`ClipReader` serves any byte range
of the same plan from the segment files. Real segments from
``tests.support.recordings`` (frame numbers painted into the picture).
"""

from __future__ import annotations

import os
import random
import shutil

from twisted.trial.unittest import SynchronousTestCase

from streamrec.media.clipfile import ClipReader, Gone, check
from streamrec.media.mp4 import Mp4Error, SegmentPiece, build_clip, plan_clip, write_clip

from ..support.recordings import FPS, decoded_numbers, recording, wall


class PlanAndWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rec = recording("clipfile_bf2", seconds=12, bf=2)
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_the_copy_clip_is_the_plan_written(self) -> None:
        plan = plan_clip(self.rec.pieces, wall(2.52), wall(9.2))
        built = os.path.join(self.dir, "built.mp4")
        written = os.path.join(self.dir, "written.mp4")
        result = build_clip(self.rec.pieces, wall(2.52), wall(9.2), built)
        self.assertEqual(write_clip(plan, written), result)
        with open(built, "rb") as a, open(written, "rb") as b:
            data = a.read()
            self.assertEqual(data, b.read())
        self.assertEqual((result.size, plan.size), (len(data), len(data)))
        self.assertTrue(data.startswith(plan.header))
        self.assertEqual(decoded_numbers(written)[0], round(2.52 * FPS))
        # The runs are the mdat's bytes, in order, after the header.
        pos = len(plan.header)
        for run in plan.runs:
            with open(run.path, "rb") as f:
                f.seek(run.offset)
                self.assertEqual(data[pos : pos + run.length], f.read(run.length))
            pos += run.length
        self.assertEqual(pos, len(data))

    def test_the_reader_gives_the_same_bytes_for_any_range(self) -> None:
        plan = plan_clip(self.rec.pieces, wall(0.6), wall(11.0))
        path = os.path.join(self.dir, "clip.mp4")
        write_clip(plan, path)
        with open(path, "rb") as f:
            data = f.read()
        reader = ClipReader(plan)
        self.addCleanup(reader.close)
        self.assertEqual(reader.read(0, plan.size + 100), data)
        rng = random.Random(7)
        for _ in range(200):
            offset = rng.randrange(plan.size)
            length = rng.choice([1, 7, 4096, rng.randrange(1, plan.size)])
            self.assertEqual(reader.read(offset, length), data[offset : offset + length])
        self.assertEqual(reader.read(plan.size, 10), b"")

    def test_a_change_of_codec_ends_the_plan_when_asked(self) -> None:
        other = recording("clipfile_h265", seconds=4, codec="libx265", audio=True)
        mixed = [*self.rec.pieces[:3], SegmentPiece(other.pieces[0].path, wall(6.0))]
        with self.assertRaises(Mp4Error):
            plan_clip(mixed, wall(1.0), wall(7.5))
        plan = plan_clip(mixed, wall(1.0), wall(7.5), until_change=True)
        self.assertAlmostEqual(plan.stop, wall(6.0), delta=0.5 / FPS)
        self.assertEqual({run.path for run in plan.runs}, {p.path for p in mixed[:3]})


class DeletedFilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        rec = recording("clipfile_bf0", seconds=8)
        directory = self.mktemp()
        os.makedirs(directory)
        self.pieces = []
        for piece in rec.pieces:
            path = os.path.join(directory, os.path.basename(piece.path))
            shutil.copy(piece.path, path)
            self.pieces.append(SegmentPiece(path, piece.wall_start))
        self.plan = plan_clip(self.pieces, wall(0.5), wall(7.5))

    def test_check_finds_a_file_missing_or_short(self) -> None:
        check(self.plan)
        last = self.pieces[-1].path
        with open(last, "r+b") as f:
            f.truncate(os.path.getsize(last) // 2)
        self.assertRaises(Gone, check, self.plan)
        os.remove(last)
        self.assertRaises(Gone, check, self.plan)

    def test_a_read_past_a_deleted_file_fails(self) -> None:
        reader = ClipReader(self.plan)
        self.addCleanup(reader.close)
        first = reader.read(0, len(self.plan.header) + 1000)
        # A file being read stays whole when deleted; one not yet opened is gone.
        os.remove(self.pieces[0].path)
        os.remove(self.pieces[-1].path)
        more = reader.read(len(first), 1000)
        self.assertEqual(len(more), 1000)
        with self.assertRaises(Gone):
            reader.read(len(first), self.plan.size)
