"""The embedded adapter: SQLite through ``twisted.enterprise.adbapi``.

One connection in one worker thread writes, so transactions never overlap
and :class:`~streamrec.store.steps.Lock` has nothing to do. A second
connection, in a thread of its own, answers :meth:`SqliteDriver.read`: in
WAL mode it reads the last committed state while a write is in flight, so
the API's status and list do not wait behind the segment inserts of a
hundred cameras (each statement of which waits for the GIL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed

from .steps import Insert, Lock, Query, Step, Steps, T


def run_steps(txn: Any, steps: Steps[T]) -> T:
    """Drive ``steps`` synchronously on a DB-API cursor (inside ``runInteraction``)."""
    result: Any = None
    try:
        while True:
            try:
                step = steps.send(result)
            except StopIteration as done:
                return done.value
            result = _execute(txn, step)
    finally:
        steps.close()


def _execute(txn: Any, step: Step) -> Any:
    if isinstance(step, Lock):
        return None
    txn.execute(step.sql, tuple(step.params))
    if isinstance(step, Insert):
        return int(txn.lastrowid)
    assert isinstance(step, Query)
    return txn.fetchall() if txn.description is not None else []


class SqliteDriver:
    dialect = "sqlite"

    def __init__(self, pool: adbapi.ConnectionPool, reads: adbapi.ConnectionPool) -> None:
        self._pool = pool
        self._reads = reads

    def connect(self) -> Deferred[None]:
        return succeed(None)  # adbapi connects in its thread on first use

    def transaction(self, steps: Steps[T]) -> Deferred[T]:
        return self._pool.runInteraction(run_steps, steps)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return self._pool.runQuery(sql, tuple(params))

    def operation(self, sql: str, params: Sequence[Any] = ()) -> Deferred[None]:
        return self._pool.runOperation(sql, tuple(params))

    def read(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return self._reads.runQuery(sql, tuple(params))

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Nothing to hear: one process uses a SQLite file."""

    def notify(self, channel: str, payload: str) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        self._pool.close()  # waits for the interaction in flight, in its thread
        self._reads.close()
        return succeed(None)


def _connected(connection: Any) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    # The database's clock, as PostgreSQL has it (schema 005): here, this box's.
    connection.create_function("db_now", 0, time.time)


def sqlite_driver(path: str) -> SqliteDriver:
    """A driver for a SQLite file: one thread writes, another reads."""

    def one_thread() -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_connected,
            timeout=30,
        )

    return SqliteDriver(one_thread(), one_thread())
