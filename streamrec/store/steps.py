"""SQL steps: what a store transaction asks of a database, without doing I/O.

A transaction is written once, as a generator that yields steps and receives
their results::

    def _rename(self, stream_id: int, name: str) -> Steps[bool]:
        rows = yield Query("SELECT id FROM streams WHERE id = ?", (stream_id,))
        if not rows:
            return False
        yield Query("UPDATE streams SET description = ? WHERE id = ?", (name, stream_id))
        return True

Each adapter has a :class:`Driver` that runs such a generator inside one
transaction of its own connection pool: the SQLite driver synchronously in
``adbapi``'s worker thread, the PostgreSQL driver asynchronously on
txpostgres' non-blocking connections. SQL is written with ``?`` placeholders
and portable types; the driver translates what its dialect spells otherwise.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """Run one statement; the result is every row it returns (``[]`` if none)."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True)
class Insert:
    """Insert one row into a table with an ``id`` key; the result is the new id."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True)
class Lock:
    """Hold a named lock (``namespace``, ``key``) until the transaction ends.

    Serializes read-then-write transactions (find-or-create) between the
    connections of a shared database. The result is ``None``. Drivers whose
    transactions are already serialized (one SQLite connection) do nothing.
    """

    namespace: int
    key: int = 0


Step = Query | Insert | Lock
Steps = Generator[Step, Any, T]


class Driver(Protocol):
    """How an adapter runs steps; :class:`streamrec.store.SqlStore` uses only this."""

    #: the folder of ``schema/`` whose numbered .sql files build this database
    dialect: str

    def connect(self) -> Deferred[None]:
        """Open the connections; idempotent. Other methods connect when needed."""

    def transaction(self, steps: Steps[T]) -> Deferred[T]:
        """Run ``steps`` in one transaction; roll back if a step or the generator fails."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        """One statement on its own; its rows."""

    def operation(self, sql: str, params: Sequence[Any] = ()) -> Deferred[None]:
        """One statement on its own, for its effect."""

    def read(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        """A read-only statement that need not wait behind writes in flight; its rows."""

    async def listen(self, channel: str, callback: Any) -> None:
        """Call ``callback(payload)`` for each notification on ``channel`` from any
        connection to the database (nothing, where only one process uses it)."""

    def notify(self, channel: str, payload: str) -> Deferred[None]:
        """Notify every listener of ``channel`` (after this transaction's commit)."""

    def close(self) -> Deferred[None]:
        """Refuse new work and close the connections once the work in flight
        has ended; the Deferred fires then."""


def pyformat(sql: str, params: Sequence[Any]) -> str:
    """``?`` placeholders as ``%s`` (psycopg2's paramstyle), literal ``%`` doubled.

    Our SQL has no ``?`` inside string literals; without parameters psycopg2
    does no formatting at all, so the text stays as written.
    """
    if not params:
        return sql
    return sql.replace("%", "%%").replace("?", "%s")
