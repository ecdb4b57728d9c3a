"""The HTTP API through StubTreq: every answer of the contract, no ports."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from streamrec.api import StreamrecAPI
from streamrec.core import Streams
from streamrec.errors import BadRequest
from streamrec.plugins import Encoder
from streamrec.recorder.fleet import Recorders
from streamrec.store import JOB_DONE, Clip, open_store

from .support.fakes import FakeRecorder
from .support.harness import one_node


class FakeEncoder:
    options = ("speed",)

    def validate(self, options: dict[str, str]) -> None:
        if not options.get("speed", "1").isdigit():
            raise BadRequest(f"speed must be a whole number, not {options['speed']!r}")


class APIBase(unittest.TestCase):
    """A real Klein app over a real SQLite store, with fake recorders."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.store = open_store("sqlite:", directory)
        self.addCleanup(self.store.close)
        self.recorders: dict[int, FakeRecorder] = {}
        self.fail_start: str | None = None
        self.clock_offset = 0.0
        recorders = Recorders(make=self._make_recorder)
        self.streams = Streams(
            reactor=reactor,
            store=self.store,
            recorders=recorders,
            **one_node(reactor, self.store, recorders),
            notify=lambda *a, **k: None,
            encoders={"copy": Encoder(), "timelapse": FakeEncoder()},
            default_encoder="copy",
            max_clip_seconds=3600,
        )
        self.api = StreamrecAPI(self.streams, None, {"plugins": []})
        self.http = StubTreq(self.api.resource())
        # The store answers from a thread: keep pumping the in-memory connections.
        pump = task.LoopingCall(self.http.flush)
        pump.start(0.002)
        self.addCleanup(pump.stop)
        return defer.ensureDeferred(self.store.migrate())

    def _make_recorder(self, stream_id: int, url: str, **_: Any) -> FakeRecorder:
        recorder = self.recorders[stream_id] = FakeRecorder(self.fail_start)
        return recorder

    async def call(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: str = "query"
    ) -> tuple[int, Any]:
        url = "http://streamrec.test" + path
        kwargs: dict[str, Any] = {}
        if params is not None:
            if body == "query":
                url += "?" + urlencode(params)
            elif body == "form":
                kwargs["data"] = params
            else:
                kwargs["data"] = json.dumps(params).encode()
                kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        response = await self.http.request(method, url, **kwargs)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"], path
        )
        return response.code, json.loads(await response.content())

    async def create(self, url: str = "rtsp://127.0.0.1:8554/cam", **extra: Any) -> int:
        code, body = await self.call("POST", "/streams/create", {"url": url, **extra}, "form")
        self.assertEqual(code, 200, body)
        return body["stream_id"]


class APITestCase(APIBase):
    # -- create ---------------------------------------------------------
    @defer.inlineCallbacks
    def test_create_every_way(self):
        for method, body in (
            ("POST", "form"),
            ("POST", "json"),
            ("GET", "query"),
            ("POST", "query"),
        ):
            code, answer = yield defer.ensureDeferred(
                self.call(method, "/streams/create", {"url": "rtsp://cam.local/s1"}, body)
            )
            self.assertEqual(code, 200)
            self.assertIsInstance(answer["stream_id"], int)
        code, answer = yield defer.ensureDeferred(self.call("GET", "/streams/"))
        self.assertEqual([s["id"] for s in answer["result"]], [1, 2, 3, 4])

    @defer.inlineCallbacks
    def test_create_without_url(self):
        for params in (None, {"description": "x"}, {"url": ""}, {"url": "   "}):
            code, answer = yield defer.ensureDeferred(self.call("POST", "/streams/create", params))
            self.assertEqual((code, answer), (500, {"error_message": "URL cannot be empty"}))

    @defer.inlineCallbacks
    def test_create_refuses_hostile_urls(self):
        for url in (
            "file:///etc/passwd",
            "/etc/passwd",
            "concat:a.ts|b.ts",
            "subfile:,start,0,end,0,:/etc/passwd",
            "pipe:0",
            "data:video/mp4;base64,AAAA",
            "lavfi:testsrc",
            "ftp://example.com/x",
            "rtsp://cam/\x00x",
            "rtsp:///nohost",
            "http://host:99999/x",
            "-i /etc/passwd",
        ):
            code, answer = yield defer.ensureDeferred(
                self.call("POST", "/streams/create", {"url": url}, "json")
            )
            self.assertEqual(code, 400, url)
            self.assertTrue(answer["error_message"].startswith("Invalid URL: "), answer)
        code, answer = yield defer.ensureDeferred(self.call("GET", "/streams"))
        self.assertEqual(answer, {"result": []})

    @defer.inlineCallbacks
    def test_create_accepts_every_live_scheme(self):
        for url in (
            "rtsp://user:pass@10.0.0.5:554/Streaming/Channels/101",
            "rtsps://cam.example/live",
            "rtmp://media.example/live/key",
            "https://cdn.example/live/index.m3u8",
            "http://cam.example/video.ts",
            "srt://127.0.0.1:9000?mode=caller",
            "udp://239.0.0.1:1234",
            "udp://0.0.0.0:1234",
            "rtp://127.0.0.1:5004",
        ):
            code, answer = yield defer.ensureDeferred(
                self.call("POST", "/streams/create", {"url": url})
            )
            self.assertEqual(code, 200, (url, answer))

    # -- status ------------------------------------------------------------
    @defer.inlineCallbacks
    def test_status(self):
        stream_id = yield defer.ensureDeferred(self.create(description="gate"))
        code, answer = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/status"))
        self.assertEqual(code, 200)
        for key in ("id", "url", "description", "create_date", "start_date", "stop_date"):
            self.assertIn(key, answer)
        self.assertEqual(answer["description"], "gate")
        self.assertIsNone(answer["start_date"])
        self.assertIsNone(answer["stop_date"])
        self.assertEqual(answer["state"], "stopped")
        self.assertEqual(answer["recorded"]["segments"], 0)

    @defer.inlineCallbacks
    def test_unknown_routes_and_methods(self):
        code, answer = yield defer.ensureDeferred(self.call("GET", "/nothing"))
        self.assertEqual(code, 404)
        self.assertIn("error_message", answer)
        code, answer = yield defer.ensureDeferred(self.call("DELETE", "/streams/create"))
        self.assertEqual(code, 405)
        self.assertIn("error_message", answer)

    @defer.inlineCallbacks
    def test_unknown_stream_is_404_everywhere(self):
        for path in (
            "/streams/7/status",
            "/streams/x/status",
            "/streams/-1/status",
            "/streams/%C2%B2/status",
            "/streams/%D9%A1/status",
        ):
            code, answer = yield defer.ensureDeferred(self.call("GET", path))
            self.assertEqual((code, answer), (404, {"error_message": "Stream not found"}), path)
        for action in ("start", "stop"):
            for method in ("GET", "POST"):
                code, answer = yield defer.ensureDeferred(
                    self.call(method, f"/streams/99/{action}")
                )
                self.assertEqual((code, answer), (404, {"error_message": "Stream not found"}))
        code, answer = yield defer.ensureDeferred(
            self.call("GET", "/streams/99/get_clip", {"start": 1})
        )
        self.assertEqual((code, answer), (404, {"error_message": "Stream not found"}))

    # -- start / stop -----------------------------------------------------------
    @defer.inlineCallbacks
    def test_start_stop_cycle(self):
        stream_id = yield defer.ensureDeferred(self.create())
        code, answer = yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/stop"))
        self.assertEqual((code, answer), (500, {"error_message": "Stream not started"}))
        code, answer = yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        self.assertEqual((code, answer), (200, {"result": "ok"}))
        code, answer = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/start"))
        self.assertEqual((code, answer), (500, {"error_message": "Stream already started"}))
        code, status = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/status"))
        self.assertIsNotNone(status["start_date"])
        self.assertIsNone(status["stop_date"])
        self.assertEqual(status["state"], "recording")
        code, answer = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/stop"))
        self.assertEqual((code, answer), (200, {"result": "ok"}))
        code, answer = yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/stop"))
        self.assertEqual((code, answer), (500, {"error_message": "Stream not started"}))
        code, status = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/status"))
        self.assertGreaterEqual(status["stop_date"], status["start_date"])
        self.assertEqual(self.recorders[stream_id].calls, ["start", "stop"])

    @defer.inlineCallbacks
    def test_start_failure(self):
        self.fail_start = "Connection refused"
        stream_id = yield defer.ensureDeferred(self.create())
        code, answer = yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        self.assertEqual(code, 500)
        self.assertEqual(answer["error_message"], "Cannot start stream")
        self.assertEqual(answer["reason"], "Connection refused")
        code, status = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/status"))
        self.assertIsNone(status["start_date"])
        code, answer = yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/stop"))
        self.assertEqual((code, answer), (500, {"error_message": "Stream not started"}))

    # -- get_clip -------------------------------------------------------------
    @defer.inlineCallbacks
    def test_get_clip_on_never_started_stream(self):
        stream_id = yield defer.ensureDeferred(self.create())
        code, answer = yield defer.ensureDeferred(
            self.call("GET", f"/streams/{stream_id}/get_clip", {"start": 100})
        )
        self.assertEqual((code, answer), (500, {"error_message": "Stream not started"}))

    @defer.inlineCallbacks
    def test_get_clip_parameter_errors(self):
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        now = reactor.seconds()
        for params, words in (
            ({}, "'start' is required"),
            ({"start": "yesterday"}, "'start' must be a POSIX timestamp"),
            ({"start": now, "stop": "x"}, "'stop' must be a POSIX timestamp"),
            ({"start": now, "stop": now - 5}, "stop must be later than start"),
            ({"start": "nan"}, "start must be a POSIX timestamp"),
            ({"start": now - 7200, "stop": now}, "at most 3600 s"),
            (
                {"start": now - 10, "stop": now, "encoder": "gif"},
                "known encoders are copy, timelapse",
            ),
        ):
            code, answer = yield defer.ensureDeferred(
                self.call("GET", f"/streams/{stream_id}/get_clip", params)
            )
            self.assertEqual(code, 400, params)
            self.assertIn(words, answer["error_message"])

    @defer.inlineCallbacks
    def test_a_full_clip_queue_is_a_503(self):
        self.streams.max_clip_jobs = 2
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        now = reactor.seconds()
        path = f"/streams/{stream_id}/get_clip"
        for n in range(2):
            code, _ = yield defer.ensureDeferred(self.call("GET", path, {"start": now - 10 + n}))
            self.assertEqual(code, 200)
        code, answer = yield defer.ensureDeferred(self.call("GET", path, {"start": now - 5}))
        self.assertEqual(code, 503)
        self.assertEqual(answer["error_message"], "Clip queue is full")
        self.assertIn("at most 2", answer["reason"])
        # Times finer than a millisecond are the same job, not a new one.
        code, _ = yield defer.ensureDeferred(
            self.call("GET", path, {"start": now - 10 + 0.0001, "stop": now - 1})
        )
        code, same = yield defer.ensureDeferred(
            self.call("GET", path, {"start": now - 10 + 0.0002, "stop": now - 1})
        )
        self.assertEqual(code, 503)  # the first of the two was new, and refused

    @defer.inlineCallbacks
    def test_an_encoder_bounds_its_range(self):
        self.streams.encoders["timelapse"].max_seconds = 30
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        now = reactor.seconds()
        path = f"/streams/{stream_id}/get_clip"
        code, answer = yield defer.ensureDeferred(
            self.call("GET", path, {"start": now - 60, "stop": now, "encoder": "timelapse"})
        )
        self.assertEqual(code, 400)
        self.assertIn("the timelapse encoder takes at most 30 s", answer["error_message"])
        code, _ = yield defer.ensureDeferred(
            self.call("GET", path, {"start": now - 20, "stop": now, "encoder": "timelapse"})
        )
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_cancel_clip(self):
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        now = reactor.seconds()
        _, job = yield defer.ensureDeferred(
            self.call(
                "GET", f"/streams/{stream_id}/get_clip", {"start": now - 10, "stop": now + 60}
            )
        )
        path = f"/streams/{stream_id}/cancel_clip"
        code, answer = yield defer.ensureDeferred(self.call("GET", path, {"job_id": job["job_id"]}))
        self.assertEqual(code, 405)
        code, answer = yield defer.ensureDeferred(
            self.call("POST", path, {"job_id": job["job_id"]}, "form")
        )
        self.assertEqual(code, 200, answer)
        self.assertEqual(
            (answer["status"], answer["error_message"]), ("failed", "cancelled through the API")
        )
        _, again = yield defer.ensureDeferred(
            self.call(
                "GET", f"/streams/{stream_id}/get_clip", {"start": now - 10, "stop": now + 60}
            )
        )
        self.assertEqual((again["job_id"], again["status"]), (job["job_id"], "failed"))
        for params, (status, words) in [
            ({"job_id": job["job_id"] + 1}, (404, "Clip job not found")),
            ({}, (400, "'job_id' is required")),
            ({"job_id": "1.5"}, (400, "'job_id' must be a clip job's id")),
            ({"job_id": "-3"}, (400, "'job_id' must be a clip job's id")),
        ]:
            code, answer = yield defer.ensureDeferred(self.call("POST", path, params, "form"))
            self.assertEqual(code, status, params)
            self.assertIn(words, answer["error_message"])
        other = yield defer.ensureDeferred(self.create())
        code, answer = yield defer.ensureDeferred(
            self.call("POST", f"/streams/{other}/cancel_clip", {"job_id": job["job_id"]}, "form")
        )
        self.assertEqual((code, answer["error_message"]), (404, "Clip job not found"))

    @defer.inlineCallbacks
    def test_get_clip_same_request_same_job(self):
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        now = reactor.seconds()
        path = f"/streams/{stream_id}/get_clip"
        code, first = yield defer.ensureDeferred(
            self.call("GET", path, {"start": now - 10, "stop": now - 5})
        )
        self.assertEqual(code, 200)
        self.assertEqual((first["status"], first["clips"]), ("pending", []))
        _, again = yield defer.ensureDeferred(
            self.call(
                "POST", path, {"start": now - 10, "stop": now - 5, "_": "cachebuster"}, "json"
            )
        )
        self.assertEqual(again["job_id"], first["job_id"])
        _, other = yield defer.ensureDeferred(
            self.call("GET", path, {"start": now - 10, "stop": now - 4})
        )
        self.assertNotEqual(other["job_id"], first["job_id"])
        # Without stop: the end is fixed by the first request.
        _, open1 = yield defer.ensureDeferred(self.call("GET", path, {"start": now - 3}))
        _, open2 = yield defer.ensureDeferred(self.call("GET", path, {"start": now - 3}))
        self.assertEqual(open1["job_id"], open2["job_id"])
        self.assertEqual(open1["stop"], open2["stop"])
        self.assertGreaterEqual(open1["stop"], now)
        # Encoder options the encoder takes are part of the job.
        _, fast = yield defer.ensureDeferred(
            self.call(
                "GET",
                path,
                {"start": now - 10, "stop": now - 5, "encoder": "timelapse", "speed": 4},
            )
        )
        _, faster = yield defer.ensureDeferred(
            self.call(
                "GET",
                path,
                {"start": now - 10, "stop": now - 5, "encoder": "timelapse", "speed": 8},
            )
        )
        self.assertNotEqual(fast["job_id"], faster["job_id"])

    @defer.inlineCallbacks
    def test_links_only_when_done(self):
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        path = f"/streams/{stream_id}/get_clip"
        _, job = yield defer.ensureDeferred(self.call("GET", path, {"start": 50, "stop": 60}))
        yield defer.ensureDeferred(
            self.store.finish_job(
                job["job_id"],
                [
                    Clip(0, "http://x/clips/a.mp4", "a.mp4", 50.0, 55.0, 10),
                    Clip(1, "http://x/clips/b.mp4", "b.mp4", 57.0, 60.0, 20),
                ],
                100.0,
            )
        )
        _, done = yield defer.ensureDeferred(self.call("GET", path, {"start": 50, "stop": 60}))
        self.assertEqual(done["status"], JOB_DONE)
        self.assertEqual(
            [(c["link"], c["duration"], c["size"]) for c in done["clips"]],
            [("http://x/clips/a.mp4", 5.0, 10), ("http://x/clips/b.mp4", 3.0, 20)],
        )

    @defer.inlineCallbacks
    def test_get_clip_of_stopped_stream_without_stop(self):
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/stop"))
        _, status = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/status"))
        code, job = yield defer.ensureDeferred(
            self.call("GET", f"/streams/{stream_id}/get_clip", {"start": status["start_date"] - 30})
        )
        self.assertEqual(code, 200)
        self.assertEqual(job["stop"], status["stop_date"])
        code, job = yield defer.ensureDeferred(
            self.call("GET", f"/streams/{stream_id}/get_clip", {"start": status["stop_date"] + 30})
        )
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_bad_json_body(self):
        response = yield self.http.post(
            "http://streamrec.test/streams/create",
            data=b"{not json",
            headers={b"Content-Type": [b"application/json"]},
        )
        self.assertEqual(response.code, 400)
        body = yield response.json()
        self.assertEqual(body, {"error_message": "Request body is not valid JSON"})


class FailingRecorder(FakeRecorder):
    async def stop(self) -> None:
        raise OSError("cannot signal ffmpeg")


class APIFailureTests(APIBase):
    """The seed's 500s for a segmenter or store that fails under the API."""

    def _make_recorder(self, stream_id: int, url: str, **_: Any) -> FakeRecorder:
        recorder = self.recorders[stream_id] = FailingRecorder()
        return recorder

    @defer.inlineCallbacks
    def test_cannot_stop_stream(self):
        stream_id = yield defer.ensureDeferred(self.create())
        yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/start"))
        code, answer = yield defer.ensureDeferred(self.call("POST", f"/streams/{stream_id}/stop"))
        self.assertEqual(code, 500)
        self.assertEqual(answer["error_message"], "Cannot stop stream")
        self.assertIn("cannot signal ffmpeg", answer["reason"])
        self.flushLoggedErrors(OSError)

    @defer.inlineCallbacks
    def test_cannot_get_stream_status(self):
        stream_id = yield defer.ensureDeferred(self.create())
        self.patch(self.store, "stream_with_totals", self._broken)
        code, answer = yield defer.ensureDeferred(self.call("GET", f"/streams/{stream_id}/status"))
        self.assertEqual((code, answer), (500, {"error_message": "Cannot get stream status"}))
        self.flushLoggedErrors(OSError)

    async def _broken(self, stream_id: int) -> None:
        raise OSError("database is locked")


class PluginsRouteTests(APIBase):
    @defer.inlineCallbacks
    def test_lists_what_is_loaded(self):
        code, answer = yield defer.ensureDeferred(self.call("GET", "/plugins"))
        self.assertEqual((code, answer), (200, {"plugins": []}))
