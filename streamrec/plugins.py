"""The plugin manager: built-in plugins first, then installed ones."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import pluggy
from twisted.logger import Logger
from twisted.web.resource import IResource

from . import hookspecs
from .media.mp4 import ClipResult, Mp4Error, SegmentPiece, build_clip
from .threads import RunBlocking, thread_runner

log = Logger(namespace="streamrec.plugins")

# What plugins may rely on: import these names from streamrec.plugins.
__all__ = [
    "ClipEncoder",
    "Encoder",
    "ClipResult",
    "EncodeRequest",
    "Mp4Error",
    "PluginContext",
    "RunBlocking",
    "SegmentPiece",
    "StorageBackend",
    "build_clip",
    "get_plugin_manager",
]

DEFAULT_PLUGINS = (
    "streamrec.builtin.local_storage",
    "streamrec.builtin.fast_encoder",
    "streamrec.builtin.transcode_encoder",
)

ENTRY_POINT_GROUP = "streamrec"


@dataclass(frozen=True)
class PluginContext:
    """What a backend or encoder factory gets to build itself.

    ``run_blocking(fn, *args)`` runs blocking work (file copies, network
    clients without Twisted support) in the reactor's thread pool and returns
    a Deferred of its result; plugins use it instead of threads of their own.
    """

    reactor: Any
    data_dir: str
    public_url: str
    ffmpeg: str
    config: dict[str, Any] = field(default_factory=dict)
    run_blocking: RunBlocking = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.run_blocking is None:
            object.__setattr__(self, "run_blocking", thread_runner(self.reactor))


@dataclass
class EncodeRequest:
    """One clip to build: one continuous span of one recording run."""

    pieces: Sequence[SegmentPiece]
    start: float
    stop: float
    out_path: str
    options: dict[str, str]
    progress: Callable[[float], None]


class StorageBackend(Protocol):
    """Keeps finished clips. It may also have ``link(key) -> str``: then every
    get_clip answer asks it for a fresh link (for links that expire)."""

    async def store_clip(self, local_path: str, key: str) -> str: ...

    async def delete_clip(self, key: str) -> None: ...

    def resource(self) -> IResource | None: ...


class ClipEncoder(Protocol):
    """Builds clips. ``options`` names the request parameters it takes (get_clip
    keeps only those, and they are part of the job's identity); ``validate``
    raises :class:`streamrec.errors.BadRequest` naming a bad one, before the
    job is created."""

    options: Sequence[str]

    def validate(self, options: dict[str, str]) -> Any: ...

    def encode(self, request: EncodeRequest) -> Awaitable[ClipResult]: ...


class Encoder:
    """A base for encoders that take no parameters."""

    options: Sequence[str] = ()

    def validate(self, options: dict[str, str]) -> None:
        return None


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-ins and, if asked, installed plugins."""
    pm = pluggy.PluginManager("streamrec")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def collect(hook: Any) -> dict[str, Callable[..., Any]]:
    """Call a ``register_*`` hook and return the registered factories by name."""
    found: dict[str, Callable[..., Any]] = {}

    def register(name: str, factory: Callable[..., Any]) -> None:
        found.setdefault(name, factory)  # installed plugins are called first: they win

    hook(register=register)
    return found


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook; a plugin's failure is logged, never raised."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        try:
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception:
            log.failure("plugin {plugin} failed in {hook}", plugin=impl.plugin_name, hook=hook_name)


def notifier(pm: pluggy.PluginManager) -> Callable[..., None]:
    """``notify(hook_name, **kwargs)`` bound to ``pm``."""
    return partial(notify, pm)


def plugin_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(name for name, _ in pm.list_name_plugin() if name)
