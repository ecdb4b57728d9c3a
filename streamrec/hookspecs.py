"""Every hook a streamrec plugin can implement.

A plugin is a module or object with functions decorated by
``@streamrec.hookimpl`` whose names are the hooks below. Installed
distributions expose plugins through the ``streamrec`` entry-point group.
Lifecycle hooks are notifications: what a plugin raises there is logged and
does not disturb recording.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("streamrec")


@hookspec
def register_storage_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register storage backends: ``register(name, factory)``.

    ``factory(context)`` receives a :class:`streamrec.plugins.PluginContext`
    and returns an object with ``async store_clip(local_path, key) -> link``
    (the backend takes over the file), ``async delete_clip(key)`` and
    ``resource()`` (a Twisted web resource mounted at ``/clips/``, or None).
    The backend is chosen by name with ``--storage``.
    """


@hookspec
def register_clip_encoders(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register clip encoders: ``register(name, factory)``.

    ``factory(context)`` returns an object with
    ``async encode(request) -> ClipResult`` where ``request`` is a
    :class:`streamrec.plugins.EncodeRequest`. The default encoder is chosen
    with ``--encoder``.
    """


@hookspec
def stream_started(stream_id: int, url: str) -> None:
    """A stream was switched on through the API (or resumed after a restart);
    ``url`` has its credentials masked."""


@hookspec
def stream_stopped(stream_id: int) -> None:
    """A stream was switched off through the API."""


@hookspec
def stream_state_changed(stream_id: int, state: str, error: str | None) -> None:
    """A recorder changed state: ``stopped``, ``starting``, ``recording``,
    ``reconnecting`` or ``disk_full``; ``error`` says why when there is a reason."""


@hookspec
def segment_closed(stream_id: int, segment_id: int, path: str, start: float, end: float) -> None:
    """A segment was closed and indexed; ``start``/``end`` are POSIX seconds."""


@hookspec
def clip_done(stream_id: int, job_id: int, clips: list[dict[str, Any]]) -> None:
    """A clip job finished; ``clips`` are the dicts get_clip answers with."""


@hookspec
def clip_failed(stream_id: int, job_id: int, error: str) -> None:
    """A clip job failed with ``error``."""
