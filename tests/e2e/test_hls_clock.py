"""An HLS source's own clock, end to end: a live playlist, written by a real
ffmpeg that paints the frame number into each frame and dates every segment
(``EXT-X-PROGRAM-DATE-TIME``), served over HTTP on 127.0.0.1; a real service.

HLS comes late by nature: a segment is listed once it is complete, so the
video arrives a segment or more after it was taken. The playlist's dates do
not: with them, a clip starts at the instant asked for on the source's own
clock. Prints what it measured (``CLOCK ...``).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from twisted.internet import defer

from streamrec.recorder.hls import program_date_time

from ..support.encoding import FPS, h264_args, video_input_args
from ..support.harness import Service, ServiceTestCase, until
from ..support.livesource import FFMPEG
from .test_sources_e2e import serve

FRAME = 1 / FPS


class HlsClockTests(ServiceTestCase):
    timeout = 120

    def live_playlist(self) -> tuple[str, str]:
        """Start a live, dated playlist; ``(its URL, its directory)``."""
        directory, base = serve(self)
        command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin"]
        command += [*video_input_args(), "-map", "0:v", *h264_args(), "-f", "hls"]
        command += ["-hls_time", "1", "-hls_list_size", "10"]
        command += ["-hls_flags", "program_date_time+delete_segments"]
        packager = subprocess.Popen([*command, os.path.join(directory, "live.m3u8")])
        self.addCleanup(packager.wait, 10)
        self.addCleanup(packager.terminate)
        return f"{base}/live.m3u8", directory

    async def stream(self, service: Service, url: str, clock: str) -> int:
        created = await service.ok("POST", "/streams/create", url=url, clock=clock)
        await service.ok("POST", f"/streams/{created['stream_id']}/start")
        return int(created["stream_id"])

    @defer.inlineCallbacks
    def test_clips_start_on_the_playlists_clock(self):
        yield defer.ensureDeferred(self._dated())

    async def _dated(self) -> None:
        url, directory = self.live_playlist()

        async def first_date() -> float | None:
            try:
                with open(os.path.join(directory, "live.m3u8"), encoding="utf-8") as playlist:
                    text = playlist.read()
            except FileNotFoundError:
                return None
            return program_date_time(text, url, url.rsplit("/", 1)[0] + "/live0.ts")

        # Frame n of the picture is dated first + n / 25 by the playlist.
        first = await until(first_date, 20, "the first dated segment")
        service = await self.service()
        dated = await self.stream(service, url, "auto")
        late = await self.stream(service, url, "arrival")
        asked = round(time.time() + 2, 2) + 0.013
        await service.recorded_until(dated, asked + 3, timeout=40)
        await service.recorded_until(late, asked + 3, timeout=40)
        status = await service.status(dated)
        self.assertEqual(status["clock"], "camera", status)
        self.assertIn("HLS EXT-X-PROGRAM-DATE-TIME", status["clock_reason"])

        async def shown(stream_id: int) -> tuple[float, dict[str, Any]]:
            job = await service.clip(stream_id, start=asked, stop=asked + 2)
            [clip] = job["clips"]
            decoded = await self.fetch(service, clip)
            return first + decoded["numbers"][0] / FPS, clip

        on_date, clip = await shown(dated)
        on_arrival, _ = await shown(late)
        print(
            f"\nCLOCK hls: the first frame shown was dated {(on_date - asked) * 1000:+.0f} ms"
            f" from the instant asked with the playlist's dates,"
            f" {(on_arrival - asked) * 1000:+.0f} ms on arrival"
            f" (camera offset {status['camera_offset_ms']} ms)"
        )
        self.assertNear(on_date, asked, FRAME, "the frame dated at the instant asked")
        self.assertEqual(clip["clock"], "camera")
        self.assertLess(on_arrival - asked, -0.5, "arrival: a segment or more late")
        self.assertLess(status["camera_offset_ms"], -500)
