"""The camera's clock, from the producer reference times (``prft`` boxes) of a segment.

The segmenter writes a ``prft`` box before every fragment
(``write_prft=wallclock``): an NTP time and the media time of the fragment's
first sample. Reading RTSP, ffmpeg's RTP demuxer maps each packet to the time
of the camera's last RTCP sender report, and that is the time written: the
instant the camera captured the frame, in the camera's clock, with no network
or buffering delay in it. Until the first sender report comes (one to a few
seconds), and for every other kind of source, it is the instant the fragment
was written instead, with the same flags.

The two are told apart by their regularity: a sender report maps RTP time to
NTP time linearly, so ``ntp - media`` is the same to the microsecond from one
fragment to the next; write times jitter by far more. Measured on ffmpeg 5.1,
the time written is that of the frame after the fragment's first, one frame
late: :func:`camera_anchor` takes one frame off.
"""

from __future__ import annotations

import os
import struct

from .fmp4 import Mp4Error, parsed_moov, read_segment, top_level_boxes

#: Seconds between the NTP epoch (1900) and the Unix epoch (1970).
NTP_UNIX = 2_208_988_800

#: ``ntp - media`` of consecutive fragments that agree this closely come from
#: a sender report, not from the time they were written.
STEADY = 20e-6

#: How many consecutive fragments must agree.
STEADY_COUNT = 3


def producer_times(path: str) -> list[tuple[float, float]]:
    """``(unix time, media seconds)`` of each video prft box of a segment
    file, as far as it is written; Mp4Error if it has no moov."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise Mp4Error(f"{path}: cannot open: {e.strerror}") from e
    try:
        init, times = None, []
        for box in top_level_boxes(fd, os.fstat(fd).st_size):
            if box.type == b"moov":
                init = parsed_moov(os.pread(fd, box.size - box.header, box.pos + box.header))
            elif box.type == b"prft" and init is not None:
                body = os.pread(fd, box.size - box.header, box.pos + box.header)
                track, seconds, fraction = struct.unpack_from(">III", body, 4)
                (media,) = struct.unpack_from(">Q" if body[0] else ">I", body, 16)
                if track == init.video.track_id and seconds:
                    wall = seconds - NTP_UNIX + fraction / 2**32
                    times.append((wall, media / init.video.timescale))
    except (struct.error, ValueError, IndexError) as e:
        raise Mp4Error(f"{path}: malformed MP4 ({e})") from e
    finally:
        os.close(fd)
    if init is None:
        raise Mp4Error(f"{path}: no moov box (not an MP4 file?)")
    return times


def frame_seconds(path: str) -> float:
    """How long a video frame of the segment lasts (its latest), in seconds."""
    segment = read_segment(path)
    return segment.video.duration[-1] / segment.init.video.timescale


def camera_anchor(times: list[tuple[float, float]], frame: float) -> float | None:
    """The camera time of media time 0, from the latest fragments whose prft
    boxes come from a sender report; None when none do."""
    offsets = [wall - media for wall, media in times]
    for end in range(len(offsets), STEADY_COUNT - 1, -1):
        recent = offsets[end - STEADY_COUNT : end]
        if max(recent) - min(recent) <= STEADY:
            return recent[-1] - frame
    return None
