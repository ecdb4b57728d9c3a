"""Checking a segment before it is indexed."""

from __future__ import annotations

import av

from ..media.fmp4 import Mp4Error, segment_span


class InvalidSegment(Exception):
    """A segment that must not be served; the message says why."""


def validate_segment(path: str, max_duration: float) -> tuple[float, float]:
    """``(first, end)`` media times of a segment that parses and decodes.

    Raises InvalidSegment for a file with no complete fragment, an absurd
    duration, or video that does not decode.
    """
    try:
        first, end = segment_span(path)
    except Mp4Error as error:
        raise InvalidSegment(str(error)) from None
    duration = end - first
    if not 0 < duration <= max_duration:
        raise InvalidSegment(f"{path}: duration {duration:.3f} s is not plausible")
    try:
        with av.open(path) as container:
            for _frame in container.decode(video=0):
                break
            else:
                raise InvalidSegment(f"{path}: no video frame decodes")
    except av.FFmpegError as error:
        raise InvalidSegment(f"{path}: {error}") from None
    return first, end
