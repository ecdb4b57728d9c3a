"""A flood of slow connections against a recording service with few descriptors.

The service runs as its own process (``twistd``) under a descriptor limit of
256, records a live UDP source, and meanwhile this test keeps more trickling
connections at it than that limit allows: each sends a request line, then a
byte a second of headers that never end, and comes back when it is dropped.
Without limits, the service runs out of descriptors (EMFILE), quarantines good
segments it cannot open and cannot launch ffmpeg again. With them, it takes
only what its reserve allows, refuses the rest, drops the slow ones at the
header timeout, and records every segment.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IDelayedCall

from ..support.harness import ServiceTestCase, sleep, until
from ..support.livesource import UdpTsSource
from ..support.service_process import ServiceProcess, kill_processes_under
from .test_faults import gaps, indexed, losses, lost_count, quarantined

#: RLIMIT_NOFILE of the service.
NOFILE = 256
#: Connections the flood keeps open at once: more than the service could hold.
ATTACKERS = 300
ATTACK_SECONDS = 16.0
HEADER_TIMEOUT = 2.0
#: Seconds a dropped or refused attacker waits before it comes back.
COME_BACK = 1.0


class LimitedService(ServiceProcess):
    """The service with a soft and hard RLIMIT_NOFILE of ``NOFILE``."""

    @staticmethod
    def in_child() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    def descriptors(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0


class Trickle(protocol.Protocol):
    """A client that starts a request and never finishes its headers."""

    def __init__(self, flood: Flood) -> None:
        self.flood = flood
        self.received = b""
        self.call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.flood.open += 1
        assert self.transport is not None
        self.transport.write(b"GET /streams/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        self.call = reactor.callLater(1, self.more)

    def more(self) -> None:
        assert self.transport is not None
        self.transport.write(b"z")
        self.call = reactor.callLater(1, self.more)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.flood.open -= 1
        self.flood.ended(self.received)


class Flood(protocol.ClientFactory):
    """``count`` trickling clients, each coming back after it is dropped, while ``on``."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.on = True
        self.open = 0
        self.connecting = 0
        #: how each connection ended: the status it was answered, or "closed"
        self.outcomes: Counter[str] = Counter()
        self._calls: list[IDelayedCall] = []

    def start(self) -> None:
        for _ in range(self.count):
            self.connect()

    def connect(self) -> None:
        if self.on:
            self.connecting += 1
            reactor.connectTCP("127.0.0.1", self.port, self, timeout=5)

    def buildProtocol(self, addr: Any) -> Trickle:
        self.connecting -= 1
        return Trickle(self)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.connecting -= 1
        self.outcomes["failed to connect"] += 1
        self._later()

    def ended(self, received: bytes) -> None:
        status = received.split(b" ", 2)[1].decode() if received.count(b" ") >= 2 else "closed"
        self.outcomes[status] += 1
        self._later()

    def _later(self) -> None:
        self._calls = [call for call in self._calls if call.active()]
        if self.on:
            self._calls.append(reactor.callLater(COME_BACK, self.connect))

    def stop_coming_back(self) -> None:
        self.on = False
        for call in self._calls:
            if call.active():
                call.cancel()

    def settled(self) -> bool:
        return self.open == 0 and self.connecting == 0


class SlowClientFloodTests(ServiceTestCase):
    timeout = 150

    @defer.inlineCallbacks
    def test_a_flood_of_slow_clients_loses_no_segment(self):
        yield defer.ensureDeferred(self._flood())

    async def _flood(self) -> None:
        source = UdpTsSource.running(self, audio=None)
        data_dir = os.path.abspath(self.mktemp())
        self.addCleanup(kill_processes_under, data_dir)
        service = LimitedService(
            self,
            data_dir,
            max_connections=1000,  # the descriptors are what binds
            max_connections_per_ip=0,  # every client is 127.0.0.1 here
            fd_reserve=96,
            header_timeout=HEADER_TIMEOUT,
            body_timeout=HEADER_TIMEOUT,
            idle_timeout=5,
        )
        self.addCleanup(lambda: defer.ensureDeferred(service.stop()))
        await service.start()
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")
        await service.recorded_until(stream_id, time.time() + 2, timeout=30)

        flood = Flood(service.port, ATTACKERS)
        self.addCleanup(flood.stop_coming_back)
        began = time.time()
        flood.start()
        peak, peak_open = 0, 0
        while time.time() < began + ATTACK_SECONDS:
            await sleep(0.25)
            peak = max(peak, service.descriptors())
            peak_open = max(peak_open, flood.open)
        flood.stop_coming_back()
        ended = time.time()
        # Those still connected trickle on: the service drops them itself.
        await until(
            lambda: defer.succeed(flood.settled()),
            HEADER_TIMEOUT + 10,
            "the service to drop the slow clients",
        )
        drained = time.time() - ended
        status = await service.status(stream_id)
        self.assertEqual(status["state"], "recording", status)
        await service.recorded_until(stream_id, time.time() + 2, timeout=30)
        log = service.log_text()
        await service.stop()

        print(
            f"\nLIMITS {ATTACKERS} trickling clients for {ATTACK_SECONDS:g} s at"
            f" RLIMIT_NOFILE {NOFILE}: outcomes {dict(flood.outcomes)}, at most"
            f" {peak_open} open at once, service peak {peak} descriptors,"
            f" last ones dropped {drained:.1f} s after the flood"
        )
        self.assertGreater(flood.outcomes["503"], 0, "the flood did not reach the limit")
        self.assertGreater(flood.outcomes["408"], 0, "no slow client was dropped")
        self.assertLess(peak, NOFILE)
        self.assertNotIn("Too many open files", log)
        self.assertNotIn("quarantined", log)
        self.assertEqual(quarantined(data_dir), set())
        self.assertEqual(gaps(data_dir, stream_id), [], "a gap in the recording")
        spans = sorted((start, end) for _, start, end in indexed(data_dir, stream_id).values())
        self.assertLess(spans[0][0], began)
        self.assertGreater(spans[-1][1], ended)
        loss = losses(data_dir, set(indexed(data_dir)))
        self.assertEqual(lost_count(loss), 0, loss)
