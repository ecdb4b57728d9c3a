"""Which source URLs are recorded, and the ffmpeg input options for each."""

from __future__ import annotations

from twisted.trial import unittest

from streamrec.errors import BadRequest
from streamrec.sources import (
    PROTOCOL_WHITELIST,
    InvalidSource,
    input_options,
    validate_source_url,
)


class ValidateTests(unittest.SynchronousTestCase):
    def test_live_sources_are_accepted(self):
        for url in (
            "rtsp://admin:pw@10.0.0.5:554/Streaming/Channels/101",
            "rtsps://cam.local/live",
            "rtmp://127.0.0.1/live/cam",
            "http://10.0.0.9/hls/index.m3u8",
            "https://cdn.example/live.ts",
            "srt://127.0.0.1:9000?mode=caller",
            "udp://239.0.0.1:5000",
            "rtp://127.0.0.1:5004",
        ):
            self.assertEqual(validate_source_url(url), url)

    def test_everything_else_is_refused_with_a_reason(self):
        for url, words in (
            ("file:///etc/passwd", "scheme 'file' is not allowed"),
            ("concat:a.ts|b.ts", "scheme 'concat' is not allowed"),
            ("/var/video.mp4", "no scheme"),
            ("rtsp:cam", "no host"),
            ("udp:5000", "expected udp://host"),
            ("rtsp:///path", "no host"),
            ("rtsp://cam:0/x", "port must be between"),
            ("rtsp://cam:99999/x", "malformed URL"),
            ("rtsp://cam/a b", "spaces or control characters"),
            ("rtsp://cam/" + "x" * 3000, "longer than"),
        ):
            error = self.assertRaises(InvalidSource, validate_source_url, url)
            self.assertIn(words, str(error), url)

    def test_an_invalid_source_is_a_bad_request(self):
        self.assertTrue(issubclass(InvalidSource, BadRequest))


class InputOptionsTests(unittest.SynchronousTestCase):
    def test_every_source_gets_the_protocol_whitelist(self):
        for url in ("rtsp://cam/x", "udp://127.0.0.1:5000", "http://cam/x.m3u8", "srt://h:1"):
            options = input_options(url, 10)
            self.assertEqual(options[:2], ["-protocol_whitelist", PROTOCOL_WHITELIST])
        self.assertNotIn("file", PROTOCOL_WHITELIST.split(","))

    def test_timeouts_and_transports_per_protocol(self):
        rtsp = input_options("rtsp://cam/x", 2.5)
        self.assertEqual(rtsp[rtsp.index("-rtsp_transport") + 1], "tcp")
        self.assertEqual(rtsp[rtsp.index("-timeout") + 1], "2500000")
        udp = input_options("udp://127.0.0.1:5000", 1)
        self.assertEqual(udp[udp.index("-fflags") + 1], "+genpts")
        http = input_options("https://cam/live.m3u8", 1)
        self.assertEqual(http[http.index("-rw_timeout") + 1], "1000000")
        self.assertEqual(http[http.index("-reconnect") + 1], "1")
        rtmp = input_options("rtmp://h/live", 1)
        self.assertIn("-rw_timeout", rtmp)
        self.assertNotIn("-reconnect", rtmp)
