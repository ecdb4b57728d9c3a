"""Writing fast, frame-exact MP4 clips from fragmented-MP4 recording segments.

The recorder writes fragmented MP4 segments (``ftyp``, ``moov`` with empty
sample tables, then one ``moof``/``mdat`` pair per GOP).  Every ``trun``
already lists each sample's size, duration, sync flag and composition
offset, and the sample bytes sit contiguously in the ``mdat``.  A clip is
therefore built without any remuxing: parse the fragment headers, pick the
samples, write a progressive (``moov`` before ``mdat``) MP4 whose sample
tables point at one ``mdat``, and copy the sample bytes by byte range with
``os.copy_file_range``.  An edit list per track hides the lead-in from the
keyframe, so the first frame shown is the one at the requested start.

Planning is apart from writing: :func:`plan_clip` returns the header bytes
(``ftyp``, ``moov``, the ``mdat`` header) and the byte runs of the segment
files that follow it, a :class:`ClipPlan`.  :func:`write_clip` writes a plan
to a file (the ``copy`` clip); :mod:`streamrec.media.clipfile` reads any
byte range of one without writing it anywhere (a virtual file).

Time contract: every segment is known as ``(path, wall_start)``, where
``wall_start`` is the POSIX time of the presentation time of the first video
sample in that file.  For any sample of that file::

    wall = wall_start + (pts_seconds(sample) - first_video_pts_seconds(file))

where ``pts`` is what libavformat reports (edit list of the init ``moov``
applied, plus libavformat's ``dts_shift`` for negative composition offsets).

Technique after Moonfire NVR (``server/src/mp4.rs``) and MediaMTX
(``internal/playback/muxer_mp4.go``); the code here is independent.
"""

from __future__ import annotations

import bisect
import errno
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import mp4boxes as boxes
from .fmp4 import SOUN, VIDE, Mp4Error, Segment, Track, read_segment

__all__ = [
    "ByteRun",
    "ClipPlan",
    "ClipResult",
    "Mp4Error",
    "SegmentPiece",
    "build_clip",
    "plan_clip",
    "write_clip",
]


# --------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentPiece:
    """A recorded segment file and the wall time of its first video sample."""

    path: str
    wall_start: float


@dataclass(frozen=True)
class ClipResult:
    """What :func:`build_clip` wrote."""

    start: float  # wall time of the first shown instant
    stop: float  # wall time of the end of the clip
    duration: float
    size: int  # bytes written


@dataclass(frozen=True)
class ByteRun:
    """``length`` bytes of the file ``path`` from ``offset``: a stretch of a clip's mdat."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True)
class ClipPlan:
    """A clip before it is written: ``header`` (ftyp, moov, mdat header) then the
    bytes of ``runs``, in order; ``size`` bytes in all."""

    header: bytes
    runs: tuple[ByteRun, ...]
    start: float  # wall time of the first shown instant
    stop: float  # wall time of the end of the clip
    duration: float
    size: int


# How far (in units of the previous sample's duration, and in seconds) a
# piece's wall-derived start may be from the end of the previous piece for the
# two to be joined back to back rather than placed at their wall times.  Video
# keeps the wall contract to half a frame.  Audio is joined more loosely: the
# first audio sample of a file is placed by ffmpeg without its true offset (see
# _audio_lead), so its wall-derived time can be off by a few AAC frames.
_JOIN_TOLERANCE = {VIDE: (0.5, 0.0), SOUN: (1.0, 0.1)}

# --------------------------------------------------------------------------
# Flattening pieces onto one timeline
# --------------------------------------------------------------------------


@dataclass
class _Timeline:
    """All samples of one track across pieces, on one integer timeline.

    ``t[i]`` is the decode time in track ticks relative to the clip origin
    ``G`` (wall time of media time 0 of the first piece); ``piece[i]`` the
    index of the file holding the bytes.
    """

    track: Track
    t: list[int] = field(default_factory=list)
    duration: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    cto: list[int] = field(default_factory=list)
    sync: list[bool] = field(default_factory=list)
    piece: list[int] = field(default_factory=list)

    def pts(self, i: int) -> int:
        return self.t[i] + self.cto[i]

    def all_pts(self) -> list[int]:
        return [t + c for t, c in zip(self.t, self.cto)]


def _flatten(track_role: bytes, segs: list[Segment], anchors: list[float]) -> _Timeline | None:
    """Concatenate one track of all segments onto a single timeline.

    ``anchors[k]`` is the wall time of media time 0 of segment ``k``.  Each
    piece is placed at its wall-derived position, except that when this is
    within tolerance of the end of the previous piece the two are joined back
    to back (so wall-clock jitter does not disturb sample durations).
    """
    track = segs[0].init.video if track_role == VIDE else segs[0].init.audio
    if track is None:
        return None
    ts = track.timescale
    line = _Timeline(track)
    for k, seg in enumerate(segs):
        info = seg.init.video if track_role == VIDE else seg.init.audio
        samples = seg.tracks[info.track_id] if info else None
        if not samples:
            continue
        durations = list(samples.duration)
        lead = _audio_lead(durations) if track_role == SOUN else 0
        start_t = round((anchors[k] - anchors[0]) * ts) + samples.dts[0] + lead
        if line.t:
            cont_t = line.t[-1] + line.duration[-1]
            in_samples, in_seconds = _JOIN_TOLERANCE[track_role]
            if abs(start_t - cont_t) <= max(in_samples * line.duration[-1], in_seconds * ts):
                start_t = cont_t
            start_t = max(start_t, line.t[-1] + 1)
            line.duration[-1] = start_t - line.t[-1]
        shift = start_t - samples.dts[0] - lead
        line.t.extend(d + shift for d in samples.dts)
        line.t[len(line.t) - len(samples)] = start_t
        durations[0] -= lead
        line.duration.extend(durations)
        line.size.extend(samples.size)
        line.offset.extend(samples.offset)
        line.cto.extend(samples.cto)
        line.sync.extend(samples.sync)
        line.piece.extend([k] * len(samples))
    return line if line.t else None


def _audio_lead(durations: list[int]) -> int:
    """How far ffmpeg pulled a file's first audio sample ahead of its true time.

    ffmpeg's mov muxer (fragmented, no edit list) shifts all tracks of a file by
    the file's first video dts but then starts every track at decode time 0,
    lengthening the first sample instead: an AAC track whose true start is
    ``e`` later begins with one sample of duration ``1024 + e``.  The later
    samples keep their true times, so the first sample is moved back to its
    true place (``e`` later, normal duration).
    """
    if len(durations) >= 3 and durations[1] == durations[2] and durations[0] > durations[1]:
        return durations[0] - durations[1]
    return 0


def _compatible(segs: list[Segment], until_change: bool) -> int:
    """How many segments, from the first, carry the same tracks and codecs: all
    of them, or raise Mp4Error at the first that differs (unless ``until_change``)."""
    ref = segs[0].init
    for n, seg in enumerate(segs[1:], 1):
        for a, b in ((ref.video, seg.init.video), (ref.audio, seg.init.audio)):
            if (a is None) != (b is None):
                if until_change:
                    return n
                raise Mp4Error(f"{seg.path}: mismatched tracks (audio present in only some pieces)")
            if a is not None and b is not None and (a.timescale != b.timescale or a.stsd != b.stsd):
                if until_change:
                    return n
                raise Mp4Error(
                    f"{seg.path}: mismatched {a.handler.decode()} track "
                    "(different timescale or sample description)"
                )
    return len(segs)


# --------------------------------------------------------------------------
# Choosing samples
# --------------------------------------------------------------------------


@dataclass
class _Selection:
    """A kept range ``[first, last)`` of a timeline and its edit list."""

    line: _Timeline
    first: int
    last: int
    edits: list[tuple[int, int]]  # (segment_duration in movie ticks, media_time)


def _select_video(line: _Timeline, start: float, stop: float) -> tuple[_Selection, int, int]:
    """Pick the video samples; return the selection and (start, stop) in ticks.

    ``start`` is snapped to the nearest frame boundary: libavformat (and so
    Chromium) drops every frame whose pts is before the edit's media_time, so
    an unsnapped start 1 ms after a frame's pts would show the next frame.
    """
    pts, sync = line.all_pts(), line.sync
    sync_pts = [p for p, s in zip(pts, sync) if s]
    if not sync_pts:
        raise Mp4Error("no sync sample in the video track")
    presentation = sorted(pts)
    end_t = max(p + d for p, d in zip(pts, line.duration))
    if start >= end_t or stop <= sync_pts[0]:
        raise Mp4Error("no video samples in the requested range")
    start_t = max(start, sync_pts[0])
    stop_t = min(round(stop), end_t)
    j = bisect.bisect_left(presentation, start_t)
    candidates = presentation[max(j - 1, 0) : j + 1] + [end_t]
    nearest = min(candidates, key=lambda c: (abs(c - start_t), -c))
    if nearest >= stop_t and j > 0:  # snapping up would empty a short range
        nearest = presentation[j - 1]
    start_t = nearest
    if stop_t <= start_t:
        raise Mp4Error("no video samples in the requested range")
    backwards = range(len(pts) - 1, -1, -1)
    first = next(i for i in backwards if sync[i] and pts[i] <= start_t)
    last = next(i for i in backwards if pts[i] < stop_t) + 1
    media_time = start_t - line.t[first]
    return _Selection(line, first, last, [(stop_t - start_t, media_time)]), start_t, stop_t


def _select_audio(
    line: _Timeline, video: _Selection, start_t: int, stop_t: int, video_ts: int
) -> _Selection | None:
    """Pick the audio samples overlapping [keyframe time, stop); None if none do."""
    ts = line.track.timescale
    key_a = video.line.pts(video.first) * ts / video_ts
    start_a = round(start_t * ts / video_ts)
    stop_a = stop_t * ts / video_ts
    pts, durations = line.all_pts(), line.duration
    # The first and the last sample that overlap, looked for from either end.
    kept = (i for i in range(len(pts)) if pts[i] + durations[i] > key_a and pts[i] < stop_a)
    first = next(kept, None)
    if first is None:
        return None
    last = next(
        i for i in range(len(pts) - 1, -1, -1) if pts[i] + durations[i] > key_a and pts[i] < stop_a
    )
    last += 1
    media_time = start_a - line.t[first]
    clip_len = stop_t - start_t  # movie timescale == video timescale
    media_end = line.t[last - 1] + line.duration[last - 1] - line.t[first]
    edits: list[tuple[int, int]] = []
    if media_time < 0:  # audio begins after the clip start: lead with an empty edit
        empty = min(round(-media_time * video_ts / ts), clip_len)
        edits.append((empty, -1))
        clip_len -= empty
        media_time = 0
    available = round((media_end - media_time) * video_ts / ts)
    if clip_len > 0 and available > 0:
        edits.append((min(clip_len, available), media_time))
    if not edits or edits[-1][1] == -1:
        return None
    return _Selection(line, first, last, edits)


# --------------------------------------------------------------------------
# Layout: chunks, mdat, moov
# --------------------------------------------------------------------------


@dataclass
class _Chunk:
    """A run of consecutive samples of one track, contiguous in one file."""

    piece: int
    offset: int
    size: int
    samples: int
    out_offset: int = 0


def _chunks(sel: _Selection) -> list[_Chunk]:
    line, a, b = sel.line, sel.first, sel.last
    pieces, offsets, sizes = line.piece[a:b], line.offset[a:b], line.size[a:b]
    # Where a sample does not follow the previous one in the same file, a chunk begins.
    starts = [0]
    starts += [
        i
        for i, (p0, p1, o0, s0, o1) in enumerate(
            zip(pieces, pieces[1:], offsets, sizes, offsets[1:]), 1
        )
        if p1 != p0 or o1 != o0 + s0
    ]
    ends = [*starts[1:], b - a]
    return [
        _Chunk(pieces[i], offsets[i], offsets[j - 1] + sizes[j - 1] - offsets[i], j - i)
        for i, j in zip(starts, ends)
    ]


def _trak(sel: _Selection, track_id: int, chunks: list[_Chunk], creation: int) -> bytes:
    line, a, b = sel.line, sel.first, sel.last
    track = line.track
    times = line.t[a:b]
    durations = [y - x for x, y in zip(times, times[1:])] + [line.duration[b - 1]]
    ctos = line.cto[a:b]
    stbl = [track.stsd, boxes.stts(durations)]
    if any(ctos):
        stbl.append(boxes.ctts(ctos))
    if track.handler == VIDE:
        stbl.append(boxes.stss(line.sync[a:b]))
    stbl += [
        boxes.stsz(line.size[a:b]),
        boxes.stsc([c.samples for c in chunks]),
        boxes.co64([c.out_offset for c in chunks]),
    ]
    minf = boxes.box(b"minf", track.media_header, boxes.DINF, boxes.box(b"stbl", *stbl))
    mdia = boxes.box(b"mdia", boxes.mdhd(track, sum(durations), creation), track.hdlr, minf)
    edit_duration = sum(d for d, _m in sel.edits)
    tkhd = boxes.tkhd(track, track_id, edit_duration, creation)
    return boxes.box(b"trak", tkhd, boxes.edts(sel.edits), mdia)


def _layout(
    selections: list[_Selection], movie_ts: int, creation: int
) -> tuple[bytes, list[_Chunk]]:
    """Build ftyp+moov+mdat header; return it and the chunks in mdat order."""
    per_track = [_chunks(sel) for sel in selections]
    ordered = sorted((c for cs in per_track for c in cs), key=lambda c: (c.piece, c.offset))
    payload = sum(c.size for c in ordered)
    ftyp = boxes.ftyp(selections[0].line.track)
    # The size of moov does not depend on the offsets' values (co64 is fixed
    # width), and each trak ends with its co64: the traks are built once, with
    # zero offsets, and their co64 replaced once the offsets are known.
    traks = [
        _trak(sel, i + 1, chunks, creation)
        for i, (sel, chunks) in enumerate(zip(selections, per_track))
    ]
    duration = max(sum(d for d, _m in sel.edits) for sel in selections)
    mvhd = boxes.mvhd(movie_ts, duration, len(selections) + 1, creation)
    mdat_header = boxes.mdat_header(payload)
    moov_size = 8 + len(mvhd) + sum(len(trak) for trak in traks)
    pos = len(ftyp) + moov_size + len(mdat_header)
    for c in ordered:
        c.out_offset = pos
        pos += c.size
    for i, chunks in enumerate(per_track):
        co64 = boxes.co64([c.out_offset for c in chunks])
        traks[i] = traks[i][: -len(co64)] + co64
    return ftyp + boxes.box(b"moov", mvhd, *traks) + mdat_header, ordered


def _merged_runs(chunks: list[_Chunk], paths: list[str]) -> tuple[ByteRun, ...]:
    """The chunks' bytes as runs, those adjacent both in their file and in the output merged."""
    ranges: list[list[int]] = []
    for c in chunks:
        if ranges and ranges[-1][0] == c.piece and ranges[-1][1] + ranges[-1][2] == c.offset:
            ranges[-1][2] += c.size
        else:
            ranges.append([c.piece, c.offset, c.size])
    return tuple(ByteRun(paths[p], o, s) for p, o, s in ranges)


#: Parsed segments kept for the next plans (a player asking for a nearby
#: range reads the same segments): at most this many, about 30 KB each for
#: 2 s of 720p, the least recently used dropped first.
SEGMENT_CACHE = 600
_segments: OrderedDict[tuple[str, int, int, int], Segment] = OrderedDict()
_segments_lock = threading.Lock()


def cached_segment(path: str) -> Segment:
    """:func:`read_segment`, or its answer for the same file unchanged since (a
    file still being written is read again once it has grown)."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise Mp4Error(f"{path}: cannot open: {e.strerror}") from e
    key = (path, info.st_ino, info.st_size, info.st_mtime_ns)
    with _segments_lock:
        found = _segments.get(key)
        if found is not None:
            _segments.move_to_end(key)
            return found
    segment = read_segment(path)
    with _segments_lock:
        _segments[key] = segment
        while len(_segments) > SEGMENT_CACHE:
            _segments.popitem(last=False)
    return segment


# --------------------------------------------------------------------------
# Public: plan_clip
# --------------------------------------------------------------------------


def plan_clip(
    pieces: Sequence[SegmentPiece], start: float, stop: float, *, until_change: bool = False
) -> ClipPlan:
    """Plan a progressive MP4 covering wall-clock ``[start, stop)``.

    ``pieces`` are consecutive segments of one continuous recording (same
    codec parameters), in order.  Video is kept from the last sync sample at
    or before ``start`` to the sample covering ``stop``; audio samples
    overlapping that span are kept; an edit list per track makes playback
    begin at ``start``.  ``start`` is clamped to the first available frame
    and snapped to the nearest frame boundary; ``stop`` is clamped to the end
    of the last frame.  With ``until_change``, a piece whose tracks or codecs
    differ from the first's ends the clip where it begins; otherwise it is an
    error.  Raises :class:`Mp4Error` on unusable input or when nothing lies
    in range.
    """
    if not pieces:
        raise Mp4Error("no segments given")
    if not stop > start:
        raise Mp4Error(f"empty range: start {start} >= stop {stop}")
    segs = [cached_segment(p.path) for p in pieces]
    kept = _compatible(segs, until_change)
    if kept < len(segs):
        stop = min(stop, pieces[kept].wall_start)
        pieces, segs = pieces[:kept], segs[:kept]
        if not stop > start:
            raise Mp4Error("no video samples in the requested range")
    video_track = segs[0].init.video
    vts = video_track.timescale
    anchors = [p.wall_start - s.first_video_pts() / vts for p, s in zip(pieces, segs)]
    origin = anchors[0]

    video_line = _flatten(VIDE, segs, anchors)
    assert video_line is not None  # read_segment guarantees video samples
    video, start_t, stop_t = _select_video(
        video_line, (start - origin) * vts, (stop - origin) * vts
    )
    selections = [video]
    audio_line = _flatten(SOUN, segs, anchors)
    if audio_line is not None:
        audio = _select_audio(audio_line, video, start_t, stop_t, vts)
        if audio is not None:
            selections.append(audio)

    clip_start = origin + start_t / vts
    clip_stop = origin + stop_t / vts
    creation = max(int(clip_start) + boxes.MAC_EPOCH_OFFSET, 0)
    header, chunks = _layout(selections, vts, creation)
    runs = _merged_runs(chunks, [p.path for p in pieces])
    size = len(header) + sum(run.length for run in runs)
    return ClipPlan(header, runs, clip_start, clip_stop, (stop_t - start_t) / vts, size)


# --------------------------------------------------------------------------
# Byte copying
# --------------------------------------------------------------------------

_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


class _Copier:
    """Copies byte ranges into an fd at its current position, fastest way available."""

    def __init__(self) -> None:
        self._mode = "copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"

    def copy(self, src: int, dst: int, offset: int, count: int) -> None:
        while count > 0:
            n = self._copy_some(src, dst, offset, count)
            if n <= 0:
                raise Mp4Error("source file shrank while copying")
            offset += n
            count -= n

    def _copy_some(self, src: int, dst: int, offset: int, count: int) -> int:
        if self._mode == "copy_file_range":
            try:
                return os.copy_file_range(src, dst, count, offset)
            except OSError as e:
                if e.errno not in _FALLBACK_ERRNOS:
                    raise
                self._mode = "sendfile"
        if self._mode == "sendfile":
            try:
                return os.sendfile(dst, src, offset, count)
            except OSError as e:
                if e.errno not in _FALLBACK_ERRNOS:
                    raise
                self._mode = "read"
        data = os.pread(src, min(count, 1 << 20), offset)
        written = 0
        while written < len(data):
            written += os.write(dst, data[written:])
        return len(data)


def _write_file(tmp_path: str, plan: ClipPlan) -> int:
    """Write the header then every run's bytes; return the file size."""
    fds: dict[str, int] = {}
    out = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(plan.header)
        while view:
            view = view[os.write(out, view) :]
        copier = _Copier()
        for run in plan.runs:
            if run.path not in fds:
                fds[run.path] = os.open(run.path, os.O_RDONLY)
            copier.copy(fds[run.path], out, run.offset, run.length)
        return os.fstat(out).st_size
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)


# --------------------------------------------------------------------------
# Public: write_clip, build_clip
# --------------------------------------------------------------------------


def write_clip(plan: ClipPlan, out_path: str) -> ClipResult:
    """Write ``plan`` to ``out_path``, under a temporary name next to it renamed
    into place."""
    directory, name = os.path.split(os.path.abspath(out_path))
    tmp_path = os.path.join(directory, f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        size = _write_file(tmp_path, plan)
        os.replace(tmp_path, out_path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    return ClipResult(plan.start, plan.stop, plan.duration, size)


def build_clip(
    pieces: Sequence[SegmentPiece], start: float, stop: float, out_path: str
) -> ClipResult:
    """Write a progressive MP4 covering wall-clock ``[start, stop)`` to ``out_path``:
    :func:`plan_clip` (which says how ``start`` and ``stop`` are kept), then
    :func:`write_clip`."""
    return write_clip(plan_clip(pieces, start, stop), out_path)
