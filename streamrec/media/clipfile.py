"""A planned clip read as a file, without writing it anywhere.

A :class:`~streamrec.media.mp4.ClipPlan` is a header in memory followed by
byte runs of segment files; :class:`ClipReader` answers any byte range of
the whole, reading the runs with ``pread``. Segment files can be deleted
under it (retention): :func:`check` says whether every file of a plan is
still there and long enough, and a read that finds a file gone or short
raises :class:`Gone` rather than return other bytes. A file is read through
a descriptor kept open while the reader moves on in it, so a file deleted
once it is open still reads whole.
"""

from __future__ import annotations

import bisect
import os
from itertools import accumulate

from .mp4 import ClipPlan, Mp4Error

__all__ = ["ClipReader", "Gone", "check"]


class Gone(Mp4Error):
    """A file the plan reads from is missing or shorter than planned."""


def check(plan: ClipPlan) -> None:
    """Raise :class:`Gone` unless every file of ``plan`` holds the bytes it reads there."""
    needed: dict[str, int] = {}
    for run in plan.runs:
        needed[run.path] = max(needed.get(run.path, 0), run.offset + run.length)
    for path, end in needed.items():
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise Gone(f"{path}: deleted") from None
        if size < end:
            raise Gone(f"{path}: {size} bytes, {end} planned")


class ClipReader:
    """Byte ranges of one plan, read in order or not; one file open at a time."""

    def __init__(self, plan: ClipPlan) -> None:
        self.plan = plan
        header = len(plan.header)
        #: Where each run begins in the clip.
        self._starts = list(accumulate((r.length for r in plan.runs), initial=header))[:-1]
        self._path: str | None = None
        self._fd: int | None = None

    @property
    def size(self) -> int:
        return self.plan.size

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only past the end of the clip)."""
        end = min(offset + length, self.plan.size)
        parts: list[bytes] = []
        header = self.plan.header
        if offset < len(header):
            parts.append(header[offset:end])
            offset = min(end, len(header))
        while offset < end:
            index = bisect.bisect_right(self._starts, offset) - 1
            run = self.plan.runs[index]
            inside = offset - self._starts[index]
            count = min(end - offset, run.length - inside)
            parts.append(self._pread(run.path, run.offset + inside, count))
            offset += count
        return b"".join(parts)

    def _pread(self, path: str, offset: int, count: int) -> bytes:
        if path != self._path:
            self.close()
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise Gone(f"{path}: deleted") from None
            self._path = path
        assert self._fd is not None
        parts = []
        while count > 0:
            data = os.pread(self._fd, count, offset)
            if not data:
                raise Gone(f"{path}: shorter than planned")
            parts.append(data)
            offset += len(data)
            count -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._path = None
