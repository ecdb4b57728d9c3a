"""Checking a segment before it is indexed: from its structure, decoding only
when something looks wrong or when asked to.

The fragment tables the clip builder reads are what is checked: at least
one complete fragment (a truncated tail is already left out), every sample's
bytes inside the file and none empty, a plausible duration, parameter sets
in the sample entry, and a key frame first. A segment that passes all of
that decodes; a decode (PyAV, one frame) is still run when the parameter
sets may be in band, when the first sample is not a key frame, or when the
caller asks for one (a sample of segments, and every file recovery finds).

A file that cannot be read is not judged: the ``OSError`` goes to the
caller, who tries again later when it is a shortage that passes
(:func:`transient`: no descriptor or memory left for a moment), and never
quarantines a segment for it.
"""

from __future__ import annotations

import errno

import av

from ..media.fmp4 import Mp4Error, Segment, read_segment
from ..media.sampleentry import video_config


class InvalidSegment(Exception):
    """A segment that must not be served; the message says why."""


#: errno values of a shortage of this process or of the system that passes:
#: descriptors (a flood of connections), memory, buffers, a lock, a signal.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EAGAIN,
        errno.EWOULDBLOCK,
        errno.EINTR,
        errno.ENOBUFS,
        errno.EBUSY,
    }
)


def transient(error: BaseException) -> bool:
    """Whether ``error`` says the file could not be read for now, not that it is bad."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def structure_problems(segment: Segment) -> tuple[list[str], list[str]]:
    """``(problems, doubts)``: what makes the segment unusable, and what only a
    decode can settle."""
    problems: list[str] = []
    doubts: list[str] = []
    video = segment.video
    if any(size == 0 for size in video.size):
        problems.append("empty video samples")
    config = video_config(segment.init.video.stsd)
    if config.in_band:
        doubts.append(f"{config.fourcc.decode('latin-1')}: parameter sets in band")
    elif not config.parameter_sets:
        problems.append("no parameter sets (SPS/PPS) in the sample entry")
    if not video.sync[0]:
        doubts.append("does not start with a key frame")
    return problems, doubts


def inspect_segment(path: str, max_duration: float) -> tuple[float, float, list[str]]:
    """``(first, end, doubts)`` of a segment whose structure is usable (media
    times, and what only a decode can settle); InvalidSegment otherwise.

    It reads the box headers and sample tables only, a few kilobytes of a file
    just written (so in the page cache): cheap enough for the reactor thread.
    """
    try:
        segment = read_segment(path)
    except Mp4Error as error:
        if isinstance(error.__cause__, OSError):
            # It could not be opened (read_segment says "cannot open"): that is
            # no verdict on the file.
            raise error.__cause__ from None
        raise InvalidSegment(str(error)) from None
    first, end = segment.span()
    duration = end - first
    if not 0 < duration <= max_duration:
        raise InvalidSegment(f"{path}: duration {duration:.3f} s is not plausible")
    problems, doubts = structure_problems(segment)
    if problems:
        raise InvalidSegment(f"{path}: {'; '.join(problems)}")
    return first, end, doubts


def validate_segment(path: str, max_duration: float, decode: bool = False) -> tuple[float, float]:
    """``(first, end)`` media times of a usable segment; InvalidSegment otherwise."""
    first, end, doubts = inspect_segment(path, max_duration)
    if decode or doubts:
        decodes(path)
    return first, end


def decodes(path: str) -> None:
    """Raise InvalidSegment unless a video frame of ``path`` decodes; an
    ``OSError`` (PyAV's carry an errno) if it could not be read."""
    try:
        with av.open(path) as container:
            for _frame in container.decode(video=0):
                return
    except av.FFmpegError as error:
        if isinstance(error, (OSError, MemoryError)):
            raise
        raise InvalidSegment(f"{path}: {error}") from None
    raise InvalidSegment(f"{path}: no video frame decodes")
