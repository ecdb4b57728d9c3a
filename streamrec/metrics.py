"""``GET /metrics``: what this node does, in Prometheus's text format.

Most of it is read when scraped, so a scrape costs the same with ten streams
or five hundred: the recorders' states and counters (in memory), the clip jobs
by status (one query, timed: the database's latency) and the data disk's free
space (``statvfs``). The rest is counted as it happens, from the
notifications the plugins get: segments and their bytes, clip build times;
and the API's answers are timed per route template (``/streams/<stream_id>/status``,
never the path asked for, so the series stay few). Each service has its own
registry.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from .errors import DatabaseUnavailable, log_failure
from .recorder.fleet import Recorders
from .recorder.supervisor import DISK_FULL, ENDED, RECONNECTING, RECORDING, STARTING
from .store import JOB_DONE, JOB_EXPIRED, JOB_FAILED, JOB_PENDING, JOB_PROCESSING, SqlStore

log = Logger(namespace="streamrec.metrics")

#: The states a started stream's recorder is in (each reported, 0 when none is).
STATES = (STARTING, RECORDING, RECONNECTING, DISK_FULL, ENDED)
JOB_STATUSES = (JOB_PENDING, JOB_PROCESSING, JOB_DONE, JOB_FAILED, JOB_EXPIRED)

#: Seconds a clip takes: tens of milliseconds for a copy, up to hours for a re-encode.
CLIP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
#: Seconds an API answer takes.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: The route label of a request that matches no route.
UNMATCHED = "unmatched"


class Metrics:
    """This node's metrics: a registry, what feeds it, and the scrape."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        recorders: Recorders,
        data_dir: str,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.recorders = recorders
        self.data_dir = data_dir
        self.registry = CollectorRegistry(auto_describe=False)
        self.segments = Counter(
            "streamrec_segments_written",
            "Segments this node recorded and indexed",
            registry=self.registry,
        )
        self.segment_bytes = Counter(
            "streamrec_segment_bytes_written",
            "Bytes of the segments this node recorded and indexed",
            registry=self.registry,
        )
        self.recorded_seconds = Counter(
            "streamrec_recorded_seconds",
            "Seconds of video in the segments this node recorded and indexed",
            registry=self.registry,
        )
        self.clips_finished = Counter(
            "streamrec_clip_jobs_finished",
            "Clip jobs this node finished, by result (done or failed)",
            ["result"],
            registry=self.registry,
        )
        self.clip_seconds = Histogram(
            "streamrec_clip_build_seconds",
            "Seconds from a clip job's planning to its last clip, by encoder",
            ["encoder"],
            buckets=CLIP_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "streamrec_http_request_duration_seconds",
            "Seconds the API took to answer, by route template",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        for result in (JOB_DONE, JOB_FAILED):
            self.clips_finished.labels(result)
        self.database = DatabaseReading()
        self.registry.register(ScrapeTime(self))

    # -- counted as it happens ----------------------------------------------------
    def watch(self, notify: Callable[..., None]) -> Callable[..., None]:
        """``notify(hook_name, **kwargs)`` that also counts what it passes on."""

        def counted(hook_name: str, **kwargs: Any) -> None:
            try:
                self.noticed(hook_name, kwargs)
            except Exception:
                log.failure("cannot count {hook}", hook=hook_name)
            notify(hook_name, **kwargs)

        return counted

    def noticed(self, hook_name: str, kwargs: dict[str, Any]) -> None:
        if hook_name == "segment_closed":
            self.segment_written(kwargs["path"], kwargs["end"] - kwargs["start"])
        elif hook_name == "clip_done":
            self.clips_finished.labels(JOB_DONE).inc()
            self.clip_built(kwargs["job_id"], self.reactor.seconds())
        elif hook_name == "clip_failed":
            self.clips_finished.labels(JOB_FAILED).inc()

    def segment_written(self, path: str, seconds: float) -> None:
        self.segments.inc()
        self.recorded_seconds.inc(max(0.0, seconds))
        try:
            self.segment_bytes.inc(os.path.getsize(path))
        except OSError:
            pass  # already gone (retention): counted without its bytes

    def clip_built(self, job_id: int, finished: float) -> defer.Deferred[None]:
        """Put a finished job's build time in the histogram (the job says when
        it was planned, and with which encoder)."""

        async def observe() -> None:
            job = await self.store.get_job(job_id)
            began = job.planned_at if job.planned_at is not None else job.created_at
            self.clip_seconds.labels(job.encoder).observe(max(0.0, finished - began))

        d = defer.ensureDeferred(observe())
        d.addErrback(lambda f: log_failure(log, f"cannot time clip job {job_id}", f))
        return d

    def request_done(self, route: str, seconds: float) -> None:
        self.request_seconds.labels(route).observe(max(0.0, seconds))

    def timed(self, resource: IResource, url_map: Any) -> IResource:
        """``resource`` (the Klein app's), with each answer timed under the
        template of the route in ``url_map`` that the request matches."""
        return TimedResource(resource, url_map, self)

    # -- read when scraped ------------------------------------------------------------
    async def refresh(self) -> None:
        """Read what the database knows (one query) and how long it took."""
        began = self.reactor.seconds()
        try:
            counts = await self.store.job_counts()
        except DatabaseUnavailable:
            self.database = DatabaseReading(up=False)
            return
        except Exception:
            log.failure("cannot count clip jobs")
            self.database = DatabaseReading(up=False)
            return
        self.database = DatabaseReading(
            up=True, seconds=self.reactor.seconds() - began, job_counts=counts
        )

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape's body and content type (OpenMetrics when ``accept`` asks for it)."""
        await self.refresh()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


@dataclass(frozen=True)
class DatabaseReading:
    """What the last scrape learnt from the database (``up`` None: no scrape yet)."""

    up: bool | None = None
    seconds: float | None = None
    job_counts: dict[str, int] | None = None


class ScrapeTime:
    """The collector of what is read when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.recorders()
        yield from self.jobs()
        yield from self.disk()

    def recorders(self) -> Iterator[Metric]:
        recorders = list(self.metrics.recorders.by_stream.values())
        states = Tally(r.state for r in recorders if r.wanted or r.busy())
        streams = GaugeMetricFamily(
            "streamrec_streams",
            "Streams this node records (or tries to), by the state of their recorder",
            labels=["state"],
        )
        for state in sorted(set(STATES) | set(states)):
            streams.add_metric([state], states[state])
        yield streams
        yield CounterMetricFamily(
            "streamrec_reconnects",
            "Times a recorder of this node launched its segmenter again after a run"
            " ended (the reconnects of a stream's status, summed)",
            value=sum(r.reconnects for r in recorders),
        )
        yield CounterMetricFamily(
            "streamrec_segmenter_restarts",
            "Segmenters of this node that had opened their source and then ended by"
            " themselves (source lost, ffmpeg died or stalled)",
            value=sum(r.restarts for r in recorders),
        )
        yield CounterMetricFamily(
            "streamrec_quarantined_segments",
            "Segments this node's recorders found bad and moved to quarantine",
            value=sum(r.quarantined for r in recorders),
        )

    def jobs(self) -> Iterator[Metric]:
        database = self.metrics.database
        if database.up is None:
            return
        yield GaugeMetricFamily(
            "streamrec_database_up",
            "Whether the database answered the last scrape",
            value=int(database.up),
        )
        if database.seconds is not None:
            yield GaugeMetricFamily(
                "streamrec_database_latency_seconds",
                "Seconds the database took to answer the last scrape's query",
                value=database.seconds,
            )
        counts = database.job_counts
        if counts is None:
            return
        jobs = GaugeMetricFamily(
            "streamrec_clip_jobs",
            "Clip jobs in the database (every node's), by status",
            labels=["status"],
        )
        for status in sorted(set(JOB_STATUSES) | set(counts)):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "streamrec_clip_queue_length",
            "Clip jobs waiting to be built: for their turn, or for their recording",
            value=counts.get(JOB_PENDING, 0),
        )

    def disk(self) -> Iterator[Metric]:
        try:
            usage = os.statvfs(self.metrics.data_dir)
        except OSError:
            return
        yield GaugeMetricFamily(
            "streamrec_disk_free_bytes",
            "Bytes free on the data directory's disk (for an unprivileged user)",
            value=usage.f_bavail * usage.f_frsize,
        )
        yield GaugeMetricFamily(
            "streamrec_disk_size_bytes",
            "Bytes the data directory's disk holds in all",
            value=usage.f_blocks * usage.f_frsize,
        )


class TimedResource(Resource):
    """A Klein resource whose answers are timed, by route template."""

    isLeaf = True

    def __init__(self, inner: IResource, url_map: Any, metrics: Metrics) -> None:
        super().__init__()
        self.inner = inner
        self.url_map = url_map
        self.metrics = metrics

    def render(self, request: IRequest) -> Any:
        clock = self.metrics.reactor
        began = clock.seconds()
        route = self.route_of(request)

        def finished(_: object) -> None:
            self.metrics.request_done(route, clock.seconds() - began)

        request.notifyFinish().addBoth(finished)  # type: ignore[attr-defined]
        return self.inner.render(request)

    def route_of(self, request: IRequest) -> str:
        """The template of the route ``request`` matches, or :data:`UNMATCHED`."""
        # As Klein matches it: the path's segments, unquoted by Twisted.
        path = b"/" + b"/".join(request.postpath or [])
        try:
            rule, _ = self.url_map.bind(
                "localhost",
                path_info=path.decode("utf-8"),
                default_method=request.method.decode("ascii"),
            ).match(return_rule=True)
        except Exception:  # no such route or method, a redirect, a path not UTF-8
            return UNMATCHED
        return str(rule.rule)
