"""Running blocking work (file I/O, PyAV, boto3) off the reactor thread: one way for all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

RunBlocking = Callable[..., defer.Deferred[Any]]


def thread_runner(reactor: Any) -> RunBlocking:
    """``run_blocking(fn, *args, **kwargs)``: a Deferred of ``fn``'s result, computed in
    the reactor's thread pool."""

    def run_blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    return run_blocking
