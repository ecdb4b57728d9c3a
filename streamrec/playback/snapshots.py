"""Pictures of a stream's recording: what a player shows at an instant, or the latest.

The index says which segment covers an instant; :mod:`streamrec.media.snapshot`
decodes the frame from the keyframe before it, in a thread. :meth:`Snapshots.pictures`
takes many instants at once (a preview strip) and decodes each segment once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import NothingRecorded
from ..media.fmp4 import Mp4Error
from ..media.snapshot import Picture, latest_picture, pictures
from ..store import SqlStore
from ..store.records import Segment
from ..threads import RunBlocking, thread_runner

#: An instant this little before a segment's first frame still shows that frame
#: (times are rounded on their way through a URL).
SLACK = 1e-3


class Snapshots:
    def __init__(
        self, *, store: SqlStore, clock: Any, run_blocking: RunBlocking | None = None
    ) -> None:
        self.store = store
        self.run_blocking = run_blocking or thread_runner(clock)

    async def latest(self, stream_id: int, width: int | None) -> Picture:
        """The last keyframe recorded: the picture of a stream "now"."""
        last = (await self.store.totals(stream_id)).last
        if last is not None:
            segments = await self.store.segments_between(stream_id, last - SLACK, last + SLACK)
            if segments:
                newest = max(segments, key=lambda s: (s.end, s.id))
                try:
                    return await self.run_blocking(latest_picture, newest.path, newest.start, width)
                except Mp4Error:  # deleted since the index was read
                    pass
        raise NothingRecorded(None)

    async def picture(self, stream_id: int, t: float, width: int | None) -> Picture:
        """The frame shown at ``t``; :class:`NothingRecorded` where nothing is."""
        [found] = await self.pictures(stream_id, [t], width)
        if found is None:
            raise NothingRecorded(t)
        return found

    async def pictures(
        self, stream_id: int, instants: Sequence[float], width: int | None
    ) -> list[Picture | None]:
        """The frames shown at each of ``instants`` (None where nothing is
        recorded), each segment decoded once, forward from each keyframe."""
        if not instants:
            return []
        segments = await self.store.segments_between(
            stream_id, min(instants), max(instants) + SLACK
        )
        by_segment: dict[int, list[int]] = {}
        chosen: dict[int, Segment] = {}
        for n, t in enumerate(instants):
            segment = covering(segments, t)
            if segment is not None:
                by_segment.setdefault(segment.id, []).append(n)
                chosen[segment.id] = segment
        found: list[Picture | None] = [None] * len(instants)
        for segment_id, indices in by_segment.items():
            segment = chosen[segment_id]
            try:
                made = await self.run_blocking(
                    pictures, segment.path, segment.start, [instants[n] for n in indices], width
                )
            except Mp4Error:  # deleted since the index was read
                continue
            for n, picture in zip(indices, made):
                found[n] = picture
        return found


def covering(segments: Sequence[Segment], t: float) -> Segment | None:
    """The segment shown at ``t``: the latest to begin by then (with :data:`SLACK`)
    among those that have not ended."""
    candidates = [s for s in segments if s.start <= t + SLACK and t < s.end]
    return max(candidates, key=lambda s: (s.start, s.id)) if candidates else None
