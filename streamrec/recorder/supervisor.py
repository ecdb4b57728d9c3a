"""One supervised ffmpeg segmenter per started stream.

Follows Twisted's procmon: restart with capped exponential backoff (with
jitter) while the stream stays started, SIGINT then a delayed SIGKILL to stop,
pending calls cancelled on stop, the child's lines logged with the stream id
(masked and within a budget: :mod:`.childlog`). A source that ends because it
has a length (a finished HLS playlist) is not launched again: the recorder is
``ended``. Where the segments lie on the wall clock is :mod:`.timeline`'s
arithmetic; checking a closed segment is :mod:`.indexing`'s; the supervisor
applies them.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import CannotStart, DatabaseUnavailable, InvalidSource
from ..media.ffmpeg import FfmpegChild, spawn
from ..sources import mask_secrets, validate_source_url
from ..store import SqlStore
from .childlog import ChildLog, clean
from .command import (
    DISK_FULL_WORDS,
    MAX_PROBE_SECONDS,
    PROGRESS_FD,
    SegmenterSettings,
    copies_audio,
    explain,
    input_audio,
    needs_longer_probe,
    segmenter_args,
    source_end,
)
from .hls import FirstSegment
from .indexing import Checked, SegmentChecker
from .journal import JOURNALED, SegmentJournal
from .layout import SegmentLayout, segment_index
from .run import Backoff, Run, source_clock
from .timeline import CLOCK_TOLERANCE, Observation, RunClock, clock_status

log = Logger(namespace="streamrec.recorder")

STOPPED = "stopped"
STARTING = "starting"
RECORDING = "recording"
RECONNECTING = "reconnecting"
DISK_FULL = "disk_full"
#: The source ended and is not live (a finished HLS playlist): not recorded again.
ENDED = "ended"

#: Seconds before a run that recorded is launched again after it ended.
QUICK_RESTART = 0.1

#: Lines of ffmpeg's input report read at most to find the audio codec.
MAX_INPUT_REPORT = 200


class RecorderListener(Protocol):
    def segment_closed(
        self, stream_id: int, segment_id: int, path: str, start: float, end: float
    ) -> None: ...

    def state_changed(self, stream_id: int, state: str, error: str | None) -> None: ...

    def disk_full(self, stream_id: int) -> None: ...

    def audio_found(self, stream_id: int, codec: str) -> None: ...


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
        layout: SegmentLayout,
        checker: SegmentChecker,
        listener: RecorderListener,
        settings: SegmenterSettings = SegmenterSettings(),
        start_timeout: float = 8.0,
        kill_timeout: float = 10.0,
        stall_timeout: float | None = None,
        backoff: Backoff | None = None,
        reconnect_max: float = 30.0,
        launcher: Sequence[str] = (),
        source_audio: str | None = None,
        node: str | None = None,
        journal: SegmentJournal | None = None,
        clock: str = "auto",
        clock_tolerance: float = CLOCK_TOLERANCE,
    ) -> None:
        self.stream_id = stream_id
        self.node = node
        #: the epoch of the stream's lease that this recorder records under
        self.epoch = 0
        self.url = url
        self.reactor = reactor
        self.store = store
        # Segments go into the index through the journal, which keeps them
        # while the database is away.
        self.journal = journal or SegmentJournal(reactor=reactor, store=store, path=None)
        self.ffmpeg = ffmpeg
        self.layout = layout
        self.checker = checker
        self.listener = listener
        self.settings = settings
        self.start_timeout = start_timeout
        self.kill_timeout = kill_timeout
        self.stall_timeout = stall_timeout or max(20.0, 5 * settings.segment_seconds)
        self.backoff = backoff or Backoff(cap=reconnect_max)
        self.launcher = list(launcher)
        self.source_audio = source_audio
        # RTSP cameras and dated HLS playlists carry their own clock.
        self.source_clock = source_clock(url)
        self.clock_mode = clock if self.source_clock else "arrival"
        self.clock_tolerance = clock_tolerance
        self.wanted = False
        self.state = STOPPED
        self.last_error: str | None = None
        self.reconnects = 0
        #: runs that recorded, then ended by themselves; bad segments set aside
        self.restarts = 0
        self.quarantined = 0
        self.run: Run | None = None
        self._launching: defer.Deferred[None] | None = None
        self._restart_call: IDelayedCall | None = None
        self._stall_call: IDelayedCall | None = None
        self._who = f"stream {stream_id}: "
        self.child_log = ChildLog(reactor, stream_id)

    # -- helpers ----------------------------------------------------------
    def now(self) -> float:
        return self.reactor.seconds()

    def log_failure(self, failure: Failure, what: str) -> None:
        log.failure("stream {stream_id}: {what}", failure, stream_id=self.stream_id, what=what)

    def _set_state(self, state: str, error: str | None = None) -> None:
        error = None if error is None else mask_secrets(error)
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
            **(clock_status(self.run.clock) if self.run is not None else {}),
        }

    # -- the API ------------------------------------------------------------
    async def start(self, epoch: int = 0) -> None:
        """Start recording; raise CannotStart if ffmpeg fails before the source opens."""
        self.epoch = epoch
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

    def resume(self, epoch: int = 0) -> None:
        """Start recording without waiting; failures retry with backoff."""
        self.epoch = epoch
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
            self._interrupt(run)
            await run.done
        self.child_log.flush()
        if not self.wanted:
            self._set_state(STOPPED)

    def busy(self) -> bool:
        """Started, or still closing and indexing its last segment."""
        run = self.run
        return self.wanted or (run is not None and not run.done.called)

    @property
    def process(self) -> Any:
        """The running segmenter's process transport, if one runs."""
        run = self.run
        return run.child.transport if run is not None and not run.exited else None

    # -- process life -----------------------------------------------------------
    def _interrupt(self, run: Run) -> None:
        """Ask ffmpeg to close its segment and exit; kill it if it does not."""
        run.child.stop("INT", self.kill_timeout)

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
        if self.checker.waiting:
            # Segments close but cannot be read for now (the box is short of
            # descriptors): ffmpeg is not what is stuck, and they are retried.
            self._arm_watchdog()
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
            validate_source_url(self.url)  # also a stream created under older rules
        except InvalidSource as refused:
            raise CannotStart(f"Invalid URL: {refused}") from None
        try:
            run_id = await self.store.open_run(self.stream_id, self.now(), self.node, self.epoch)
        except Exception as failure:
            raise CannotStart(f"cannot record the run: {failure}") from failure
        if not self.wanted:
            await self.store.close_run(run_id, self.now(), "stopped before it started")
            raise CannotStart("stopped while starting")
        directory = self.layout.run_dir(self.stream_id, run_id)
        copy = copies_audio(self.source_audio)
        args = self.launcher + segmenter_args(self.ffmpeg, self.url, self.settings, copy)
        child = FfmpegChild(self.reactor, lambda fd, line: self._line(run, fd, line))
        clock = RunClock(self.now(), mode=self.clock_mode, tolerance=self.clock_tolerance)
        run = Run(run_id, directory, clock, child, copy, source_clock=self.source_clock)
        run.hls = FirstSegment(self.url) if self.source_clock == "hls" else None
        child.ended.addCallback(lambda reason: self._ended(run, reason))
        try:
            os.makedirs(directory, exist_ok=True)
            spawn(self.reactor, run.child, args, path=directory, extra_fds=(PROGRESS_FD,))
        except OSError as failure:
            await self.store.close_run(run_id, self.now(), f"spawn failed: {failure}")
            raise CannotStart(f"cannot run ffmpeg: {failure}") from failure
        self.run = run
        log.info(
            "stream {stream_id}: ffmpeg pid {pid} run {run_id} recording {url} into {directory}",
            stream_id=self.stream_id,
            pid=run.child.pid,
            run_id=run_id,
            url=mask_secrets(self.url),
            directory=directory,
        )
        return run

    # -- what ffmpeg says -------------------------------------------------------
    def _line(self, run: Run, fd: int, line: str) -> None:
        if fd == 1:
            self._segment_line(run, line)
        elif fd == PROGRESS_FD:
            self._progress_line(run, line)
        else:
            self._log_line(run, line)

    def _later(self, run: Run, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` after the run's indexing steps queued before it; log its failure."""

        def step(_: object) -> Any:
            return defer.ensureDeferred(fn(*args))

        run.chain.addCallback(step)
        run.chain.addErrback(self.log_failure, "indexing failed")

    def _observe(self, run: Run, seen: Observation) -> None:
        """Act on what a report changed of the run's clock."""
        if seen.settled:
            self._release(run)
        if seen.reanchor:
            self._later(run, self._reanchor, run)

    def _release(self, run: Run) -> None:
        held, run.held = run.held, []
        for name, _media_start, media_end in held:
            self._later(run, self.index_segment, run, name, media_end)

    def _segment_line(self, run: Run, line: str) -> None:
        try:
            name, start, end = next(csv.reader([line]))
            media_start, media_end = float(start), float(end)
        except (ValueError, StopIteration):
            self.child_log.write(clean(line))
            return
        self._observe(run, run.clock.observe(self.now(), media_end))
        self._observe(run, run.look_at_camera(name))
        if run.clock.settled:
            self._later(run, self.index_segment, run, name, media_end)
        else:
            run.held.append((name, media_start, media_end))

    def _progress_line(self, run: Run, line: str) -> None:
        key, _, value = line.partition("=")
        if key == "out_time_us" and value.strip().lstrip("-").isdigit():
            media = int(value) / 1e6
            if media > 0:
                run.clock.last_media = media
                self._observe(run, run.clock.observe(self.now(), media))
        elif key == "progress" and not run.opened:
            run.opened = True
            self._opened(run)

    def _log_line(self, run: Run, line: str) -> None:
        dated = run.hls_line(line)
        if dated is not None:
            dated.addCallback(lambda seen: self._observe(run, seen))
            dated.addErrback(self.log_failure, "cannot read the playlist's dates")
        line = clean(line)  # ffmpeg quotes the URL, password and all
        if run.input_report is not None or line.startswith("Input #0"):
            self._input_line(run, line)
        if any(words in line.lower() for words in DISK_FULL_WORDS):
            run.disk_full = line.strip()
        run.stderr_tail.append(line)
        del run.stderr_tail[:-20]
        self.child_log.write(line)

    def _input_line(self, run: Run, line: str) -> None:
        """Collect ffmpeg's report of its input; once complete, learn the source's
        audio codec, and launch again at once if it wants other options. The
        report means the source is open: start need not wait for the output."""
        report = run.input_report = (run.input_report or []) + [line]
        codec = input_audio(report)
        if codec is None and len(report) < MAX_INPUT_REPORT:
            return
        run.input_report = None
        run.source_end = source_end(report)
        if codec is None:
            return
        if codec != self.source_audio:
            self.source_audio = codec
            self.listener.audio_found(self.stream_id, codec)
        if copies_audio(codec) != run.copy_audio and run.segments == 0 and not run.held:
            how = "copied" if copies_audio(codec) else "encoded to AAC"
            run.relaunch = f"the source's audio is {codec}: relaunching with it {how}"
            run.child.stop("KILL", self.kill_timeout)
        elif not run.opened:
            run.opened = True
            self._opened(run)

    def _opened(self, run: Run) -> None:
        if run is not self.run or not self.wanted:
            return
        self._set_state(RECORDING)
        self._arm_watchdog()
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _ended(self, run: Run, reason: BaseException | None) -> None:
        if (
            run.relaunch is None
            and not (run.segments or run.held)
            and needs_longer_probe(run.stderr_tail)
        ):
            probe = self._probe_longer()
            if probe is not None:
                run.relaunch = f"ffmpeg did not learn the source in time: probing {probe:g} s"
        if run.relaunch is not None:
            self._later(run, self._relaunched, run)
        else:
            if run.clock.settle():
                self._release(run)
            self._later(run, self._run_ended, run, reason)
        run.chain.addBoth(lambda _: run.done.callback(None))

    async def _relaunched(self, run: Run) -> None:
        """A run ended before it recorded, to launch again with the right audio
        options; whoever waited for the first waits for the next."""
        waiters, run.waiters = run.waiters, []
        if run is self.run:
            self._disarm_watchdog()
        log.info("stream {stream_id}: {why}", stream_id=self.stream_id, why=run.relaunch)
        await self.store.close_run(run.run_id, self.now(), f"relaunched: {run.relaunch}")
        shutil.rmtree(run.directory, ignore_errors=True)  # its header, no samples
        if run is not self.run or not self.wanted:
            for waiter in waiters:
                waiter.errback(CannotStart("stopped while starting"))
            return
        try:
            again = await self._launch()
        except CannotStart as failure:
            for waiter in waiters:
                waiter.errback(failure)
            if not waiters:
                self._set_state(RECONNECTING, failure.reason)
                self._schedule_restart()
            return
        again.waiters.extend(waiters)

    async def _run_ended(self, run: Run, reason: BaseException | None) -> None:
        if run is self.run:
            self._disarm_watchdog()
        exit_code = getattr(reason, "exitCode", None)
        # ffmpeg read a source that has a length to its end: launching it again
        # would record the same video once more.
        ended = run.source_end if exit_code == 0 and not run.stall else None
        why = run.stall or ended or explain(run.stderr_tail)
        waiters, run.waiters = run.waiters, []
        try:
            await self._index_trailing(run)
            await self._close_run(run.run_id, f"exit {exit_code}: {why}")
        finally:
            for waiter in waiters:
                waiter.errback(CannotStart(why))
            if run is self.run and self.wanted and not waiters:
                # Recording ended by itself (a failed first start is reported by
                # start() instead).
                if ended:
                    self._set_state(ENDED, ended)
                else:
                    self._reconnect(run, why)

    def _reconnect(self, run: Run, why: str) -> None:
        """Launch again after a run ended by itself: at once if it recorded (the
        archive has a gap until then), else after the backoff."""
        self.restarts += run.opened
        if run.disk_full:
            self._set_state(DISK_FULL, f"disk full: {run.disk_full}")
            self.listener.disk_full(self.stream_id)
        else:
            self._set_state(RECONNECTING, why)
        if run.segments:
            self.backoff.reset()
            self._schedule_restart(QUICK_RESTART)
        else:
            self._schedule_restart()

    def _probe_longer(self) -> float | None:
        """Probe sources twice as long from now on; the new length, or None at the cap."""
        probe = min(MAX_PROBE_SECONDS, self.settings.probe_seconds * 2)
        if probe <= self.settings.probe_seconds:
            return None
        self.settings = replace(self.settings, probe_seconds=probe)
        return probe

    def _schedule_restart(self, delay: float | None = None) -> None:
        if delay is None:
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
    async def index_segment(self, run: Run, name: str, media_end: float) -> None:
        number = segment_index(name)
        if number is not None:
            run.last_index = max(run.last_index, number)
        await self._index(run, os.path.join(run.directory, name), media_end)

    async def _index(self, run: Run, path: str, media_end: float | None) -> None:
        # The first segment of a run is decoded: a source's new settings show there.
        checked: Checked = await self.checker.check(path, self._who, thorough=not run.segments)
        if not checked.ok:
            self.quarantined += checked.quarantined_to is not None
            return
        await self._reanchor(run)
        start, end = run.clock.place(checked.duration, media_end)
        segment_id = await self.journal.add_segment(
            self.stream_id, run.run_id, path, start, end, checked.size
        )
        if segment_id is None:
            # A newer owner of the stream recorded this time: its copy is the one kept.
            log.warn(
                "{who}segment {path} not indexed: the stream has a newer owner",
                who=self._who,
                path=path,
            )
            os.remove(path)
            return
        run.clock.indexed(end)
        provenance = run.provenance()
        if provenance and not await self.journal.note_clock(run.run_id, *provenance):
            run.noted = None  # noted with a later segment
        number = segment_index(os.path.basename(path))
        run.indexed_index = number if number is not None else run.indexed_index + 1
        run.segments += 1
        if run is self.run and not run.exited:
            self._arm_watchdog()
        if segment_id != JOURNALED:  # a journaled one is announced once indexed
            self.listener.segment_closed(self.stream_id, segment_id, path, start, end)

    async def _close_run(self, run_id: int, why: str) -> None:
        try:
            await self.store.close_run(run_id, self.now(), why)
        except DatabaseUnavailable:
            # Its segments are journaled; the run is closed by the next start's recovery.
            log.warn(
                "{who}run {run_id} left open: database unavailable", who=self._who, run_id=run_id
            )

    async def _reanchor(self, run: Run) -> None:
        """Move the run's indexed segments to its better clock anchor."""
        delta = run.clock.reanchor()
        if delta:
            try:
                await self.store.shift_run(run.run_id, delta)
            except DatabaseUnavailable:  # milliseconds, once a run: not worth waiting for
                log.warn("{who}run {run} not moved: no database", who=self._who, run=run.run_id)

    async def _index_trailing(self, run: Run) -> None:
        """Index the segment ffmpeg was writing when it died without closing it."""
        path = self.layout.segment_path(run.directory, run.last_index + 1)
        if os.path.exists(path):
            await self._index(run, path, None)
