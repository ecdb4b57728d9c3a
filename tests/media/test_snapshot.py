"""Pictures of a segment (streamrec.media.snapshot): the frame shown at an instant.

Real segments from ``tests.support.recordings``: each frame carries its
number, read back from the JPEG with ``tests.support.framecode``. Instants
fall mid-frame; the first segment of a recording is left out, because
ffmpeg lengthens its first sample (its later frames start 21 ms late).
"""

from __future__ import annotations

import io

import av
from twisted.trial.unittest import SynchronousTestCase

from streamrec.media.snapshot import latest_picture, pictures

from ..support import framecode
from ..support.recordings import FPS, T0, encoder_available, recording


def number(jpeg: bytes) -> tuple[int, int, int]:
    """The frame number a JPEG shows, and its size."""
    with av.open(io.BytesIO(jpeg)) as container:
        frame = next(container.decode(video=0))
        return framecode.read_frame_number(frame), frame.width, frame.height


class SnapshotMixin:
    name = ""
    options: dict = {}

    def test_the_frame_shown_at_each_instant(self) -> None:
        rec = recording(self.name, seconds=8, **self.options)
        for piece in rec.pieces[1:]:
            first = round((piece.wall_start - T0) * FPS)
            frames = [first, first + 1, first + 12, first + 13, first + 26, first + 49]
            instants = [T0 + (n + 0.5) / FPS for n in frames]
            shuffled = instants[::-1]  # any order: the answers follow the question
            found = pictures(piece.path, piece.wall_start, shuffled)
            self.assertEqual([number(p.jpeg)[0] for p in found], frames[::-1])
            for picture, n in zip(found, frames[::-1]):
                self.assertAlmostEqual(picture.at, T0 + n / FPS, delta=0.002)
                self.assertEqual((picture.width, picture.height), (320, 240))

    def test_scaled(self) -> None:
        piece = recording(self.name, seconds=8, **self.options).pieces[2]
        [picture] = pictures(piece.path, piece.wall_start, [piece.wall_start + 0.5], width=160)
        shown, width, height = number(picture.jpeg)
        self.assertEqual((width, height), (160, 120))
        self.assertEqual(shown, round((piece.wall_start - T0) * FPS) + 12)

    def test_latest_is_the_last_keyframe(self) -> None:
        piece = recording(self.name, seconds=8, **self.options).pieces[-1]
        picture = latest_picture(piece.path, piece.wall_start, width=64)
        shown, width, height = number(picture.jpeg)
        self.assertEqual(shown % 25, 0)  # GOP of 25 frames: a keyframe
        self.assertEqual(shown, round((picture.at - T0) * FPS))
        self.assertGreater(picture.at, piece.wall_start)  # the segment's second GOP
        self.assertEqual((width, height), (64, 48))


class H264Tests(SnapshotMixin, SynchronousTestCase):
    name = "snapshot_h264"


class H264BFramesTests(SnapshotMixin, SynchronousTestCase):
    name = "snapshot_h264_bf2"
    options = {"bf": 2}


class H265Tests(SnapshotMixin, SynchronousTestCase):
    name = "snapshot_h265"
    options = {"codec": "libx265", "bf": 2}

    def setUp(self) -> None:
        if not encoder_available("libx265"):
            self.skipTest("ffmpeg has no libx265")
