"""What a restart does after the service died without shutting down.

1. ffmpeg segmenters left from the dead service (found by their working
   directory under ``DATA_DIR/segments``) are asked to finish, then killed.
2. Segments on disk that the index lacks are validated and indexed; bad ones
   are quarantined.
3. Runs that were never closed are closed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from .recorder.command import segment_index
from .recorder.validate import InvalidSegment, quarantine
from .store import SqlStore

log = Logger(namespace="streamrec.recovery")


@dataclass
class RecoveryReport:
    orphans: list[int] = field(default_factory=list)
    indexed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    closed_runs: list[int] = field(default_factory=list)


def find_orphans(segments_dir: str, own_pid: int | None = None) -> list[int]:
    """Pids of segmenters (ffmpeg writing a segment list to a pipe) of this
    user whose working directory is inside ``segments_dir``."""
    root = os.path.realpath(segments_dir) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == (own_pid or os.getpid()):
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if (cwd + os.sep).startswith(root) and _is_segmenter(argv):
            found.append(int(entry))
    return found


def _is_segmenter(argv: list[bytes]) -> bool:
    return b"-segment_list" in argv and b"pipe:1" in argv and b"ffmpeg" in argv[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return False


async def end_orphans(reactor: Any, pids: list[int], grace: float = 5.0) -> None:
    """SIGINT (ffmpeg closes its segment), then SIGKILL after ``grace`` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
    waited = 0.0
    while waited < grace and any(_alive(pid) for pid in pids):
        await task.deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


async def recover(
    *,
    reactor: Any,
    store: SqlStore,
    data_dir: str,
    validate: Callable[[str, float], tuple[float, float]],
    max_duration: float,
    run_blocking: Callable[..., defer.Deferred[Any]],
) -> RecoveryReport:
    report = RecoveryReport()
    segments_dir = os.path.join(data_dir, "segments")
    if not os.path.isdir(segments_dir):
        return report
    report.orphans = find_orphans(segments_dir)
    if report.orphans:
        log.warn("ending segmenters left running: pids {pids}", pids=report.orphans)
        await end_orphans(reactor, report.orphans)
    # Runs that ended while the service lived were indexed to their last
    # segment; only runs it never saw end can have segments the index lacks.
    # Runs whose directory is elsewhere belong to other boxes sharing the database.
    for run_id, stream_id in await store.open_runs():
        directory = os.path.join(segments_dir, str(stream_id), str(run_id))
        if os.path.isdir(directory):
            await _recover_run(
                store,
                data_dir,
                stream_id,
                run_id,
                directory,
                validate,
                max_duration,
                run_blocking,
                report,
            )
            await store.close_run(run_id, reactor.seconds(), "interrupted: the service stopped")
            report.closed_runs.append(run_id)
    return report


async def _recover_run(
    store: SqlStore,
    data_dir: str,
    stream_id: int,
    run_id: int,
    directory: str,
    validate: Callable[[str, float], tuple[float, float]],
    max_duration: float,
    run_blocking: Callable[..., defer.Deferred[Any]],
    report: RecoveryReport,
) -> None:
    if await store.run_stream(run_id) != stream_id:
        return
    indexed = {segment.path: segment for segment in await store.run_segments(run_id)}
    last_end = max((segment.end for segment in indexed.values()), default=None)
    names = sorted(name for name in os.listdir(directory) if segment_index(name) is not None)
    for name in names:
        path = os.path.join(directory, name)
        if path in indexed:
            continue
        try:
            size = os.path.getsize(path)
            first, end = await run_blocking(validate, path, max_duration)
        except InvalidSegment as failure:
            if os.path.exists(path):
                quarantine(path, data_dir)
                report.quarantined.append(path)
                log.warn("quarantined {path}: {why}", path=path, why=str(failure))
            continue
        except OSError:
            continue
        duration = end - first
        if last_end is not None:
            start = last_end
        else:
            # Nothing of this run was indexed: the last write ended the segment.
            start = os.path.getmtime(path) - duration
        await store.add_segment(stream_id, run_id, path, start, start + duration, size)
        last_end = start + duration
        report.indexed.append(path)
        log.info("indexed {path} found on disk", path=path)
