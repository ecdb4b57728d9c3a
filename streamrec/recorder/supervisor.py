"""One supervised ffmpeg segmenter per started stream.

Follows Twisted's procmon: restart with capped exponential backoff (with
jitter) while the stream stays started, SIGINT then a delayed SIGKILL to stop,
pending calls cancelled on stop, every child line logged with the stream id.

Wall-clock mapping: ffmpeg's output timeline starts at 0 with the first packet
it received. Every report (a closed segment's end, a progress line) that
arrives at wall time W about media time M bounds the run's anchor from above:
``anchor <= W - M``. The smallest bound seen is the anchor; when it improves,
the run's segments already indexed are shifted with it, so one run is always
one consistent timeline.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..store import SqlStore
from .command import PROGRESS_FD, SegmenterSettings, segment_index, segment_name, segmenter_args
from .validate import InvalidSegment, quarantine, validate_segment

log = Logger(namespace="streamrec.recorder")

STOPPED = "stopped"
STARTING = "starting"
RECORDING = "recording"
RECONNECTING = "reconnecting"
DISK_FULL = "disk_full"

# Segments are indexed at the latest this long after ffmpeg started, even if
# its output never settled to the pace of the wall clock.
SETTLE_LIMIT = 15.0

DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded")

ERROR_WORDS = (
    "error",
    "refused",
    "not found",
    "invalid",
    "failed",
    "denied",
    "unauthorized",
    "forbidden",
    "timed out",
    "timeout",
    "no route",
    "unreachable",
    "no such",
    "unsupported",
    "not allowed",
    "cannot",
)


class CannotStart(Exception):
    """ffmpeg could not be launched or gave up before the source opened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RecorderListener(Protocol):
    def segment_closed(
        self, stream_id: int, segment_id: int, path: str, start: float, end: float
    ) -> None: ...

    def state_changed(self, stream_id: int, state: str, error: str | None) -> None: ...

    def disk_full(self, stream_id: int) -> None: ...


@dataclass
class Backoff:
    """Capped exponential backoff with jitter."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2
    rng: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return delay * (1 - self.jitter + 2 * self.jitter * self.rng())

    def reset(self) -> None:
        self.attempt = 0


def explain(lines: list[str]) -> str:
    """The most telling of ffmpeg's last stderr lines."""
    meaningful = [line for line in lines if line.strip()]
    for line in reversed(meaningful):
        lowered = line.lower()
        if any(word in lowered for word in ERROR_WORDS):
            return line.strip()
    return meaningful[-1].strip() if meaningful else "ffmpeg exited"


class SegmenterProtocol(ProcessProtocol):
    """Splits a segmenter's output into lines and hands them to its Run."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._buffers: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if childFD == 1:
                self.run.segment_line(line)
            elif childFD == PROGRESS_FD:
                self.run.progress_line(line)
            else:
                self.run.log_line(line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self.childDataReceived(fd, b"\n")
        self.run.ended(reason)


@dataclass
class Run:
    """One ffmpeg process: its directory, timeline anchor and indexing chain."""

    recorder: Recorder
    run_id: int
    directory: str
    started_at: float
    anchor: float | None = None
    indexed_anchor: float | None = None
    last_media: float | None = None
    last_index: int = -1
    last_end: float | None = None
    segments: int = 0
    opened: bool = False
    exited: bool = False
    disk_full: str | None = None
    stall: str | None = None
    process: Any = None
    kill_call: IDelayedCall | None = None
    settled: bool = False
    held: list[tuple[str, float, float]] = field(default_factory=list)
    last_observation: tuple[float, float] | None = None
    stderr_tail: list[str] = field(default_factory=list)
    waiters: list[defer.Deferred[None]] = field(default_factory=list)
    done: defer.Deferred[None] = field(default_factory=defer.Deferred)
    chain: defer.Deferred[None] = field(default_factory=lambda: defer.succeed(None))

    def signal(self, name: str) -> None:
        """Signal this run's own process (never a later run's)."""
        if self.process is None or self.exited:
            return
        try:
            self.process.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` after everything queued before it; log its failure."""

        def step(_: object) -> Any:
            return defer.ensureDeferred(fn(*args))

        self.chain.addCallback(step)
        self.chain.addErrback(self.recorder.log_failure, "indexing failed")

    def observe(self, wall: float, media: float) -> None:
        if not self.settled:
            self._settle(wall, media)
        bound = wall - media
        if self.anchor is None or bound < self.anchor - 0.002:
            self.anchor = bound
            if self.indexed_anchor is not None:
                self._later(self.recorder.reanchor, self)

    def _settle(self, wall: float, media: float) -> None:
        """Hold segments back while ffmpeg catches up after probing the source.

        Right after it opens a source, ffmpeg writes out at once what it
        buffered while probing: media time runs ahead of the wall clock and
        the anchor is still far too late. Once media time advances at the
        pace of the wall clock (or after SETTLE_LIMIT seconds), the anchor
        is good to a few milliseconds and the held segments are indexed.
        """
        previous = self.last_observation
        if previous is None:
            self.last_observation = (wall, media)
            return
        elapsed = wall - previous[0]
        if elapsed < 0.3:
            return
        if media - previous[1] <= elapsed * 1.1 or wall - self.started_at > SETTLE_LIMIT:
            self._release()
        self.last_observation = (wall, media)

    def _release(self) -> None:
        self.settled = True
        held, self.held = self.held, []
        for name, media_start, media_end in held:
            self._later(self.recorder.index_segment, self, name, media_start, media_end)

    def segment_line(self, line: str) -> None:
        try:
            name, start, end = next(csv.reader([line]))
            media_start, media_end = float(start), float(end)
        except (ValueError, StopIteration):
            self.recorder.log_child(line)
            return
        self.observe(self.recorder.now(), media_end)
        if self.settled:
            self._later(self.recorder.index_segment, self, name, media_start, media_end)
        else:
            self.held.append((name, media_start, media_end))

    def progress_line(self, line: str) -> None:
        key, _, value = line.partition("=")
        if key == "out_time_us" and value.strip().lstrip("-").isdigit():
            media = int(value) / 1e6
            if media > 0:
                self.last_media = media
                self.observe(self.recorder.now(), media)
        elif key == "progress" and not self.opened:
            self.opened = True
            self.recorder.run_opened(self)

    def log_line(self, line: str) -> None:
        if any(words in line.lower() for words in DISK_FULL_WORDS):
            self.disk_full = line.strip()
        self.stderr_tail.append(line)
        del self.stderr_tail[:-20]
        self.recorder.log_child(line)

    def ended(self, reason: Failure) -> None:
        self.exited = True
        self._release()
        self._later(self.recorder.run_ended, self, reason)
        self.chain.addBoth(lambda _: self.done.callback(None))


class Recorder:
    """Keeps one stream recording while it is wanted."""

    def __init__(
        self,
        stream_id: int,
        url: str,
        *,
        reactor: Any,
        store: SqlStore,
        ffmpeg: str,
        data_dir: str,
        listener: RecorderListener,
        settings: SegmenterSettings = SegmenterSettings(),
        start_timeout: float = 8.0,
        kill_timeout: float = 10.0,
        stall_timeout: float | None = None,
        backoff: Backoff | None = None,
        validate: Callable[[str, float], tuple[float, float]] = validate_segment,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.stream_id = stream_id
        self.url = url
        self.reactor = reactor
        self.store = store
        self.ffmpeg = ffmpeg
        self.data_dir = data_dir
        self.listener = listener
        self.settings = settings
        self.start_timeout = start_timeout
        self.kill_timeout = kill_timeout
        self.stall_timeout = stall_timeout or max(20.0, 5 * settings.segment_seconds)
        self.backoff = backoff or Backoff()
        self.validate = validate
        self.run_blocking = run_blocking or self._in_thread
        self.launcher = list(launcher)
        self.wanted = False
        self.state = STOPPED
        self.last_error: str | None = None
        self.reconnects = 0
        self.run: Run | None = None
        self._launching: defer.Deferred[None] | None = None
        self._restart_call: IDelayedCall | None = None
        self._stall_call: IDelayedCall | None = None

    # -- helpers ----------------------------------------------------------
    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def now(self) -> float:
        return self.reactor.seconds()

    def log_child(self, line: str) -> None:
        if line.strip():
            log.debug("stream {stream_id}: {line}", stream_id=self.stream_id, line=line)

    def log_failure(self, failure: Failure, what: str) -> None:
        log.failure("stream {stream_id}: {what}", failure, stream_id=self.stream_id, what=what)

    def _set_state(self, state: str, error: str | None = None) -> None:
        changed = state != self.state or (error is not None and error != self.last_error)
        self.state = state
        if error is not None:
            self.last_error = error
        if changed:
            log.info(
                "stream {stream_id}: {state}{why}",
                stream_id=self.stream_id,
                state=state,
                why=f" ({error})" if error else "",
            )
            self.listener.state_changed(self.stream_id, state, error)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "pid": getattr(self.process, "pid", None),
        }

    # -- the API ------------------------------------------------------------
    async def start(self) -> None:
        """Start recording; raise CannotStart if ffmpeg fails before the source opens."""
        self.wanted = True
        self.backoff.reset()
        self.last_error = None
        self._set_state(STARTING)
        waiter: defer.Deferred[None] = defer.Deferred()
        try:
            run = await self._launch()
            run.waiters.append(waiter)
            waiter.addTimeout(self.start_timeout, self.reactor, onTimeoutCancel=lambda *_: None)
            try:
                await waiter
            finally:
                # Answered (opened, failed or timed out): later failures reconnect.
                if waiter in run.waiters:
                    run.waiters.remove(waiter)
        except Exception as failure:
            reason = failure.reason if isinstance(failure, CannotStart) else str(failure)
            self.wanted = False
            self._set_state(STOPPED, reason)
            if isinstance(failure, CannotStart):
                raise
            raise CannotStart(reason) from failure

    def resume(self) -> None:
        """Start recording without waiting; failures retry with backoff."""
        self.wanted = True
        self.backoff.reset()
        self._set_state(STARTING)
        self._relaunch()

    async def stop(self) -> None:
        """Stop recording; the last segment is closed and indexed."""
        self.wanted = False
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        self._disarm_watchdog()
        if self._launching is not None:
            await self._launching  # a launch in flight sees wanted is False
        run = self.run
        if run is not None:
            if not run.exited:
                self._interrupt(run)
            await run.done
        if not self.wanted:
            self._set_state(STOPPED)

    # -- process life -----------------------------------------------------------
    def _interrupt(self, run: Run) -> None:
        """Ask ffmpeg to close its segment and exit; kill it if it does not."""
        run.signal("INT")
        if run.kill_call is None:
            run.kill_call = self.reactor.callLater(self.kill_timeout, run.signal, "KILL")

    def _arm_watchdog(self) -> None:
        self._disarm_watchdog()
        self._stall_call = self.reactor.callLater(self.stall_timeout, self._stalled)

    def _disarm_watchdog(self) -> None:
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None

    def _stalled(self) -> None:
        """No segment for too long while ffmpeg runs: restart it."""
        self._stall_call = None
        run = self.run
        if run is None or run.exited or not self.wanted:
            return
        run.stall = f"no new segment for {self.stall_timeout:g} s: restarting ffmpeg"
        log.warn("stream {stream_id}: {why}", stream_id=self.stream_id, why=run.stall)
        self._interrupt(run)

    async def _launch(self) -> Run:
        """Spawn a segmenter for a new run; CannotStart when that is impossible."""
        launching: defer.Deferred[None] = defer.Deferred()
        self._launching = launching
        try:
            return await self._spawn()
        finally:
            self._launching = None
            launching.callback(None)

    async def _spawn(self) -> Run:
        try:
            run_id = await self.store.open_run(self.stream_id, self.now())
        except Exception as failure:
            raise CannotStart(f"cannot record the run: {failure}") from failure
        if not self.wanted:
            await self.store.close_run(run_id, self.now(), "stopped before it started")
            raise CannotStart("stopped while starting")
        directory = os.path.join(self.data_dir, "segments", str(self.stream_id), str(run_id))
        run = Run(recorder=self, run_id=run_id, directory=directory, started_at=self.now())
        args = self.launcher + segmenter_args(self.ffmpeg, self.url, self.settings)
        try:
            os.makedirs(directory, exist_ok=True)
            run.process = self.reactor.spawnProcess(
                SegmenterProtocol(run),
                args[0],
                args,
                env=None,
                path=directory,
                childFDs={0: "w", 1: "r", 2: "r", PROGRESS_FD: "r"},
            )
        except OSError as failure:
            await self.store.close_run(run_id, self.now(), f"spawn failed: {failure}")
            raise CannotStart(f"cannot run ffmpeg: {failure}") from failure
        self.run = run
        log.info(
            "stream {stream_id}: ffmpeg pid {pid} run {run_id} recording into {directory}",
            stream_id=self.stream_id,
            pid=getattr(run.process, "pid", None),
            run_id=run_id,
            directory=directory,
        )
        return run

    def busy(self) -> bool:
        """Started, or still closing and indexing its last segment."""
        run = self.run
        return self.wanted or (run is not None and not run.done.called)

    @property
    def process(self) -> Any:
        """The running segmenter's process transport, if one runs."""
        run = self.run
        return run.process if run is not None and not run.exited else None

    def run_opened(self, run: Run) -> None:
        if run is not self.run:
            return
        self._set_state(RECORDING)
        self._arm_watchdog()
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def run_ended(self, run: Run, reason: Failure) -> None:
        if run.kill_call is not None and run.kill_call.active():
            run.kill_call.cancel()
        if run is self.run:
            self._disarm_watchdog()
        exit_code = getattr(reason.value, "exitCode", None)
        why = run.stall or explain(run.stderr_tail)
        waiters, run.waiters = run.waiters, []
        try:
            await self._index_trailing(run)
            await self.store.close_run(run.run_id, self.now(), f"exit {exit_code}: {why}")
        finally:
            for waiter in waiters:
                waiter.errback(CannotStart(why))
            if run is self.run and self.wanted and not waiters:
                # Recording ended by itself: reconnect (a failed first start is
                # reported by start() instead).
                if run.segments:
                    self.backoff.reset()
                if run.disk_full:
                    self._set_state(DISK_FULL, f"disk full: {run.disk_full}")
                    self.listener.disk_full(self.stream_id)
                else:
                    self._set_state(RECONNECTING, why)
                self._schedule_restart()

    def _schedule_restart(self) -> None:
        delay = self.backoff.next_delay()
        log.info(
            "stream {stream_id}: reconnecting in {delay:.1f}s",
            stream_id=self.stream_id,
            delay=delay,
        )
        self._restart_call = self.reactor.callLater(delay, self._relaunch)

    def _relaunch(self) -> None:
        self._restart_call = None
        if not self.wanted:
            return
        self.reconnects += 1 if self.run is not None else 0

        def failed(failure: Failure) -> None:
            if not self.wanted:
                return
            if isinstance(failure.value, CannotStart):
                reason = failure.value.reason
            else:
                self.log_failure(failure, "restart failed")
                reason = str(failure.value)
            if self.state != DISK_FULL:
                self._set_state(RECONNECTING, reason)
            self._schedule_restart()

        d = defer.ensureDeferred(self._launch())
        d.addErrback(failed)
        d.addErrback(self.log_failure, "restart failed")

    # -- indexing ---------------------------------------------------------------
    async def index_segment(
        self, run: Run, name: str, media_start: float, media_end: float
    ) -> None:
        path = os.path.join(run.directory, name)
        number = segment_index(name)
        if number is not None:
            run.last_index = max(run.last_index, number)
        await self._index(run, path, media_end=media_end)

    async def _index(self, run: Run, path: str, media_end: float | None = None) -> None:
        try:
            size = os.path.getsize(path)
            first, last = await self.run_blocking(
                self.validate, path, 10 * self.settings.segment_seconds + 10
            )
        except InvalidSegment as failure:
            self._set_aside(path, str(failure))
            return
        except OSError as failure:
            log.warn(
                "stream {stream_id}: segment {path} not indexed: {failure}",
                stream_id=self.stream_id,
                path=path,
                failure=failure,
            )
            return
        duration = last - first
        if run.indexed_anchor is None:
            run.indexed_anchor = run.anchor if run.anchor is not None else run.started_at
        else:
            await self.reanchor(run)
        anchor = run.indexed_anchor
        if media_end is not None:
            end = anchor + media_end
            start = end - duration
            if run.last_end is not None and abs(start - run.last_end) < 0.25:
                start = run.last_end  # the usual case: right after the previous one
        elif run.last_end is not None:
            start = run.last_end
            end = start + duration
        else:
            end = anchor + (run.last_media or duration)
            start = end - duration
        segment_id = await self.store.add_segment(
            self.stream_id, run.run_id, path, start, end, size
        )
        run.last_end = end
        run.segments += 1
        if run is self.run and not run.exited:
            self._arm_watchdog()
        self.listener.segment_closed(self.stream_id, segment_id, path, start, end)

    async def reanchor(self, run: Run) -> None:
        """Move the run's indexed segments to its better clock anchor."""
        if run.indexed_anchor is None or run.anchor is None:
            return
        delta = run.anchor - run.indexed_anchor
        if delta > -0.002:
            return
        run.indexed_anchor = run.anchor
        await self.store.shift_run(run.run_id, delta)
        if run.last_end is not None:
            run.last_end += delta

    def _set_aside(self, path: str, why: str) -> None:
        try:
            where = quarantine(path, self.data_dir)
        except OSError as failure:
            where = f"(could not move it: {failure})"
        log.warn(
            "stream {stream_id}: bad segment quarantined to {where}: {why}",
            stream_id=self.stream_id,
            where=where,
            why=why,
        )

    async def _index_trailing(self, run: Run) -> None:
        """Index the segment ffmpeg was writing when it died without closing it."""
        path = os.path.join(run.directory, segment_name(run.last_index + 1))
        if os.path.exists(path) and os.path.getsize(path) > 0:
            await self._index(run, path)
