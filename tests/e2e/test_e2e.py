"""The whole service, end to end: real ffmpeg, real live sources on 127.0.0.1,
real files, clips checked by decoding the frame numbers the sources paint."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import treq
from twisted.internet import defer, reactor
from twisted.web import static
from twisted.web.server import Site

from ..support import framecode
from ..support.harness import FRAME, Service, ServiceTestCase, sleep, until
from ..support.livesource import FFMPEG, FPS, RtspServer, UdpTsSource, free_port


class UdpRecordingTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_record_and_cut_frame_exact_clips(self):
        yield defer.ensureDeferred(self._record_and_cut())

    async def _record_and_cut(self) -> None:
        source = UdpTsSource.running(self, audio="aac")
        service = await self.service()
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")
        status = await service.status(stream_id)
        self.assertEqual(status["state"], "recording")
        self.assertIsNotNone(status["start_date"])
        first = await until(
            lambda: self._first_segment(service, stream_id), 20, "the first segment"
        )
        # 10 s recorded after the first segment; ask for 4 s starting between keyframes.
        start = first + 2.37
        await service.recorded_until(stream_id, start + 8)
        # A copy clip of a recorded range is done in the first answer.
        first_answer = await service.ok(
            "GET", f"/streams/{stream_id}/get_clip", start=start, stop=start + 4
        )
        self.assertEqual(first_answer["status"], "done", first_answer)
        job = await service.clip(stream_id, start=start, stop=start + 4)
        self.assertEqual(job["clips"], first_answer["clips"])
        again = await service.clip(stream_id, start=start + 1.52, stop=start + 5.52)
        [clip] = job["clips"]
        [later] = again["clips"]
        self.assertNear(clip["duration"], 4, FRAME)
        shown = await self.fetch(service, clip)
        shown_later = await self.fetch(service, later)
        self.assertEqual((shown["video"], shown["audio"]), ("h264", "aac"))
        self.assertNear(len(shown["numbers"]), 4 * FPS, 1)
        self.assertNear(shown["duration"], 4, FRAME)
        # Frame-exact against the index: 1.52 s later is 38 frames later.
        self.assertEqual(shown_later["numbers"][0] - shown["numbers"][0], 38)
        # Against the source's own clock: the frame shown first left the source
        # within a few frames of the requested instant (network and muxing latency).
        source.refresh_t0()
        error = source.frame_time(shown["numbers"][0]) - start
        error_end = source.frame_time(shown["numbers"][-1]) + FRAME - (start + 4)
        print(
            f"\nUDP clip: start error {error * 1000:+.0f} ms, end error {error_end * 1000:+.0f} ms"
        )
        self.assertLess(abs(error), 0.3)
        self.assertLess(abs(error_end), 0.3)
        # Byte ranges on the clip link, as a <video> element asks for them.
        response = await treq.get(
            clip["link"], headers={b"Range": [b"bytes=0-99"]}, persistent=False
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(len(await response.content()), 100)
        # Stop, wait, start again: a clip across the gap has two parts.
        await service.ok("POST", f"/streams/{stream_id}/stop")
        stopped = (await service.status(stream_id))["stop_date"]
        await sleep(2)
        await service.ok("GET", f"/streams/{stream_id}/start")
        await until(
            lambda: self._recorded_after(service, stream_id, stopped + 4),
            30,
            "recording again",
        )
        job = await service.clip(stream_id, start=stopped - 3, stop=stopped + 4)
        self.assertEqual(len(job["clips"]), 2, job)
        before, after = job["clips"]
        # 2 s between stop and start; the clock mapping of each run is good to ~0.2 s
        self.assertGreater(after["start"] - before["stop"], 1.6)
        for part in (before, after):
            await self.fetch(service, part)

    async def _first_segment(self, service: Service, stream_id: int) -> float | None:
        return (await service.status(stream_id))["recorded"]["first"]

    async def _recorded_after(self, service: Service, stream_id: int, when: float) -> bool:
        last = (await service.status(stream_id))["recorded"]["last"]
        return last is not None and last > when

    @defer.inlineCallbacks
    def test_killed_segmenter_reconnects_and_loses_at_most_a_moment(self):
        yield defer.ensureDeferred(self._killed_segmenter())

    async def _killed_segmenter(self) -> None:
        source = UdpTsSource.running(self, audio=None)
        service = await self.service()
        stream_id = (await service.ok("GET", "/streams/create", url=source.url))["stream_id"]
        await service.ok("GET", f"/streams/{stream_id}/start")
        recorder = service.service.streams.recorders.by_stream[stream_id]
        await until(lambda: self._first_segment(service, stream_id), 20, "the first segment")
        await sleep(2.5)
        killed_at = time.time()
        os.kill(recorder.process.pid, signal.SIGKILL)
        await until(
            lambda: self._recorded_after(service, stream_id, killed_at + 3),
            40,
            "recording again",
        )
        status = await service.status(stream_id)
        self.assertEqual(status["state"], "recording")
        self.assertGreaterEqual(status["reconnects"], 1)
        first = status["recorded"]["first"]
        job = await service.clip(stream_id, start=first, stop=killed_at + 3)
        self.assertEqual(len(job["clips"]), 2, job)
        before, after = job["clips"]
        # What was flushed before the kill is kept: up to the last whole GOP.
        self.assertGreater(before["stop"], killed_at - 1.1)
        print(
            f"\nkill -9 of ffmpeg: kept until {before['stop'] - killed_at:+.2f} s, "
            f"gap {after['start'] - before['stop']:.2f} s"
        )
        shown = await self.fetch(service, before)
        self.assertNear(len(shown["numbers"]), before["duration"] * FPS, 1)


class StartFailureTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_unreachable_camera(self):
        service = yield defer.ensureDeferred(self.service())
        url = f"rtsp://127.0.0.1:{free_port()}/nothing"
        body = yield defer.ensureDeferred(service.ok("POST", "/streams/create", url=url))
        stream_id = body["stream_id"]
        code, answer = yield defer.ensureDeferred(
            service.call("POST", f"/streams/{stream_id}/start")
        )
        self.assertEqual((code, answer["error_message"]), (500, "Cannot start stream"))
        self.assertIn("refused", answer["reason"].lower())
        status = yield defer.ensureDeferred(service.status(stream_id))
        self.assertIsNone(status["start_date"])
        self.assertEqual(status["state"], "stopped")
        code, answer = yield defer.ensureDeferred(
            service.call("GET", f"/streams/{stream_id}/get_clip", start=time.time() - 5)
        )
        self.assertEqual((code, answer), (500, {"error_message": "Stream not started"}))


class RtspTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_cameras_with_aac_and_g711(self):
        yield defer.ensureDeferred(self._cameras())

    async def _cameras(self) -> None:
        camera = RtspServer.running(self, h265=False)
        service = await self.service()
        streams = {}
        for mount in ("h264aac", "h264alaw", "h264mulaw", "h264"):
            body = await service.ok("POST", "/streams/create", url=camera.url(mount))
            streams[mount] = body["stream_id"]
            await service.ok("POST", f"/streams/{streams[mount]}/start")
        started = time.time()
        for stream_id in streams.values():
            await service.recorded_until(stream_id, started + 6)
        for mount, stream_id in streams.items():
            job = await service.clip(stream_id, start=started + 1.3, stop=started + 5.3)
            [clip] = job["clips"]
            shown = await self.fetch(service, clip)
            expected_audio = None if mount == "h264" else "aac"
            self.assertEqual((shown["video"], shown["audio"]), ("h264", expected_audio), mount)
            self.assertNear(len(shown["numbers"]), 4 * FPS, 1, mount)
            error = camera.frame_time(shown["numbers"][0]) - (started + 1.3)
            print(f"\nRTSP {mount}: start error {error * 1000:+.0f} ms")
            self.assertLess(abs(error), 0.5, mount)


class RestartTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_started_streams_record_again_after_a_restart(self):
        yield defer.ensureDeferred(self._restart())

    async def _restart(self) -> None:
        source = UdpTsSource.running(self, audio="aac")
        data_dir = self.mktemp()
        first = await Service(self, data_dir).start()
        try:
            stream_id = (await first.ok("POST", "/streams/create", url=source.url))["stream_id"]
            await first.ok("POST", f"/streams/{stream_id}/start")
            began = time.time()
            await first.recorded_until(stream_id, began + 2)
        finally:
            await first.stop()
        down_at = time.time()
        second = await self.service(data_dir)
        status = await second.status(stream_id)
        self.assertIsNotNone(status["start_date"])
        self.assertIsNone(status["stop_date"])
        # The last segment was closed and indexed on shutdown.
        self.assertGreater(status["recorded"]["last"], down_at - 1.5)
        await second.recorded_until(stream_id, time.time() + 2, timeout=30)
        self.assertEqual((await second.status(stream_id))["state"], "recording")
        job = await second.clip(stream_id, start=began, stop=time.time() - 1)
        self.assertEqual(len(job["clips"]), 2, job)
        for clip in job["clips"]:
            await self.fetch(second, clip)


def live_encoder(testcase: ServiceTestCase, output: list[str]) -> None:
    """An ffmpeg encoding a numbered live picture and a tone to ``output``."""
    command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re"]
    command += ["-f", "lavfi", "-i", framecode.source_filter(320, 240, FPS)]
    command += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    command += ["-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-c:a", "aac"]
    encoder = subprocess.Popen(command + output, stdin=subprocess.DEVNULL)

    def stop_encoder() -> None:
        encoder.kill()
        encoder.wait(10)

    testcase.addCleanup(stop_encoder)


class HlsTests(ServiceTestCase):
    """A live HLS playlist over HTTP (ffmpeg's HLS muxer, served by twisted.web)."""

    def hls_source(self) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        hls = ["-f", "hls", "-hls_time", "1", "-hls_list_size", "6"]
        hls += ["-hls_flags", "delete_segments", os.path.join(directory, "live.m3u8")]
        live_encoder(self, hls)
        port = reactor.listenTCP(0, Site(static.File(directory)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/live.m3u8"

    @defer.inlineCallbacks
    def test_live_playlist(self):
        yield defer.ensureDeferred(self._live_playlist())

    async def _live_playlist(self) -> None:
        url = self.hls_source()
        service = await self.service()
        stream_id = (await service.ok("POST", "/streams/create", url=url))["stream_id"]

        async def started() -> bool:
            code, _ = await service.call("POST", f"/streams/{stream_id}/start")
            return code == 200

        await until(started, 20, "the playlist to be served", interval=1)
        first = await until(
            lambda: self._first(service, stream_id), 30, "the first segment of the playlist"
        )
        start = first + 2.37
        await service.recorded_until(stream_id, start + 4)
        job = await service.clip(stream_id, start=start, stop=start + 3)
        [clip] = job["clips"]
        shown = await self.fetch(service, clip)
        self.assertEqual((shown["video"], shown["audio"]), ("h264", "aac"))
        self.assertNear(len(shown["numbers"]), 3 * FPS, 1)

    async def _first(self, service: Service, stream_id: int) -> float | None:
        return (await service.status(stream_id))["recorded"]["first"]


class ListeningSourceTests(ServiceTestCase):
    """Sources that wait for the recorder to connect: an RTMP server and an SRT
    listener (ffmpeg playing the encoder's part)."""

    async def record_a_clip(self, url: str) -> None:
        service = await self.service()
        stream_id = (await service.ok("POST", "/streams/create", url=url))["stream_id"]

        async def started() -> bool:
            code, _ = await service.call("POST", f"/streams/{stream_id}/start")
            return code == 200

        await until(started, 15, f"{url} to answer", interval=0.5)
        began = time.time()
        await service.recorded_until(stream_id, began + 4)
        job = await service.clip(stream_id, start=began + 1.3, stop=began + 3.3)
        [clip] = job["clips"]
        shown = await self.fetch(service, clip)
        self.assertEqual((shown["video"], shown["audio"]), ("h264", "aac"))
        self.assertNear(len(shown["numbers"]), 2 * FPS, 1)

    @defer.inlineCallbacks
    def test_rtmp(self):
        url = f"rtmp://127.0.0.1:{free_port()}/live/cam"
        live_encoder(self, ["-f", "flv", "-listen", "1", url])
        yield defer.ensureDeferred(self.record_a_clip(url))

    @defer.inlineCallbacks
    def test_srt(self):
        port = free_port("udp")
        live_encoder(self, ["-f", "mpegts", f"srt://127.0.0.1:{port}?mode=listener"])
        yield defer.ensureDeferred(self.record_a_clip(f"srt://127.0.0.1:{port}?mode=caller"))
