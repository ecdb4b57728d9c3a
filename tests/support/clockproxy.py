"""A TCP proxy on 127.0.0.1 in front of an RTSP camera that changes what the
camera's clock seems to say: a network that holds the camera's bytes back by
a fixed delay, and a camera whose clock is off by a fixed offset.

* Every byte from the camera reaches the client ``delay`` seconds after the
  proxy read it, in order (bytes from the client go to the camera at once).
  With RTSP over TCP (``-rtsp_transport tcp``) all media goes this way, so a
  frame arrives ``delay`` later than it would from the camera itself.
* With ``ntp_offset``, the NTP timestamp of every RTCP sender report is moved
  by that many seconds: the camera seems to capture at ``capture +
  ntp_offset``, while the picture still shows the true instant.

It reads the camera's byte stream as RTSP over TCP: RTSP messages (headers
and a ``Content-Length`` body) and interleaved frames (``$``, channel byte,
16-bit length). Frames on odd channels carry RTCP (compound packets; a
sender report is packet type 200 with the NTP time at bytes 8..15); the rest
passes unchanged and unbuffered, whatever the TCP reads cut it into.

In the reactor of a test::

    proxy = ClockProxy("127.0.0.1", camera_port, delay=0.5, ntp_offset=30.0)
    port = proxy.listen()

or as a process of its own, so a test that blocks its reactor cannot stretch
the delay (what ``livesource.PaintedCamera`` does)::

    python tests/support/clockproxy.py --target-port 8554 --delay 0.5 --ntp-offset 30

which prints ``PORT <port>`` and ``READY``, and stops on SIGTERM.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as default_reactor
from twisted.protocols import portforward

NTP_FRACTION = 1 << 32
SENDER_REPORT = 200
#: an RTSP message head longer than this is not RTSP: pass the rest untouched
MAX_HEAD = 64 * 1024

_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)


def shift_sender_reports(rtcp: bytes, offset: float) -> tuple[bytes, int]:
    """``rtcp`` (a compound RTCP packet) with the NTP time of every sender
    report moved by ``offset`` seconds, and how many sender reports it holds."""
    out = bytearray(rtcp)
    shift = round(offset * NTP_FRACTION)
    reports = 0
    i = 0
    while i + 4 <= len(out):
        if out[i] >> 6 != 2:  # not RTCP version 2: leave the rest alone
            break
        size = (struct.unpack_from(">H", out, i + 2)[0] + 1) * 4
        if out[i + 1] == SENDER_REPORT and size >= 28 and i + 16 <= len(out):
            reports += 1
            if shift:
                ntp = struct.unpack_from(">Q", out, i + 8)[0]
                struct.pack_into(">Q", out, i + 8, (ntp + shift) % (1 << 64))
        i += size
    return bytes(out), reports


class InterleavedRewriter:
    """Reads the camera -> client side of RTSP over TCP in any cuts and gives
    back the same bytes, with sender reports shifted. Bytes that cannot be
    part of a sender report come back as soon as they are read; an RTSP head
    and an RTCP frame come back whole."""

    def __init__(self, ntp_offset: float = 0.0) -> None:
        self.ntp_offset = ntp_offset
        self.sender_reports = 0  # seen (and shifted, when ntp_offset)
        self.raw = False  # lost track of the framing: pass everything
        self._pending = b""
        self._passing = 0  # bytes to pass through before the next unit
        self._rtcp: int | None = None  # length of the RTCP frame being read

    def feed(self, data: bytes) -> bytes:
        if self.raw:
            return data
        out = []
        buf = self._pending + data
        i = 0
        while i < len(buf):
            if self._passing:
                n = min(self._passing, len(buf) - i)
                out.append(buf[i : i + n])
                self._passing -= n
                i += n
            elif self._rtcp is not None:
                if len(buf) - i < self._rtcp:
                    break
                shifted, reports = shift_sender_reports(buf[i : i + self._rtcp], self.ntp_offset)
                self.sender_reports += reports
                out.append(shifted)
                i += self._rtcp
                self._rtcp = None
            elif buf[i : i + 1] == b"$":
                if len(buf) - i < 4:
                    break
                channel = buf[i + 1]
                (length,) = struct.unpack_from(">H", buf, i + 2)
                out.append(buf[i : i + 4])
                i += 4
                if channel % 2:
                    self._rtcp = length
                else:
                    self._passing = length
            else:
                end = buf.find(b"\r\n\r\n", i)
                if end < 0:
                    if len(buf) - i > MAX_HEAD:
                        self.raw = True
                        out.append(buf[i:])
                        i = len(buf)
                    break
                head = buf[i : end + 4]
                match = _CONTENT_LENGTH.search(head)
                out.append(head)
                i = end + 4
                self._passing = int(match.group(1)) if match else 0
        self._pending = buf[i:]
        return b"".join(out)


class DelayLine:
    """Calls ``write(data)`` ``delay`` seconds after ``put(data)``, in order,
    then ``done()`` once :meth:`finish` was called and all is written."""

    def __init__(
        self, clock: Any, delay: float, write: Callable[[bytes], Any], done: Callable[[], Any]
    ) -> None:
        self.clock, self.delay, self.write, self.done = clock, delay, write, done
        self.queue: deque[tuple[float, bytes]] = deque()
        self.finishing = False
        self._call: Any = None

    def put(self, data: bytes) -> None:
        if data:
            self.queue.append((self.clock.seconds() + self.delay, data))
            self._schedule()

    def finish(self) -> None:
        self.finishing = True
        self._schedule()

    def cancel(self) -> None:
        self.queue.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        if self._call is not None and self._call.active():
            return
        if self.queue:
            self._call = self.clock.callLater(
                max(0.0, self.queue[0][0] - self.clock.seconds()), self._flush
            )
        elif self.finishing:
            self._call = None
            self.done()

    def _flush(self) -> None:
        self._call = None
        now = self.clock.seconds()
        while self.queue and self.queue[0][0] <= now:
            self.write(self.queue.popleft()[1])
        self._schedule()


class _CameraSide(portforward.ProxyClient):
    """The proxy's connection to the camera: what it reads goes through the
    rewriter and the delay line to the client."""

    def connectionMade(self) -> None:
        factory: ClockProxy = self.peer.factory
        self.rewriter = InterleavedRewriter(factory.ntp_offset)
        self.line = DelayLine(factory.clock, factory.delay, self._deliver, self._deliver_end)
        self.peer.line = self.line
        self.peer.rewriter = self.rewriter
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.line.put(self.rewriter.feed(data))

    def _deliver(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def _deliver_end(self) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        # the camera's last bytes still reach the client, after the delay
        self.line.finish()


class _CameraSideFactory(portforward.ProxyClientFactory):
    protocol = _CameraSide


class _ClientSide(portforward.ProxyServer):
    """The client's connection to the proxy; its bytes go to the camera at once."""

    clientProtocolFactory = _CameraSideFactory
    line: DelayLine | None = None
    rewriter: InterleavedRewriter | None = None

    def connectionMade(self) -> None:
        factory: ClockProxy = self.factory  # type: ignore[assignment]
        factory.open.add(self)
        self.reactor = factory.reactor
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        factory: ClockProxy = self.factory  # type: ignore[assignment]
        factory.open.discard(self)
        if self.rewriter is not None:
            factory.sender_reports += self.rewriter.sender_reports
        if self.line is not None:
            self.line.cancel()
        super().connectionLost(reason)


class ClockProxy(portforward.ProxyFactory):
    """Forwards 127.0.0.1:``port`` to ``host``:``target``, holding the
    camera's bytes back ``delay`` seconds and shifting its sender reports
    by ``ntp_offset`` seconds."""

    protocol = _ClientSide

    def __init__(
        self,
        host: str,
        target: int,
        delay: float = 0.5,
        ntp_offset: float = 0.0,
        reactor: Any = None,
    ) -> None:
        super().__init__(host, target)
        self.delay = delay
        self.ntp_offset = ntp_offset
        self.reactor = reactor if reactor is not None else default_reactor
        self.clock = self.reactor
        self.open: set[_ClientSide] = set()
        self.sender_reports = 0  # over closed connections
        self.listening: Any = None

    def listen(self, port: int = 0) -> int:
        self.listening = self.reactor.listenTCP(port, self, interface="127.0.0.1")
        return int(self.listening.getHost().port)

    def close(self) -> Any:
        for server in list(self.open):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()
        return self.listening.stopListening() if self.listening is not None else None


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="RTSP/TCP proxy: delay and camera clock offset")
    ap.add_argument("--port", type=int, default=0, help="listening port (0: any free one)")
    ap.add_argument("--target-host", default="127.0.0.1")
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.5, help="seconds")
    ap.add_argument("--ntp-offset", type=float, default=0.0, help="seconds")
    args = ap.parse_args(argv)
    from twisted.internet import reactor

    proxy = ClockProxy(args.target_host, args.target_port, args.delay, args.ntp_offset, reactor)
    port = proxy.listen(args.port)
    print("PORT %d" % port, flush=True)
    print("READY", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    sys.stderr.write("clockproxy: %d sender reports seen\n" % proxy.sender_reports)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
