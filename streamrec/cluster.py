"""This node among the nodes that share a database: leases, placement, failover.

Every started stream has a lease in the database (:mod:`streamrec.store.leases`):
the node that holds it records it, and no other. A node

- registers and heartbeats on the database's clock;
- renews all its leases in one statement, every third of the lease;
- takes wanted streams that nobody holds, or whose lease ran out (a dead
  node's), up to its fair share of the live nodes and its ``max_streams``;
- stops recording what it no longer holds (another node took it while this
  one was cut off) or what is no longer wanted (stopped through any node);
- on a clean stop, gives its leases up before its last segments close, and
  says so, so that the others take the streams at once.

Notifications (PostgreSQL's LISTEN/NOTIFY) only wake the nodes up: what a
node does is always decided from the rows, so a lost notification costs at
most one renewal interval. On the embedded SQLite default there is one node,
and the same rules make it record every started stream.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .errors import DatabaseUnavailable
from .recorder.fleet import Recorders
from .recorder.supervisor import RecorderListener
from .store import SqlStore, Stream
from .store.leases import Lease

log = Logger(namespace="streamrec.cluster")

#: The channel nodes notify each other on.
CHANNEL = "streamrec_leases"

#: Seconds a lease lasts unless renewed (Kubernetes' Lease default).
LEASE_SECONDS = 15.0

#: Seconds a node records on, at most, after it learns that another node took a
#: stream, while the new owner has indexed nothing yet: never a hole between them.
OVERLAP_SECONDS = 30.0


def default_node_name() -> str:
    return socket.gethostname()


class StreamLocks:
    """One operation at a time per stream (start, stop, taking, giving up);
    a stream's lock goes once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, defer.DeferredLock] = {}

    def busy(self, stream_id: int) -> bool:
        return stream_id in self._locks

    async def run(self, stream_id: int, step: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        lock = self._locks.setdefault(stream_id, defer.DeferredLock())
        try:
            return await lock.run(lambda: defer.ensureDeferred(step()))
        finally:
            if not lock.locked and not lock.waiting:
                self._locks.pop(stream_id, None)


class Node(Service):
    """Holds this node's leases and keeps its recorders in step with them."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: SqlStore,
        recorders: Recorders,
        listener: RecorderListener,
        locks: StreamLocks,
        name: str,
        public_url: str,
        max_streams: int | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.recorders = recorders
        self.listener = listener
        self.locks = locks
        self.node_name = name
        self.public_url = public_url
        self.max_streams = max_streams
        self.lease_seconds = lease_seconds
        self.incarnation = 0
        self.held: dict[int, Lease] = {}
        self._tick_call: IDelayedCall | None = None
        self._ticking: defer.Deferred[None] | None = None
        self._again = False
        # Since when wanted streams have been left unclaimed (None: none are).
        self._unclaimed_since: float | None = None
        self._stopping = False
        # The last round could not reach the database. Once it answers again, this
        # node only renews for a lease's length (until ``_claims_from``), so that
        # the nodes that were cut off too keep their streams.
        self._cut_off = False
        self._claims_from = 0.0
        # Streams another node took, still recorded here until it has recorded: since when.
        self._overlap: dict[int, float] = {}

    @property
    def renew_every(self) -> float:
        return self.lease_seconds / 3

    def has_room(self) -> bool:
        return self.max_streams is None or len(self.held) < self.max_streams

    # -- life -------------------------------------------------------------------
    async def join(self) -> None:
        """Register, listen to the other nodes, and take what is ours to record."""
        self.incarnation = await self.store.register_node(
            self.node_name, self.public_url, self.max_streams, self.lease_seconds
        )
        log.info(
            "node {name} joined (incarnation {incarnation}, leases of {lease:g} s)",
            name=self.node_name,
            incarnation=self.incarnation,
            lease=self.lease_seconds,
        )
        await self.store.listen(CHANNEL, self._heard)
        await self.tick()

    def stopService(self) -> None:
        Service.stopService(self)
        self._stopping = True
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None

    async def hand_over(self) -> None:
        """A clean stop: give every lease up and tell the others, before the
        recorders close their last segments (the service stops them next)."""
        self._stopping = True
        held = sorted(self.held)
        self.held.clear()
        try:
            await self.store.leave(self.node_name, self.incarnation)
            await self.store.notify(CHANNEL, f"released {self.node_name}")
        except Exception:
            log.failure("node {name}: could not give its leases up", name=self.node_name)
            return
        if held:
            log.info(
                "node {name}: handed over {count} streams", name=self.node_name, count=len(held)
            )

    def _heard(self, payload: str) -> None:
        if payload.endswith(f" {self.node_name}") and not payload.startswith("start "):
            return  # our own news
        self.wake()

    def wake(self) -> None:
        """Renew and claim now rather than at the next interval."""
        if not self._stopping:
            self._schedule(0)

    # -- the loop -----------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if self._stopping:
            return
        if self._tick_call is not None and self._tick_call.active():
            if self._tick_call.getTime() <= self.reactor.seconds() + delay:
                return
            self._tick_call.cancel()
        self._tick_call = self.reactor.callLater(max(0.0, delay), self._tick_soon)

    def _tick_soon(self) -> None:
        self._tick_call = None
        d = defer.ensureDeferred(self.tick())
        d.addErrback(
            lambda failure: log.failure(
                "node {name}: lease round failed", failure, name=self.node_name
            )
        )

    async def tick(self) -> None:
        """One round: heartbeat, renew, let go of what is lost, take what is free."""
        if self._ticking is not None:
            self._again = True
            return
        self._ticking = defer.Deferred()
        next_round = self.renew_every
        try:
            next_round = await self._round()
        except DatabaseUnavailable as failure:
            if not self._cut_off:
                log.warn(
                    "node {name}: database unavailable ({why}); recording on",
                    name=self.node_name,
                    why=failure.reason,
                )
            self._cut_off = True
            next_round = min(1.0, self.renew_every)
        except Exception:
            log.failure(
                "node {name}: the database did not answer the lease round", name=self.node_name
            )
            next_round = min(2.0, self.renew_every)
        finally:
            ticking, self._ticking = self._ticking, None
            ticking.callback(None)
            again, self._again = self._again, False
            self._schedule(0 if again else next_round)

    async def _round(self) -> float:
        if self._stopping:
            return self.renew_every
        if not await self.store.heartbeat(self.node_name, self.incarnation, self.lease_seconds):
            log.error(
                "node {name}: another process registered under this name; stopping"
                " every recorder here",
                name=self.node_name,
            )
            self.held.clear()
            await self._follow({}, overlap=False)
            self._stopping = True
            return self.renew_every
        held = {
            lease.stream_id: lease
            for lease in await self.store.renew_leases(self.node_name, self.lease_seconds)
        }
        self.held = {sid: lease for sid, lease in held.items() if lease.wanted}
        await self._follow(held)
        if self._cut_off:
            self._cut_off = False
            self._claims_from = self.reactor.seconds() + self.lease_seconds
            log.info("node {name}: the database is back", name=self.node_name)
        if self.reactor.seconds() < self._claims_from:
            return min(1.0, self.renew_every)  # the others renew before anyone claims
        room = await self._room()
        if room > 0:
            claimed = await self.store.claim_streams(self.node_name, self.lease_seconds, room)
            if self._stopping:  # handing over meanwhile: these go back at once
                await self.store.release_leases(self.node_name, [c.stream_id for c in claimed])
                return self.renew_every
            for lease in claimed:
                self.held[lease.stream_id] = lease
                log.info(
                    "node {name}: took stream {stream_id} (epoch {epoch})",
                    name=self.node_name,
                    stream_id=lease.stream_id,
                    epoch=lease.epoch,
                )
                self._record(lease)
            if claimed:
                await self.store.notify(CHANNEL, f"claimed {self.node_name}")
        # Wake up when the first lease of another node could run out.
        expiry = await self.store.next_lease_expiry(self.node_name)
        if expiry is not None:
            return max(0.05, min(self.renew_every, expiry + 0.05))
        return self.renew_every

    async def _room(self) -> int:
        """How many streams to take this round: up to this node's fair share of
        the live nodes, or up to its capacity when streams stayed unclaimed for a
        whole renewal interval (the others had their round, and left them)."""
        free = await self.store.unowned_wanted()
        now = self.reactor.seconds()
        if free == 0:
            self._unclaimed_since = None
            return 0
        if self._unclaimed_since is None:
            self._unclaimed_since = now
        left = now - self._unclaimed_since >= self.renew_every
        capacity = math.inf if self.max_streams is None else self.max_streams - len(self.held)
        nodes = await self.store.live_nodes()
        wanted = free + sum(node.holds for node in nodes)
        share = math.ceil(wanted / max(1, len(nodes))) - len(self.held)
        take = capacity if left else min(capacity, share)
        return int(min(take, free))

    async def _follow(self, held: dict[int, Lease], overlap: bool = True) -> None:
        """Stop what this node no longer holds or is no longer wanted; record what
        it holds and does not record yet."""
        for stream_id in [s for s in self._overlap if s not in self.recorders.by_stream]:
            del self._overlap[stream_id]
        for stream_id, recorder in list(self.recorders.by_stream.items()):
            if self.locks.busy(stream_id) or not recorder.wanted:
                continue
            lease = held.get(stream_id)
            if lease is None or lease.epoch != recorder.epoch:
                if overlap and not await self._overlap_over(stream_id, recorder.epoch):
                    continue
                log.warn(
                    "node {name}: stream {stream_id} is recorded by another node now;"
                    " stopping here",
                    name=self.node_name,
                    stream_id=stream_id,
                )
                self._let_go(stream_id, release=False)
            elif not lease.wanted:
                log.info(
                    "node {name}: stream {stream_id} was stopped through another node",
                    name=self.node_name,
                    stream_id=stream_id,
                )
                self._let_go(stream_id, release=True)
        for stream_id, lease in held.items():
            if self.locks.busy(stream_id):
                continue
            known = self.recorders.get(stream_id)
            running = known is not None and known.wanted
            if lease.wanted and not running:
                self._record(lease)
            elif not lease.wanted and not running:
                await self.store.release_leases(self.node_name, [stream_id])

    async def _overlap_over(self, stream_id: int, epoch: int) -> bool:
        """Whether to stop recording a stream another node took: once that node
        has indexed a segment, or after :data:`OVERLAP_SECONDS` in any case."""
        now = self.reactor.seconds()
        since = self._overlap.setdefault(stream_id, now)
        if now - since < OVERLAP_SECONDS and not await self.store.newer_owner_recorded(
            stream_id, epoch
        ):
            if since == now:
                log.info(
                    "node {name}: stream {stream_id} was taken by another node;"
                    " recording on until it has recorded",
                    name=self.node_name,
                    stream_id=stream_id,
                )
            return False
        del self._overlap[stream_id]
        return True

    def _record(self, lease: Lease) -> None:
        async def step() -> None:
            stream = Stream(
                id=lease.stream_id,
                url=lease.url,
                description="",
                create_date=0.0,
                start_date=None,
                stop_date=None,
                wanted=True,
                last_error=None,
                source_audio=lease.source_audio,
                clock=lease.clock,
            )
            recorder = self.recorders.for_stream(stream, listener=self.listener)
            if not recorder.wanted:
                recorder.resume(lease.epoch)

        self._locked(lease.stream_id, step)

    def _let_go(self, stream_id: int, release: bool) -> None:
        async def step() -> None:
            recorder = self.recorders.get(stream_id)
            if recorder is not None:
                await recorder.stop()
            if release:
                await self.store.release_leases(self.node_name, [stream_id])

        self.held.pop(stream_id, None)
        self._locked(stream_id, step)

    def _locked(self, stream_id: int, step: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        d = defer.ensureDeferred(self.locks.run(stream_id, step))
        d.addErrback(
            lambda failure: log.failure(
                "node {name}: stream {stream_id}", failure, name=self.node_name, stream_id=stream_id
            )
        )
