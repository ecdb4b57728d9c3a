"""The shared-engine adapter: PostgreSQL through txpostgres.

txpostgres drives psycopg2's asynchronous connections from the reactor, so
no query occupies a thread. The pool opens its connections on first use (or
:meth:`PostgresDriver.connect`); each transaction checks one connection out,
runs its steps one after another, and puts it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, FirstError
from twisted.logger import Logger
from txpostgres import reconnection, txpostgres

from .steps import Insert, Lock, Query, Step, Steps, T, pyformat

#: connections per service: the clip worker, the recorders and the API share them
POOL_SIZE = 4


log = Logger(namespace="streamrec.store")


class StoreClosed(RuntimeError):
    pass


class PostgresDriver:
    dialect = "postgresql"

    def __init__(self, dsn: str, reactor: Any = None, size: int = POOL_SIZE) -> None:
        if reactor is None:
            from twisted.internet import reactor
        pool_class = type("Pool", (txpostgres.ConnectionPool,), {"reactor": reactor})
        self._pool = pool_class(None, dsn, min=size)
        # The pool forgets a connection while it is checked out; close() must not.
        self._connections = list(self._pool.connections)
        self._connecting = DeferredLock()
        self._connected = False
        self._closed = False
        self._busy = 0
        self._close_waiters: list[Deferred[None]] | None = []
        self._dsn = dsn
        self._reactor = reactor
        self._listener: Any = None

    # -- connections ------------------------------------------------------
    def connect(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._use(self._nothing))

    async def _nothing(self) -> None:
        pass

    async def _connect_once(self) -> None:
        if self._connected:
            return
        try:
            await self._pool.start()
        except FirstError as error:
            # the first connection's error (psycopg2.OperationalError), not a wrapper
            self._close_connections()
            error.subFailure.raiseException()
        except BaseException:
            self._close_connections()
            raise
        self._connected = True

    async def _use(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn`` once connected, counted as in flight until it ends."""
        if self._closed:
            raise StoreClosed("the PostgreSQL store is closed")
        self._busy += 1
        try:
            if not self._connected:
                await self._connecting.run(self._connect_once)
            return await fn(*args)
        finally:
            self._busy -= 1
            if self._closed and not self._busy:
                self._close_connections()

    def close(self) -> Deferred[None]:
        """Refuse new work; close the connections once the statements in
        flight have ended (as adbapi's close lets its threads finish).
        The Deferred fires when they are closed."""
        self._closed = True
        if not self._busy:
            self._close_connections()
        waiter: Deferred[None] = Deferred()
        if self._close_waiters is None:
            waiter.callback(None)
        else:
            self._close_waiters.append(waiter)
        return waiter

    def _close_connections(self) -> None:
        if self._listener is not None:
            self._listener.detector.reconnectable = None  # no reconnecting after close
            raw = self._listener._connection
            if raw is not None and not raw.closed:
                self._listener.close()
            self._listener = None
        for connection in self._connections:
            # txpostgres' close() fails on a connection that never connected.
            raw = connection._connection
            if raw is not None and not raw.closed:
                connection.close()
        if self._closed and self._close_waiters is not None:
            waiters, self._close_waiters = self._close_waiters, None
            for waiter in waiters:
                waiter.callback(None)

    # -- statements -------------------------------------------------------
    def transaction(self, steps: Steps[T]) -> Deferred[T]:
        return Deferred.fromCoroutine(self._use(self._transaction, steps))

    async def _transaction(self, steps: Steps[T]) -> T:
        return await self._pool.runInteraction(self._run_steps, steps)

    def _run_steps(self, cursor: Any, steps: Steps[T]) -> Deferred[T]:
        return Deferred.fromCoroutine(run_steps(cursor, steps))

    def query(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return Deferred.fromCoroutine(self._use(self._query, sql, tuple(params)))

    async def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return await self._pool.runQuery(pyformat(sql, params), params or None)

    def operation(self, sql: str, params: Sequence[Any] = ()) -> Deferred[None]:
        return Deferred.fromCoroutine(self._use(self._operation, sql, tuple(params)))

    async def _operation(self, sql: str, params: tuple[Any, ...]) -> None:
        await self._pool.runOperation(pyformat(sql, params), params or None)

    # -- notifications ------------------------------------------------------
    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for each NOTIFY on ``channel``, on a connection
        of its own that reconnects by itself; after a reconnection, with ``""``
        (what was sent meanwhile is lost: NOTIFY is not durable)."""
        detector = reconnection.DeadConnectionDetector()
        connection = txpostgres.Connection(reactor=self._reactor, detector=detector)
        connection.addNotifyObserver(lambda notify: callback(notify.payload))

        async def subscribe() -> None:
            await connection.runOperation(f'LISTEN "{channel}"')

        async def recovered() -> None:
            log.info("database notifications: reconnected")
            await subscribe()
            callback("")

        detector.addRecoveryHandler(lambda: Deferred.fromCoroutine(recovered()))
        self._listener = connection
        await connection.connect(self._dsn)
        await subscribe()

    def notify(self, channel: str, payload: str) -> Deferred[None]:
        return self.operation("SELECT pg_notify(?, ?)", (channel, payload))


async def run_steps(cursor: Any, steps: Steps[T]) -> T:
    """Drive ``steps`` on a txpostgres cursor, whose ``execute`` returns a Deferred."""
    result: Any = None
    try:
        while True:
            try:
                step = steps.send(result)
            except StopIteration as done:
                return done.value
            result = await _execute(cursor, step)
    finally:
        steps.close()


async def _execute(cursor: Any, step: Step) -> Any:
    if isinstance(step, Lock):
        await cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (step.namespace, step.key & 0x7FFFFFFF)
        )
        return None
    params = tuple(step.params)
    if isinstance(step, Insert):
        await cursor.execute(pyformat(step.sql + " RETURNING id", params), params or None)
        return int(cursor.fetchone()[0])
    assert isinstance(step, Query)
    await cursor.execute(pyformat(step.sql, params), params or None)
    return cursor.fetchall() if cursor.description is not None else []


def postgres_driver(url: str, reactor: Any = None) -> PostgresDriver:
    """A driver for ``postgresql://USER@HOST:PORT/DB`` (any libpq connection URI)."""
    return PostgresDriver(url, reactor=reactor)
