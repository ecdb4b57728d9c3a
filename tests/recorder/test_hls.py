"""Reading an HLS source's own clock from its playlist and ffmpeg's log."""

from __future__ import annotations

from twisted.trial import unittest

from streamrec.recorder.hls import FirstSegment, program_date_time
from streamrec.recorder.run import source_clock

PLAYLIST = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-PROGRAM-DATE-TIME:2026-12-04T15:14:42.822+0000
#EXTINF:2.000000,
seg10.ts
#EXTINF:1.960000,
seg11.ts?token=abc
#EXTINF:2.0,
https://cdn.example/live/seg12.ts
#EXT-X-DISCONTINUITY
#EXTINF:2.0,
seg13.ts
#EXT-X-PROGRAM-DATE-TIME:2026-12-04T16:00:00Z
#EXTINF:2.0,
seg14.ts
"""

BASE = "https://cdn.example/live/index.m3u8"
T = 1796397282.822  # 2026-12-04T15:14:42.822Z


class ProgramDateTimeTests(unittest.SynchronousTestCase):
    def date(self, segment: str) -> float | None:
        return program_date_time(PLAYLIST, BASE, "https://cdn.example/live/" + segment)

    def test_a_dated_segment(self):
        self.assertAlmostEqual(self.date("seg10.ts"), T)

    def test_later_segments_add_the_durations_between(self):
        self.assertAlmostEqual(self.date("seg11.ts?token=abc"), T + 2.0)
        self.assertAlmostEqual(self.date("seg12.ts"), T + 3.96)

    def test_a_discontinuity_forgets_the_date_until_one_is_given(self):
        self.assertIsNone(self.date("seg13.ts"))
        self.assertAlmostEqual(self.date("seg14.ts"), 1796400000.0)

    def test_no_date_or_not_listed(self):
        self.assertIsNone(self.date("seg99.ts"))
        undated = "#EXTM3U\n#EXTINF:2.0,\nseg10.ts\n"
        self.assertIsNone(program_date_time(undated, BASE, "https://cdn.example/live/seg10.ts"))
        bad = "#EXTM3U\n#EXT-X-PROGRAM-DATE-TIME:yesterday\n#EXTINF:x,\nseg10.ts\n"
        self.assertIsNone(program_date_time(bad, BASE, "https://cdn.example/live/seg10.ts"))


class FirstSegmentTests(unittest.SynchronousTestCase):
    def test_the_first_media_segment_and_its_playlist(self):
        first = FirstSegment("http://cam/master.m3u8")
        log = [
            "[hls @ 0x55] Skip ('#EXT-X-VERSION:3')",
            "[hls @ 0x55] Opening 'http://cam/720p/index.m3u8' for reading",
            "[hls @ 0x55] Opening 'http://cam/720p/seg5.ts' for reading",
            "[hls @ 0x55] Opening 'http://cam/720p/seg6.ts' for reading",
        ]
        found = [first.line(line) for line in log]
        self.assertEqual(
            found, [None, None, ("http://cam/720p/index.m3u8", "http://cam/720p/seg5.ts"), None]
        )

    def test_a_media_playlist_given_as_the_source(self):
        first = FirstSegment("http://cam/live.m3u8")
        found = first.line("[hls @ 0x1] Opening 'http://cam/live1.ts' for reading")
        self.assertEqual(found, ("http://cam/live.m3u8", "http://cam/live1.ts"))

    def test_which_sources_carry_a_clock(self):
        self.assertEqual(source_clock("rtsp://cam/1"), "rtsp")
        self.assertEqual(source_clock("RTSPS://cam/1"), "rtsp")
        self.assertEqual(source_clock("https://cam/live.m3u8?x=1"), "hls")
        self.assertIsNone(source_clock("http://cam/video.mjpg"))
        self.assertIsNone(source_clock("udp://127.0.0.1:5000"))
