"""Seeing the recording without a clip job: ``archive.mp4`` and snapshots.

:class:`Playback` holds both for the domain (:mod:`streamrec.core`): the
archive's pinned plans (:mod:`.archive`) and the pictures (:mod:`.snapshots`).
Nothing here knows about HTTP: the API sends an :class:`~.archive.ArchiveFile`
through :mod:`streamrec.byteranges`.
"""

from __future__ import annotations

from typing import Any

from ..media.snapshot import MAX_WIDTH, MIN_WIDTH, Picture
from ..store import SqlStore
from ..threads import RunBlocking, thread_runner
from .archive import Archive, ArchiveBody, ArchiveFile
from .snapshots import Snapshots

__all__ = [
    "MAX_WIDTH",
    "MIN_WIDTH",
    "Archive",
    "ArchiveBody",
    "ArchiveFile",
    "Picture",
    "Playback",
    "Snapshots",
]


class Playback:
    """The archive and the snapshots of every stream, over one store."""

    def __init__(
        self,
        *,
        store: SqlStore,
        clock: Any,
        max_seconds: float,
        run_blocking: RunBlocking | None = None,
    ) -> None:
        run_blocking = run_blocking or thread_runner(clock)
        self.archive = Archive(
            store=store, clock=clock, max_seconds=max_seconds, run_blocking=run_blocking
        )
        self.snapshots = Snapshots(store=store, clock=clock, run_blocking=run_blocking)
