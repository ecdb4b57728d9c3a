"""Unusual and hostile sources against the whole service with real ffmpeg on
127.0.0.1: a source that listens binds only the address its URL names, a URL
asks ffmpeg only for what is allowed, a server that answers with SDP or
ffconcat is refused, and a finished HLS playlist ends instead of looping."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import static
from twisted.web.server import Site

from ..support.harness import Service, ServiceTestCase, sleep, until
from ..support.livesource import FFMPEG, UdpTsSource, free_port
from . import test_e2e


def udp_bound(port: int) -> list[str]:
    """The local IPv4 addresses of the sockets bound to UDP ``port`` (/proc/net/udp)."""
    found = []
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)
        for row in table:
            local = row.split()[1]
            address, _, hex_port = local.partition(":")
            if int(hex_port, 16) == port:
                found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return sorted(found)


def serve(testcase: ServiceTestCase, files: dict[str, str] | None = None) -> tuple[str, str]:
    """A directory served over HTTP on 127.0.0.1: (its path, its base URL)."""
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    for name, text in (files or {}).items():
        with open(os.path.join(directory, name), "w", encoding="ascii") as handle:
            handle.write(text)
    port = reactor.listenTCP(0, Site(static.File(directory)), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return directory, f"http://127.0.0.1:{port.getHost().port}"


async def create(service: Service, url: str) -> int:
    return (await service.ok("POST", "/streams/create", url=url))["stream_id"]


class RefusedTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_refused_forms_answer_400(self):
        yield defer.ensureDeferred(self._refused())

    async def _refused(self) -> None:
        service = await self.service()
        for url, words in (
            ("udp://@:5000", "name the local IP address to listen on"),
            ("udp://:5000", "udp://0.0.0.0:5000 for every interface"),
            ("udp://127.0.0.1:9", "port must be from 1024 to 65535"),
            ("srt://:9000?mode=listener", "srt://0.0.0.0:9000 for every interface"),
            ("srt://cam:9000?mode=rendezvous", "'mode' must be caller or listener"),
            ("udp://239.0.0.1:5000?fifo_size=12000000", "'fifo_size' must be a whole number"),
            ("udp://239.0.0.1:5000?localport=22", "'localport' is not allowed"),
            ("rtsp://cam/x?udp", "streamrec reads RTSP over TCP"),
        ):
            code, answer = await service.call("POST", "/streams/create", url=url)
            self.assertEqual(code, 400, (url, answer))
            self.assertTrue(answer["error_message"].startswith("Invalid URL: "), answer)
            self.assertIn(words, answer["error_message"])
        self.assertEqual(await service.ok("GET", "/streams/"), {"result": []})


class SecretTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_ffmpeg_quoting_the_password_reaches_no_log_or_answer(self):
        yield defer.ensureDeferred(self._secret())

    async def _secret(self) -> None:
        events: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            events.append(f"{event.get('log_namespace')}: {formatEvent(event)}")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        service = await self.service()
        url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"
        stream_id = await create(service, url)
        code, answer = await service.call("POST", f"/streams/{stream_id}/start")
        self.assertEqual(code, 500)
        masked = url.replace("hunter2", "***")
        self.assertEqual(answer["reason"], f"{masked}: Connection refused")
        status = await service.status(stream_id)
        self.assertEqual((status["url"], status["last_error"]), (masked, answer["reason"]))
        recorder = [line for line in events if line.startswith("streamrec.recorder")]
        self.assertTrue(any(masked in line for line in recorder), recorder)
        self.assertEqual([line for line in events if "hunter2" in line], [])


class ListeningTests(ServiceTestCase):
    """ffmpeg would bind 0.0.0.0 for udp://127.0.0.1:PORT; it binds 127.0.0.1."""

    @defer.inlineCallbacks
    def test_a_udp_source_binds_only_the_address_asked(self):
        yield defer.ensureDeferred(self._udp())

    async def _udp(self) -> None:
        source = UdpTsSource.running(self, audio="aac")
        everywhere = free_port("udp")
        service = await self.service(start_timeout=2)
        loopback = await create(service, source.url)
        await service.ok("POST", f"/streams/{loopback}/start")
        await until(lambda: self._recorded(service, loopback), 30, "a segment from udp://127.0.0.1")
        self.assertEqual(udp_bound(source.port), ["127.0.0.1"])
        # Every interface, when the URL says so.
        anywhere = await create(service, f"udp://0.0.0.0:{everywhere}")
        await service.ok("POST", f"/streams/{anywhere}/start")
        await until(self._bound(everywhere, ["0.0.0.0"]), 10, "ffmpeg to bind 0.0.0.0")
        print(f"\nudp listeners: {udp_bound(source.port)} and {udp_bound(everywhere)}")

    @defer.inlineCallbacks
    def test_an_srt_listener_binds_only_the_address_asked(self):
        yield defer.ensureDeferred(self._srt())

    async def _srt(self) -> None:
        port = free_port("udp")
        service = await self.service(start_timeout=2)
        stream_id = await create(service, f"srt://127.0.0.1:{port}?mode=listener&latency=200000")
        await service.ok("POST", f"/streams/{stream_id}/start")
        await until(self._bound(port, ["127.0.0.1"]), 10, "ffmpeg to listen on 127.0.0.1")
        test_e2e.live_encoder(self, ["-f", "mpegts", f"srt://127.0.0.1:{port}?mode=caller"])
        await until(lambda: self._recorded(service, stream_id), 30, "a segment over SRT")
        self.assertEqual(udp_bound(port), ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_rtsp_and_rtmp_urls_never_listen(self):
        yield defer.ensureDeferred(self._pulled())

    async def _pulled(self) -> None:
        service = await self.service(start_timeout=5)
        for url in (
            f"rtmp://127.0.0.1:{free_port()}/live/cam?listen=1",
            f"rtsp://127.0.0.1:{free_port()}/cam?listen",
        ):
            stream_id = await create(service, url)
            code, answer = await service.call("POST", f"/streams/{stream_id}/start")
            # A listener would wait for its peer, and start would answer 200.
            self.assertEqual(code, 500, (url, answer))
            self.assertIn("Connection refused", answer["reason"])

    def _bound(self, port: int, addresses: list[str]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return udp_bound(port) == addresses

        return check

    async def _recorded(self, service: Service, stream_id: int) -> bool:
        return (await service.status(stream_id))["recorded"]["segments"] > 0


SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=probe
c=IN IP4 127.0.0.1
t=0 0
m=video {port} RTP/AVP 96
a=rtpmap:96 H264/90000
"""


class InputFormatTests(ServiceTestCase):
    """ffmpeg probes what a server sends; SDP (which opens local UDP ports) and
    ffconcat (which opens other inputs) are refused by the demuxer whitelist."""

    @defer.inlineCallbacks
    def test_sdp_and_ffconcat_over_http_are_refused(self):
        yield defer.ensureDeferred(self._refused())

    async def _refused(self) -> None:
        rtp_port = free_port("udp")
        _, base = serve(
            self,
            {
                "camera.sdp": SDP.format(port=rtp_port),
                "list.ffconcat": f"ffconcat version 1.0\nfile udp://127.0.0.1:{rtp_port}\n",
            },
        )
        service = await self.service()
        for name, kind in (("camera.sdp", "sdp"), ("list.ffconcat", "concat")):
            stream_id = await create(service, f"{base}/{name}")
            code, answer = await service.call("POST", f"/streams/{stream_id}/start")
            why = f"the source is {kind}, not a live video format streamrec records"
            self.assertEqual((code, answer["error_message"]), (500, "Cannot start stream"))
            self.assertEqual(answer["reason"], why)
            status = await service.status(stream_id)
            self.assertEqual((status["state"], status["last_error"]), ("stopped", why))
        self.assertEqual(udp_bound(rtp_port), [], "the port they name was never opened")


class FinishedPlaylistTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_a_finished_hls_playlist_ends(self):
        yield defer.ensureDeferred(self._finished())

    async def _finished(self) -> None:
        directory, base = serve(self)
        command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi"]
        command += ["-i", "testsrc=size=320x240:rate=25", "-t", "4", "-c:v", "libx264"]
        command += ["-g", "25", "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"]
        subprocess.run([*command, os.path.join(directory, "vod.m3u8")], check=True, timeout=60)
        with open(os.path.join(directory, "vod.m3u8"), encoding="ascii") as playlist:
            self.assertIn("#EXT-X-ENDLIST", playlist.read())
        service = await self.service()
        stream_id = await create(service, f"{base}/vod.m3u8")
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def ended() -> dict[str, Any] | None:
            status = await service.status(stream_id)
            return status if status["state"] == "ended" else None

        status = await until(ended, 30, "the recorder to see the playlist end")
        self.assertEqual(status["last_error"], "the source ended (HLS playlist with EXT-X-ENDLIST)")
        self.assertGreater(status["recorded"]["segments"], 0)
        self.assertTrue(status["started"])
        await sleep(3)  # it was recorded again about once a second
        later = await service.status(stream_id)
        self.assertEqual((later["state"], later["reconnects"]), ("ended", 0))
        self.assertEqual(later["recorded"], status["recorded"])
        print(f"\nfinished playlist: {later['recorded']['segments']} segments, then ended")
        await service.ok("POST", f"/streams/{stream_id}/stop")
        self.assertEqual((await service.status(stream_id))["state"], "stopped")
