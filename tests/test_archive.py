"""``archive.mp4`` and ``snapshot`` through the API (StubTreq, a real SQLite store,
real recorded segments): what a player and a scrubbing UI get.

The fixture (:mod:`tests.support.indexed`): 16 s of numbered frames (25 fps,
GOP 25, two B-frames, AAC) in 2 s segments; run A holds segments 0-2 and
4-5 (6-8 s is a gap), run B segments 6-7, following run A's end. Frame
``n`` is at wall time ``T0 + n / FPS``.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any
from urllib.parse import urlencode

import av
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.trial import unittest

from streamrec.media.mp4 import SegmentPiece, build_clip
from streamrec.playback.archive import PIN_SECONDS, continuous
from streamrec.store.records import Segment

from .support import framecode
from .support.indexed import Indexed, indexed_stream
from .support.recordings import FPS, T0, decoded_numbers, recording

RUNS = [[0, 1, 2], [4, 5], [6, 7]]
NAME = "archive_bf2"


def wall(seconds: float) -> float:
    return T0 + seconds


def frame(seconds: float) -> int:
    return round(seconds * FPS)


class Base(unittest.TestCase):
    timeout = 120

    async def setUpStream(self, runs: list[list[int]] = RUNS, clock: Any = None) -> Indexed:
        self.indexed = await indexed_stream(self, NAME, runs, bf=2, clock=clock)
        self.http = StubTreq(self.indexed.api.resource())
        pump = task.LoopingCall(self.http.flush)  # the store and the reads answer from threads
        pump.start(0.002)
        self.addCleanup(pump.stop)
        return self.indexed

    async def get(
        self, what: str, method: str = "GET", headers: dict[str, str] | None = None, **params: Any
    ) -> tuple[Any, bytes]:
        url = f"http://streamrec.test/streams/{self.indexed.stream_id}/{what}"
        if params:
            url += "?" + urlencode(params)
        raw = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        response = await self.http.request(method, url, headers=raw)
        return response, await response.content()

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None

    def error(self, response: Any, body: bytes, status: int) -> dict[str, Any]:
        self.assertEqual(response.code, status, body)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        return json.loads(body)

    def numbers(self, body: bytes) -> list[int]:
        path = self.mktemp() + ".mp4"
        with open(path, "wb") as f:
            f.write(body)
        return decoded_numbers(path)


class ArchiveTests(Base):
    @defer.inlineCallbacks
    def test_plays_from_the_requested_frame_to_the_stop(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        response, body = yield defer.ensureDeferred(
            self.get("archive.mp4", start=wall(2.52), stop=wall(5.0))
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "video/mp4")
        self.assertEqual(self.header(response, "accept-ranges"), "bytes")
        self.assertEqual(response.length, len(body))
        self.assertRegex(self.header(response, "etag") or "", r'^"[0-9a-f]{32}"$')
        self.assertAlmostEqual(float(self.header(response, "x-streamrec-start")), wall(2.52), 3)
        self.assertAlmostEqual(float(self.header(response, "x-streamrec-stop")), wall(5.0), 3)
        numbers = self.numbers(body)
        self.assertEqual(numbers, list(range(frame(2.52), frame(5.0))))
        # The moov and the bytes are those of the copy clip of the same range.
        segments = self.indexed.segments[1:3]
        clip = self.mktemp() + ".mp4"
        build_clip([SegmentPiece(s.path, s.start) for s in segments], wall(2.52), wall(5.0), clip)
        with open(clip, "rb") as f:
            self.assertEqual(body, f.read())

    @defer.inlineCallbacks
    def test_a_gap_ends_it_and_a_following_run_does_not(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        segments = self.indexed.segments
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", start=wall(1.0)))
        self.assertEqual(response.code, 200)
        self.assertAlmostEqual(float(self.header(response, "x-streamrec-stop")), segments[2].end)
        self.assertEqual(self.numbers(body), list(range(frame(1.0), frame(6.0))))
        # Runs A and B join: one file from 9 s to the end of the recording.
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", start=wall(9.0)))
        self.assertEqual(response.code, 200)
        self.assertAlmostEqual(float(self.header(response, "x-streamrec-stop")), segments[-1].end)
        self.assertEqual(self.numbers(body), list(range(frame(9.0), frame(16.0))))

    @defer.inlineCallbacks
    def test_nothing_recorded_says_where_it_goes_on(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", start=wall(7.0)))
        answer = self.error(response, body, 404)
        self.assertEqual(
            answer,
            {
                "error_message": f"Nothing recorded at {wall(7.0):.3f}",
                "next": self.indexed.segments[3].start,
            },
        )
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", start=wall(30.0)))
        self.assertEqual(self.error(response, body, 404)["next"], None)
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", start=wall(-100.0)))
        self.assertEqual(self.error(response, body, 404)["next"], self.indexed.segments[0].start)

    @defer.inlineCallbacks
    def test_bad_requests(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        for params in ({}, {"start": "soon"}, {"start": wall(3), "stop": wall(2)}):
            response, body = yield defer.ensureDeferred(self.get("archive.mp4", **params))
            self.assertIn("error_message", self.error(response, body, 400))
        response = yield self.http.get("http://streamrec.test/streams/99/archive.mp4?start=1")
        self.assertEqual(response.code, 404)
        self.assertEqual(
            json.loads((yield response.content())), {"error_message": "Stream not found"}
        )

    @defer.inlineCallbacks
    def test_byte_ranges_reassemble_into_the_same_file(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        params = {"start": wall(2.2), "stop": wall(11.3)}
        response, whole = yield defer.ensureDeferred(self.get("archive.mp4", **params))
        etag = self.header(response, "etag")
        size = len(whole)
        parts, first = [], 0
        for last in (0, 1000, size // 3, size // 2, size - 2):
            response, body = yield defer.ensureDeferred(
                self.get("archive.mp4", headers={"Range": f"bytes={first}-{last}"}, **params)
            )
            self.assertEqual(response.code, 206)
            self.assertEqual(self.header(response, "content-range"), f"bytes {first}-{last}/{size}")
            self.assertEqual(self.header(response, "etag"), etag)
            parts.append(body)
            first = last + 1
        response, body = yield defer.ensureDeferred(
            self.get("archive.mp4", headers={"Range": "bytes=-1"}, **params)
        )
        parts.append(body)
        self.assertEqual(b"".join(parts), whole)

        response, body = yield defer.ensureDeferred(
            self.get("archive.mp4", headers={"Range": f"bytes={size}-"}, **params)
        )
        self.assertEqual(
            (response.code, self.header(response, "content-range")), (416, f"bytes */{size}")
        )
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", "HEAD", **params))
        self.assertEqual((response.code, body, self.header(response, "etag")), (200, b"", etag))
        self.assertEqual(self.header(response, "content-length"), str(size))
        response, body = yield defer.ensureDeferred(
            self.get("archive.mp4", headers={"If-None-Match": etag}, **params)
        )
        self.assertEqual((response.code, body), (304, b""))
        response, body = yield defer.ensureDeferred(
            self.get("archive.mp4", headers={"Range": "bytes=0-9", "If-Range": '"old"'}, **params)
        )
        self.assertEqual((response.code, body), (200, whole))

    @defer.inlineCallbacks
    def test_the_etag_follows_the_segments_and_the_range(self):  # type: ignore[no-untyped-def]
        clock = task.Clock()
        yield defer.ensureDeferred(self.setUpStream(runs=[[0, 1, 2], [4, 5]], clock=clock))
        tags = {}
        for stop in (wall(5.0), wall(5.0), wall(5.5), None):
            params = {"start": wall(1.56), **({"stop": stop} if stop else {})}
            response, _ = yield defer.ensureDeferred(self.get("archive.mp4", "HEAD", **params))
            tags.setdefault(stop, set()).add(self.header(response, "etag"))
        self.assertEqual(len(tags[wall(5.0)]), 1)  # stable
        self.assertEqual(len(set.union(*tags.values())), 3)
        # The gap at 6 s is filled: the same URL means the longer file once its
        # pinned plan is no longer played.
        before = tags[None].pop()
        store, rec = self.indexed.store, recording(NAME, seconds=16, bf=2)
        run = self.indexed.segments[0].run_id
        piece = rec.pieces[3]
        yield defer.ensureDeferred(
            store.add_segment(
                self.indexed.stream_id,
                run,
                piece.path,
                piece.wall_start,
                self.indexed.segments[3].start,
                os.path.getsize(piece.path),
            )
        )
        response, _ = yield defer.ensureDeferred(self.get("archive.mp4", "HEAD", start=wall(1.56)))
        self.assertEqual(self.header(response, "etag"), before)  # pinned
        clock.advance(PIN_SECONDS + 1)
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", start=wall(1.56)))
        self.assertNotEqual(self.header(response, "etag"), before)
        self.assertEqual(self.numbers(body), list(range(frame(1.56), frame(12.0))))

    @defer.inlineCallbacks
    def test_segments_deleted_under_a_playback(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        params = {"start": wall(2.5), "stop": wall(5.5)}
        response, whole = yield defer.ensureDeferred(self.get("archive.mp4", **params))
        self.assertEqual(response.code, 200)
        # Retention deletes the file, then its row.
        segment = self.indexed.segments[2]
        os.remove(segment.path)
        for _ in range(2):  # whether the plan is pinned or made again
            response, body = yield defer.ensureDeferred(
                self.get("archive.mp4", headers={"Range": "bytes=1000-"}, **params)
            )
            self.assertEqual(
                self.error(response, body, 410), {"error_message": "The recording was deleted"}
            )
        yield defer.ensureDeferred(self.indexed.store.delete_segments([segment.id]))
        response, body = yield defer.ensureDeferred(self.get("archive.mp4", **params))
        self.assertEqual(response.code, 200)  # what is left: to the new gap at 4 s
        self.assertEqual(self.numbers(body), list(range(frame(2.5), frame(4.0))))


class SnapshotTests(Base):
    def shown(self, body: bytes) -> tuple[int, int, int]:
        with av.open(io.BytesIO(body)) as container:
            picture = next(container.decode(video=0))
            return framecode.read_frame_number(picture), picture.width, picture.height

    @defer.inlineCallbacks
    def test_the_frame_at_t(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        for n in (51, 87, 100, 130, 299, 330):  # across segments, runs, keyframes
            t = T0 + (n + 0.5) / FPS
            response, body = yield defer.ensureDeferred(self.get("snapshot", t=f"{t:.3f}"))
            self.assertEqual(response.code, 200, body)
            self.assertEqual(self.header(response, "content-type"), "image/jpeg")
            self.assertIn("immutable", self.header(response, "cache-control"))
            self.assertAlmostEqual(
                float(self.header(response, "x-streamrec-time")), T0 + n / FPS, 3
            )
            self.assertEqual(self.shown(body), (n, 320, 240))
        response, body = yield defer.ensureDeferred(self.get("snapshot", t=wall(4.5), width=160))
        self.assertEqual(self.shown(body), (frame(4.5), 160, 120))

    @defer.inlineCallbacks
    def test_the_latest(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        response, body = yield defer.ensureDeferred(self.get("snapshot", width=64))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertEqual(self.shown(body), (375, 64, 48))  # the last keyframe, at 15 s

    @defer.inlineCallbacks
    def test_nothing_recorded(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self.setUpStream())
        response, body = yield defer.ensureDeferred(self.get("snapshot", t=wall(7.0)))
        self.assertEqual(
            self.error(response, body, 404),
            {"error_message": f"Nothing recorded at {wall(7.0):.3f}"},
        )
        for params in ({"width": 8}, {"width": 3000}, {"width": 100.5}, {"t": "x"}):
            response, body = yield defer.ensureDeferred(self.get("snapshot", **params))
            self.assertIn("error_message", self.error(response, body, 400))
        response = yield self.http.get("http://streamrec.test/streams/99/snapshot")
        self.assertEqual(response.code, 404)


class ContinuousTests(unittest.SynchronousTestCase):
    """The span rule alone."""

    def seg(self, n: int, run: int, start: float, end: float) -> Segment:
        return Segment(n, 1, run, f"/s{n}", start, end, 100)

    def test_rule(self) -> None:
        segments = [
            self.seg(1, 1, 0, 2),
            self.seg(2, 1, 2.1, 4),  # within the tolerance: joins
            self.seg(3, 2, 3, 5),  # another run overlapping: not followed
            self.seg(4, 1, 4, 6),
            self.seg(5, 3, 6.2, 8),  # a new run that follows on: joins
            self.seg(6, 3, 9, 10),  # after a gap
        ]
        chain, first = continuous(segments, 1.0, 100)
        self.assertEqual(([s.id for s in chain], first), ([1, 2, 4, 5], 1.0))
        chain, _ = continuous(segments, 1.0, 4.0)
        self.assertEqual([s.id for s in chain], [1, 2])
        chain, first = continuous(segments, 2.05, 100)  # in a hole shorter than the tolerance
        self.assertEqual(([s.id for s in chain], first), ([2, 4, 5], 2.1))
        self.assertIsNone(continuous(segments, 8.5, 100))
        # Two runs cover 4.5 s: the segment that began first, and only its run.
        chain, _ = continuous(segments, 4.5, 100)
        self.assertEqual([s.id for s in chain], [3])
