"""A recorded stream in a real store, without a recorder: fixture segments, indexed.

The segments of a :func:`tests.support.recordings.recording` (frame numbers
painted into the picture, frame ``n`` at wall time ``T0 + n / FPS``) are
copied into the test's own directory (so a test may delete them) and
indexed into a SQLite store as a stream's runs, leaving out the segments a
test wants as a gap. An API over that store (fake recorders) answers for it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from streamrec.api import StreamrecAPI
from streamrec.core import Streams
from streamrec.media.fmp4 import segment_span
from streamrec.playback import Playback
from streamrec.plugins import Encoder
from streamrec.recorder.fleet import Recorders
from streamrec.store import SqlStore, open_store
from streamrec.threads import thread_runner

from .fakes import FakeRecorder
from .harness import one_node
from .recordings import recording


@dataclass
class IndexedSegment:
    id: int
    run_id: int
    path: str
    start: float
    end: float


@dataclass
class Indexed:
    store: SqlStore
    stream_id: int
    segments: list[IndexedSegment]
    streams: Streams
    api: StreamrecAPI


async def indexed_stream(
    testcase: unittest.TestCase,
    name: str,
    runs: Sequence[Sequence[int]],
    seconds: int = 16,
    clock: Any = None,
    **options: Any,
) -> Indexed:
    """Record ``name`` (2 s segments) and index it as one run per entry of
    ``runs``, each the numbers of the segments it holds; a segment in no run
    is a gap. ``clock`` is the playback's (the reactor by default)."""
    rec = recording(name, seconds=seconds, **options)
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(os.path.join(directory, "segments"))
    store = open_store("sqlite:", directory)
    testcase.addCleanup(store.close)
    await store.migrate()
    stream_id = await store.create_stream("rtsp://127.0.0.1:8554/cam", "", rec.pieces[0].wall_start)
    segments = []
    for numbers in runs:
        run_id = await store.open_run(stream_id, rec.pieces[numbers[0]].wall_start)
        for n in numbers:
            piece = rec.pieces[n]
            path = os.path.join(directory, "segments", f"{run_id}-{os.path.basename(piece.path)}")
            shutil.copy(piece.path, path)
            first, last = segment_span(path)
            end = piece.wall_start + (last - first)
            size = os.path.getsize(path)
            segment_id = await store.add_segment(
                stream_id, run_id, path, piece.wall_start, end, size
            )
            assert segment_id is not None
            segments.append(IndexedSegment(segment_id, run_id, path, piece.wall_start, end))
    recorders = Recorders(make=lambda stream_id, url, **_: FakeRecorder())
    playback = Playback(
        store=store,
        clock=clock or reactor,
        max_seconds=3600,
        run_blocking=thread_runner(reactor),
    )
    streams = Streams(
        reactor=reactor,
        store=store,
        recorders=recorders,
        **one_node(reactor, store, recorders),
        notify=lambda *a, **k: None,
        encoders={"copy": Encoder()},
        default_encoder="copy",
        max_clip_seconds=3600,
        playback=playback,
    )
    api = StreamrecAPI(streams, None, {"plugins": []})
    return Indexed(store, stream_id, segments, streams, api)
