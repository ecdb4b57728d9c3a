"""The HTTP site: the API behind connection caps and request deadlines.

Every connection holds a file descriptor, and so does every segment being
checked, every pipe to an ffmpeg and the database. A thousand clients that
each trickle a byte every 20 s would leave none for recording at systemd's
default limit of 1,024. So the site keeps clients within bounds:

- at most ``max_connections`` connections at once, and ``max_connections_per_ip``
  from one address; none while fewer than ``fd_reserve`` descriptors of the
  process's limit (``RLIMIT_NOFILE``) are free, which recording, clips and the
  database keep. A connection past a cap is answered ``503`` and closed.
- a request's head must be in within ``header_timeout`` seconds of its first
  byte (of the connection, for the first request), and its body within
  ``body_timeout`` of the head, however slowly it trickles. The client is
  answered ``408`` and dropped.
- a connection idle between requests is closed after ``idle_timeout`` seconds
  (Twisted's own timeout), and so is one whose client reads nothing of an
  answer for that long.

The caps are a :class:`~twisted.protocols.policies.WrappingFactory` around the
:class:`~twisted.web.server.Site`, in the way of Twisted's
``LimitConnectionsByPeer`` and ``LimitTotalConnectionsFactory``; the deadlines
are an :class:`~twisted.web.http.HTTPChannel` that arms them as the parts of a
request arrive, on the site's reactor.
"""

from __future__ import annotations

import json
import math
import os
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

from .config import Config

log = Logger(namespace="streamrec.web")


@dataclass(frozen=True)
class Limits:
    """What clients may hold of the service; 0 turns a limit off."""

    max_connections: int
    max_connections_per_ip: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    fd_reserve: int

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"--{f.name.replace('_', '-')} cannot be negative")

    @classmethod
    def of(cls, config: Config) -> Limits:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def error_answer(status: bytes, message: str, *headers: bytes) -> bytes:
    """A whole HTTP answer with the API's JSON error body, closing the connection."""
    body = json.dumps({"error_message": message}).encode()
    head = [
        b"HTTP/1.1 " + status,
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Tally:
    """Events counted by kind, logged as one line at most every ``every`` seconds:
    the first after a quiet spell at once, the others together later."""

    def __init__(self, clock: IReactorTime, what: str, every: float = 60.0) -> None:
        self.clock = clock
        self.what = what
        self.every = every
        #: every event since the start, by kind
        self.total: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._call: IDelayedCall | None = None

    def add(self, kind: str) -> None:
        self.total[kind] += 1
        if self._call is None:
            log.warn("{what}: {kind}", what=self.what, kind=kind)
            self._call = self.clock.callLater(self.every, self._flush)
        else:
            self._pending[kind] += 1

    def _flush(self) -> None:
        self._call = None
        if self._pending:
            counts = ", ".join(f"{n} {kind}" for kind, n in self._pending.most_common())
            log.warn(
                "{what} in the last {every:g} s: {counts}",
                what=self.what,
                every=self.every,
                counts=counts,
            )
            self._pending.clear()
            self._call = self.clock.callLater(self.every, self._flush)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def open_descriptors() -> int | None:
    """How many file descriptors this process holds; None where it cannot tell."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(where)) - 1  # less the listing's own
        except FileNotFoundError:
            continue
    return None


def descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE; None when there is none."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class Descriptors:
    """Whether a new connection leaves ``reserve`` descriptors of ``limit`` free.

    Counting them is a directory listing, so the count is taken at most every
    ``every`` seconds; each connection accepted in between counts as one more.
    """

    def __init__(
        self,
        clock: IReactorTime,
        reserve: int,
        limit: int | None,
        count: Callable[[], int | None] = open_descriptors,
        every: float = 0.1,
    ) -> None:
        self.clock = clock
        self.reserve = reserve
        self.limit = limit
        self.count = count
        self.every = every
        self._open: int | None = None
        self._counted_at = -math.inf

    def spare(self) -> bool:
        """Called with the new connection's descriptor open."""
        if self.limit is None or not self.reserve:
            return True
        now = self.clock.seconds()
        if self._open is not None and now - self._counted_at < self.every:
            self._open += 1
        else:
            try:
                self._open = self.count()
            except OSError:  # not even one for the listing
                self._open = self.limit
            self._counted_at = now
            if self._open is None:
                return True
        return self._open + self.reserve <= self.limit

    def for_connections(self) -> int | None:
        """Descriptors free for connections now; None when unbounded or unknown."""
        try:
            held = self.count()
        except OSError:
            return 0
        if self.limit is None or held is None:
            return None
        return max(0, self.limit - self.reserve - held)


class Refusal(Protocol):
    """A connection past a cap: answered 503 at once, then closed."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            error_answer(
                b"503 Service Unavailable",
                "Too many connections: try again later",
                b"Retry-After: 5",
            )
        )
        self.transport.loseConnection()


class Counted(ProtocolWrapper):
    """A connection within the caps, with the address it counts against."""

    host: str | None = None


class ConnectionLimits(WrappingFactory[Counted]):
    """The site behind caps: connections in all, per client address, and by the
    descriptors kept for the rest of the service (:class:`Descriptors`)."""

    protocol = Counted
    noisy = False  # the site says when it starts and stops

    def __init__(
        self,
        site: Site,
        *,
        clock: IReactorTime,
        total: int,
        per_peer: int,
        descriptors: Descriptors | None = None,
    ) -> None:
        super().__init__(site)
        self.total = total
        self.per_peer = per_peer
        self.descriptors = descriptors
        #: connections by client address
        self.peers: Counter[str] = Counter()
        self.refused = Tally(clock, "HTTP connections refused")

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        host: str | None = getattr(addr, "host", None)
        why = self._refusal(host)
        if why is not None:
            self.refused.add(why)
            return Refusal()
        protocol = super().buildProtocol(addr)
        if protocol is not None and host is not None:
            protocol.host = host
            self.peers[host] += 1
        return protocol

    def _refusal(self, host: str | None) -> str | None:
        if self.total and len(self.protocols) >= self.total:
            return f"{self.total} connections open (--max-connections)"
        if self.per_peer and host is not None and self.peers[host] >= self.per_peer:
            return f"{self.per_peer} connections open from {host} (--max-connections-per-ip)"
        if self.descriptors is not None and not self.descriptors.spare():
            return f"{self.descriptors.reserve} file descriptors kept for recording (--fd-reserve)"
        return None

    def unregisterProtocol(self, p: Counted) -> None:
        super().unregisterProtocol(p)
        if p.host is not None:
            self.peers[p.host] -= 1
            if self.peers[p.host] <= 0:
                del self.peers[p.host]

    def stopFactory(self) -> None:
        self.refused.stop()
        super().stopFactory()


#: What a connection waits for, and so which deadline runs.
HEAD, BODY, ANSWER, IDLE = "head", "body", "answer", "idle"


class DeadlineChannel(HTTPChannel):
    """An HTTP/1.1 channel whose requests must come in time.

    The head of a request must be in within ``header_timeout`` of its first
    byte, and its body within ``body_timeout`` of the head; a client that
    sends neither in time is answered 408 and dropped, and aborted if it does
    not let go within ``abort_after``. While an answer goes out, a client that
    reads none of it for ``send_timeout`` is aborted. Between requests,
    Twisted's idle timeout (``timeOut``) runs.
    """

    header_timeout: float = 0.0
    body_timeout: float = 0.0
    send_timeout: float = 0.0
    abort_after: float = 5.0
    #: told of each client dropped, with what it was too slow at
    dropped: Callable[[str], None] | None = None

    phase = HEAD
    _deadline: IDelayedCall | None = None
    _abort: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._expect(HEAD)

    def dataReceived(self, data: bytes) -> None:
        if self.phase == IDLE:
            self._expect(HEAD)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> Any:
        if self.phase == IDLE:  # a request sent during the last answer, read now
            self._expect(HEAD)
        return super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        self._expect(BODY)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._expect(ANSWER)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._expect(IDLE)
        super().requestDone(request)

    def pauseProducing(self) -> None:
        """The client does not read what is sent: it has ``send_timeout`` to."""
        super().pauseProducing()
        if self.phase == ANSWER and self._deadline is None and self.send_timeout:
            self._deadline = self.callLater(self.send_timeout, lambda: self._too_slow(ANSWER))

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self.phase == ANSWER:
            self._cancel_deadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(b"431 Request Header Fields Too Large", "Request line or headers too large")

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's answer to a request it cannot take, as the API's JSON."""
        if self._receivedHeaderSize > self.totalHeadersSize:
            self._refuse(
                b"431 Request Header Fields Too Large", "Request line or headers too large"
            )
        else:
            self._refuse(b"400 Bad Request", "Malformed HTTP request")

    def _refuse(self, status: bytes, message: str) -> None:
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.write(error_answer(status, message))
        self.loseConnection()

    def _expect(self, phase: str) -> None:
        self.phase = phase
        self._cancel_deadline()
        seconds = {HEAD: self.header_timeout, BODY: self.body_timeout}.get(phase)
        if seconds:
            self._deadline = self.callLater(seconds, lambda: self._too_slow(phase))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self, phase: str) -> None:
        self._deadline = None
        if self.dropped is not None:
            self.dropped(phase)
        if self.transport is None:
            return
        transport = cast(ITCPTransport, self.transport)
        if phase == ANSWER:  # it reads nothing: nothing more is worth writing
            transport.abortConnection()
            return
        what = "headers" if phase == HEAD else "body"
        transport.write(
            error_answer(b"408 Request Timeout", f"Request {what} not received in time")
        )
        self.loseConnection()
        self._abort = self.callLater(self.abort_after, lambda: transport.abortConnection())


DROPPED = {
    HEAD: "headers too slow",
    BODY: "body too slow",
    ANSWER: "answer not read",
}


class LimitedSite(Site):
    """A Site whose channels keep the request deadlines of ``limits``."""

    protocol = DeadlineChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, root: IResource, *, limits: Limits, reactor: IReactorTime, **kw: Any):
        super().__init__(root, timeout=limits.idle_timeout or None, reactor=reactor, **kw)
        self.limits = limits
        self.dropped = Tally(reactor, "slow HTTP clients dropped")

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.limits.header_timeout
        channel.body_timeout = self.limits.body_timeout
        channel.send_timeout = self.limits.idle_timeout
        channel.dropped = self._dropped
        return channel

    def _dropped(self, phase: str) -> None:
        self.dropped.add(DROPPED[phase])

    def stopFactory(self) -> None:
        self.dropped.stop()
        super().stopFactory()


def api_site(
    root: IResource,
    *,
    limits: Limits,
    reactor: IReactorTime,
    request_factory: Any = None,
    log_formatter: Any = None,
    descriptors: Descriptors | None = None,
) -> ConnectionLimits:
    """What the service listens with: ``root`` served within ``limits``."""
    site = LimitedSite(
        root,
        limits=limits,
        reactor=reactor,
        requestFactory=request_factory,
        logFormatter=log_formatter,
    )
    if descriptors is None:
        descriptors = Descriptors(reactor, limits.fd_reserve, descriptor_limit())
    factory = ConnectionLimits(
        site,
        clock=reactor,
        total=limits.max_connections,
        per_peer=limits.max_connections_per_ip,
        descriptors=descriptors,
    )
    room = descriptors.for_connections()
    if descriptors.limit is None:
        kept = "no file descriptor limit"
    else:
        kept = f"{descriptors.reserve} of {descriptors.limit} file descriptors kept for recording"
    log.info(
        "HTTP connections: {total} in all, {per_peer} per address; {kept}",
        total=limits.max_connections or "no limit",
        per_peer=limits.max_connections_per_ip or "no limit",
        kept=kept,
    )
    if room is not None and room < min(limits.max_connections or 64, 64):
        log.warn(
            "the file descriptor limit ({limit}) leaves room for {room} connections only:"
            " raise it (LimitNOFILE= in a systemd unit, ulimit -n) or lower --fd-reserve",
            limit=descriptors.limit,
            room=room,
        )
    return factory
