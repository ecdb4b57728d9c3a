"""``GET /metrics``: the scrape read back with prometheus_client's own parser."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from streamrec.api import StreamrecAPI
from streamrec.auth import VIEWER, Access, digest
from streamrec.core import Streams
from streamrec.errors import DatabaseUnavailable
from streamrec.metrics import UNMATCHED, Metrics
from streamrec.plugins import Encoder
from streamrec.recorder.fleet import Recorders
from streamrec.store import JOB_DONE, JOB_FAILED

from .recorder.test_supervisor import RecorderBase
from .support.fakes import FakeRecorder
from .support.harness import ServiceTestCase, one_node, sqlite_store, until
from .support.livesource import UdpTsSource

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, labels), through the text parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s samples by the value of ``label``."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


@dataclass
class SeenRecorder:
    """What the metrics read of a recorder."""

    state: str = "recording"
    wanted: bool = True
    reconnects: int = 0
    restarts: int = 0
    quarantined: int = 0

    def busy(self) -> bool:
        return self.wanted


def recorders_of(*seen: SeenRecorder) -> Recorders:
    recorders = Recorders(make=lambda *a, **k: None)  # type: ignore[arg-type,return-value]
    recorders.by_stream.update(enumerate(seen, 1))  # type: ignore[arg-type]
    return recorders


class CountingStore:
    """A store that counts the calls made to it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.store, name)


class DownStore:
    async def job_counts(self) -> dict[str, int]:
        raise DatabaseUnavailable("connection refused")


class ScrapeTests(unittest.TestCase):
    """What is read when scraped: recorders, jobs, disk."""

    def setUp(self) -> None:
        self.store, self.data_dir = sqlite_store(self)
        return defer.ensureDeferred(self.store.migrate())

    def metrics(self, recorders: Recorders | None = None, store: Any = None) -> Metrics:
        return Metrics(
            reactor=reactor,
            store=store or self.store,
            recorders=recorders or recorders_of(),
            data_dir=self.data_dir,
        )

    async def scrape(self, metrics: Metrics) -> Samples:
        body, content_type = await metrics.render()
        self.assertTrue(content_type.startswith("text/plain; version="), content_type)
        return parse(body.decode("utf-8"))

    @defer.inlineCallbacks
    def test_streams_by_state_and_the_recorders_counters(self):
        recorders = recorders_of(
            SeenRecorder("recording", reconnects=2, quarantined=1),
            SeenRecorder("recording", restarts=1),
            SeenRecorder("reconnecting", reconnects=5, restarts=3),
            SeenRecorder("stopped", wanted=False, reconnects=1, quarantined=2),
        )
        samples = yield defer.ensureDeferred(self.scrape(self.metrics(recorders)))
        self.assertEqual(
            labelled(samples, "streamrec_streams", "state"),
            {"starting": 0, "recording": 2, "reconnecting": 1, "disk_full": 0, "ended": 0},
        )
        # A stopped recorder is no stream of this node now; what it did still counts.
        self.assertEqual(value(samples, "streamrec_reconnects_total"), 8)
        self.assertEqual(value(samples, "streamrec_segmenter_restarts_total"), 4)
        self.assertEqual(value(samples, "streamrec_quarantined_segments_total"), 3)

    @defer.inlineCallbacks
    def test_clip_jobs_by_status_and_the_queue(self):
        stream_id = yield defer.ensureDeferred(self.store.create_stream("rtsp://c/1", "", 1.0))
        for start in range(6):
            job, _ = yield defer.ensureDeferred(
                self.store.find_or_create_job(stream_id, 100.0 + start, 200.0, 300.0, "copy", {}, 2)
            )
            if start < 2:
                yield defer.ensureDeferred(self.store.set_job_status(job.id, JOB_DONE, 3))
            elif start < 3:
                yield defer.ensureDeferred(self.store.set_job_status(job.id, JOB_FAILED, 3))
        counts = yield defer.ensureDeferred(self.store.job_counts())
        self.assertEqual(counts, {"done": 2, "failed": 1, "pending": 3})
        samples = yield defer.ensureDeferred(self.scrape(self.metrics()))
        self.assertEqual(
            labelled(samples, "streamrec_clip_jobs", "status"),
            {"pending": 3, "processing": 0, "done": 2, "failed": 1, "expired": 0},
        )
        self.assertEqual(value(samples, "streamrec_clip_queue_length"), 3)
        self.assertEqual(value(samples, "streamrec_database_up"), 1)
        self.assertGreaterEqual(value(samples, "streamrec_database_latency_seconds"), 0)

    @defer.inlineCallbacks
    def test_free_disk_is_the_data_dirs(self):
        samples = yield defer.ensureDeferred(self.scrape(self.metrics()))
        disk = os.statvfs(self.data_dir)
        self.assertEqual(value(samples, "streamrec_disk_size_bytes"), disk.f_blocks * disk.f_frsize)
        free = value(samples, "streamrec_disk_free_bytes")
        self.assertGreater(free, 0)
        self.assertLessEqual(free, disk.f_blocks * disk.f_frsize)

    @defer.inlineCallbacks
    def test_one_query_a_scrape_whatever_the_streams(self):
        store = CountingStore(self.store)
        recorders = recorders_of(*(SeenRecorder(reconnects=1) for _ in range(500)))
        metrics = self.metrics(recorders, store)
        for _ in range(3):
            samples = yield defer.ensureDeferred(self.scrape(metrics))
        self.assertEqual(store.calls, ["job_counts"] * 3)
        self.assertEqual(value(samples, "streamrec_streams", state="recording"), 500)
        self.assertEqual(value(samples, "streamrec_reconnects_total"), 500)

    @defer.inlineCallbacks
    def test_a_database_away_is_down_and_the_rest_still_answers(self):
        metrics = self.metrics(recorders_of(SeenRecorder()), DownStore())
        samples = yield defer.ensureDeferred(self.scrape(metrics))
        self.assertEqual(value(samples, "streamrec_database_up"), 0)
        self.assertIsNone(value(samples, "streamrec_clip_queue_length"))
        self.assertEqual(labelled(samples, "streamrec_clip_jobs", "status"), {})
        self.assertEqual(value(samples, "streamrec_streams", state="recording"), 1)

    @defer.inlineCallbacks
    def test_openmetrics_when_asked(self):
        body, content_type = yield defer.ensureDeferred(
            self.metrics().render("application/openmetrics-text; version=1.0.0")
        )
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))

    @defer.inlineCallbacks
    def test_the_readme_lists_every_metric(self):
        metrics = self.metrics(recorders_of(SeenRecorder()))
        metrics.request_done("/streams/", 0.01)
        metrics.clip_seconds.labels("copy").observe(0.1)
        body, _ = yield defer.ensureDeferred(metrics.render())
        scraped = {
            line.split()[2]
            for line in body.decode().splitlines()
            if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")
        }
        with open(README, encoding="utf-8") as handle:
            section = handle.read().split("### Metrics", 1)[1].split("\n## ", 1)[0]
        self.assertEqual(set(re.findall(r"`(streamrec_[a-z_]+)", section)), scraped)

    def test_each_service_has_its_own_registry(self):
        first, second = self.metrics(), self.metrics()
        first.segments.inc(3)
        self.assertEqual(first.registry.get_sample_value("streamrec_segments_written_total"), 3)
        self.assertEqual(second.registry.get_sample_value("streamrec_segments_written_total"), 0)


class SupervisedTests(RecorderBase):
    """The counters of a real recorder, driven by a fake ffmpeg, as scraped."""

    def sample(self, name: str, **labels: str) -> float | None:
        recorders = recorders_of()
        recorders.by_stream[7] = self.recorder
        metrics = Metrics(
            reactor=self.reactor, store=None, recorders=recorders, data_dir=self.data_dir
        )
        return metrics.registry.get_sample_value(name, labels)

    def relaunched(self) -> Any:
        count = len(self.reactor.processes)
        while len(self.reactor.processes) == count:
            self.reactor.advance(0.05)
        return self.reactor.processes[-1]

    def test_restarts_reconnects_and_quarantined_segments(self):
        started = self.start()
        process = self.reactor.processes[0]
        process.opened()
        self.successResultOf(started)
        process.say(3, "out_time_us=100000\nprogress=continue\n")  # the clock settles
        self.reactor.advance(0.5)
        process.say(3, "out_time_us=600000\nprogress=continue\n")
        self.write_segment(process, "seg000000.mp4", (0.0, 2.0))
        process.say(1, "seg000000.mp4,0.0,2.0\n")
        with open(os.path.join(process.path, "seg000001.mp4"), "wb") as handle:
            handle.write(b"garbage")
        process.say(1, "seg000001.mp4,2.0,4.0\n")
        self.assertEqual(self.sample("streamrec_quarantined_segments_total"), 1)
        self.assertEqual(self.sample("streamrec_streams", state="recording"), 1)
        # The source drops: one restart, then attempts until it answers again.
        process.exit(1)
        self.assertEqual(self.sample("streamrec_streams", state="reconnecting"), 1)
        self.relaunched().exit(1)  # never opened: an attempt, not a restart
        self.relaunched().opened()
        self.assertEqual(self.sample("streamrec_segmenter_restarts_total"), 1)
        self.assertEqual(self.sample("streamrec_reconnects_total"), 2)
        self.assertEqual(self.recorder.status()["reconnects"], 2)
        self.assertEqual(self.sample("streamrec_streams", state="recording"), 1)
        stopped = defer.ensureDeferred(self.recorder.stop())
        self.reactor.processes[-1].exit(255)
        self.successResultOf(stopped)
        self.assertEqual(self.sample("streamrec_streams", state="recording"), 0)
        self.assertEqual(self.sample("streamrec_segmenter_restarts_total"), 1)


class CountedTests(unittest.TestCase):
    """What is counted as it happens, from the notifications."""

    def setUp(self) -> None:
        self.store, self.data_dir = sqlite_store(self)
        self.clock = task.Clock()
        self.metrics = Metrics(
            reactor=self.clock, store=self.store, recorders=recorders_of(), data_dir=self.data_dir
        )
        self.passed: list[tuple[str, dict[str, Any]]] = []
        self.notify = self.metrics.watch(lambda hook, **kw: self.passed.append((hook, kw)))
        return defer.ensureDeferred(self.store.migrate())

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def segment(self, size: int | None, start: float = 10.0, end: float = 12.0) -> dict[str, Any]:
        path = os.path.join(self.data_dir, f"seg{start:g}.mp4")
        if size is not None:
            with open(path, "wb") as handle:
                handle.write(b"\0" * size)
        return {"stream_id": 1, "segment_id": 1, "path": path, "start": start, "end": end}

    def test_segments_bytes_and_seconds_rise_and_the_notification_goes_on(self):
        first = self.segment(1000)
        self.notify("segment_closed", **first)
        self.notify("segment_closed", **self.segment(500, 12.0, 13.5))
        # A segment retention took already: counted, its bytes unknown.
        self.notify("segment_closed", **self.segment(None, 13.5, 15.5))
        self.assertEqual(self.sample("streamrec_segments_written_total"), 3)
        self.assertEqual(self.sample("streamrec_segment_bytes_written_total"), 1500)
        self.assertEqual(self.sample("streamrec_recorded_seconds_total"), 5.5)
        self.assertEqual(len(self.passed), 3)
        self.assertEqual(self.passed[0], ("segment_closed", first))

    def test_a_notification_it_cannot_count_still_goes_on(self):
        self.notify("segment_closed", stream_id=1)  # no path: nothing to count
        self.assertEqual(self.passed, [("segment_closed", {"stream_id": 1})])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(self.sample("streamrec_segments_written_total"), 0)

    @defer.inlineCallbacks
    def test_a_finished_clip_lands_in_the_histogram(self):
        stream_id = yield defer.ensureDeferred(self.store.create_stream("rtsp://c/1", "", 1.0))
        job, _ = yield defer.ensureDeferred(
            self.store.find_or_create_job(stream_id, 100.0, 104.0, 200.0, "copy", {}, 50.0)
        )
        yield defer.ensureDeferred(self.store.plan_job(job.id, [(1, None, 100.0, 104.0)], 60.0))
        self.clock.advance(60.0 + 0.3)
        self.notify("clip_done", stream_id=stream_id, job_id=job.id, clips=[])
        self.notify("clip_failed", stream_id=stream_id, job_id=job.id + 1, error="no")
        yield until(
            lambda: defer.succeed(
                self.sample("streamrec_clip_build_seconds_count", encoder="copy")
            ),
            10,
            "the build time",
            interval=0.01,
        )
        self.assertAlmostEqual(
            self.sample("streamrec_clip_build_seconds_sum", encoder="copy"), 0.3, places=6
        )
        # From planning, not from the request: 0.3 s is in the 0.5 s bucket, not below.
        self.assertEqual(
            self.sample("streamrec_clip_build_seconds_bucket", encoder="copy", le="0.5"), 1
        )
        self.assertEqual(
            self.sample("streamrec_clip_build_seconds_bucket", encoder="copy", le="0.25"), 0
        )
        self.assertEqual(self.sample("streamrec_clip_jobs_finished_total", result="done"), 1)
        self.assertEqual(self.sample("streamrec_clip_jobs_finished_total", result="failed"), 1)
        self.assertEqual([hook for hook, _ in self.passed], ["clip_done", "clip_failed"])


class RouteTests(unittest.TestCase):
    """The API's answers timed by route template, and the route itself."""

    def setUp(self) -> None:
        self.store, data_dir = sqlite_store(self)
        recorders = Recorders(make=lambda *a, **k: FakeRecorder())
        streams = Streams(
            reactor=reactor,
            store=self.store,
            recorders=recorders,
            **one_node(reactor, self.store, recorders),
            notify=lambda *a, **k: None,
            encoders={"copy": Encoder()},
            default_encoder="copy",
            max_clip_seconds=3600,
        )
        self.metrics = Metrics(
            reactor=reactor, store=self.store, recorders=recorders, data_dir=data_dir
        )
        self.token = "v" * 40
        self.http = self.client(streams, None)
        self.guarded = self.client(streams, Access({digest(self.token): VIEWER}))
        return defer.ensureDeferred(self.store.migrate())

    def client(self, streams: Streams, access: Access | None) -> StubTreq:
        api = StreamrecAPI(streams, None, {"plugins": []}, access=access, metrics=self.metrics)
        http = StubTreq(api.resource())
        pump = task.LoopingCall(http.flush)  # the store answers from a thread
        pump.start(0.002)
        self.addCleanup(pump.stop)
        return http

    async def get(self, path: str, http: StubTreq | None = None, **headers: str) -> Any:
        return await (http or self.http).get(
            "http://streamrec.test" + path,
            headers={k.encode(): [v.encode()] for k, v in headers.items()},
        )

    async def scrape(self) -> Samples:
        response = await self.get("/metrics")
        self.assertEqual(response.code, 200)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/plain; version="), content_type)
        return parse((await response.content()).decode("utf-8"))

    @defer.inlineCallbacks
    def test_latency_by_route_template(self):
        yield defer.ensureDeferred(self._by_route())

    async def _by_route(self) -> None:
        for path in ("/streams/1/status", "/streams/2/status", "/streams/", "/no/such/thing"):
            await (await self.get(path)).content()
        await (await self.get("/streams/7/status?x=1")).content()
        samples = await self.scrape()
        counts = labelled(samples, "streamrec_http_request_duration_seconds_count", "route")
        # The scrape that reads them is timed once it has answered.
        self.assertEqual(counts, {"/streams/<stream_id>/status": 3, "/streams/": 1, UNMATCHED: 1})
        again = await self.scrape()
        self.assertEqual(
            value(again, "streamrec_http_request_duration_seconds_count", route="/metrics"), 1
        )

    @defer.inlineCallbacks
    def test_metrics_need_a_viewer(self):
        yield defer.ensureDeferred(self._viewer())

    async def _viewer(self) -> None:
        refused = await self.get("/metrics", self.guarded)
        self.assertEqual(refused.code, 401)
        self.assertEqual(refused.headers.getRawHeaders(b"content-type"), [b"application/json"])
        allowed = await self.get("/metrics", self.guarded, Authorization=f"Bearer {self.token}")
        self.assertEqual(allowed.code, 200)
        self.assertIn(b"streamrec_streams", await allowed.content())


class RecordingTests(ServiceTestCase):
    """A running service with a real recording, scraped over HTTP."""

    @defer.inlineCallbacks
    def test_a_recording_and_a_clip_as_scraped(self):
        yield defer.ensureDeferred(self._recording())

    async def scrape(self, base: str) -> Samples:
        response = await treq.get(base + "/metrics", timeout=30, persistent=False)
        self.assertEqual(response.code, 200)
        return parse((await response.content()).decode("utf-8"))

    async def _recording(self) -> None:
        source = UdpTsSource.running(self)
        service = await self.service(segment_seconds=1.0)
        before = await self.scrape(service.base)
        self.assertEqual(value(before, "streamrec_segments_written_total"), 0)
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        def written(at_least: float) -> Callable[[], Any]:
            async def check() -> Samples | None:
                samples = await self.scrape(service.base)
                count = value(samples, "streamrec_segments_written_total") or 0
                return samples if count >= at_least else None

            return check

        first = await until(written(2), 30, "two segments written")
        count = value(first, "streamrec_segments_written_total")
        later = await until(written(count + 2), 30, "more segments written")
        self.assertGreater(
            value(later, "streamrec_segment_bytes_written_total"),
            value(first, "streamrec_segment_bytes_written_total"),
        )
        self.assertGreater(value(first, "streamrec_segment_bytes_written_total"), 10_000)
        self.assertEqual(value(later, "streamrec_streams", state="recording"), 1)
        self.assertEqual(value(later, "streamrec_database_up"), 1)

        status = await service.status(stream_id)
        start = status["recorded"]["first"] + 0.5
        job = await service.clip(stream_id, start=start, stop=start + 1.5)
        self.assertEqual(len(job["clips"]), 1, job)

        async def built() -> Samples | None:
            samples = await self.scrape(service.base)
            done = value(samples, "streamrec_clip_build_seconds_count", encoder="copy")
            return samples if done else None

        samples = await until(built, 10, "the clip's build time")
        self.assertEqual(value(samples, "streamrec_clip_build_seconds_count", encoder="copy"), 1)
        self.assertEqual(value(samples, "streamrec_clip_jobs", status="done"), 1)
        self.assertEqual(value(samples, "streamrec_clip_queue_length"), 0)
        routes = labelled(samples, "streamrec_http_request_duration_seconds_count", "route")
        self.assertGreaterEqual(routes.get("/streams/<stream_id>/get_clip", 0), 1)
        self.assertGreaterEqual(routes.get("/streams/<stream_id>/status", 0), 1)
        self.assertEqual([r for r in routes if str(stream_id) in r], [])
        self.assertGreater(value(samples, "streamrec_disk_free_bytes"), 0)
        await service.ok("POST", f"/streams/{stream_id}/stop")
        stopped = await self.scrape(service.base)
        self.assertEqual(value(stopped, "streamrec_streams", state="recording"), 0)
