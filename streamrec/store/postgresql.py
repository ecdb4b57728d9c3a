"""The shared-engine adapter: PostgreSQL through txpostgres.

txpostgres drives psycopg2's asynchronous connections from the reactor, so
no query occupies a thread. The pool opens its connections on first use (or
:meth:`PostgresDriver.connect`); each transaction checks one connection out,
runs its steps one after another, and puts it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import psycopg2
from twisted.internet.defer import Deferred, DeferredLock, FirstError
from twisted.logger import Logger
from txpostgres import reconnection, retrying, txpostgres
from txpostgres.reconnection import ConnectionDead

from ..errors import DatabaseUnavailable
from .steps import Insert, Lock, Query, Step, Steps, T, pyformat

#: connections per service: the clip worker, the recorders and the API share them
POOL_SIZE = 4

#: Seconds between attempts to reach a database that did not answer.
RETRY_SECONDS = 0.5


log = Logger(namespace="streamrec.store")


class StoreClosed(RuntimeError):
    pass


class Connection(txpostgres.Connection):
    """A txpostgres connection whose loss, found while idle, is a disconnection
    like any other (txpostgres lets psycopg2's error escape to the reactor,
    which logs it as a crash)."""

    def doRead(self) -> Any:
        try:
            return super().doRead()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            return error  # the reason it is lost: its detector, if any, reconnects
        except ValueError:  # txpostgres watching the socket (fd -1) of a closed connection
            return psycopg2.OperationalError("the server closed the connection")


class PostgresDriver:
    dialect = "postgresql"

    def __init__(self, dsn: str, reactor: Any = None, size: int = POOL_SIZE) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._pool_class = type(
            "Pool",
            (txpostgres.ConnectionPool,),
            {"reactor": reactor, "connectionFactory": Connection},
        )
        self._size = size
        self._dsn = dsn
        self._reactor = reactor
        self._new_pool()
        self._connecting = DeferredLock()
        self._closed = False
        self._busy = 0
        self._close_waiters: list[Deferred[None]] | None = []
        self._listener: Any = None
        # When the last attempt to connect failed: the next waits RETRY_SECONDS.
        self._failed_at: float | None = None
        self.lost = 0  # connections lost and made again, for the curious

    def _new_pool(self) -> None:
        self._pool = self._pool_class(None, self._dsn, min=self._size)
        # The pool forgets a connection while it is checked out; close() must not.
        self._connections = list(self._pool.connections)
        self._connected = False

    # -- connections ------------------------------------------------------
    def connect(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._use(self._nothing))

    async def _nothing(self) -> None:
        pass

    async def _connect_once(self) -> None:
        if self._connected:
            return
        now = self._reactor.seconds()
        if self._failed_at is not None and now - self._failed_at < RETRY_SECONDS:
            raise DatabaseUnavailable("the database did not answer; trying again shortly")
        try:
            await self._pool.start()
        except FirstError as error:
            # the first connection's error (psycopg2.OperationalError), not a wrapper
            self._failed(error.subFailure.value or error)
        except BaseException as error:
            self._failed(error)
        self._failed_at = None
        self._connected = True

    def _failed(self, error: BaseException) -> NoReturn:
        """Connecting failed: start afresh next time (not before RETRY_SECONDS)."""
        self._failed_at = self._reactor.seconds()
        self._close_pool()
        self._new_pool()
        if is_disconnection(error):
            raise DatabaseUnavailable(f"cannot reach the database: {first_line(error)}") from error
        raise error

    async def _use(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn`` once connected, counted as in flight until it ends.

        A statement that finds the connection gone fails with
        :class:`~streamrec.errors.DatabaseUnavailable`, and the pool is made
        anew: the next statement connects again (psycopg2's connections do
        not come back by themselves).
        """
        if self._closed:
            raise StoreClosed("the PostgreSQL store is closed")
        self._busy += 1
        try:
            if not self._connected:
                await self._connecting.run(self._connect_once)
            pool = self._pool
            try:
                return await fn(*args)
            except Exception as error:
                if not is_disconnection(error):
                    raise
                if pool is self._pool and not self._closed:
                    self.lost += 1
                    log.warn("lost the database connection: {error}", error=first_line(error))
                    self._close_pool()
                    self._new_pool()
                raise DatabaseUnavailable(f"lost the database: {first_line(error)}") from error
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
        self._close_pool()
        if self._closed and self._close_waiters is not None:
            waiters, self._close_waiters = self._close_waiters, None
            for waiter in waiters:
                waiter.callback(None)

    def _close_pool(self) -> None:
        for connection in self._connections:
            # txpostgres' close() fails on a connection that never connected.
            raw = connection._connection
            if raw is not None and not raw.closed:
                try:
                    connection.close()
                except Exception:  # already broken: nothing to close cleanly
                    pass

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

    def read(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return self.query(sql, params)  # the pool's connections do not queue behind each other

    def operation(self, sql: str, params: Sequence[Any] = ()) -> Deferred[None]:
        return Deferred.fromCoroutine(self._use(self._operation, sql, tuple(params)))

    async def _operation(self, sql: str, params: tuple[Any, ...]) -> None:
        await self._pool.runOperation(pyformat(sql, params), params or None)

    # -- notifications ------------------------------------------------------
    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for each NOTIFY on ``channel``, on a connection
        of its own that reconnects by itself; after a reconnection, with ``""``
        (what was sent meanwhile is lost: NOTIFY is not durable)."""
        detector = reconnection.DeadConnectionDetector(
            reconnectionIterator=_listen_retry_delays, reactor=self._reactor
        )
        connection = Connection(reactor=self._reactor, detector=detector)
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


def _listen_retry_delays() -> Any:
    return retrying.simpleBackoffIterator(
        initialDelay=RETRY_SECONDS, maxDelay=2.0, factor=1.5, maxRetries=0, now=True
    )


def is_disconnection(error: BaseException) -> bool:
    """Whether ``error`` means the connection is gone (not a bad statement)."""
    if isinstance(error, (psycopg2.InterfaceError, ConnectionDead, txpostgres.RollbackFailed)):
        return True
    if isinstance(error, psycopg2.OperationalError):
        # Connection failures (class 08), server shutdown (57P), or none at all.
        code = getattr(error, "pgcode", None)
        return code is None or code.startswith(("08", "57P"))
    return False


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
