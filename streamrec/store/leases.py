"""Nodes and stream leases: the statements behind several nodes on one database.

Every time is the database's clock (``db_now()``), never a node's, so nodes
whose clocks disagree still agree on who holds what. Each claim and each
renewal is one statement: a lease changes hands only where its row says it
may, whatever the other nodes do at the same moment.

A stream's ``epoch`` grows with every new owner. A run records the epoch it
was opened under, and a segment of an older epoch is not indexed over the
time a newer one has covered (:meth:`LeaseQueries.add_segment` in
:class:`~.sqlstore.SqlStore`), so a node that lost its lease cannot write
over the new owner's archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from .steps import Query, Steps, T


@dataclass(frozen=True)
class Lease:
    """A stream this node holds: its id, the epoch it holds it under, whether it
    is still wanted (a stop from any node clears that), and its URL."""

    stream_id: int
    epoch: int
    wanted: bool
    url: str = ""
    source_audio: str | None = None
    clock: str = "auto"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    public_url: str
    max_streams: int | None
    holds: int
    expires_in: float


_LEASE_COLUMNS = "id, epoch, wanted, url, source_audio, clock"


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(row[0], row[1], bool(row[2]), row[3], row[4], row[5])


class LeaseQueries:
    """Mixed into :class:`~.sqlstore.SqlStore`: nodes, leases and their fencing."""

    def _transaction(self, steps: Steps[T]) -> Deferred[T]:
        raise NotImplementedError

    def _query(self, query: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        raise NotImplementedError

    # -- nodes --------------------------------------------------------------
    def _register(
        self, name: str, public_url: str, max_streams: int | None, lease: float
    ) -> Steps[int]:
        rows = yield Query(
            "INSERT INTO nodes (name, public_url, max_streams, started_at, heartbeat_at,"
            " expires_at) VALUES (?, ?, ?, db_now(), db_now(), db_now() + ?)"
            " ON CONFLICT (name) DO UPDATE SET incarnation = nodes.incarnation + 1,"
            " public_url = excluded.public_url, max_streams = excluded.max_streams,"
            " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
            " expires_at = excluded.expires_at RETURNING incarnation",
            (name, public_url, max_streams, lease),
        )
        # What a node of this name held before belongs to a process that is gone
        # (or is being replaced): free it for whoever claims first, this node too.
        yield Query(
            "UPDATE streams SET owner = NULL, lease_expires = NULL WHERE owner = ?", (name,)
        )
        return int(rows[0][0])

    async def register_node(
        self, name: str, public_url: str, max_streams: int | None, lease: float
    ) -> int:
        """Register (or re-register) a node; its new incarnation number."""
        return await self._transaction(self._register(name, public_url, max_streams, lease))

    async def heartbeat(self, name: str, incarnation: int, lease: float) -> bool:
        """Keep the node alive; False when another process has taken its name."""
        rows = await self._query(
            "UPDATE nodes SET heartbeat_at = db_now(), expires_at = db_now() + ?"
            " WHERE name = ? AND incarnation = ? RETURNING name",
            (lease, name, incarnation),
        )
        return bool(rows)

    async def leave(self, name: str, incarnation: int) -> None:
        """A clean stop: the node's row goes, and so do the leases it still has."""
        await self._transaction(self._leave(name, incarnation))

    def _leave(self, name: str, incarnation: int) -> Steps[None]:
        rows = yield Query(
            "DELETE FROM nodes WHERE name = ? AND incarnation = ? RETURNING name",
            (name, incarnation),
        )
        if rows:
            yield Query(
                "UPDATE streams SET owner = NULL, lease_expires = NULL WHERE owner = ?", (name,)
            )

    async def live_nodes(self) -> list[NodeInfo]:
        """The nodes whose heartbeat has not expired, with how many streams each holds."""
        rows = await self._query(
            "SELECT name, public_url, max_streams, (SELECT COUNT(*) FROM streams"
            " WHERE streams.owner = nodes.name AND streams.wanted = 1), expires_at - db_now()"
            " FROM nodes WHERE expires_at > db_now() ORDER BY name"
        )
        return [NodeInfo(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in rows]

    # -- leases -------------------------------------------------------------
    async def renew_leases(self, name: str, lease: float) -> list[Lease]:
        """Extend every lease the node holds, in one statement; what it still holds.

        A lease that ran out with nobody taking it is still the node's: no
        other node recorded in the meantime.
        """
        rows = await self._query(
            "UPDATE streams SET lease_expires = db_now() + ? WHERE owner = ?"
            f" RETURNING {_LEASE_COLUMNS}",
            (lease, name),
        )
        return sorted((_lease(row) for row in rows), key=lambda lease: lease.stream_id)

    async def claim_streams(self, name: str, lease: float, limit: int) -> list[Lease]:
        """Take up to ``limit`` wanted streams that nobody holds (or whose lease
        ran out), in one statement; the leases won."""
        if limit <= 0:
            return []
        free = "wanted = 1 AND (owner IS NULL OR lease_expires < db_now())"
        rows = await self._query(
            "UPDATE streams SET owner = ?, epoch = epoch + 1, lease_expires = db_now() + ?"
            f" WHERE {free} AND id IN (SELECT id FROM streams WHERE {free} ORDER BY id LIMIT ?)"
            f" RETURNING {_LEASE_COLUMNS}",
            (name, lease, limit),
        )
        return sorted((_lease(row) for row in rows), key=lambda lease: lease.stream_id)

    async def claim_to_start(self, name: str, lease: float, stream_id: int) -> Lease | None:
        """Take the lease of a stream that is not started, to start it here; None
        if it is started, or still held by the node that recorded it last."""
        rows = await self._query(
            "UPDATE streams SET owner = ?, epoch = epoch + 1, lease_expires = db_now() + ?"
            " WHERE id = ? AND wanted = 0 AND (owner IS NULL OR owner = ?"
            " OR lease_expires < db_now())"
            f" RETURNING {_LEASE_COLUMNS}",
            (name, lease, stream_id, name),
        )
        return _lease(rows[0]) if rows else None

    async def release_leases(self, name: str, stream_ids: Sequence[int]) -> None:
        """Give leases up (the stream stays wanted or not, as it is)."""
        if not stream_ids:
            return
        marks = ", ".join("?" for _ in stream_ids)
        await self._query(
            "UPDATE streams SET owner = NULL, lease_expires = NULL"
            f" WHERE owner = ? AND id IN ({marks}) RETURNING id",
            (name, *stream_ids),
        )

    async def next_lease_expiry(self, name: str) -> float | None:
        """Seconds until the first lease held by another node runs out (None: none held)."""
        rows = await self._query(
            "SELECT MIN(lease_expires) - db_now() FROM streams"
            " WHERE wanted = 1 AND owner IS NOT NULL AND owner <> ?",
            (name,),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    async def unowned_wanted(self) -> int:
        """How many wanted streams nobody holds, or whose lease ran out."""
        rows = await self._query(
            "SELECT COUNT(*) FROM streams"
            " WHERE wanted = 1 AND (owner IS NULL OR lease_expires < db_now())"
        )
        return int(rows[0][0])

    async def newer_owner_recorded(self, stream_id: int, epoch: int) -> bool:
        """Whether a node that holds the stream under a newer epoch has indexed a segment."""
        rows = await self._query(
            "SELECT 1 FROM runs WHERE stream_id = ? AND epoch > ?"
            " AND EXISTS (SELECT 1 FROM segments WHERE segments.run_id = runs.id) LIMIT 1",
            (stream_id, epoch),
        )
        return bool(rows)

    async def set_recorder_state(
        self, stream_id: int, name: str, state: str, error: str | None
    ) -> None:
        """The state of the stream's recorder, as its owner (and only it) reports it."""
        await self._query(
            "UPDATE streams SET recorder_state = ?, last_error = COALESCE(?, last_error)"
            " WHERE id = ? AND owner = ? RETURNING id",
            (state, error, stream_id, name),
        )
