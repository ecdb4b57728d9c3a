"""Tests for streamrec.media (fmp4 reading, mp4 writing): fast clips from fragmented-MP4 segments.

Real segments are recorded with ffmpeg from a lavfi source that paints its
frame number into the picture (16 blocks of 20x16 px across the top, block k
white when bit k of the frame number is set), then clips are checked by
decoding them with PyAV and reading the frame numbers back.
"""

from __future__ import annotations

import os
import struct
import subprocess

import av
from twisted.trial.unittest import SynchronousTestCase

from streamrec.media import fmp4
from streamrec.media.fmp4 import segment_span
from streamrec.media.mp4 import ClipResult, Mp4Error, SegmentPiece, build_clip
from streamrec.recorder.command import FRAGMENTED_MP4
from streamrec.recorder.validate import validate_segment

from ..support.recordings import (
    FFMPEG,
    FPS,
    FRAGMENTED,
    T0,
    Recording,
    decoded_numbers,
    encoder_available,
    ffprobe,
    pyav_packets,
    recording,
    top_level_types,
    wall,
)

# --------------------------------------------------------------------------
# Tests: clip content
# --------------------------------------------------------------------------


class ClipTestMixin:
    """Clip checks shared by the different source recordings."""

    def rec(self) -> Recording:
        raise NotImplementedError

    def clip(
        self, start: float, stop: float, pieces: list[SegmentPiece] | None = None
    ) -> tuple[str, ClipResult]:
        out = os.path.join(self.mktemp() + ".mp4")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        result = build_clip(pieces or self.rec().pieces, wall(start), wall(stop), out)
        return out, result

    def assertClipFrames(self, start: float, stop: float) -> str:
        out, result = self.clip(start, stop)
        numbers = decoded_numbers(out)
        self.assertEqual(numbers[0], round(start * FPS))
        self.assertApproximates(len(numbers), (stop - start) * FPS, 1)
        self.assertEqual(numbers[-1], -(-round(stop * FPS * 1000) // 1000) - 1)
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + len(numbers))))
        self.assertApproximates(result.start, wall(start), 0.5 / FPS)
        self.assertApproximates(result.stop, wall(stop), 1e-3)
        self.assertEqual(result.size, os.path.getsize(out))
        return out

    def test_progressive_layout(self) -> None:
        out, _ = self.clip(3.36, 7.2)
        types = top_level_types(out)
        self.assertEqual(types[:2], [b"ftyp", b"moov"])
        self.assertIn(b"mdat", types)
        self.assertNotIn(b"moof", types)
        self.assertLess(types.index(b"moov"), types.index(b"mdat"))
        with av.open(out) as clip, av.open(self.rec().pieces[0].path) as source:
            self.assertEqual(
                clip.streams.video[0].codec_context.name, source.streams.video[0].codec_context.name
            )
            self.assertEqual(
                clip.streams.video[0].codec_context.extradata,
                source.streams.video[0].codec_context.extradata,
            )
            self.assertEqual(len(clip.streams.audio), 1 if self.rec().audio else 0)

    def test_start_between_keyframes(self) -> None:
        self.assertClipFrames(3.36, 7.2)

    def test_start_across_segment_boundary(self) -> None:
        # Starts 3 frames before the keyframe that begins the segment at 4.0 s.
        self.assertClipFrames(3.88, 6.52)

    def test_start_at_keyframe(self) -> None:
        self.assertClipFrames(4.0, 6.0)

    def test_start_within_first_gop(self) -> None:
        self.assertClipFrames(0.2, 1.0)

    def test_whole_recording(self) -> None:
        first = self.rec().pieces[0].wall_start - T0
        self.assertClipFrames(first, 11.0)

    def test_short_clip(self) -> None:
        self.assertClipFrames(5.4, 5.52)

    def test_ffprobe_duration(self) -> None:
        out, result = self.clip(2.44, 9.16)
        info = ffprobe(out)
        self.assertApproximates(float(info["format"]["duration"]), 9.16 - 2.44, 0.03)
        self.assertApproximates(result.duration, 9.16 - 2.44, 1e-6)
        for stream in info["streams"]:
            self.assertApproximates(float(stream["start_time"]), 0.0, 1e-6)
            self.assertApproximates(float(stream["duration"]), 9.16 - 2.44, 0.03)

    def test_audio_continuous(self) -> None:
        if not self.rec().audio:
            return
        out, result = self.clip(1.5, 10.5)
        with av.open(out) as clip:
            frames = [(f.pts, f.samples) for f in clip.decode(audio=0)]
        # Decoding starts exactly at the clip start (edit list: skipped samples)...
        self.assertEqual(frames[0][0], 0)
        # ...and the frames follow each other without gaps or overlaps.
        for (pts, samples), (next_pts, _n) in zip(frames, frames[1:]):
            self.assertEqual(pts + samples, next_pts)
        # The last frame kept is the one overlapping stop.
        end = (frames[-1][0] + frames[-1][1]) / 48000
        self.assertApproximates(end, result.duration + 512 / 48000, 512 / 48000)

    def test_clamps_to_available(self) -> None:
        rec = self.rec()
        out, result = self.clip(-5.0, 1000.0)
        self.assertEqual(result.start, rec.pieces[0].wall_start)
        last_end = rec.pieces[-1].wall_start + (
            segment_span(rec.pieces[-1].path)[1] - segment_span(rec.pieces[-1].path)[0]
        )
        self.assertApproximates(result.stop, last_end, 1e-6)
        numbers = decoded_numbers(out)
        self.assertEqual(numbers[0], round((rec.pieces[0].wall_start - T0) * FPS))
        self.assertEqual(len(numbers), round((result.stop - result.start) * FPS))

    def test_parser_pts_match_pyav(self) -> None:
        for piece in self.rec().pieces:
            assert_parser_matches_pyav(self, piece.path)

    def test_segment_span_matches_pyav(self) -> None:
        for piece in self.rec().pieces:
            assert_span_matches_pyav(self, piece.path)


def assert_parser_matches_pyav(case: SynchronousTestCase, path: str) -> None:
    seg = fmp4.read_segment(path)
    packets = pyav_packets(path)
    case.assertEqual(sorted(packets), sorted(seg.tracks))
    for track_id, samples in seg.tracks.items():
        expected = [(p[0], p[1]) for p in packets[track_id]]
        mine = [(samples.pts(i), samples.dts[i]) for i in range(len(samples))]
        case.assertEqual(
            [e[0] for e in expected], [m[0] for m in mine], f"pts of {path}#{track_id}"
        )


def assert_span_matches_pyav(case: SynchronousTestCase, path: str) -> None:
    with av.open(path) as container:
        video = container.streams.video[0]
        packets = [p for p in container.demux(video) if p.size]
        first = min(p.pts for p in packets) * video.time_base
        end = max(p.pts + p.duration for p in packets) * video.time_base
    case.assertEqual(segment_span(path), (float(first), float(end)))


class H264BFramesAudioTests(ClipTestMixin, SynchronousTestCase):
    def rec(self) -> Recording:
        return recording("h264_bf2_aac", bf=2, audio=True)


class H264NoAudioTests(ClipTestMixin, SynchronousTestCase):
    def rec(self) -> Recording:
        return recording("h264_bf0_noaudio", bf=0, audio=False)


class H264NegativeCtsTests(ClipTestMixin, SynchronousTestCase):
    """trun version 1 with negative composition offsets."""

    def rec(self) -> Recording:
        return recording(
            "h264_negcts", bf=2, audio=True, movflags=FRAGMENTED + "+negative_cts_offsets"
        )

    def test_trun_version_1(self) -> None:
        seg = fmp4.read_segment(self.rec().pieces[1].path)
        with open(self.rec().pieces[1].path, "rb") as f:
            data = f.read()
        trun = data.index(b"trun")
        self.assertEqual(data[trun + 4], 1)
        self.assertTrue(any(c != seg.video.cto[0] for c in seg.video.cto))


class SubGopFragmentTests(ClipTestMixin, SynchronousTestCase):
    """The segmenter's own flags: a fragment every 0.25 s whatever the GOP, so
    most fragments begin with a frame that is not a key frame."""

    def rec(self) -> Recording:
        flags = FRAGMENTED_MP4.split("=", 1)[1]
        return recording("h264_bf2_subgop", bf=2, audio=True, movflags=f"movflags={flags}")

    def test_fragments_are_shorter_than_the_gop(self) -> None:
        path = self.rec().pieces[1].path
        types = top_level_types(path)
        self.assertGreaterEqual(types.count(b"moof"), 7)  # 2 s in fragments of 0.25 s
        segment = fmp4.read_segment(path)
        self.assertEqual(sum(segment.video.sync), 2)  # one key frame a second
        validate_segment(path, 10.0, decode=True)


class H265Tests(ClipTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        if not encoder_available("libx265"):
            raise self.skipTest("libx265 not available")  # type: ignore[misc]

    def rec(self) -> Recording:
        return recording("h265_bf2_aac", bf=2, audio=True, codec="libx265")


# --------------------------------------------------------------------------
# Tests: robustness
# --------------------------------------------------------------------------


def _fragment_positions(path: str) -> list[tuple[int, int]]:
    """(moof position, end of the following mdat) of each fragment."""
    positions, pos, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    while pos < size:
        n, typ = struct.unpack_from(">I4s", data, pos)
        if typ == b"moof":
            positions.append([pos, 0])
        elif typ == b"mdat":
            positions[-1][1] = pos + n
        pos += n
    return [(a, b) for a, b in positions]


class RobustnessTests(SynchronousTestCase):
    def rec(self) -> Recording:
        return recording("h264_bf2_aac", bf=2, audio=True)

    def truncated_copy(self, length: int) -> str:
        src = self.rec().pieces[1].path
        dst = self.mktemp() + ".mp4"
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, "rb") as f:
            data = f.read(length)
        with open(dst, "wb") as f:
            f.write(data)
        return dst

    def assert_first_fragment_only(self, path: str) -> None:
        full = fmp4.read_segment(self.rec().pieces[1].path)
        cut = fmp4.read_segment(path)
        self.assertEqual(len(cut.video), FPS)  # one GOP = one fragment
        self.assertEqual(cut.video.dts, full.video.dts[:FPS])
        self.assertEqual(cut.video.cto, full.video.cto[:FPS])
        first, end = segment_span(path)
        self.assertEqual(first, segment_span(self.rec().pieces[1].path)[0])
        self.assertApproximates(end - first, 1.0, 1e-9)

    def test_truncated_mid_mdat(self) -> None:
        _first, (m2, end2) = _fragment_positions(self.rec().pieces[1].path)[:2]
        self.assert_first_fragment_only(self.truncated_copy((m2 + end2) // 2))

    def test_truncated_mid_moof(self) -> None:
        _first, (m2, _end2) = _fragment_positions(self.rec().pieces[1].path)[:2]
        self.assert_first_fragment_only(self.truncated_copy(m2 + 100))
        self.assert_first_fragment_only(self.truncated_copy(m2 + 5))

    def test_truncated_just_after_moof(self) -> None:
        _first, (m2, _end2) = _fragment_positions(self.rec().pieces[1].path)[:2]
        with open(self.rec().pieces[1].path, "rb") as f:
            f.seek(m2)
            (moof_size,) = struct.unpack(">I", f.read(4))
        self.assert_first_fragment_only(self.truncated_copy(m2 + moof_size + 8))

    def test_truncated_clip(self) -> None:
        """A clip over a truncated last segment uses its complete fragments."""
        pieces = self.rec().pieces
        _first, (m2, end2) = _fragment_positions(pieces[2].path)[:2]
        cut = self.truncated_copy(0)
        with open(pieces[2].path, "rb") as f, open(cut, "wb") as g:
            g.write(f.read((m2 + end2) // 2))
        clip_pieces = [pieces[1], SegmentPiece(cut, pieces[2].wall_start)]
        out = self.mktemp() + ".mp4"
        result = build_clip(clip_pieces, wall(3.0), wall(8.0), out)
        self.assertApproximates(result.stop, wall(5.0), 1e-6)
        numbers = decoded_numbers(out)
        self.assertEqual((numbers[0], numbers[-1], len(numbers)), (75, 124, 50))

    def test_segment_with_no_complete_fragment(self) -> None:
        (m1, end1) = _fragment_positions(self.rec().pieces[1].path)[0]
        path = self.truncated_copy((m1 + end1) // 2)
        self.assertRaises(Mp4Error, segment_span, path)

    def test_garbage(self) -> None:
        path = self.mktemp()
        for data in (
            b"",
            b"garbage" * 1000,
            os.urandom(4096),
            struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0" + b"\xff" * 100,
        ):
            with open(path, "wb") as f:
                f.write(data)
            self.assertRaises(Mp4Error, segment_span, path)
            self.assertRaises(
                Mp4Error, build_clip, [SegmentPiece(path, T0)], T0, T0 + 1, path + ".out.mp4"
            )
            self.assertFalse(os.path.exists(path + ".out.mp4"))

    def test_missing_file(self) -> None:
        self.assertRaises(Mp4Error, segment_span, "/nonexistent/x.mp4")

    def test_progressive_mp4_rejected(self) -> None:
        path = self.mktemp() + ".mp4"
        subprocess.run(
            [FFMPEG, "-v", "error", "-i", self.rec().pieces[0].path, "-c", "copy", path], check=True
        )
        self.assertRaises(Mp4Error, segment_span, path)

    def test_out_of_range(self) -> None:
        out = self.mktemp() + ".mp4"
        self.assertRaises(Mp4Error, build_clip, self.rec().pieces[:2], wall(100), wall(101), out)
        self.assertRaises(Mp4Error, build_clip, self.rec().pieces[:2], wall(3), wall(2), out)
        self.assertRaises(Mp4Error, build_clip, [], wall(3), wall(4), out)
        self.assertFalse(os.path.exists(out))

    def test_mismatched_tracks(self) -> None:
        other = recording("h264_bf0_noaudio", bf=0, audio=False)
        out = self.mktemp() + ".mp4"
        pieces = [self.rec().pieces[0], other.pieces[1]]
        error = self.assertRaises(Mp4Error, build_clip, pieces, wall(1), wall(3), out)
        self.assertIn("mismatched", str(error))

    def test_no_partial_file_left(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        out = os.path.join(directory, "clip.mp4")
        pieces = [self.rec().pieces[0], SegmentPiece(self.rec().pieces[1].path + ".gone", T0 + 2)]
        self.assertRaises(Mp4Error, build_clip, pieces, wall(1), wall(3), out)
        self.assertEqual(os.listdir(directory), [])

    def test_replaces_existing_output(self) -> None:
        out = self.mktemp() + ".mp4"
        with open(out, "wb") as f:
            f.write(b"old" * 100000)
        result = build_clip(self.rec().pieces, wall(1), wall(2), out)
        self.assertEqual(os.path.getsize(out), result.size)
        self.assertEqual(decoded_numbers(out, limit=1), [25])


class WallClockTests(SynchronousTestCase):
    """How pieces are joined when the wall_start values are not exactly consistent."""

    def rec(self) -> Recording:
        return recording("h264_bf2_aac", bf=2, audio=True)

    def test_small_jitter_joins_back_to_back(self) -> None:
        pieces = [
            SegmentPiece(p.path, p.wall_start + (0.009 if i % 2 else -0.009))
            for i, p in enumerate(self.rec().pieces)
        ]
        out = self.mktemp() + ".mp4"
        build_clip(pieces, wall(1.0), wall(9.0), out)
        numbers = decoded_numbers(out)
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + len(numbers))))
        with av.open(out) as clip:
            video = [p for p in clip.demux(video=0) if p.size]
        self.assertEqual({p.duration for p in video}, {512})

    def test_gap_is_kept(self) -> None:
        """A piece whose wall_start says it starts later is placed at its wall time."""
        pieces = list(self.rec().pieces[:4])
        pieces[2] = SegmentPiece(pieces[2].path, pieces[2].wall_start + 1.0)
        pieces[3] = SegmentPiece(pieces[3].path, pieces[3].wall_start + 1.0)
        out = self.mktemp() + ".mp4"
        build_clip(pieces, wall(5.4), wall(6.4), out)  # wall 5.4 is frame 4.4 s = 110
        self.assertEqual(decoded_numbers(out)[0], 110)


class EditListInInitTests(SynchronousTestCase):
    """Segments whose init moov carries an edit list (libavformat applies it)."""

    def test_parser_applies_edit_list(self) -> None:
        src = recording("h264_bf2_aac", bf=2, audio=True).pieces[1].path
        for edits in ([(0, 1024)], [(6400, -1), (0, 512)]):
            path = self.mktemp() + ".mp4"
            with open(src, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(_insert_video_elst(data, edits))
            assert_parser_matches_pyav(self, path)
            assert_span_matches_pyav(self, path)


def _insert_video_elst(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """Return ``data`` with an edts/elst added to the first (video) trak."""
    body = b"".join(struct.pack(">Iihh", d, m, 1, 0) for d, m in edits)
    elst = struct.pack(">I4sII", 16 + len(body), b"elst", 0, len(edits)) + body
    edts = struct.pack(">I4s", 8 + len(elst), b"edts") + elst
    moov = data.index(b"moov") - 4
    trak = data.index(b"trak", moov) - 4
    tkhd_size = struct.unpack_from(">I", data, trak + 8)[0]
    insert_at = trak + 8 + tkhd_size
    out = bytearray(data[:insert_at] + edts + data[insert_at:])
    for pos in (moov, trak):
        struct.pack_into(">I", out, pos, struct.unpack_from(">I", out, pos)[0] + len(edts))
    return bytes(out)
