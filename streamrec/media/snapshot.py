"""Pictures of a recorded segment: the frame a player shows at an instant, as JPEG.

A segment's fragment tables (:func:`~streamrec.media.fmp4.read_segment`) say
where every video sample lies, its presentation time and whether it is a
sync sample, so no demuxer is needed: the samples from the keyframe at or
before the instant are read with ``pread`` and fed to a PyAV decoder
configured from the sample entry (``avcC``/``hvcC``), up to the frame whose
presentation covers the instant. Several instants are taken in one pass:
those that share a keyframe are decoded forward once. The frame is scaled
with swscale and encoded by libavcodec's ``mjpeg`` encoder.

Times follow the contract of :mod:`streamrec.media.mp4`: ``wall_start`` is
the wall time of the first video sample's presentation, and every other
sample lies ``(pts - first pts) / timescale`` seconds after it. A segment in
a codec other than H.264 or H.265 is decoded from its start with the demuxer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
from av.video.codeccontext import VideoCodecContext

from .fmp4 import Mp4Error, Samples, read_segment

__all__ = ["Picture", "latest_picture", "pictures"]

#: Picture widths a caller may ask for.
MIN_WIDTH, MAX_WIDTH = 16, 1920
#: JPEG quantiser scale (2 best .. 31 worst), as ffmpeg's ``-q:v``.
QUALITY = 4
_LAMBDA = 118  # FF_QP2LAMBDA
#: A frame that begins this little after an instant is the one shown at it
#: (the instant was rounded on its way through a URL).
_SLACK = 1e-4
#: How a decoder spreads its work over threads.
THREADS = "AUTO"

_DECODERS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc"}
_CONFIG_BOXES = (b"avcC", b"hvcC")
_VISUAL_ENTRY_FIELDS = 78  # bytes of a VisualSampleEntry before its child boxes


@dataclass(frozen=True)
class Picture:
    """One JPEG, and the wall time of the frame it shows."""

    jpeg: bytes
    at: float
    width: int
    height: int


def pictures(
    path: str, wall_start: float, instants: Sequence[float], width: int | None = None
) -> list[Picture]:
    """The frames shown at each of ``instants`` (wall times within the segment),
    as JPEG ``width`` pixels wide (the frame's own width by default), in the
    order asked. An instant before the first frame gets the first frame."""
    segment = read_segment(path)
    video, timescale = segment.video, segment.init.video.timescale
    first = segment.first_video_pts()
    pts = [d + c for d, c in zip(video.dts, video.cto)]
    targets = [
        _shown(pts, first + (t - wall_start) * timescale + _SLACK * timescale) for t in instants
    ]
    frames, aspect = _decode(path, segment.init.video.stsd, video, pts, targets)
    return [
        _jpeg(frames[target], aspect, wall_start + (pts[target] - first) / timescale, width)
        for target in targets
    ]


def latest_picture(path: str, wall_start: float, width: int | None = None) -> Picture:
    """The last keyframe of a segment (one frame to decode), as :func:`pictures` gives it."""
    segment = read_segment(path)
    video, timescale = segment.video, segment.init.video.timescale
    key = max(i for i, sync in enumerate(video.sync) if sync)
    at = wall_start + (video.pts(key) - segment.first_video_pts()) / timescale
    return pictures(path, wall_start, [at], width)[0]


def _shown(pts: list[int], instant: float) -> int:
    """The sample shown at ``instant`` (media ticks): the latest to begin by then."""
    best = None
    for i, p in enumerate(pts):
        if p <= instant and (best is None or p > pts[best]):
            best = i
    return best if best is not None else min(range(len(pts)), key=pts.__getitem__)


def _keyframe(video: Samples, pts: list[int], target: int) -> int:
    """The sync sample to decode ``target`` from: the last at or before it in
    decode order that is not presented after it."""
    for i in range(target, -1, -1):
        if video.sync[i] and pts[i] <= pts[target]:
            return i
    return 0


def _decode(
    path: str, stsd: bytes, video: Samples, pts: list[int], targets: list[int]
) -> tuple[dict[int, av.VideoFrame], Fraction | None]:
    """The decoded frames of ``targets`` (sample indices), by index, and their
    sample aspect ratio."""
    codec, config = _sample_entry(stsd)
    if codec is None:
        return _decode_with_demuxer(path, pts, targets)
    by_pts = {pts[t]: t for t in targets}
    groups: dict[int, set[int]] = {}
    for target in targets:
        groups.setdefault(_keyframe(video, pts, target), set()).add(pts[target])
    frames: dict[int, av.VideoFrame] = {}
    aspect = None
    fd = os.open(path, os.O_RDONLY)
    try:
        for key, wanted in sorted(groups.items()):
            # A decoder per keyframe, drained before the next (see below).
            context = cast(VideoCodecContext, av.CodecContext.create(codec, "r"))
            context.thread_type = THREADS
            if config:
                context.extradata = config
            _decode_from(context, fd, video, pts, key, wanted, frames, by_pts)
            aspect = context.sample_aspect_ratio
    finally:
        os.close(fd)
    missing = [t for t in targets if t not in frames]
    if missing:
        raise Mp4Error(f"{path}: frames {missing} did not decode")
    return frames, aspect


def _decode_from(
    context: VideoCodecContext,
    fd: int,
    video: Samples,
    pts: list[int],
    key: int,
    wanted: set[int],
    frames: dict[int, av.VideoFrame],
    by_pts: dict[int, int],
) -> None:
    """Decode from sync sample ``key`` until every frame presented at ``wanted``
    is in ``frames``, then drain the decoder: freeing one with frames still in
    flight on its threads can deadlock."""
    packets: Iterator[int | None] = iter([*range(key, len(video)), None])
    for i in packets:
        if i is None:
            packet = None
        else:
            packet = av.Packet(os.pread(fd, video.size[i], video.offset[i]))
            packet.pts, packet.dts = pts[i], video.dts[i]
        for frame in context.decode(packet):
            if frame.pts in wanted:
                frames[by_pts[frame.pts]] = frame
                wanted.discard(frame.pts)
        if not wanted and i is not None:
            context.decode(None)
            return


def _decode_with_demuxer(
    path: str, pts: list[int], targets: list[int]
) -> tuple[dict[int, av.VideoFrame], Fraction | None]:
    """The frames of ``targets`` decoded by libavformat from the segment's start."""
    wanted = {pts[t]: t for t in targets}
    frames: dict[int, av.VideoFrame] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.pts in wanted:
                frames[wanted[frame.pts]] = frame
                if len(frames) == len(wanted):
                    break
        aspect = stream.codec_context.sample_aspect_ratio
    missing = [t for t in targets if t not in frames]
    if missing:
        raise Mp4Error(f"{path}: frames {missing} did not decode")
    return frames, aspect


def _sample_entry(stsd: bytes) -> tuple[str | None, bytes | None]:
    """The decoder for a video sample entry and its configuration record, if known."""
    if len(stsd) < 24:
        return None, None
    size, fourcc = struct.unpack_from(">I4s", stsd, 16)
    codec = _DECODERS.get(fourcc)
    end = min(16 + size, len(stsd))
    pos = 16 + 8 + _VISUAL_ENTRY_FIELDS
    while pos + 8 <= end:
        box_size, box_type = struct.unpack_from(">I4s", stsd, pos)
        if box_size < 8:
            break
        if box_type in _CONFIG_BOXES:
            return codec, stsd[pos + 8 : min(pos + box_size, end)]
        pos += box_size
    return codec, None


def _jpeg(frame: av.VideoFrame, aspect: Fraction | None, at: float, width: int | None) -> Picture:
    """``frame`` scaled to ``width`` (its shape kept, by its sample aspect ratio) as JPEG."""
    shown_width = frame.width * (aspect if aspect and aspect > 0 else 1)
    out_width = width or max(2, round(shown_width / 2) * 2)
    out_height = max(2, round(frame.height * out_width / shown_width / 2) * 2)
    image = frame.reformat(width=out_width, height=out_height, format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = out_width, out_height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qscale = True
    encoder.global_quality = QUALITY * _LAMBDA
    packets = encoder.encode(image) + encoder.encode(None)
    return Picture(b"".join(bytes(p) for p in packets), at, out_width, out_height)
