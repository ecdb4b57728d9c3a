"""``twistd streamrec``: options and the service maker."""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import fields
from functools import partial
from typing import Any

import pluggy
from twisted.logger import Logger
from twisted.python import usage

from .api import StreamrecAPI
from .auth import Access, TokenFileError, load_tokens, plain_tokens_exposed
from .clips.worker import ClipWorker
from .cluster import Node, StreamLocks, default_node_name
from .config import Config, ConfigError, plugin_config, public_url
from .core import RecorderEvents, Streams
from .evidence import Signer
from .janitor import Janitor, Retention
from .media.ffmpeg import find_ffmpeg
from .metrics import Metrics
from .plugins import (
    ClipEncoder,
    PluginContext,
    collect,
    get_plugin_manager,
    notifier,
    plugin_names,
)
from .recorder.command import SegmenterSettings, parent_death_launcher
from .recorder.fleet import Recorders
from .recorder.indexing import SegmentChecker, paced
from .recorder.journal import SegmentJournal
from .recorder.layout import SegmentLayout
from .recorder.supervisor import Recorder
from .service import StreamrecService
from .store import LONGEST_SEGMENT, open_store
from .threads import thread_runner
from .web import Limits

log = Logger(namespace="streamrec.tap")

DEFAULTS = Config()


def _float(value: Any) -> float:
    return float(value)


UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(value: Any) -> int:
    """A byte count: ``1073741824``, ``500M``, ``1.5G``."""
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in UNITS and text[-1:] else ""
    number = text[:-1] if unit else text
    try:
        result = int(float(number) * UNITS[unit])
    except ValueError:
        raise ValueError(f"not a size: {value!r} (use e.g. 500M or 2G)") from None
    if result < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    return result


def duration(value: Any) -> float:
    """Seconds, or a number with s/m/h/d: ``30d``, ``12h``."""
    text = str(value).strip().lower()
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:], None)
    try:
        result = float(text[:-1]) * factor if factor else float(text)
    except ValueError:
        raise ValueError(f"not a duration: {value!r} (use e.g. 3600, 12h or 30d)") from None
    if result < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return result


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Record live video sources (RTSP, HLS, RTMP, SRT, HTTP, UDP) into segments and "
        "cut MP4 clips, over a JSON HTTP API. Options may also come from an INI file "
        "(--config) with a [streamrec] section whose keys are the long option names."
    )

    optParameters = [
        ["config", "c", None, "Read options from this INI file ([streamrec] section)."],
        ["listen", "l", DEFAULTS.listen, "Twisted endpoint string for the HTTP API."],
        ["data-dir", "d", DEFAULTS.data_dir, "Directory for segments, clips and SQLite."],
        [
            "database",
            None,
            "",
            "Database URL: sqlite:///PATH (default: DATA_DIR/streamrec.sqlite), or"
            " postgresql://USER@HOST:PORT/DB for the shared engine.",
        ],
        [
            "public-url",
            None,
            "",
            "Base URL of the links handed out (default: http://HOST:PORT of --listen).",
        ],
        ["storage", None, DEFAULTS.storage, "Storage backend plugin for clips."],
        ["encoder", None, DEFAULTS.encoder, "Default clip encoder plugin."],
        ["ffmpeg", None, "", "ffmpeg binary (default: PATH's, else imageio-ffmpeg's)."],
        [
            "segment-seconds",
            None,
            DEFAULTS.segment_seconds,
            "Target segment length in seconds.",
            _float,
        ],
        [
            "clock-tolerance",
            None,
            DEFAULTS.clock_tolerance,
            "Seconds an RTSP camera's own clock may differ from arrival time and"
            " still be followed by streams with clock=auto.",
            _float,
        ],
        [
            "start-timeout",
            None,
            DEFAULTS.start_timeout,
            "Seconds start waits for the source to open.",
            _float,
        ],
        [
            "max-clip-seconds",
            None,
            DEFAULTS.max_clip_seconds,
            "Longest range one get_clip may ask for.",
            _float,
        ],
        ["clip-workers", None, DEFAULTS.clip_workers, "Clips built at once.", int],
        [
            "clip-answer-wait",
            None,
            DEFAULTS.clip_answer_wait,
            "Seconds get_clip waits for a copy clip of a range already recorded, so its"
            " first answer is done with the links (0: answer at once).",
            _float,
        ],
        [
            "max-clip-jobs",
            None,
            DEFAULTS.max_clip_jobs,
            "Clip jobs pending or being built at most; past it get_clip answers 503 (0: no bound).",
            int,
        ],
        [
            "max-age",
            None,
            DEFAULTS.max_age,
            "Delete segments older than this (seconds or 12h/30d; 0 keeps them).",
            duration,
        ],
        [
            "max-bytes",
            None,
            DEFAULTS.max_bytes,
            "Byte budget for all segments (e.g. 500G; 0: none).",
            size,
        ],
        [
            "min-free",
            None,
            DEFAULTS.min_free,
            "Free space kept on the data disk, deleting oldest segments (e.g. 1G).",
            size,
        ],
        ["clip-ttl", None, DEFAULTS.clip_ttl, "Delete finished clips after this long.", duration],
        [
            "retention-interval",
            None,
            DEFAULTS.retention_interval,
            "Seconds between retention sweeps.",
            duration,
        ],
        [
            "reconnect-max",
            None,
            DEFAULTS.reconnect_max,
            "Longest wait between reconnection attempts, in seconds.",
            duration,
        ],
        [
            "node",
            None,
            "",
            "This node's name among the nodes sharing a database (default: the host name).",
        ],
        [
            "max-streams",
            None,
            DEFAULTS.max_streams,
            "Streams this node records at most (0: no limit).",
            int,
        ],
        [
            "lease-seconds",
            None,
            DEFAULTS.lease_seconds,
            "How long a node's hold on a stream lasts unless renewed (renewed every third).",
            duration,
        ],
        [
            "clip-wait",
            None,
            DEFAULTS.clip_wait,
            "How long a clip job waits for a node that holds part of its recording and is"
            " gone, before it fails.",
            duration,
        ],
        [
            "tokens",
            None,
            DEFAULTS.tokens,
            "File of API tokens, one 'ROLE TOKEN' or 'ROLE sha256:HEX' per line"
            " (roles: viewer, operator, admin; mint one with streamrec-token ROLE)."
            " Without it the API is open to anyone who reaches the port.",
        ],
        [
            "signing-key",
            None,
            DEFAULTS.signing_key,
            "Ed25519 private key (PEM; make one with streamrec-keygen): each clip gets a"
            " manifest signed with it, checked by streamrec-verify.",
        ],
        [
            "max-connections",
            None,
            DEFAULTS.max_connections,
            "HTTP connections open at once, at most (0: no limit).",
            int,
        ],
        [
            "max-connections-per-ip",
            None,
            DEFAULTS.max_connections_per_ip,
            "HTTP connections open at once from one client address (0: no limit).",
            int,
        ],
        [
            "fd-reserve",
            None,
            DEFAULTS.fd_reserve,
            "File descriptors kept free for recording, clips and the database: no new"
            " HTTP connection is taken when fewer are left of the process's limit.",
            int,
        ],
        [
            "header-timeout",
            None,
            DEFAULTS.header_timeout,
            "Seconds a client has to send a request's headers (0: no limit).",
            duration,
        ],
        [
            "body-timeout",
            None,
            DEFAULTS.body_timeout,
            "Seconds a client has to send a request's body after its headers (0: no limit).",
            duration,
        ],
        [
            "idle-timeout",
            None,
            DEFAULTS.idle_timeout,
            "Seconds an HTTP connection may stay idle, or its client read nothing of an"
            " answer (0: no limit).",
            duration,
        ],
    ]
    optFlags = [
        ["no-plugins", None, "Do not load installed plugins (entry points)."],
    ]

    def postOptions(self) -> None:
        if self["config"]:
            self._read_config(self["config"])
        try:
            self.config = self.to_config()
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    def _read_config(self, path: str) -> None:
        parser = configparser.ConfigParser()
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as error:
            raise usage.UsageError(f"cannot read config {path}: {error}") from None
        if not parser.has_section("streamrec"):
            raise usage.UsageError(f"config {path} has no [streamrec] section")
        self.plugin_settings = {
            section: dict(parser.items(section))
            for section in parser.sections()
            if section != "streamrec"
        }
        parameters: list[list[Any]] = self.optParameters  # type: ignore[assignment]
        defaults = {p[0]: p[2] for p in parameters}
        coercers = {p[0]: p[4] for p in parameters if len(p) > 4}
        for key, value in parser.items("streamrec"):
            if key not in defaults or key == "config":
                raise usage.UsageError(f"config {path}: unknown option {key!r}")
            if self[key] == defaults[key]:  # the command line wins
                self[key] = coercers.get(key, str)(value)

    def to_config(self) -> Config:
        values = {
            f.name: self[f.name.replace("_", "-")]
            for f in fields(Config)
            if f.name.replace("_", "-") in self
        }
        values["load_plugins"] = not self["no-plugins"]
        values["plugin_settings"] = getattr(self, "plugin_settings", {})
        return Config(**values)


#: Seconds a thread holds the GIL while another waits (Python's default is 5 ms):
#: a statement run in the database's thread waits for the GIL when it returns,
#: and with 100 cameras closing segments at once, 5 ms a statement adds up.
SWITCH_INTERVAL = 0.0005


def makeService(options: Options, reactor: Any = None) -> StreamrecService:
    if reactor is None:
        from twisted.internet import reactor
    # The reactor thread and the database and decoding threads pass the GIL
    # around; a thread that waits for it waits up to this long each time.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        return build_service(options.config, reactor, exit_on_failure=True)
    except (ConfigError, RuntimeError, ValueError) as error:
        raise SystemExit(f"streamrec: {error}") from None


def build_service(
    config: Config,
    reactor: Any,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    exit_on_failure: bool = False,
) -> StreamrecService:
    """Every collaborator, built up front and handed to the one that uses it."""
    data_dir = os.path.abspath(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    links = public_url(config)
    ffmpeg = find_ffmpeg(config.ffmpeg or None)
    run_blocking = thread_runner(reactor)
    pm = plugin_manager or get_plugin_manager(load_entrypoints=config.load_plugins)
    context = PluginContext(
        reactor=reactor,
        data_dir=data_dir,
        public_url=links,
        ffmpeg=ffmpeg,
        config=plugin_config(config),
        run_blocking=run_blocking,
    )
    storage_factories = collect(pm.hook.register_storage_backends)
    if config.storage not in storage_factories:
        raise ConfigError(
            f"unknown storage backend {config.storage!r}; known: "
            + ", ".join(sorted(storage_factories))
        )
    encoders, unavailable = build_encoders(pm, context, config.encoder)
    storage = storage_factories[config.storage](context)
    store = open_store(config.database or "sqlite:", data_dir, reactor=reactor)
    node_name = config.node or default_node_name()
    if config.lease_seconds < 1:
        raise ConfigError("--lease-seconds must be at least 1")
    if not config.clock_tolerance > 0:
        raise ConfigError("--clock-tolerance must be a positive number of seconds")
    layout = SegmentLayout(data_dir)
    checker = SegmentChecker(
        layout=layout,
        run_blocking=run_blocking,
        max_duration=min(10 * config.segment_seconds + 10, LONGEST_SEGMENT),
        cooperator=paced(reactor),
        clock=reactor,
    )
    journal = SegmentJournal(
        reactor=reactor, store=store, path=os.path.join(data_dir, f"journal-{node_name}.jsonl")
    )
    recorders = Recorders(
        make=partial(
            Recorder,
            reactor=reactor,
            store=store,
            ffmpeg=ffmpeg,
            layout=layout,
            checker=checker,
            settings=SegmenterSettings(segment_seconds=config.segment_seconds),
            clock_tolerance=config.clock_tolerance,
            start_timeout=config.start_timeout,
            reconnect_max=config.reconnect_max,
            launcher=parent_death_launcher(),
            node=node_name,
            journal=journal,
        )
    )
    metrics = Metrics(reactor=reactor, store=store, recorders=recorders, data_dir=data_dir)
    notify = metrics.watch(notifier(pm))  # counts segments and clips as they come
    worker = ClipWorker(
        reactor=reactor,
        store=store,
        storage=storage,
        encoders=encoders,
        scratch_dir=os.path.join(data_dir, "tmp"),
        is_recording=recorders.is_recording,
        live_tail=recorders.live_tail,
        notify=notify,
        concurrency=config.clip_workers,
        node=node_name,
        span_wait=config.clip_wait,
        run_blocking=run_blocking,
        signer=Signer.from_file(config.signing_key, node_name) if config.signing_key else None,
    )
    janitor = Janitor(
        reactor=reactor,
        store=store,
        storage=storage,
        data_dir=data_dir,
        retention=Retention(
            max_age=config.max_age,
            max_bytes=config.max_bytes,
            min_free_bytes=config.min_free,
            clip_ttl=config.clip_ttl,
            interval=config.retention_interval,
        ),
        in_use=worker.paths_in_use,
        run_blocking=run_blocking,
    )
    events = RecorderEvents(
        store=store,
        node=node_name,
        notify=notify,
        recorded=worker.recorded,
        space_short=janitor.run_now,
    )
    journal.indexed = events.segment_closed  # segments indexed late are announced too
    node = Node(
        reactor=reactor,
        store=store,
        recorders=recorders,
        listener=events,
        locks=StreamLocks(),
        name=node_name,
        public_url=links,
        max_streams=config.max_streams or None,
        lease_seconds=config.lease_seconds,
    )
    streams = Streams(
        reactor=reactor,
        store=store,
        recorders=recorders,
        node=node,
        events=events,
        notify=notify,
        encoders=encoders,
        default_encoder=config.encoder,
        max_clip_seconds=config.max_clip_seconds,
        storage=storage,
        wake_worker=worker.wake,
        max_clip_jobs=config.max_clip_jobs,
        clip_answer_wait=config.clip_answer_wait,
        cancel_build=worker.cancel,
    )
    plugins = {
        "plugins": plugin_names(pm),
        "storage_backends": sorted(storage_factories),
        "clip_encoders": sorted(encoders),
        "unavailable": unavailable,
        "storage": config.storage,
        "default_encoder": config.encoder,
    }
    return StreamrecService(
        reactor=reactor,
        listen=config.listen,
        public_url=links,
        store=store,
        layout=layout,
        checker=checker,
        journal=journal,
        streams=streams,
        node=node,
        api=StreamrecAPI(
            streams, storage.resource(), plugins, access=api_access(config), metrics=metrics
        ),
        limits=Limits.of(config),
        worker=worker,
        janitor=janitor,
        exit_on_failure=exit_on_failure,
    )


def api_access(config: Config) -> Access:
    """Who may call the API: the callers of ``--tokens``, or anyone."""
    if not config.tokens:
        return Access()
    try:
        tokens = load_tokens(config.tokens)
    except TokenFileError as error:
        raise ConfigError(str(error)) from None
    if plain_tokens_exposed(config.tokens):
        log.warn(
            "{path} holds plain tokens and every user of this box may read it:"
            " chmod 600 it, or keep sha256: lines only",
            path=config.tokens,
        )
    return Access(tokens)


ENCODER_PARTS = ("options", "validate", "encode")


def build_encoders(
    pm: pluggy.PluginManager, context: PluginContext, default: str
) -> tuple[dict[str, ClipEncoder], dict[str, str]]:
    """Every encoder that builds, and why the others did not. One that fails is
    left out (and logged), unless it is the default encoder."""
    factories = collect(pm.hook.register_clip_encoders)
    if default not in factories:
        raise ConfigError(
            f"unknown clip encoder {default!r}; known: " + ", ".join(sorted(factories))
        )
    encoders: dict[str, ClipEncoder] = {}
    unavailable: dict[str, str] = {}
    for name, make in factories.items():
        try:
            encoder = make(context)
            missing = [part for part in ENCODER_PARTS if not hasattr(encoder, part)]
            if missing:
                raise ConfigError(
                    f"{type(encoder).__name__} lacks {', '.join(missing)}"
                    " (see streamrec.plugins.ClipEncoder)"
                )
        except Exception as error:
            if name == default:
                raise
            log.failure("clip encoder {name} failed to load: left out", name=name)
            unavailable[name] = f"{error.__class__.__name__}: {error}"
            continue
        encoders[name] = encoder
    return encoders, unavailable
