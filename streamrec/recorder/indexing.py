"""Checking a closed segment file before it enters the index.

One way for every file that enters the index, whether the live recorder
reports it or recovery finds it on disk after a crash: validate it, and move
a bad one to quarantine. Its structure is read on the reactor thread: that is
pure Python over a few kilobytes, which a thread would only make wait for the
GIL, and the reactor with it. The segments of a hundred cameras close in the
same instant, so they are read one after another by a
:class:`~twisted.internet.task.Cooperator`, which hands the reactor back every
few milliseconds: the API answers between them. A decode (PyAV, which lets
the GIL go) runs in a thread. Where a good one lies on
the wall clock is :mod:`streamrec.recorder.timeline`'s business; the caller
then adds it to the store.

Only a file found bad is quarantined. One that cannot be read for a moment
(no descriptor left while a flood of connections holds them, no memory) is
tried again with backoff, and left in place, unjudged, if that lasts.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .layout import SegmentLayout
from .validate import InvalidSegment, inspect_segment, transient, validate_segment

log = Logger(namespace="streamrec.recorder")

#: One segment in this many is also decoded, whatever its structure says (the
#: first of every run is: see the recorder).
DECODE_EVERY = 500

#: Seconds of segment reading at most before the reactor gets its turn.
SLICE = 0.004

#: Waits between tries of a file that could not be read for a moment: from
#: the first, doubling up to the cap, for this long in all.
RETRY_FIRST = 0.05
RETRY_CAP = 2.0
RETRY_FOR = 60.0


def retry_delays(
    first: float = RETRY_FIRST, cap: float = RETRY_CAP, total: float = RETRY_FOR
) -> Iterator[float]:
    """Capped exponential waits that add up to ``total`` at most."""
    delay, waited = first, 0.0
    while waited + delay <= total:
        yield delay
        waited += delay
        delay = min(cap, delay * 2)


def paced(reactor: Any, slice_seconds: float = SLICE) -> task.Cooperator:
    """A Cooperator that works for ``slice_seconds`` at a time, then lets the
    reactor handle what is waiting."""

    def until_slice_ends() -> Callable[[], bool]:
        end = reactor.seconds() + slice_seconds
        return lambda: reactor.seconds() >= end

    return task.Cooperator(
        terminationPredicateFactory=until_slice_ends,
        scheduler=lambda work: reactor.callLater(0, work),
    )


@dataclass(frozen=True)
class Checked:
    """A segment file after validation: its media span and size, or why it is not indexed."""

    path: str
    first: float = 0.0
    end: float = 0.0
    size: int = 0
    problem: str | None = None
    quarantined_to: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def duration(self) -> float:
        return self.end - self.first


class SegmentChecker:
    """Validates segment files and sets the bad ones aside."""

    def __init__(
        self,
        *,
        layout: SegmentLayout,
        run_blocking: Callable[..., defer.Deferred[Any]],
        max_duration: float,
        validate: Callable[[str, float, bool], tuple[float, float]] = validate_segment,
        inspect: Callable[[str, float], tuple[float, float, list[str]]] = inspect_segment,
        decode_every: int = DECODE_EVERY,
        cooperator: task.Cooperator | None = None,
        clock: IReactorTime | None = None,
        retry_for: float = RETRY_FOR,
    ) -> None:
        self.layout = layout
        self.run_blocking = run_blocking
        self.max_duration = max_duration
        self.validate = validate
        self.inspect = inspect
        self.decode_every = decode_every
        self.checked = 0
        # Files waiting for the validation in flight to end: validated together.
        self._queue: list[tuple[str, bool, defer.Deferred[tuple[float, float]]]] = []
        self._validating = False
        # Files waiting for their structure to be read (None: read at once).
        self.cooperator = cooperator
        self._to_inspect: deque[tuple[str, defer.Deferred[Any]]] = deque()
        self._inspecting = False
        # Waits between tries of a file not readable for now (none without a clock).
        self.clock = clock
        self.retry_for = retry_for if clock is not None else 0.0
        #: files that could not be read at a first try, and then were
        self.retried = 0
        #: files being tried again now, for want of descriptors or memory
        self.waiting = 0

    async def check(self, path: str, who: str = "", thorough: bool = False) -> Checked:
        """Validate ``path``; a bad segment is moved to quarantine (and logged).

        The structure of every segment is checked; every ``thorough`` check,
        and one in ``decode_every`` of the others, also decodes a frame. A
        file that cannot be read for now (:func:`~.validate.transient`) is
        tried again, with backoff, for ``retry_for`` seconds at most.
        """
        self.checked += 1
        decode = thorough or self.checked % self.decode_every == 1
        delays = retry_delays(total=self.retry_for)
        tries = 1
        while True:
            try:
                checked = await self._check(path, who, decode)
            except (OSError, MemoryError) as failure:
                delay = next(delays, None) if transient(failure) else None
                if delay is None:
                    log.warn(
                        "{who}segment {path} not indexed, left in place: {failure}{tries}",
                        who=who,
                        path=path,
                        failure=failure,
                        tries=f" ({tries} tries)" if tries > 1 else "",
                    )
                    return Checked(path, problem=str(failure) or type(failure).__name__)
                if tries == 1:
                    log.info(
                        "{who}segment {path} not readable for now, trying again: {failure}",
                        who=who,
                        path=path,
                        failure=failure,
                    )
                tries += 1
                assert self.clock is not None  # delays come only with a clock
                self.waiting += 1
                try:
                    await task.deferLater(self.clock, delay, lambda: None)
                finally:
                    self.waiting -= 1
                continue
            if tries > 1:
                self.retried += 1
                log.info("{who}segment {path} read at try {tries}", who=who, path=path, tries=tries)
            return checked

    async def _check(self, path: str, who: str, decode: bool) -> Checked:
        """One try: the file's verdict; OSError if it could not be read."""
        try:
            size = os.path.getsize(path)
            if size == 0:
                # Opened and never written (ffmpeg died before the first fragment):
                # nothing to keep or to look at.
                os.remove(path)
                return Checked(path, problem="empty")
            if decode:
                first, end = await self._validated(path, decode)
            else:
                first, end, doubts = await self._inspected(path)
                if doubts:
                    first, end = await self._validated(path, True)
        except InvalidSegment as failure:
            return self._set_aside(path, str(failure), who)
        return Checked(path, first, end, size)

    def _inspected(self, path: str) -> defer.Deferred[Any]:
        """The structure of ``path``, read on the reactor thread at the Cooperator's pace."""
        if self.cooperator is None:
            return defer.maybeDeferred(self.inspect, path, self.max_duration)
        done: defer.Deferred[Any] = defer.Deferred()
        self._to_inspect.append((path, done))
        if not self._inspecting:
            self._inspecting = True
            self.cooperator.cooperate(self._inspect_all())
        return done

    def _inspect_all(self) -> Iterator[None]:
        try:
            while self._to_inspect:
                path, done = self._to_inspect.popleft()
                # The caller's next steps (indexing) run within this step too.
                defer.maybeDeferred(self.inspect, path, self.max_duration).chainDeferred(done)
                yield None
        finally:
            self._inspecting = False

    def _validated(self, path: str, decode: bool) -> defer.Deferred[tuple[float, float]]:
        """Validate and decode off the reactor thread. Those that come while a
        validation runs are validated together, in one trip to the thread pool."""
        done: defer.Deferred[tuple[float, float]] = defer.Deferred()
        self._queue.append((path, decode, done))
        if not self._validating:
            self._validate_queue()
        return done

    def _validate_queue(self) -> None:
        batch, self._queue = self._queue, []
        self._validating = True

        def validated(results: list[tuple[bool, Any]]) -> None:
            for (_, _, done), (ok, value) in zip(batch, results):
                if ok:
                    done.callback(value)
                else:
                    done.errback(value)

        def failed(failure: Any) -> None:
            for _, _, done in batch:
                done.errback(failure)

        def next_batch(_: object) -> None:
            self._validating = False
            if self._queue:
                self._validate_queue()

        d = self.run_blocking(self._validate_all, [(path, decode) for path, decode, _ in batch])
        d.addCallbacks(validated, failed)
        d.addBoth(next_batch)

    def _validate_all(self, files: list[tuple[str, bool]]) -> list[tuple[bool, Any]]:
        """In a thread: ``(True, span)`` or ``(False, exception)`` for each file."""
        results: list[tuple[bool, Any]] = []
        for path, decode in files:
            try:
                results.append((True, self.validate(path, self.max_duration, decode)))
            except Exception as error:
                results.append((False, error))
        return results

    def _set_aside(self, path: str, why: str, who: str) -> Checked:
        try:
            where = self.layout.quarantine(path)
        except FileNotFoundError:
            return Checked(path, problem=why)
        except OSError as failure:
            where = f"(could not move it: {failure})"
        log.warn("{who}bad segment quarantined to {where}: {why}", who=who, where=where, why=why)
        return Checked(path, problem=why, quarantined_to=where)
