"""The segment journal: segments closed during a database outage are kept on
disk and indexed, in order, once the database answers again."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from streamrec.errors import DatabaseUnavailable
from streamrec.recorder.journal import JOURNALED, SegmentJournal

from ..store.test_store import run


class FlakyStore:
    """A store whose database can be switched off; a newer owner may hold some paths."""

    def __init__(self) -> None:
        self.down = False
        self.rows: list[tuple[Any, ...]] = []
        self.newer_owner: set[str] = set()

    async def add_segment(self, *segment: Any) -> int | None:
        if self.down:
            raise DatabaseUnavailable("connection refused")
        if segment[2] in self.newer_owner:
            return None
        self.rows.append(segment)
        return len(self.rows)


class JournalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FlakyStore()
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "journal-a.jsonl")
        self.announced: list[tuple[Any, ...]] = []

    def journal(self) -> SegmentJournal:
        return SegmentJournal(
            reactor=self.clock,
            store=self.store,  # type: ignore[arg-type]
            path=self.path,
            indexed=lambda *segment: self.announced.append(segment),
        )

    def segment(self, n: int) -> tuple[int, int, str, float, float, int]:
        path = os.path.join(self.dir, f"seg{n:06d}.mp4")
        with open(path, "wb") as handle:
            handle.write(b"x" * 10)
        return (1, 7, path, 100.0 + 2 * n, 102.0 + 2 * n, 10)

    async def settle(self) -> None:
        for _ in range(5):
            await defer.succeed(None)

    @run
    async def test_segments_wait_in_the_journal_and_go_in_in_order(self) -> None:
        journal = self.journal()
        self.assertEqual(await journal.add_segment(*self.segment(0)), 1)
        self.store.down = True
        for n in (1, 2, 3):
            self.assertEqual(await journal.add_segment(*self.segment(n)), JOURNALED)
        self.assertTrue(os.path.exists(self.path), "kept on disk")
        self.clock.advance(1.0)  # still down: tried and kept
        await self.settle()
        self.assertEqual(len(self.store.rows), 1)
        self.store.down = False
        # Behind the waiting ones even though the database is back.
        self.assertEqual(await journal.add_segment(*self.segment(4)), JOURNALED)
        self.clock.advance(1.0)
        await self.settle()
        self.assertEqual([row[3] for row in self.store.rows], [100.0, 102.0, 104.0, 106.0, 108.0])
        self.assertEqual([a[1] for a in self.announced], [2, 3, 4, 5], "announced once indexed")
        self.assertFalse(os.path.exists(self.path), "emptied")
        self.assertEqual(await journal.add_segment(*self.segment(5)), 6)

    @run
    async def test_a_restart_replays_what_the_last_process_kept(self) -> None:
        first = self.journal()
        self.store.down = True
        for n in range(3):
            await first.add_segment(*self.segment(n))
        first.stop()
        with open(self.path, "a") as handle:
            handle.write('{"stream_id": 1, "run_')  # cut short by a crash
        self.store.down = False
        again = self.journal()
        self.assertEqual(again.load(), 3)
        self.assertEqual(await again.replay(), 3)
        self.assertEqual([row[2][-13:] for row in self.store.rows][0], "seg000000.mp4")
        self.assertEqual([row[4] for row in self.store.rows], [102.0, 104.0, 106.0])

    @run
    async def test_where_a_newer_owner_recorded_its_copy_is_kept(self) -> None:
        journal = self.journal()
        self.store.down = True
        kept, lost = self.segment(0), self.segment(1)
        await journal.add_segment(*kept)
        await journal.add_segment(*lost)
        self.store.down = False
        self.store.newer_owner.add(lost[2])
        self.assertEqual(await journal.replay(), 2)
        self.assertEqual([row[2] for row in self.store.rows], [kept[2]])
        self.assertTrue(os.path.exists(kept[2]))
        self.assertFalse(os.path.exists(lost[2]), "the newer owner's copy is the one kept")

    @run
    async def test_a_segment_deleted_meanwhile_is_passed_over(self) -> None:
        journal = self.journal()
        self.store.down = True
        gone, there = self.segment(0), self.segment(1)
        await journal.add_segment(*gone)
        await journal.add_segment(*there)
        os.remove(gone[2])
        self.store.down = False
        await journal.replay()
        self.assertEqual([row[2] for row in self.store.rows], [there[2]])
        self.assertEqual(journal.pending, [])
