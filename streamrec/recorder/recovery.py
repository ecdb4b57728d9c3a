"""What a restart does after the service died without shutting down.

1. ffmpeg segmenters left from the dead service (found by their working
   directory under the segment tree) are asked to finish, then killed; its
   clip encoders (any other ffmpeg with a file of the data dir on its command
   line) are killed at once: their output is thrown away, and their jobs are
   built again.
2. Segments on disk that the index lacks are checked and indexed; bad ones
   are quarantined.
3. Runs that were never closed are closed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from ..media.ffmpeg import end_pids, own_processes
from ..store import SqlStore
from .command import is_segmenter
from .indexing import SegmentChecker
from .layout import SegmentLayout
from .timeline import follow

log = Logger(namespace="streamrec.recovery")


@dataclass
class RecoveryReport:
    orphans: list[int] = field(default_factory=list)
    encoders: list[int] = field(default_factory=list)
    indexed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    closed_runs: list[int] = field(default_factory=list)


def find_orphans(segments_dir: str, own_pid: int | None = None) -> list[int]:
    """Pids of segmenters of this user whose working directory is inside ``segments_dir``."""
    root = os.path.realpath(segments_dir) + os.sep
    found = []
    for pid, argv in own_processes(own_pid):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (cwd + os.sep).startswith(root) and is_segmenter(argv):
            found.append(pid)
    return found


def find_encoders(data_dir: str, own_pid: int | None = None) -> list[int]:
    """Pids of this user's ffmpeg processes, segmenters aside, with an argument
    naming a file under ``data_dir``: clip encoders (they read and write the
    clip worker's scratch files there) left by a service that died."""
    roots = {os.path.abspath(data_dir) + os.sep, os.path.realpath(data_dir) + os.sep}
    prefixes = tuple(root.encode() for root in roots)
    return [
        pid
        for pid, argv in own_processes(own_pid)
        if b"ffmpeg" in argv[0]
        and not is_segmenter(argv)
        and any(arg.startswith(prefixes) for arg in argv[1:])
    ]


async def end_orphans(reactor: Any, pids: list[int], grace: float = 5.0) -> None:
    """SIGINT (ffmpeg closes its segment), then SIGKILL after ``grace`` seconds."""
    await end_pids(reactor, pids, "INT", grace)


async def recover(
    *,
    reactor: Any,
    store: SqlStore,
    layout: SegmentLayout,
    checker: SegmentChecker,
    node: str | None = None,
) -> RecoveryReport:
    report = RecoveryReport()
    report.encoders = find_encoders(layout.data_dir)
    if report.encoders:
        log.warn("ending clip encoders left running: pids {pids}", pids=report.encoders)
        await end_pids(reactor, report.encoders, "KILL", grace=1.0)
    if not os.path.isdir(layout.root):
        return report
    report.orphans = find_orphans(layout.root)
    if report.orphans:
        log.warn("ending segmenters left running: pids {pids}", pids=report.orphans)
        await end_orphans(reactor, report.orphans)
    # Runs that ended while the service lived were indexed to their last
    # segment; only runs it never saw end can have segments the index lacks.
    # Runs of other nodes are theirs to recover (and they may be recording still);
    # a run whose directory is elsewhere is on another box's disk.
    for run_id, stream_id in await store.open_runs(node):
        directory = layout.run_dir(stream_id, run_id)
        if os.path.isdir(directory):
            await _recover_run(store, layout, checker, stream_id, run_id, directory, report)
            await store.close_run(run_id, reactor.seconds(), "interrupted: the service stopped")
            report.closed_runs.append(run_id)
    return report


async def _recover_run(
    store: SqlStore,
    layout: SegmentLayout,
    checker: SegmentChecker,
    stream_id: int,
    run_id: int,
    directory: str,
    report: RecoveryReport,
) -> None:
    if await store.run_stream(run_id) != stream_id:
        return
    segments = await store.run_segments(run_id)
    indexed = {segment.path for segment in segments}
    last_end = max((segment.end for segment in segments), default=None)
    for name in layout.segment_names(directory):
        path = os.path.join(directory, name)
        if path in indexed:
            continue
        checked = await checker.check(path, thorough=True)
        if checked.quarantined_to is not None:
            report.quarantined.append(path)
        if not checked.ok:
            continue
        # Nothing of this run indexed yet: the last write ended the segment.
        start, end = follow(last_end, checked.duration, os.path.getmtime(path))
        await store.add_segment(stream_id, run_id, path, start, end, checked.size)
        last_end = end
        report.indexed.append(path)
        log.info("indexed {path} found on disk", path=path)
