"""The camera's clock, end to end: a real RTSP camera that paints its frame
number, captures frame ``n`` at exactly ``t0 + n / 25`` and says so in its
RTCP sender reports, behind a proxy that holds its bytes back half a second
(and, for the agreement rule, sets its clock 30 s wrong); a real service and
its ffmpeg segmenters.

Each test prints what it measured (``CLOCK ...``).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer

from ..support.harness import Service, ServiceTestCase, until
from ..support.livesource import PaintedCamera

#: How long the proxy holds the camera's bytes back.
DELAY = 0.5

#: One frame at 25 fps.
FRAME = 0.04


class CameraClockTests(ServiceTestCase):
    timeout = 150

    async def stream(self, service: Service, url: str, clock: str) -> int:
        created = await service.ok("POST", "/streams/create", url=url, clock=clock)
        stream_id = created["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")
        return stream_id

    async def first_shown(
        self, service: Service, camera: PaintedCamera, stream_id: int, start: float
    ) -> tuple[float, dict[str, Any]]:
        """The capture instant of the first frame a clip from ``start`` shows."""
        job = await service.clip(stream_id, start=start, stop=start + 2)
        [clip] = job["clips"]
        decoded = await self.fetch(service, clip)
        return camera.capture_time(decoded["numbers"][0], near=start), clip

    @defer.inlineCallbacks
    def test_clips_start_at_the_instant_the_camera_captured(self):
        yield defer.ensureDeferred(self._camera_and_arrival())

    async def _camera_and_arrival(self) -> None:
        camera = PaintedCamera.running(self, delay=DELAY)
        service = await self.service()
        by_camera = await self.stream(service, camera.url, "camera")
        by_arrival = await self.stream(service, camera.url, "arrival")
        await service.recorded_until(by_camera, time.time() + 4, timeout=40)
        await service.recorded_until(by_arrival, time.time(), timeout=40)
        status = await service.status(by_camera)
        self.assertEqual(status["clock"], "camera", status)
        self.assertEqual(status["clock_option"], "camera")
        # The video arrives the proxy's delay (and a frame of ffmpeg's parser) late.
        self.assertNear(status["camera_offset_ms"] / 1000, -DELAY - FRAME, 0.1, status)
        self.assertEqual((await service.status(by_arrival))["clock"], "arrival")

        asked = round(time.time() - 6, 2) + 0.013  # between two frames
        captured, clip = await self.first_shown(service, camera, by_camera, asked)
        late, arrival_clip = await self.first_shown(service, camera, by_arrival, asked)
        print(
            f"\nCLOCK rtsp with a {DELAY:g} s delay: the first frame shown was captured"
            f" {(captured - asked) * 1000:+.0f} ms from the instant asked with clock=camera,"
            f" {(late - asked) * 1000:+.0f} ms with clock=arrival;"
            f" time_error_ms {clip['time_error_ms']} and {arrival_clip['time_error_ms']}"
        )
        self.assertNear(captured, asked, FRAME, "clock=camera: the frame shown at the instant")
        self.assertNear(asked - late, DELAY + FRAME, 0.1, "clock=arrival: off by the delay")
        self.assertEqual((clip["clock"], arrival_clip["clock"]), ("camera", "arrival"))
        self.assertNear(clip["first_frame"], captured, FRAME / 2 + 0.002)
        self.assertLessEqual(clip["time_error_ms"], 2 * FRAME * 1000)
        self.assertGreaterEqual(arrival_clip["time_error_ms"], DELAY * 1000)
        self.assertNear(clip["last_frame"], clip["stop"] - FRAME, 0.002)

    @defer.inlineCallbacks
    def test_a_camera_whose_clock_is_wrong_falls_back_to_arrival(self):
        yield defer.ensureDeferred(self._wrong_clock())

    async def _wrong_clock(self) -> None:
        camera = PaintedCamera.running(self, delay=DELAY, ntp_offset=30.0)
        service = await self.service()
        stream_id = await self.stream(service, camera.url, "auto")

        async def measured() -> Any:
            status = await service.status(stream_id)
            return status if status["camera_offset_ms"] is not None else None

        status = await until(measured, 40, "the camera's clock measured")
        await service.recorded_until(stream_id, time.time(), timeout=40)
        status = await service.status(stream_id)
        print(f"\nCLOCK a camera 30 s wrong under auto: {status['clock_reason']}")
        self.assertEqual(status["clock"], "arrival", status)
        self.assertIn("beyond the 5 s tolerance", status["clock_reason"])
        self.assertNear(status["camera_offset_ms"] / 1000, 30 - DELAY - FRAME, 0.1, status)
        # The index follows arrival: a clip starts a delay after the capture.
        asked = round(time.time() - 4, 2) + 0.013
        late, clip = await self.first_shown(service, camera, stream_id, asked)
        self.assertEqual(clip["clock"], "arrival")
        self.assertNear(asked - late, DELAY + FRAME, 0.1)
