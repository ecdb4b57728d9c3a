"""Running ffmpeg: finding the binary, one child-process protocol, stopping it.

Every ffmpeg streamrec runs (the segmenters, the re-encoders) is a
:class:`FfmpegChild`: its output is split into lines per file descriptor and
handed to one callback, and :meth:`FfmpegChild.stop` sends a signal and, if
the process has not ended after a grace period, SIGKILL.  :func:`escalate` is
that rule on its own, also used for processes that are not our children
(segmenters left by a service that died, see :func:`end_pids`).
:func:`run_ffmpeg` runs one ffmpeg to completion with ``-progress`` reports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal as signals
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from twisted.internet import defer, error, task
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="streamrec.media.ffmpeg")

#: Seconds between the first signal and SIGKILL, unless the caller says otherwise.
KILL_GRACE = 2.0


class FfmpegNotFound(RuntimeError):
    pass


class FfmpegFailed(RuntimeError):
    """ffmpeg exited with an error; the message carries its reason."""


def find_ffmpeg(explicit: str | None = None) -> str:
    """Path of the ffmpeg to run: ``explicit``, else PATH's, else imageio-ffmpeg's."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise FfmpegNotFound(f"ffmpeg binary {explicit!r} not found")
        return found
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - a dependency of the package
        raise FfmpegNotFound("no ffmpeg on PATH and imageio-ffmpeg is not installed") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as failure:
        raise FfmpegNotFound(f"no ffmpeg on PATH and none from imageio-ffmpeg: {failure}") from None


def escalate(
    reactor: Any, send: Callable[[str], None], gone: defer.Deferred[Any], first: str, grace: float
) -> None:
    """Send ``first`` now and ``KILL`` if ``gone`` has not fired ``grace`` seconds later."""
    send(first)
    if gone.called:
        return
    kill = reactor.callLater(grace, send, "KILL")

    def cancel(result: Any) -> Any:
        if kill.active():
            kill.cancel()
        return result

    gone.addBoth(cancel)


class FfmpegChild(ProcessProtocol):
    """One ffmpeg child process.

    Each complete line it writes (decoded, without the line end) goes to
    ``on_line(fd, line)``; what is left unterminated when it exits is handed
    over as a last line.  ``ended`` then fires with the exit reason
    (ProcessDone or ProcessTerminated, with ``exitCode`` and ``signal``); it
    never errbacks.
    """

    def __init__(self, reactor: Any, on_line: Callable[[int, str], None]) -> None:
        self.reactor = reactor
        self.on_line = on_line
        self.ended: defer.Deferred[BaseException | None] = defer.Deferred()
        self.stopping = False
        self._buffers: dict[int, bytes] = {}

    @property
    def exited(self) -> bool:
        return self.ended.called

    @property
    def pid(self) -> int | None:
        return getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._buffers[childFD] = (self._buffers.get(childFD, b"") + data).split(b"\n")
        for raw in lines:
            self.on_line(childFD, raw.decode("utf-8", "replace").rstrip("\r"))

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in list(self._buffers.items()):
            if rest:
                self.childDataReceived(fd, b"\n")
        # The exception itself: a Failure would run the errbacks.
        self.ended.callback(reason.value)

    def signal(self, name: str) -> None:
        """Signal this process (nothing once it has exited)."""
        if self.transport is None or self.exited:
            return
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def stop(self, first: str = "TERM", grace: float = KILL_GRACE) -> None:
        """Send ``first``, then SIGKILL after ``grace`` seconds; once per child."""
        if self.stopping or self.transport is None or self.exited:
            return
        self.stopping = True
        escalate(self.reactor, self.signal, self.ended, first, grace)


def death_launcher(signal_name: str) -> list[str]:
    """A prefix that makes the kernel send ``signal_name`` to the child when
    streamrec dies (util-linux's ``setpriv --pdeathsig``); empty where it is
    missing (recovery then ends what a dead service left)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", signal_name] if setpriv else []


def own_processes(own_pid: int | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every other process of this user, read from ``/proc``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == (own_pid or os.getpid()):
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                yield int(entry), handle.read().split(b"\0")
        except OSError:
            continue


def spawn(
    reactor: Any,
    child: FfmpegChild,
    args: Sequence[str],
    *,
    path: str | None = None,
    extra_fds: Iterable[int] = (),
) -> Any:
    """Start ``args`` as ``child``: stdin a pipe, stdout, stderr and ``extra_fds`` read."""
    fds: dict[int, str] = {0: "w", 1: "r", 2: "r"}
    fds.update({fd: "r" for fd in extra_fds})
    return reactor.spawnProcess(child, args[0], list(args), env=None, path=path, childFDs=fds)


# --------------------------------------------------------------------------
# One ffmpeg run to completion, with progress
# --------------------------------------------------------------------------

_LOG_PREFIX = re.compile(r"^(\[[^\]]+ @ 0x[0-9a-f]+\]\s*)+")


class ProgressReader:
    """The lines of an ffmpeg run with ``-progress pipe:1``.

    ``out_time_us`` lines on stdout become ``progress(fraction)`` calls
    (``fraction`` = output time / ``duration``, increasing, at most 1.0); the
    last stderr lines are kept for the error message.
    """

    def __init__(self, duration: float, progress: Callable[[float], None]) -> None:
        self.duration = duration
        self.progress = progress
        self.fraction = 0.0
        self.quiet = False  # a stopped ffmpeg still says progress=end
        self.stderr_tail: deque[str] = deque(maxlen=20)

    def line(self, fd: int, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if fd == 2:
            self.stderr_tail.append(_LOG_PREFIX.sub("", line))
            return
        key, _, value = line.partition("=")
        if key in ("out_time_us", "out_time_ms"):  # both are microseconds
            try:
                seconds = int(value) / 1e6
            except ValueError:  # "N/A" before the first frame
                return
            self._report(seconds / self.duration if self.duration > 0 else 0.0)
        elif key == "progress" and value == "end":
            self._report(1.0)

    def _report(self, fraction: float) -> None:
        if self.quiet:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        if fraction > self.fraction:
            self.fraction = fraction
            try:
                self.progress(fraction)
            except Exception:
                log.failure("progress callback failed")

    def error_message(self, reason: BaseException | None) -> str:
        code = getattr(reason, "exitCode", None)
        signal = getattr(reason, "signal", None)
        how = f"exit status {code}" if code is not None else f"signal {signal}"
        lines = list(self.stderr_tail)
        if not lines:
            return f"ffmpeg failed ({how}) without a message"
        first, last = lines[0], lines[-1]
        if first != last:
            return f"ffmpeg failed ({how}): {last} (first error: {first})"
        return f"ffmpeg failed ({how}): {last}"


def run_ffmpeg(
    reactor: Any,
    args: Sequence[str],
    duration: float,
    progress: Callable[[float], None],
    kill_grace: float = KILL_GRACE,
) -> defer.Deferred[None]:
    """Run ``args`` (ffmpeg first, with ``-progress pipe:1``) as a child process.

    Returns a Deferred that fires when it exits successfully and fails with
    :class:`FfmpegFailed` otherwise.  Cancelling it stops the process
    (SIGTERM, then SIGKILL after ``kill_grace`` seconds); so does a reactor
    shutdown, so no ffmpeg outlives the service.
    """
    reader = ProgressReader(duration, progress)
    child = FfmpegChild(reactor, reader.line)

    def stop() -> None:
        # What it would still write is thrown away: no reason to let it flush.
        reader.quiet = True
        child.stop("KILL", kill_grace)

    done: defer.Deferred[None] = defer.Deferred(lambda _: stop())
    try:
        # If the service dies (kill -9 included), the kernel kills the encoder.
        process = spawn(reactor, child, [*death_launcher("KILL"), *args])
    except OSError as failure:
        return defer.fail(FfmpegFailed(f"cannot run ffmpeg: {failure}"))
    process.closeStdin()
    trigger = reactor.addSystemEventTrigger("before", "shutdown", stop)

    def ended(reason: BaseException | None) -> None:
        reactor.removeSystemEventTrigger(trigger)
        if done.called:  # cancelled: the Deferred already failed
            return
        if isinstance(reason, error.ProcessDone):
            done.callback(None)
        else:
            done.errback(FfmpegFailed(reader.error_message(reason)))

    child.ended.addCallback(ended)
    return done


# --------------------------------------------------------------------------
# Processes that are not our children
# --------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return False


async def end_pids(
    reactor: Any, pids: Sequence[int], first: str = "INT", grace: float = 5.0
) -> None:
    """Send ``first`` to ``pids``, then SIGKILL to those still alive after ``grace`` s."""

    def send(name: str) -> None:
        for pid in pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, getattr(signals, f"SIG{name}"))
                except OSError:
                    pass

    gone: defer.Deferred[None] = defer.Deferred()
    escalate(reactor, send, gone, first, grace)
    waited = 0.0
    while waited < grace + 1.0 and any(pid_alive(pid) for pid in pids):
        await task.deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    gone.callback(None)
