"""The segmenter's command line, and where its segments lie on disk."""

from __future__ import annotations

import os

from twisted.trial import unittest

from streamrec.recorder.command import (
    PROGRESS_FD,
    SegmenterSettings,
    explain,
    is_segmenter,
    parent_death_launcher,
    segmenter_args,
    source_end,
)
from streamrec.recorder.layout import SegmentLayout, segment_index, segment_name
from streamrec.sources import INPUT_FORMATS, PROTOCOL_WHITELIST


class CommandTests(unittest.SynchronousTestCase):
    def test_command(self):
        args = segmenter_args("ffmpeg", "rtsp://cam/x", SegmenterSettings(segment_seconds=2))
        self.assertEqual(args[args.index("-protocol_whitelist") + 1], PROTOCOL_WHITELIST)
        self.assertNotIn("file", PROTOCOL_WHITELIST.split(","))
        self.assertEqual(args[args.index("-i") + 1], "rtsp://cam/x")
        self.assertEqual(args[args.index("-rtsp_transport") + 1], "tcp")
        self.assertEqual(args[args.index("-segment_list") + 1], "pipe:1")
        self.assertIn("+frag_keyframe+empty_moov+default_base_moof", " ".join(args))
        self.assertEqual(args[-1], "seg%06d.mp4")

    def test_inputs_are_whitelisted_and_listeners_bound(self):
        args = segmenter_args("ffmpeg", "udp://127.0.0.1:5000", SegmenterSettings())
        self.assertEqual(args[args.index("-format_whitelist") + 1], INPUT_FORMATS["udp"])
        self.assertEqual(args[args.index("-localaddr") + 1], "127.0.0.1")
        self.assertLess(args.index("-localaddr"), args.index("-i"), "an input option")
        args = segmenter_args("ffmpeg", "https://cdn/live.m3u8", SegmenterSettings())
        self.assertIn("hls", args[args.index("-format_whitelist") + 1].split(","))
        self.assertNotIn("-localaddr", args)

    def test_video_is_copied_and_audio_is_aac(self):
        args = segmenter_args("ffmpeg", "udp://127.0.0.1:5000", SegmenterSettings())
        self.assertEqual(args[args.index("-c:v") + 1], "copy")
        self.assertEqual(args[args.index("-c:a") + 1], "aac")
        self.assertEqual(args[args.index("-ar") + 1], "48000")
        self.assertEqual(args[args.index("-map") + 1], "0:v:0")
        self.assertIn("0:a:0?", args, "audio is optional")

    def test_segment_length_and_reports(self):
        args = segmenter_args("ffmpeg", "rtsp://cam/x", SegmenterSettings(segment_seconds=4))
        self.assertEqual(args[args.index("-segment_time") + 1], "4")
        self.assertEqual(args[args.index("-progress") + 1], f"pipe:{PROGRESS_FD}")
        self.assertEqual(args[args.index("-segment_list_type") + 1], "csv")

    def test_recognises_its_own_processes(self):
        args = segmenter_args("/usr/bin/ffmpeg", "rtsp://cam/x", SegmenterSettings())
        self.assertTrue(is_segmenter([arg.encode() for arg in args]))
        self.assertFalse(is_segmenter([b"/usr/bin/ffmpeg", b"-i", b"x", b"out.mp4"]))
        self.assertFalse(is_segmenter([b"python3", b"-segment_list", b"pipe:1"]))

    def test_parent_death_launcher(self):
        launcher = parent_death_launcher()
        if launcher:
            self.assertEqual(launcher[1:], ["--pdeathsig", "INT"])
            self.assertTrue(os.access(launcher[0], os.X_OK))


class StderrTests(unittest.SynchronousTestCase):
    """What ffmpeg's stderr says about the source."""

    def report(self, kind: str, duration: str) -> list[str]:
        return [
            f"Input #0, {kind}, from 'http://127.0.0.1:8080/x':",
            f"  Duration: {duration}, start: 1.400000, bitrate: 0 kb/s",
            "  Stream #0:0: Video: h264, yuv420p, 320x240, 25 fps",
            "Output #0, segment, to 'seg%06d.mp4':",
        ]

    def test_a_source_with_a_length_ends(self):
        self.assertEqual(
            source_end(self.report("hls", "00:00:06.00")),
            "the source ended (HLS playlist with EXT-X-ENDLIST)",
        )
        self.assertEqual(
            source_end(self.report("mov,mp4,m4a,3gp,3g2,mj2", "01:02:03.50")),
            "the source ended (a mov file of 3723.5 s, not live)",
        )

    def test_a_live_source_does_not(self):
        self.assertIsNone(source_end(self.report("hls", "N/A")))
        self.assertIsNone(source_end(self.report("rtsp", "N/A")))
        self.assertIsNone(source_end(self.report("flv", "00:00:00.00")), "live RTMP says 0")
        self.assertIsNone(source_end(["  Duration: 00:00:06.00, start: 0"]), "not the input's")
        self.assertIsNone(source_end([]))

    def test_a_refused_format_is_named(self):
        lines = [
            "[sdp @ 0x55d0] Format not on whitelist 'hls,mpegts,mov'",
            "http://127.0.0.1:8765/a.sdp: Invalid argument",
        ]
        self.assertEqual(
            explain(lines), "the source is sdp, not a live video format streamrec records"
        )


class LayoutTests(unittest.SynchronousTestCase):
    def test_names(self):
        self.assertEqual(segment_name(7), "seg000007.mp4")
        self.assertEqual(segment_index("seg000007.mp4"), 7)
        for other in ("seg.mp4", "segABC.mp4", "seg000007.ts", "x000007.mp4"):
            self.assertIsNone(segment_index(other))

    def test_runs_and_segments(self):
        layout = SegmentLayout(self.mktemp())
        run = layout.run_dir(3, 12)
        self.assertEqual(run, os.path.join(layout.data_dir, "segments", "3", "12"))
        os.makedirs(run)
        for name in ("seg000010.mp4", "seg000002.mp4", "notes.txt", "seg000001.mp4"):
            open(os.path.join(run, name), "w").close()
        self.assertEqual(
            layout.segment_names(run), ["seg000001.mp4", "seg000002.mp4", "seg000010.mp4"]
        )
        self.assertEqual(layout.segment_path(run, 4), os.path.join(run, "seg000004.mp4"))

    def test_quarantine_keeps_the_place_in_the_tree(self):
        layout = SegmentLayout(self.mktemp())
        run = layout.run_dir(3, 12)
        os.makedirs(run)
        path = layout.segment_path(run, 0)
        with open(path, "wb") as handle:
            handle.write(b"bad")
        moved = layout.quarantine(path)
        self.assertEqual(
            moved, os.path.join(layout.data_dir, "quarantine", "3", "12", "seg000000.mp4")
        )
        self.assertFalse(os.path.exists(path))
        stray = os.path.join(self.mktemp(), "seg000001.mp4")
        os.makedirs(os.path.dirname(stray))
        open(stray, "w").close()
        self.assertEqual(
            layout.quarantine(stray), os.path.join(layout.quarantine_root, "seg000001.mp4")
        )
