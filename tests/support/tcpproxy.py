"""A TCP proxy on 127.0.0.1 that a test can cut and mend: a network between a
node and its database that fails, without touching the database itself."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.protocols import portforward


class _Server(portforward.ProxyServer):
    def connectionMade(self) -> None:
        factory: CuttableProxy = self.factory  # type: ignore[assignment]
        if factory.cut:
            self.transport.abortConnection()
            return
        factory.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class CuttableProxy(portforward.ProxyFactory):
    """Forwards 127.0.0.1:``port`` to ``host``:``target``; :meth:`cut` drops every
    connection and refuses new ones until :meth:`mend`."""

    protocol = _Server

    def __init__(self, host: str, target: int) -> None:
        super().__init__(host, target)
        self.cut = False
        self.open: set[_Server] = set()
        self.listening: Any = None

    def listen(self) -> int:
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        return int(self.listening.getHost().port)

    def sever(self) -> None:
        self.cut = True
        for server in list(self.open):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()

    def mend(self) -> None:
        self.cut = False

    def close(self) -> Any:
        self.sever()
        return self.listening.stopListening() if self.listening is not None else None
