"""Which source URLs are recorded, and the ffmpeg input options for each."""

from __future__ import annotations

from twisted.trial import unittest

from streamrec.errors import BadRequest
from streamrec.sources import (
    ALLOWED_SCHEMES,
    INPUT_FORMATS,
    MAX_FIFO_PACKETS,
    PROTOCOL_WHITELIST,
    QUERY_OPTIONS,
    InvalidSource,
    input_options,
    listen_address,
    listens,
    mask_secrets,
    query_items,
    validate_source_url,
)


def refused(testcase: unittest.SynchronousTestCase, url: str) -> str:
    """Why ``url`` is refused (the test fails if it is accepted)."""
    return str(testcase.assertRaises(InvalidSource, validate_source_url, url))


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
            "udp://0.0.0.0:5000",
            "udp://[::]:5000",
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


class QueryOptionTests(unittest.SynchronousTestCase):
    """The options ffmpeg reads from a URL's query: a whitelist per scheme, bounded."""

    def test_the_options_a_receiver_needs_are_accepted(self):
        for url in (
            "udp://239.0.0.1:5000?fifo_size=50000&overrun_nonfatal=1&buffer_size=4194304",
            "udp://239.0.0.1:5000?localaddr=192.0.2.7&reuse=1&sources=192.0.2.1,192.0.2.2",
            "udp://0.0.0.0:5000?pkt_size=1316&block=198.51.100.9",
            "rtp://239.0.0.2:5004?buffer_size=65536&sources=192.0.2.1",
            "srt://cam:9000?mode=caller&passphrase=0123456789&pbkeylen=16&latency=120000",
            "srt://cam:9000?streamid=#!::r=live/cam,m=request&connect_timeout=3000",
            "srt://cam:9000?transtype=live&payload_size=1316&enforced_encryption=1",
            # Other schemes' queries go to the server, as cameras and CDNs want.
            "rtsp://cam/Streaming/Channels/101?transportmode=unicast&profile=Profile_1",
            "https://cdn.example/live.m3u8?fifo_size=99999999999&token=abc",
            "rtmp://media.example/live/key?listen=1",
        ):
            self.assertEqual(validate_source_url(url), url)

    def test_an_option_not_on_the_list_is_refused_by_name(self):
        for url, words in (
            ("udp://239.0.0.1:5000?timeout=1", "udp option 'timeout' is not allowed: use "),
            ("udp://239.0.0.1:5000?localport=6000", "'localport' is not allowed"),
            ("udp://239.0.0.1:5000?connect=1", "'connect' is not allowed"),
            ("udp://239.0.0.1:5000?fifo%5Fsize=9999999", "'fifo%5Fsize' is not allowed"),
            ("rtp://239.0.0.1:5004?fifo_size=10", "rtp option 'fifo_size' is not allowed"),
            ("srt://cam:9000?rcvbuf=2000000000", "srt option 'rcvbuf' is not allowed"),
            ("srt://cam:9000?ffs=99999999", "'ffs' is not allowed"),
            ("rtsp://cam/x?udp", "rtsp option 'udp' is not allowed: streamrec reads RTSP over TCP"),
            ("rtsps://cam/x?a=1&multicast", "rtsp option 'multicast' is not allowed"),
        ):
            self.assertIn(words, refused(self, url), url)

    def test_numbers_are_bounded(self):
        fifo = "udp://239.0.0.1:5000?fifo_size="
        self.assertTrue(validate_source_url(f"{fifo}{MAX_FIFO_PACKETS}"))
        for value in (MAX_FIFO_PACKETS + 1, 12_000_000, "-1", "0x10", "1e9", ""):
            self.assertIn(
                f"'fifo_size' must be a whole number from 0 to {MAX_FIFO_PACKETS}",
                refused(self, f"{fifo}{value}"),
            )
        for url, words in (
            ("udp://239.0.0.1:5000?buffer_size=2147483648", "from 1 to 16777216"),
            ("srt://cam:9000?latency=10000001", "'latency' must be a whole number from 0"),
            ("srt://cam:9000?pbkeylen=8", "'pbkeylen' must be 0 or 16 or 24 or 32"),
            ("srt://cam:9000?passphrase=short", "'passphrase' must be 10 to 79 characters"),
            ("srt://cam:9000?mode=rendezvous", "'mode' must be caller or listener"),
            ("udp://239.0.0.1:5000?sources=cam.local", "must be up to 16 IP addresses"),
        ):
            self.assertIn(words, refused(self, url), url)

    def test_the_query_is_read_as_ffmpeg_reads_it(self):
        # av_find_info_tag reads from the first '?', across a '#', decoding nothing.
        self.assertEqual(
            query_items("udp://h:1#x?a=1&fifo_size=2&flag"),
            [("a", "1"), ("fifo_size", "2"), ("flag", "")],
        )
        self.assertEqual(query_items("udp://h:1"), [])
        self.assertIn("'fifo_size' must be", refused(self, "udp://239.0.0.1:5000#?fifo_size=1e9"))
        # libavformat/rtsp.c takes its words after the last '?'.
        self.assertIn("more than one '?'", refused(self, "rtsp://cam/x?a=1?udp"))

    def test_every_option_is_checked(self):
        for scheme, options in QUERY_OPTIONS.items():
            for name, check in options.items():
                self.assertIsNotNone(check("x" * 600), f"{scheme} {name}")


class ListeningTests(unittest.SynchronousTestCase):
    """Sources that make ffmpeg listen name the address, and ffmpeg binds it."""

    def test_the_address_to_listen_on_must_be_spelled_out(self):
        for url, words in (
            ("udp://@:5000", "udp://@:5000 listens for the source: name the local IP address"),
            ("udp://:5000", "such as udp://0.0.0.0:5000 for every interface"),
            ("rtp://:5004", "such as rtp://0.0.0.0:5004"),
            ("udp://cam.local:5000", "name the local IP address"),
            ("srt://:9000?mode=listener", "such as srt://0.0.0.0:9000"),
            ("srt://@:9000?mode=listener", "srt://@:9000 listens"),
            ("udp://@239.0.0.1:5000", "write udp://239.0.0.1:5000, without '@'"),
            ("udp://user@192.0.2.1:5000", "takes no user"),
            ("udp://127.0.0.1", "needs a port"),
            ("srt://:9000", "URL has no host"),
        ):
            self.assertIn(words, refused(self, url), url)

    def test_ports_a_service_may_not_take_are_refused(self):
        for url, top in (
            ("udp://127.0.0.1:9", 65535),
            ("udp://239.0.0.1:1023", 65535),
            ("srt://0.0.0.0:443?mode=listener", 65535),
            ("rtp://0.0.0.0:65535", 65534),
        ):
            self.assertIn(f"port must be from 1024 to {top}", refused(self, url), url)
        self.assertTrue(validate_source_url("srt://cam:443?mode=caller"))

    def test_which_sources_listen(self):
        for url in (
            "udp://0.0.0.0:5000",
            "udp://127.0.0.1:5000",
            "rtp://[::]:5004",
            "srt://0.0.0.0:9000?latency=1000&mode=listener",
        ):
            self.assertTrue(listens(url), url)
        for url in (
            "udp://239.0.0.1:5000",
            "srt://cam:9000?mode=caller",
            "srt://cam:9000",
            "rtsp://cam/x",
            "rtmp://media/live/key",
            "https://cdn/live.m3u8",
        ):
            self.assertFalse(listens(url), url)

    def test_interface_and_reuse_options_are_for_multicast_groups(self):
        self.assertIn(
            "localaddr and reuse are for multicast groups only",
            refused(self, "udp://0.0.0.0:5000?localaddr=192.0.2.7"),
        )
        self.assertIn("for multicast groups", refused(self, "udp://127.0.0.1:5000?reuse=1"))

    def test_ffmpeg_is_told_the_address_to_bind(self):
        for url, address in (
            ("udp://127.0.0.1:5000", "127.0.0.1"),
            ("udp://0.0.0.0:5000?fifo_size=10", "0.0.0.0"),
            ("rtp://[::1]:5004", "::1"),
            ("udp://239.0.0.1:5000", None),  # a group: ffmpeg binds and joins it
            ("srt://127.0.0.1:9000?mode=listener", None),  # libsrt binds the URL's host
            ("rtsp://127.0.0.1/x", None),
        ):
            self.assertEqual(listen_address(url), address, url)
            options = input_options(url, 1)
            if address is None:
                self.assertNotIn("-localaddr", options)
            else:
                self.assertEqual(options[options.index("-localaddr") + 1], address)


class InputFormatTests(unittest.SynchronousTestCase):
    def test_every_scheme_has_a_demuxer_whitelist(self):
        self.assertEqual(sorted(INPUT_FORMATS), sorted(ALLOWED_SCHEMES))
        for scheme in ALLOWED_SCHEMES:
            options = input_options(f"{scheme}://127.0.0.1:5000/x", 1)
            formats = options[options.index("-format_whitelist") + 1].split(",")
            for probed in ("sdp", "dash", "concat", "image2", "lavfi", "data", "tee"):
                self.assertNotIn(probed, formats, scheme)
        self.assertEqual(INPUT_FORMATS["rtsp"], "rtsp")
        self.assertIn("hls", INPUT_FORMATS["https"].split(","))


class MaskSecretsTests(unittest.SynchronousTestCase):
    """mask_secrets hides the credentials of source URLs in any text."""

    def test_passwords_of_urls_are_masked(self):
        for text, masked in (
            (
                "rtsp://admin:hunter2@10.0.0.5:554/Streaming/Channels/101",
                "rtsp://admin:***@10.0.0.5:554/Streaming/Channels/101",
            ),
            ("rtsp://admin:p%40ss@cam/x", "rtsp://admin:***@cam/x"),
            ("rtsp://admin:pa:ss@cam/x", "rtsp://admin:***@cam/x"),
            ("rtsp://user:pa@ss@cam/x", "rtsp://user:***@cam/x"),
            ("RTMP://u:p@media/app", "RTMP://u:***@media/app"),
        ):
            self.assertEqual(mask_secrets(text), masked)

    def test_secret_query_parameters_are_masked(self):
        self.assertEqual(
            mask_secrets("srt://h:9000?mode=caller&passphrase=0123456789abc&latency=200000"),
            "srt://h:9000?mode=caller&passphrase=***&latency=200000",
        )
        self.assertEqual(
            mask_secrets("https://cdn/x.m3u8?token=abc123&user=me#t"),
            "https://cdn/x.m3u8?token=***&user=me#t",
        )
        self.assertEqual(
            mask_secrets("http://h/x?password=a&pwd=b"), "http://h/x?password=***&pwd=***"
        )

    def test_urls_inside_ffmpeg_lines_are_masked_each(self):
        line = (
            "Input #0, rtsp, from 'rtsp://admin:hunter2@10.0.0.5:554/cam': "
            "tried rtmp://u:secret@media/app too"
        )
        masked = mask_secrets(line)
        self.assertNotIn("hunter2", masked)
        self.assertNotIn("secret", masked)
        self.assertIn("'rtsp://admin:***@10.0.0.5:554/cam'", masked)
        self.assertIn("rtmp://u:***@media/app", masked)

    def test_text_without_secrets_is_left_alone(self):
        for text in (
            "rtsp://admin@10.0.0.5/x",
            "rtsp://10.0.0.5/x",
            "[tcp @ 0x55] Connection to tcp://10.0.0.5:554 failed: Connection refused",
            "user:pass@host without a scheme",
            "a=b",
            "",
        ):
            self.assertEqual(mask_secrets(text), text)

    def test_masking_twice_changes_nothing(self):
        once = mask_secrets("rtsp://admin:hunter2@cam/x?token=t")
        self.assertEqual(mask_secrets(once), once)
        self.assertEqual(once, "rtsp://admin:***@cam/x?token=***")
