"""The PostgreSQL driver through a lost connection: a clear error, then back by itself.

Connections are cut the way a database restart cuts them (the server ends
their backends); the store is expected to answer ``DatabaseUnavailable``
for what was in flight and to connect again for what comes next.
"""

from __future__ import annotations

import psycopg2
from twisted.trial import unittest

from streamrec.errors import DatabaseUnavailable
from streamrec.store import SqlStore, open_store

from ..support.harness import sleep, until
from ..support.livesource import free_port
from .test_store import DATABASE, NO_DATABASE, fresh_postgres_url, run


def end_connections(url: str) -> int:
    """End every server backend of ``url`` (as a restart would); how many."""
    name = url.rsplit("application_name=", 1)[1]
    admin = psycopg2.connect(DATABASE)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (name,),
            )
            return len(cursor.fetchall())
    finally:
        admin.close()


class ReconnectTests(unittest.TestCase):
    if not DATABASE:
        skip = NO_DATABASE

    async def store(self) -> SqlStore:
        # A name of its own, so that only this store's connections are ended.
        self.url = fresh_postgres_url(self) + f"&application_name=streamrec-{id(self)}"
        store = open_store(self.url, self.mktemp())
        self.addCleanup(store.close)
        await store.migrate()
        return store

    @run
    async def test_a_lost_connection_is_a_clear_error_then_it_connects_again(self) -> None:
        store = await self.store()
        stream = await store.create_stream("rtsp://cam/1", "", 1.0)
        self.assertGreater(end_connections(self.url), 0)
        await sleep(0.2)
        with self.assertRaises(DatabaseUnavailable) as caught:
            for _ in range(8):  # each pooled connection finds out once
                await store.get_stream(stream)
        self.assertIn("lost the database", str(caught.exception))
        found = await until(lambda: self._answers(store, stream), 10, "connected again")
        self.assertEqual(found.url, "rtsp://cam/1")
        self.assertEqual(store._driver.lost, 1, "one loss, one new pool")

    async def _answers(self, store: SqlStore, stream: int):  # type: ignore[no-untyped-def]
        try:
            return await store.get_stream(stream)
        except DatabaseUnavailable:
            return None

    @run
    async def test_notifications_come_back_after_a_lost_connection(self) -> None:
        store = await self.store()
        heard: list[str] = []
        await store.listen("streamrec_test", heard.append)
        end_connections(self.url)

        async def heard_of(payload: str) -> bool:
            return payload in heard

        await until(lambda: heard_of(""), 20, "the listener says it reconnected")
        await until(lambda: self._notified(store), 10, "the store is back")
        await until(lambda: heard_of("hello"), 10, "a notification after reconnecting")

    async def _notified(self, store: SqlStore) -> bool:
        try:
            await store.notify("streamrec_test", "hello")
        except DatabaseUnavailable:
            return False
        return True

    @run
    async def test_a_database_that_is_not_there_is_tried_again_shortly(self) -> None:
        store = open_store(f"postgresql://nobody@127.0.0.1:{free_port()}/streamrec", "unused")
        self.addCleanup(store.close)
        with self.assertRaises(DatabaseUnavailable) as first:
            await store.connect()
        self.assertIn("cannot reach the database", str(first.exception))
        with self.assertRaises(DatabaseUnavailable) as soon:
            await store.connect()
        self.assertIn("trying again shortly", str(soon.exception))
        await sleep(0.6)
        with self.assertRaises(DatabaseUnavailable) as later:
            await store.connect()
        self.assertIn("cannot reach the database", str(later.exception))
