"""The service tree: store, API site, recorders, the clip worker and the janitor.

Everything is built beforehand (:func:`streamrec.tap.build_service`) and
handed in. Starting is a sequence: migrate the store, recover what a dead
predecessor left, listen, start the worker and the janitor, join the nodes
on the database (and so take the started streams this node is to record).
Stopping undoes it: the streams are handed over to the other nodes, then the
recorders stop, so their last segments are closed and indexed before the
store closes.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from .api import StreamrecAPI
from .clips.worker import ClipWorker
from .cluster import Node
from .core import Streams
from .janitor import Janitor
from .recorder.indexing import SegmentChecker
from .recorder.journal import SegmentJournal
from .recorder.layout import SegmentLayout
from .recorder.recovery import recover
from .store import SqlStore
from .web import Limits, api_site

log = Logger(namespace="streamrec.service")


class StreamrecService(MultiService):
    """Opens the store, listens, resumes recorders; shuts down gracefully."""

    def __init__(
        self,
        *,
        reactor: Any,
        listen: str,
        public_url: str,
        store: SqlStore,
        layout: SegmentLayout,
        checker: SegmentChecker,
        journal: SegmentJournal,
        streams: Streams,
        node: Node,
        api: StreamrecAPI,
        limits: Limits,
        worker: ClipWorker,
        janitor: Janitor,
        exit_on_failure: bool = False,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.listen = listen
        self.public_url = public_url
        self.store = store
        self.layout = layout
        self.checker = checker
        self.journal = journal
        self.streams = streams
        self.node = node
        self.api = api
        self.limits = limits
        self.worker = worker
        self.janitor = janitor
        self.exit_on_failure = exit_on_failure
        self.port: Any = None
        self.ready: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:
        Service.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)
        d.chainDeferred(self.ready)

    def _start_failed(self, failure: Any) -> Any:
        log.failure("streamrec could not start", failure)
        if self.exit_on_failure:
            # A system service that cannot start must say so in its exit status.
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()
        return failure

    async def _start(self) -> None:
        version = await self.store.migrate()
        log.info("database schema version {version}", version=version)
        if self.journal.load():
            # Segments closed while the database was away, with their exact place.
            await self.journal.replay()
        report = await recover(
            reactor=self.reactor,
            store=self.store,
            layout=self.layout,
            checker=self.checker,
            node=self.node.node_name,
        )
        if report.indexed or report.quarantined or report.orphans:
            log.info(
                "recovery: {indexed} segments indexed from disk, {bad} quarantined,"
                " {orphans} leftover segmenters ended",
                indexed=len(report.indexed),
                bad=len(report.quarantined),
                orphans=len(report.orphans),
            )
        site = api_site(
            self.api.resource(),
            limits=self.limits,
            reactor=self.reactor,
            request_factory=self.api.request_factory,
            log_formatter=self.api.log_formatter,
        )
        endpoint = endpoints.serverFromString(self.reactor, self.listen)
        if not self.running:
            return  # stopped while recovering
        self.port = await endpoint.listen(site)
        self.worker.setServiceParent(self)
        self.janitor.setServiceParent(self)
        self.node.setServiceParent(self)
        if self.running:
            await self.node.join()  # takes the streams this node is to record
        if self.api.access.open:
            log.warn(
                "the API is open: anyone who reaches {listen} may start and stop"
                " recordings and read every stream (give --tokens FILE to require tokens)",
                listen=self.listen,
            )
        log.info(
            "streamrec listening on {listen}, links under {url}, data in {data}",
            listen=self.listen,
            url=self.public_url,
            data=self.layout.data_dir,
        )

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
        await self.streams.shutdown()
        self.journal.stop()  # what it still holds is replayed at the next start
        await defer.maybeDeferred(MultiService.stopService, self)
        await self.store.close()
