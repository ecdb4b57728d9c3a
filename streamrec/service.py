"""The service tree: store, API site, recorders and the clip worker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Site

from .api import StreamrecAPI
from .clips.worker import ClipWorker
from .core import Streams
from .ffmpeg import find_ffmpeg
from .janitor import Janitor, Retention
from .plugins import PluginContext, collect, get_plugin_manager, notify, plugin_names
from .recorder.command import SegmenterSettings, parent_death_launcher
from .recorder.supervisor import Backoff, Recorder
from .recorder.validate import validate_segment
from .recovery import recover
from .store import Clip, Stream, open_store

log = Logger(namespace="streamrec.service")


@dataclass(frozen=True)
class Config:
    listen: str = "tcp:8080"
    data_dir: str = "./data"
    database: str = ""
    public_url: str = ""
    storage: str = "local"
    encoder: str = "copy"
    ffmpeg: str = ""
    segment_seconds: float = 2.0
    start_timeout: float = 8.0
    max_clip_seconds: float = 4 * 3600.0
    clip_workers: int = 2
    load_plugins: bool = True
    max_age: float = 0.0
    max_bytes: int = 0
    min_free: int = 1 << 30
    clip_ttl: float = 7 * 86400.0
    retention_interval: float = 60.0
    reconnect_max: float = 30.0
    # Settings of plugins by name: the [NAME] sections of the --config file.
    plugin_settings: dict[str, dict[str, str]] = field(default_factory=dict)


class ConfigError(ValueError):
    pass


class StreamrecService(MultiService):
    """Opens the store, listens, resumes recorders; shuts down gracefully."""

    def __init__(self, config: Config, reactor: Any, exit_on_failure: bool = False) -> None:
        super().__init__()
        self.config = config
        self.exit_on_failure = exit_on_failure
        self.reactor = reactor
        self.data_dir = os.path.abspath(config.data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.ffmpeg = find_ffmpeg(config.ffmpeg or None)
        self.launcher = parent_death_launcher()
        self.pm = get_plugin_manager(load_entrypoints=config.load_plugins)
        self.storage_factories = collect(self.pm.hook.register_storage_backends)
        self.encoder_factories = collect(self.pm.hook.register_clip_encoders)
        if config.storage not in self.storage_factories:
            raise ConfigError(
                f"unknown storage backend {config.storage!r}; known: "
                + ", ".join(sorted(self.storage_factories))
            )
        if config.encoder not in self.encoder_factories:
            raise ConfigError(
                f"unknown clip encoder {config.encoder!r}; known: "
                + ", ".join(sorted(self.encoder_factories))
            )
        self.store = open_store(config.database or "sqlite:", self.data_dir, reactor=reactor)
        self.storage: Any = None
        self.encoders: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}  # encoders that failed to load, and why
        self.worker: ClipWorker | None = None
        self.janitor: Janitor | None = None
        self.port: Any = None
        self.streams = Streams(
            reactor=reactor,
            store=self.store,
            make_recorder=self._make_recorder,
            notify=self.notify,
            encoders=lambda: self.encoders,
            default_encoder=config.encoder,
            max_clip_seconds=config.max_clip_seconds,
            wake_worker=self._wake_worker,
            space_short=self._space_short,
            fresh_link=self._fresh_link,
        )
        self.api = StreamrecAPI(self.streams, self._clip_files, self._plugins)
        self.ready: defer.Deferred[None] = defer.Deferred()

    def notify(self, hook: str, **kwargs: Any) -> None:
        notify(self.pm, hook, **kwargs)

    def _make_recorder(self, stream: Stream, listener: Streams) -> Recorder:
        return Recorder(
            stream.id,
            stream.url,
            reactor=self.reactor,
            store=self.store,
            ffmpeg=self.ffmpeg,
            data_dir=self.data_dir,
            listener=listener,
            settings=SegmenterSettings(segment_seconds=self.config.segment_seconds),
            start_timeout=self.config.start_timeout,
            backoff=Backoff(cap=self.config.reconnect_max),
            run_blocking=self._in_thread,
            launcher=self.launcher,
        )

    def _in_thread(self, fn: Any, *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _fresh_link(self, clip: Clip) -> str:
        """Backends whose links expire (presigned URLs) make a new one per answer."""
        link = getattr(self.storage, "link", None)
        return link(clip.storage_key) if link is not None else clip.link

    def _space_short(self) -> None:
        if self.janitor is not None and self.janitor.running:
            self.janitor.run_now()

    def _clip_files(self) -> Any:
        return self.storage.resource() if self.storage is not None else None

    def _plugins(self) -> dict[str, Any]:
        return {
            "plugins": plugin_names(self.pm),
            "storage_backends": sorted(self.storage_factories),
            "clip_encoders": sorted(self.encoders),
            "unavailable": self.unavailable,
            "storage": self.config.storage,
            "default_encoder": self.config.encoder,
        }

    # -- life ---------------------------------------------------------------------
    def startService(self) -> None:
        Service.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)
        d.chainDeferred(self.ready)

    def _start_failed(self, failure: Any) -> Any:
        log.failure("streamrec could not start", failure)
        if self.exit_on_failure:
            # A system service that cannot start must say so in its exit status.
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()
        return failure

    async def _start(self) -> None:
        version = await self.store.migrate()
        log.info("database schema version {version}", version=version)
        report = await recover(
            reactor=self.reactor,
            store=self.store,
            data_dir=self.data_dir,
            validate=validate_segment,
            max_duration=10 * self.config.segment_seconds + 10,
            run_blocking=self._in_thread,
        )
        if report.indexed or report.quarantined or report.orphans:
            log.info(
                "recovery: {indexed} segments indexed from disk, {bad} quarantined,"
                " {orphans} leftover segmenters ended",
                indexed=len(report.indexed),
                bad=len(report.quarantined),
                orphans=len(report.orphans),
            )
        site = Site(self.api.resource())
        site.displayTracebacks = False
        endpoint = endpoints.serverFromString(self.reactor, self.config.listen)
        if not self.running:
            return  # stopped while recovering
        self.port = await endpoint.listen(site)
        public_url = self.config.public_url or default_public_url(self.port.getHost())
        context = PluginContext(
            reactor=self.reactor,
            data_dir=self.data_dir,
            public_url=public_url,
            ffmpeg=self.ffmpeg,
            config=plugin_config(self.config),
        )
        self.storage = self.storage_factories[self.config.storage](context)
        self.encoders = self._make_encoders(context)
        self.worker = ClipWorker(
            reactor=self.reactor,
            store=self.store,
            storage=self.storage,
            encoders=self.encoders,
            scratch_dir=os.path.join(self.data_dir, "tmp"),
            is_recording=self.streams.is_recording,
            notify=self.notify,
            concurrency=self.config.clip_workers,
        )
        self.worker.setServiceParent(self)
        self.janitor = Janitor(
            reactor=self.reactor,
            store=self.store,
            storage=self.storage,
            data_dir=self.data_dir,
            retention=Retention(
                max_age=self.config.max_age,
                max_bytes=self.config.max_bytes,
                min_free_bytes=self.config.min_free,
                clip_ttl=self.config.clip_ttl,
                interval=self.config.retention_interval,
            ),
            in_use=self.worker.paths_in_use,
            run_blocking=self._in_thread,
        )
        self.janitor.setServiceParent(self)
        if self.running:
            await self.streams.resume_all()
        log.info(
            "streamrec listening on {listen}, links under {url}, data in {data}",
            listen=self.config.listen,
            url=public_url,
            data=self.data_dir,
        )

    def _make_encoders(self, context: PluginContext) -> dict[str, Any]:
        """Every encoder that builds; one that fails is left out (and logged),
        unless it is the default encoder."""
        encoders = {}
        for name, make in self.encoder_factories.items():
            try:
                encoders[name] = make(context)
            except Exception as error:
                if name == self.config.encoder:
                    raise
                log.failure("clip encoder {name} failed to load: left out", name=name)
                self.unavailable[name] = f"{error.__class__.__name__}: {error}"
        return encoders

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
        await self.streams.shutdown()
        await defer.maybeDeferred(MultiService.stopService, self)
        await self.store.close()


def plugin_config(config: Config) -> dict[str, Any]:
    """What plugins see as ``context.config``: the options, and each plugin's
    own section of the config file under its name (``config["s3"]``)."""
    options = {key: value for key, value in vars(config).items() if key != "plugin_settings"}
    return {**options, **config.plugin_settings}


def default_public_url(address: Any) -> str:
    host = getattr(address, "host", "127.0.0.1")
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{address.port}"
