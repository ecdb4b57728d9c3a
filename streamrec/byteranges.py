"""Answering GET and HEAD with the bytes of a file, whole or one range of it.

The rule for ``Range`` (:func:`one_range`) is shared by the clip files and
by any file made on the fly (:class:`RangedResource`): one range at most, so
a request cannot multiply the bytes sent; several, or a malformed one, get
the whole file; a range past the end gets ``416``. A resource made here also
answers ``If-None-Match`` (``304``) and ``If-Range`` (the whole file when
its tag is not the current one), and sends its bytes with a producer that
reads a chunk at a time as the client takes them, never the whole file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

log = Logger(namespace="streamrec.byteranges")

#: ``Range: bytes=...`` with one range: ``first-last``, ``first-`` or ``-suffix``.
_ONE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
UNSATISFIABLE = (-1, -1)

#: Bytes read and written at a time.
CHUNK = 256 * 1024


def one_range(header: bytes, size: int) -> tuple[int, int] | None:
    """The byte range ``(first, last)`` a ``Range`` header asks of ``size`` bytes:
    None to answer the whole file (no range, a malformed one, or several:
    one answer at most, so a request cannot multiply the bytes sent), or
    :data:`UNSATISFIABLE` for a range past the end."""
    match = _ONE_RANGE.match(header.decode("latin-1"))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        return UNSATISFIABLE if suffix == 0 or size == 0 else (max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, min(int(last), size - 1) if last else size - 1


def tag_matches(header: bytes | None, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weakly) or is ``*``."""
    if header is None:
        return False
    tags = [t.strip() for t in header.split(b",")]
    return b"*" in tags or etag.removeprefix(b"W/") in {t.removeprefix(b"W/") for t in tags}


class Body(Protocol):
    """What a :class:`RangedResource` sends: ``read`` answers up to ``length``
    bytes from ``offset`` (a Deferred; it fails when the bytes are lost), one
    read at a time; ``close`` once no more are wanted."""

    def read(self, offset: int, length: int) -> defer.Deferred[bytes]: ...

    def close(self) -> None: ...


class RangedResource(Resource):
    """``size`` bytes of one file known by ``etag`` (a quoted tag), sent from a
    :class:`Body` that ``open_body`` makes for each answer with bytes."""

    isLeaf = True

    def __init__(
        self,
        open_body: Callable[[], Body],
        *,
        size: int,
        etag: bytes,
        content_type: bytes,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__()
        self.open_body = open_body
        self.size = size
        self.etag = etag
        self.content_type = content_type
        self.headers = dict(headers or {})

    def render_GET(self, request: Any) -> bytes | int:
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"ETag", self.etag)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        if tag_matches(request.getHeader(b"if-none-match"), self.etag):
            request.setResponseCode(304)
            return b""
        first, last = 0, self.size - 1
        header = request.getHeader(b"range")
        if_range = request.getHeader(b"if-range")
        if header is not None and (if_range is None or if_range.strip() == self.etag):
            chosen = one_range(header, self.size)
            if chosen == UNSATISFIABLE:
                request.setResponseCode(416)
                request.setHeader(b"Content-Range", b"bytes */%d" % self.size)
                request.setHeader(b"Content-Type", b"text/plain")
                return b"Range not satisfiable\n"
            if chosen is not None:
                first, last = chosen
                request.setResponseCode(206)
                request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (first, last, self.size))
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Content-Length", b"%d" % (last - first + 1))
        if request.method == b"HEAD" or last < first:
            return b""
        _Sender(request, self.open_body(), first, last).start()
        return server.NOT_DONE_YET

    render_HEAD = render_GET


@implementer(IPushProducer)
class _Sender:
    """Sends bytes ``first..last`` of a body, one chunk read at a time while the
    client keeps up. A failed read closes the connection: the client sees an
    answer cut short, never other bytes."""

    def __init__(self, request: Any, body: Body, first: int, last: int) -> None:
        self.request = request
        self.body = body
        self.offset = first
        self.end = last + 1
        self.paused = False
        self.reading = False
        self.done = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(self._lost)
        self._more()

    def _more(self) -> None:
        if self.paused or self.reading or self.done:
            return
        if self.offset >= self.end:
            self._stop()
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.reading = True
        wanted = min(CHUNK, self.end - self.offset)
        self.body.read(self.offset, wanted).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self.reading = False
        if self.done:
            self.body.close()
            return
        if not data:
            self._failed(Failure(EOFError(f"no bytes at {self.offset}")))
            return
        self.offset += len(data)
        self.request.write(data)
        self._more()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        if self.done:
            self.body.close()
            return
        log.warn(
            "{uri}: cannot read on at byte {offset}, closing the connection: {why}",
            uri=self.request.uri,
            offset=self.offset,
            why=failure.getErrorMessage(),
        )
        self._stop()
        self.request.unregisterProducer()
        self.request.loseConnection()

    def _stop(self) -> None:
        self.done = True
        if not self.reading:
            self.body.close()

    def _lost(self, reason: Failure) -> None:
        if not self.done:
            self._stop()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._more()

    def stopProducing(self) -> None:
        if not self.done:
            self._stop()
