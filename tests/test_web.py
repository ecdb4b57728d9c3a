"""The site's bounds on clients, driven with a Clock and string transports."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import Data

from streamrec.config import Config
from streamrec.web import (
    ConnectionLimits,
    Descriptors,
    Limits,
    Refusal,
    api_site,
)

LIMITS = Limits(
    max_connections=3,
    max_connections_per_ip=2,
    header_timeout=10,
    body_timeout=20,
    idle_timeout=60,
    fd_reserve=0,
)


class Slow(Resource):
    """An answer that starts and then waits (a clip on its way out)."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        request.write(b"x" * 1000)
        return server.NOT_DONE_YET


class Client:
    """One connection to the site, as its transport sees it."""

    def __init__(self, factory: ConnectionLimits, host: str = "10.0.0.1") -> None:
        self.address = IPv4Address("TCP", host, 40000)
        self.protocol = factory.buildProtocol(self.address)
        self.transport = StringTransport(peerAddress=self.address)
        if self.protocol is not None:
            self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def close(self) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(None)  # type: ignore[arg-type]

    @property
    def received(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    @property
    def aborted(self) -> bool:
        return self.transport.disconnected  # what StringTransport.abortConnection sets


class SiteCase(unittest.SynchronousTestCase):
    limits = LIMITS

    def setUp(self) -> None:
        self.clock = Clock()
        root = Resource()
        root.putChild(b"", Data(b'{"ok": true}', "application/json"))
        root.putChild(b"slow", Slow())
        self.factory = api_site(
            root,
            limits=self.limits,
            reactor=self.clock,
            descriptors=Descriptors(self.clock, 0, None),
        )
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)

    def status(self, client: Client) -> int:
        return int(client.received.split(b" ", 2)[1])

    def error(self, client: Client) -> str:
        return json.loads(client.received.split(b"\r\n\r\n", 1)[1])["error_message"]


class DeadlineTests(SiteCase):
    def test_a_trickled_head_is_dropped_at_the_header_timeout(self):
        client = Client(self.factory)
        client.send(b"GET / HTTP/1.1\r\n")
        for second in range(9):  # a byte a second keeps Twisted's idle timer fresh
            self.clock.advance(1)
            client.send(b"X-a: b\r\n"[second % 8 : second % 8 + 1])
        self.assertEqual(client.received, b"")
        self.assertFalse(client.closed)
        self.clock.advance(1)
        self.assertEqual(self.status(client), 408)
        self.assertEqual(self.error(client), "Request headers not received in time")
        self.assertTrue(client.transport.disconnecting)
        # A client that does not let go is aborted.
        self.clock.advance(5)
        self.assertTrue(client.aborted)
        self.assertEqual(self.factory.wrappedFactory.dropped.total, {"headers too slow": 1})

    def test_a_silent_connection_is_dropped_at_the_header_timeout(self):
        client = Client(self.factory)
        self.clock.advance(9.9)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)
        self.assertEqual(self.status(client), 408)

    def test_a_prompt_request_is_answered_and_kept_until_idle(self):
        client = Client(self.factory)
        self.clock.advance(9)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.status(client), 200)
        self.assertTrue(client.received.endswith(b'{"ok": true}'))
        self.clock.advance(30)  # past the header timeout: waiting is not sending
        self.assertFalse(client.closed)
        # A second request on the kept-alive connection has its own deadline.
        client.transport.clear()
        client.send(b"GET / HT")
        self.clock.advance(10)
        self.assertEqual(self.status(client), 408)

    def test_pipelined_requests_are_answered_in_turn(self):
        client = Client(self.factory)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        client.send(request + request + b"GET / HTTP/1.1\r\n")
        self.assertEqual(client.received.count(b"HTTP/1.1 200 OK"), 2)
        self.clock.advance(9.9)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)  # the third never finished its head
        self.assertIn(b"HTTP/1.1 408", client.received)

    def test_an_idle_connection_is_closed_at_the_idle_timeout(self):
        client = Client(self.factory)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(59)
        self.assertFalse(client.closed)
        self.clock.advance(1)
        self.assertTrue(client.transport.disconnecting)

    def test_a_slow_body_is_dropped_at_the_body_timeout(self):
        client = Client(self.factory)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(19):
            self.clock.advance(1)
            client.send(b"a")
        self.assertFalse(client.closed)
        self.clock.advance(1)
        self.assertEqual(self.status(client), 408)
        self.assertEqual(self.error(client), "Request body not received in time")

    def test_a_body_in_time_is_answered(self):
        client = Client(self.factory)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        self.clock.advance(19)
        client.send(b"abcd")
        self.assertNotEqual(self.status(client), 408)
        self.clock.advance(5)
        self.assertFalse(client.aborted)

    def test_an_answer_not_read_is_aborted(self):
        client = Client(self.factory)
        client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        channel = client.protocol.wrappedProtocol  # type: ignore[union-attr]
        channel.pauseProducing()  # the transport's buffer is full
        self.clock.advance(59)
        channel.resumeProducing()  # the client read some
        channel.pauseProducing()
        self.clock.advance(59)
        self.assertFalse(client.aborted)
        self.clock.advance(1)
        self.assertTrue(client.aborted)
        self.assertEqual(self.factory.wrappedFactory.dropped.total, {"answer not read": 1})

    def test_a_long_answer_read_in_time_is_not_cut(self):
        client = Client(self.factory)
        client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(300)  # the answer takes its time, the client is not to blame
        self.assertFalse(client.closed)
        self.assertFalse(client.aborted)


class CapTests(SiteCase):
    def test_connections_past_a_cap_are_answered_503_and_closed(self):
        a1, a2 = Client(self.factory, "10.0.0.1"), Client(self.factory, "10.0.0.1")
        a3 = Client(self.factory, "10.0.0.1")
        self.assertIsInstance(a3.protocol, Refusal, "two per address")
        self.assertEqual(self.status(a3), 503)
        self.assertEqual(self.error(a3), "Too many connections: try again later")
        self.assertTrue(a3.transport.disconnecting)
        b1 = Client(self.factory, "10.0.0.2")
        self.assertFalse(isinstance(b1.protocol, Refusal), "another address has its own two")
        b2 = Client(self.factory, "10.0.0.2")
        self.assertIsInstance(b2.protocol, Refusal, "three in all")
        a1.close()
        a4 = Client(self.factory, "10.0.0.1")
        self.assertFalse(isinstance(a4.protocol, Refusal), "a closed connection frees its place")
        self.assertEqual(dict(self.factory.peers), {"10.0.0.1": 2, "10.0.0.2": 1})
        self.assertEqual(
            sorted(self.factory.refused.total.values()), [1, 1], self.factory.refused.total
        )
        a4.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.status(a4), 200)
        for client in (a2, b1, a4):
            client.close()
        self.assertEqual(dict(self.factory.peers), {})

    def test_descriptors_kept_for_recording(self):
        held = [90]
        descriptors = Descriptors(self.clock, 10, 100, count=lambda: held[0], every=1.0)
        self.assertTrue(descriptors.spare())  # 90 + 10 <= 100
        self.assertFalse(descriptors.spare(), "counted as one more until the next count")
        held[0] = 50
        self.assertFalse(descriptors.spare())
        self.clock.advance(1)
        self.assertTrue(descriptors.spare())
        self.assertEqual(descriptors.for_connections(), 40)
        self.assertTrue(Descriptors(self.clock, 10, None).spare(), "no limit")

    def test_no_connection_while_the_reserve_is_short(self):
        held = [95]
        factory = ConnectionLimits(
            self.factory.wrappedFactory,
            clock=self.clock,
            total=0,
            per_peer=0,
            descriptors=Descriptors(self.clock, 10, 100, count=lambda: held[0]),
        )
        client = Client(factory)
        self.assertIsInstance(client.protocol, Refusal)
        self.assertIn("--fd-reserve", list(factory.refused.total)[0])
        held[0] = 60
        self.clock.advance(1)
        self.assertFalse(isinstance(Client(factory).protocol, Refusal))
        factory.refused.stop()


class LimitsTests(unittest.SynchronousTestCase):
    def test_a_limit_too_low_for_the_reserve_is_reported_at_start(self):
        limits = Limits.of(Config(fd_reserve=90))
        descriptors = Descriptors(Clock(), 90, 128, count=lambda: 20)
        with capturedLogs() as events:
            api_site(Resource(), limits=limits, reactor=Clock(), descriptors=descriptors)
        said = [formatEvent(event) for event in events]
        self.assertIn("HTTP connections: 512 in all, 128 per address; 90 of 128 file", said[0])
        self.assertIn("leaves room for 18 connections only", said[1])
        with capturedLogs() as events:
            api_site(Resource(), limits=LIMITS, reactor=Clock(), descriptors=descriptors)
        self.assertEqual(len(events), 1, "room enough for --max-connections 3")

    def test_limits_come_from_the_config(self):
        limits = Limits.of(Config(max_connections=7, header_timeout=3))
        self.assertEqual((limits.max_connections, limits.header_timeout), (7, 3))
        self.assertEqual(limits.fd_reserve, Config().fd_reserve)

    def test_a_negative_limit_is_refused(self):
        error = self.assertRaises(ValueError, Limits.of, Config(max_connections_per_ip=-1))
        self.assertIn("--max-connections-per-ip", str(error))
