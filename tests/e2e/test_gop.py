"""Loss and the live edge with a camera-like 4 s GOP, end to end: a real UDP
MPEG-TS source whose key frames come every 4 s, a real service and its
ffmpeg segmenter, real files.

Fragments close every quarter second whatever the GOP, so:
- a ``kill -9`` of the segmenter loses what it had not flushed yet, a
  fragment at most, and not the GOP it was in;
- a clip that ends a second ago is cut from the fragments already on disk
  of the segment still being written, without waiting for its GOP to end.

Each test prints what it measured (``GOP ...``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import closing
from typing import Any

from twisted.internet import defer

from ..support.harness import Service, ServiceTestCase, sleep, until
from ..support.livesource import UdpTsSource
from ..support.recordings import decoded_numbers

#: A camera's GOP: a key frame every 4 s at 25 fps.
GOP = 100

#: At most this much recorded before the kill is lost: two fragments.
MAX_LOSS = 0.6


class LongGopSource(UdpTsSource):
    gop = GOP


class LongGopTests(ServiceTestCase):
    timeout = 150

    async def recording(self) -> tuple[Service, LongGopSource, int]:
        source = LongGopSource.running(self, audio=None)
        service = await self.service()
        created = await service.ok("POST", "/streams/create", url=source.url)
        stream_id = created["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")
        await service.recorded_until(stream_id, time.time() + 2, timeout=40)
        return service, source, stream_id

    @defer.inlineCallbacks
    def test_a_kill_loses_a_fragment_not_a_gop(self):
        yield defer.ensureDeferred(self._kill())

    async def _kill(self) -> None:
        service, source, stream_id = await self.recording()
        assert service.service is not None
        recorder = service.service.streams.recorders.by_stream[stream_id]
        await until(lambda: _recording(recorder), 40, "a run with a closed segment")
        killed = recorder.run
        # Mid-GOP: the segment being written holds fragments after its key frame.
        await sleep(2.6)
        kill_at = time.time()
        os.kill(recorder.process.pid, signal.SIGKILL)
        await until(lambda: _recording(recorder, after=killed), 40, "recording again")
        await service.stop()  # the dust settles: everything left is indexed
        with closing(sqlite3.connect(os.path.join(service.data_dir, "streamrec.sqlite"))) as db:
            [(path,)] = db.execute(
                "SELECT path FROM segments WHERE run_id = ? ORDER BY end_time DESC LIMIT 1",
                (killed.run_id,),
            ).fetchall()
        shown = decoded_numbers(path)[-1]
        loss = kill_at - source.frame_time(shown)
        print(f"\nGOP {GOP / 25:g} s: kill -9 lost {loss:.3f} s before the kill")
        self.assertLess(loss, MAX_LOSS, f"the last frame kept is {shown}")

    @defer.inlineCallbacks
    def test_a_clip_ending_a_second_ago_does_not_wait_for_the_gop(self):
        yield defer.ensureDeferred(self._live_edge())

    async def _live_edge(self) -> None:
        service, source, stream_id = await self.recording()

        async def mid_segment() -> bool:
            # A segment closed 1.5 to 2.5 s ago: the next one, 4 s long, is
            # being written, and a second ago lies in it.
            last = (await service.status(stream_id))["recorded"]["last"]
            return last is not None and 1.5 < time.time() - last < 2.5

        await until(mid_segment, 30, "the middle of a segment", interval=0.1)
        stop = round(time.time() - 1.0, 3)
        start = stop - 6.0
        # Until the clip is done, the index ends before its stop: the segment
        # holding the stop is still being written (4 s of GOP).
        before: list[float] = []

        async def done() -> Any:
            before.append((await service.status(stream_id))["recorded"]["last"])
            job = await service.ok("GET", f"/streams/{stream_id}/get_clip", start=start, stop=stop)
            return job if job["status"] in ("done", "failed") else None

        job = await until(done, 20, "the clip", interval=0.05)
        delay = time.time() - stop
        self.assertEqual(job["status"], "done", job)
        self.assertGreaterEqual(len(before), 1)
        [clip] = job["clips"]
        decoded = await self.fetch(service, clip)
        last_shown = source.frame_time(decoded["numbers"][-1])
        print(
            f"\nGOP {GOP / 25:g} s: a clip ending 1 s ago was done {delay:.2f} s after its stop,"
            f" its last frame captured {stop - last_shown:.3f} s before the stop;"
            f" the index then ended {stop - before[-1]:.2f} s before it"
        )
        self.assertLess(before[-1], stop, "built from the segment being written")
        self.assertAlmostEqual(clip["stop"], stop, delta=0.05)
        self.assertLess(stop - last_shown, MAX_LOSS, "frames up to the stop")


async def _recording(recorder: Any, after: Any = None) -> bool:
    run = recorder.run
    return bool(
        run is not None
        and run is not after
        and not run.exited
        and run.segments >= 1
        and recorder.state == "recording"
    )
