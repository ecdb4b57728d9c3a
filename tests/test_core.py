"""The domain (streamrec.core) without HTTP: a real SQLite store, fake recorders."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from streamrec.core import RecorderEvents, Streams
from streamrec.errors import (
    AlreadyStarted,
    BadRequest,
    CannotStart,
    InvalidSource,
    NotStarted,
    StatusUnavailable,
    StreamNotFound,
    UnknownEncoder,
)
from streamrec.plugins import Encoder
from streamrec.recorder.fleet import Recorders
from streamrec.store import JOB_DONE, Clip

from .support.fakes import FakeRecorder
from .support.harness import one_node, sqlite_store


class Scaled(Encoder):
    options = ("height",)

    def validate(self, options: dict[str, str]) -> None:
        if not options.get("height", "2").isdigit():
            raise BadRequest("height must be a number")


class Storage:
    """A backend whose links expire: a fresh one per answer."""

    def __init__(self) -> None:
        self.made = 0

    def link(self, key: str) -> str:
        self.made += 1
        return f"https://s3.test/{key}?sig={self.made}"


class StreamsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store, _ = sqlite_store(self)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.fail_start: str | None = None
        self.made: dict[int, FakeRecorder] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.wakes = 0
        self.storage = Storage()
        recorders = Recorders(make=self._make)
        notify = lambda hook, **kw: self.events.append((hook, kw))  # noqa: E731
        self.streams = Streams(
            reactor=self.clock,
            store=self.store,
            recorders=recorders,
            **one_node(self.clock, self.store, recorders, notify),
            notify=notify,
            encoders={"copy": Encoder(), "scaled": Scaled()},
            default_encoder="copy",
            max_clip_seconds=600,
            storage=self.storage,  # type: ignore[arg-type]
            wake_worker=self._wake,
        )
        return defer.ensureDeferred(self.store.migrate())

    def _make(self, stream_id: int, url: str, listener: Any, **_: Any) -> FakeRecorder:
        self.assertIsInstance(listener, RecorderEvents)
        recorder = self.made[stream_id] = FakeRecorder(self.fail_start)
        return recorder

    def _wake(self) -> None:
        self.wakes += 1

    async def started(self) -> int:
        stream_id = await self.streams.create("rtsp://cam/1", "door", None)
        await self.streams.start(stream_id)
        return stream_id

    @defer.inlineCallbacks
    def test_start_and_stop(self):
        stream_id = yield defer.ensureDeferred(self.started())
        self.assertTrue(self.streams.is_recording(stream_id))
        yield self.assertFailure(
            defer.ensureDeferred(self.streams.start(stream_id)), AlreadyStarted
        )
        status = yield defer.ensureDeferred(self.streams.status(stream_id))
        self.assertEqual((status["state"], status["started"]), ("recording", True))
        self.assertEqual(status["start_date"], self.clock.seconds())
        yield defer.ensureDeferred(self.streams.stop(stream_id))
        yield self.assertFailure(defer.ensureDeferred(self.streams.stop(stream_id)), NotStarted)
        self.assertEqual(self.made[stream_id].calls, ["start", "stop"])
        hooks = [hook for hook, _ in self.events]
        self.assertEqual(hooks, ["stream_started", "stream_stopped"])

    @defer.inlineCallbacks
    def test_a_failed_start_leaves_the_stream_stopped(self):
        self.fail_start = "Connection refused"
        stream_id = yield defer.ensureDeferred(self.streams.create("rtsp://cam/1", "", None))
        failure = yield self.assertFailure(
            defer.ensureDeferred(self.streams.start(stream_id)), CannotStart
        )
        self.assertEqual(failure.reason, "Connection refused")
        stream = yield defer.ensureDeferred(self.store.get_stream(stream_id))
        self.assertFalse(stream.wanted)

    @defer.inlineCallbacks
    def test_create_checks_its_input(self):
        yield self.assertFailure(
            defer.ensureDeferred(self.streams.create("file:///etc/passwd", "", None)),
            InvalidSource,
        )
        yield self.assertFailure(
            defer.ensureDeferred(self.streams.create("rtsp://cam/1", "", -5.0)), BadRequest
        )
        yield self.assertFailure(defer.ensureDeferred(self.streams.status(99)), StreamNotFound)

    @defer.inlineCallbacks
    def test_joining_again_restarts_what_was_recording(self):
        first = yield defer.ensureDeferred(self.started())
        second = yield defer.ensureDeferred(self.streams.create("rtsp://cam/2", "", None))
        self.made.clear()
        yield defer.ensureDeferred(self.streams.shutdown())
        # A new process: new recorders, a new node of the same name.
        recorders = Recorders(make=self._make)
        node = one_node(self.clock, self.store, recorders)["node"]
        self.streams.recorders = node.recorders
        yield defer.ensureDeferred(node.join())
        self.assertEqual(list(self.made), [first])
        self.assertEqual(self.made[first].calls, ["resume"])
        self.assertFalse(self.streams.is_recording(second))

    @defer.inlineCallbacks
    def test_get_clip_without_stop_ends_now_while_recording(self):
        stream_id = yield defer.ensureDeferred(self.started())
        start = self.clock.seconds()
        self.clock.advance(30)
        job = yield defer.ensureDeferred(self.streams.get_clip(stream_id, start, None, None, {}))
        self.assertEqual(
            (job["status"], job["stop"], job["encoder"]), ("pending", start + 30, "copy")
        )
        self.assertEqual(self.wakes, 1)
        self.clock.advance(5)
        again = yield defer.ensureDeferred(self.streams.get_clip(stream_id, start, None, None, {}))
        self.assertEqual(again["job_id"], job["job_id"], "the same request is the same job")
        self.assertEqual(self.wakes, 1, "no new job, no wake-up")

    @defer.inlineCallbacks
    def test_get_clip_checks_range_and_encoder(self):
        stream_id = yield defer.ensureDeferred(self.started())
        now = self.clock.seconds()
        for args, error, words in (
            ((now, now - 1, None), BadRequest, "stop must be later"),
            ((float("nan"), None, None), BadRequest, "POSIX timestamp"),
            ((now - 601, now, None), BadRequest, "at most 600 s"),
            ((now - 10, now, "gif"), UnknownEncoder, "known encoders are copy, scaled"),
        ):
            failure = yield self.assertFailure(
                defer.ensureDeferred(self.streams.get_clip(stream_id, *args, {})), error
            )
            self.assertIn(words, str(failure))
        never = yield defer.ensureDeferred(self.streams.create("rtsp://cam/2", "", None))
        yield self.assertFailure(
            defer.ensureDeferred(self.streams.get_clip(never, now, None, None, {})), NotStarted
        )

    @defer.inlineCallbacks
    def test_only_the_encoders_options_make_the_job(self):
        stream_id = yield defer.ensureDeferred(self.started())
        now = self.clock.seconds()
        clip = self.streams.get_clip
        a = yield defer.ensureDeferred(clip(stream_id, now - 10, now, "scaled", {"height": "2"}))
        b = yield defer.ensureDeferred(
            clip(stream_id, now - 10, now, "scaled", {"height": "2", "junk": "x"})
        )
        c = yield defer.ensureDeferred(clip(stream_id, now - 10, now, "scaled", {"height": "4"}))
        self.assertEqual(a["job_id"], b["job_id"])
        self.assertNotEqual(a["job_id"], c["job_id"])
        failure = yield self.assertFailure(
            defer.ensureDeferred(clip(stream_id, now - 10, now, "scaled", {"height": "x"})),
            BadRequest,
        )
        self.assertEqual(str(failure), "height must be a number")

    @defer.inlineCallbacks
    def test_done_jobs_get_fresh_links_from_the_backend(self):
        stream_id = yield defer.ensureDeferred(self.started())
        now = self.clock.seconds()
        job = yield defer.ensureDeferred(self.streams.get_clip(stream_id, now - 10, now, None, {}))
        clip = Clip(0, "https://s3.test/k.mp4?sig=0", "k.mp4", now - 10, now, 1000)
        yield defer.ensureDeferred(self.store.finish_job(job["job_id"], [clip], now))
        first = yield defer.ensureDeferred(
            self.streams.get_clip(stream_id, now - 10, now, None, {})
        )
        second = yield defer.ensureDeferred(
            self.streams.get_clip(stream_id, now - 10, now, None, {})
        )
        self.assertEqual(first["status"], JOB_DONE)
        self.assertEqual(first["clips"][0]["link"], "https://s3.test/k.mp4?sig=1")
        self.assertEqual(second["clips"][0]["link"], "https://s3.test/k.mp4?sig=2")

    @defer.inlineCallbacks
    def test_status_failure_is_status_unavailable(self):
        stream_id = yield defer.ensureDeferred(self.started())

        async def broken(stream_id: int) -> None:
            raise OSError("database is locked")

        self.patch(self.store, "stream_with_totals", broken)
        yield self.assertFailure(
            defer.ensureDeferred(self.streams.status(stream_id)), StatusUnavailable
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
