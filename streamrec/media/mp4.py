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
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .fmp4 import IDENTITY_MATRIX, SOUN, VIDE, Mp4Error, Segment, Track, read_segment

__all__ = ["SegmentPiece", "ClipResult", "Mp4Error", "build_clip"]


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


_U32_MAX = 0xFFFFFFFF
_MAC_EPOCH_OFFSET = 2082844800  # seconds from 1904-01-01 to 1970-01-01

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


def _check_compatible(segs: list[Segment]) -> None:
    """Raise Mp4Error unless all segments carry the same tracks and codecs."""
    ref = segs[0].init
    for seg in segs[1:]:
        for a, b in ((ref.video, seg.init.video), (ref.audio, seg.init.audio)):
            if (a is None) != (b is None):
                raise Mp4Error(f"{seg.path}: mismatched tracks (audio present in only some pieces)")
            if a is not None and b is not None and (a.timescale != b.timescale or a.stsd != b.stsd):
                raise Mp4Error(
                    f"{seg.path}: mismatched {a.handler.decode()} track "
                    "(different timescale or sample description)"
                )


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
    n = len(line.t)
    sync_pts = [line.pts(i) for i in range(n) if line.sync[i]]
    if not sync_pts:
        raise Mp4Error("no sync sample in the video track")
    presentation = sorted(line.pts(i) for i in range(n))
    end_t = max(line.pts(i) + line.duration[i] for i in range(n))
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
    first = max(i for i in range(n) if line.sync[i] and line.pts(i) <= start_t)
    last = max(i for i in range(n) if line.pts(i) < stop_t) + 1
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
    kept = [
        i
        for i in range(len(line.t))
        if line.pts(i) + line.duration[i] > key_a and line.pts(i) < stop_a
    ]
    if not kept:
        return None
    first, last = kept[0], kept[-1] + 1
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
# Box writing
# --------------------------------------------------------------------------


def _box(typ: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), typ) + body


def _full(typ: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(typ, struct.pack(">I", (version << 24) | flags), *payload)


def _run_length(values: list[int]) -> list[tuple[int, int]]:
    """Run-length encode ``values`` as ``[(count, value)]``."""
    runs: list[tuple[int, int]] = []
    prev, count = None, 0
    for v in values:
        if v == prev:
            count += 1
        else:
            if count:
                runs.append((count, prev))  # type: ignore[arg-type]
            prev, count = v, 1
    if count:
        runs.append((count, prev))  # type: ignore[arg-type]
    return runs


def _pack_pairs(fmt: str, pairs: list[tuple[int, int]]) -> bytes:
    flat = [x for pair in pairs for x in pair]
    return struct.pack(">" + fmt * len(pairs), *flat)


def _stts(durations: list[int]) -> bytes:
    runs = _run_length(durations)
    return _full(b"stts", 0, 0, struct.pack(">I", len(runs)), _pack_pairs("II", runs))


def _ctts(ctos: list[int]) -> bytes:
    runs = _run_length(ctos)
    version = 1 if any(v < 0 for _c, v in runs) else 0
    return _full(
        b"ctts",
        version,
        0,
        struct.pack(">I", len(runs)),
        _pack_pairs("Ii" if version else "II", runs),
    )


def _stsz(sizes: list[int]) -> bytes:
    if sizes and all(s == sizes[0] for s in sizes):
        return _full(b"stsz", 0, 0, struct.pack(">II", sizes[0], len(sizes)))
    return _full(b"stsz", 0, 0, struct.pack(f">II{len(sizes)}I", 0, len(sizes), *sizes))


def _stss(sync: list[bool]) -> bytes:
    numbers = [i + 1 for i, s in enumerate(sync) if s]
    return _full(b"stss", 0, 0, struct.pack(f">I{len(numbers)}I", len(numbers), *numbers))


def _stsc(chunk_counts: list[int]) -> bytes:
    entries: list[tuple[int, int, int]] = []
    for i, n in enumerate(chunk_counts):
        if not entries or entries[-1][1] != n:
            entries.append((i + 1, n, 1))
    flat = [x for e in entries for x in e]
    return _full(b"stsc", 0, 0, struct.pack(f">I{len(flat)}I", len(entries), *flat))


def _co64(offsets: list[int]) -> bytes:
    return _full(b"co64", 0, 0, struct.pack(f">I{len(offsets)}Q", len(offsets), *offsets))


def _elst(edits: list[tuple[int, int]]) -> bytes:
    wide = any(d > _U32_MAX or not -(2**31) <= m < 2**31 for d, m in edits)
    fmt = ">Qqhh" if wide else ">Iihh"
    body = b"".join(struct.pack(fmt, d, m, 1, 0) for d, m in edits)
    return _box(b"edts", _full(b"elst", 1 if wide else 0, 0, struct.pack(">I", len(edits)), body))


def _times_and_duration(duration: int, extra: bytes, creation: int) -> tuple[int, bytes]:
    """Version and ``creation, modification, <extra>, duration`` payload of a header box."""
    if duration > _U32_MAX or creation > _U32_MAX:
        return 1, struct.pack(">QQ", creation, creation) + extra + struct.pack(">Q", duration)
    return 0, struct.pack(">II", creation, creation) + extra + struct.pack(">I", duration)


def _mvhd(timescale: int, duration: int, next_track_id: int, creation: int) -> bytes:
    version, head = _times_and_duration(duration, struct.pack(">I", timescale), creation)
    tail = struct.pack(">ih10x", 0x10000, 0x100) + IDENTITY_MATRIX + bytes(24)
    return _full(b"mvhd", version, 0, head, tail, struct.pack(">I", next_track_id))


def _tkhd(track: Track, track_id: int, duration: int, creation: int) -> bytes:
    if duration > _U32_MAX or creation > _U32_MAX:
        version = 1
        head = struct.pack(">QQI4xQ", creation, creation, track_id, duration)
    else:
        version = 0
        head = struct.pack(">III4xI", creation, creation, track_id, duration)
    tail = struct.pack(">8xhhh2x", track.layer, track.alternate_group, track.volume)
    return _full(
        b"tkhd", version, 3, head, tail, track.matrix, struct.pack(">II", track.width, track.height)
    )


def _mdhd(track: Track, duration: int, creation: int) -> bytes:
    version, head = _times_and_duration(duration, struct.pack(">I", track.timescale), creation)
    return _full(b"mdhd", version, 0, head, struct.pack(">HH", track.language, 0))


_DINF = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))


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
    line, chunks = sel.line, list[_Chunk]()
    for i in range(sel.first, sel.last):
        c = chunks[-1] if chunks else None
        if c and c.piece == line.piece[i] and c.offset + c.size == line.offset[i]:
            c.size += line.size[i]
            c.samples += 1
        else:
            chunks.append(_Chunk(line.piece[i], line.offset[i], line.size[i], 1))
    return chunks


def _trak(sel: _Selection, track_id: int, chunks: list[_Chunk], creation: int) -> bytes:
    line, a, b = sel.line, sel.first, sel.last
    track = line.track
    durations = [line.t[i + 1] - line.t[i] for i in range(a, b - 1)] + [line.duration[b - 1]]
    ctos = line.cto[a:b]
    stbl = [track.stsd, _stts(durations)]
    if any(ctos):
        stbl.append(_ctts(ctos))
    if track.handler == VIDE:
        stbl.append(_stss(line.sync[a:b]))
    stbl += [
        _stsz(line.size[a:b]),
        _stsc([c.samples for c in chunks]),
        _co64([c.out_offset for c in chunks]),
    ]
    minf = _box(b"minf", track.media_header, _DINF, _box(b"stbl", *stbl))
    mdia = _box(b"mdia", _mdhd(track, sum(durations), creation), track.hdlr, minf)
    edit_duration = sum(d for d, _m in sel.edits)
    return _box(b"trak", _tkhd(track, track_id, edit_duration, creation), _elst(sel.edits), mdia)


def _ftyp(video: Track) -> bytes:
    brands = [b"isom", b"iso2", b"mp41"]
    codec = video.stsd[20:24] if len(video.stsd) >= 24 else b""
    if codec in (b"avc1", b"avc3"):
        brands.insert(2, b"avc1")
    return _box(b"ftyp", b"isom", struct.pack(">I", 0x200), *brands)


def _layout(
    selections: list[_Selection], movie_ts: int, creation: int
) -> tuple[bytes, list[_Chunk]]:
    """Build ftyp+moov+mdat header; return it and the chunks in mdat order."""
    per_track = [_chunks(sel) for sel in selections]
    ordered = sorted((c for cs in per_track for c in cs), key=lambda c: (c.piece, c.offset))
    payload = sum(c.size for c in ordered)
    ftyp = _ftyp(selections[0].line.track)
    # Sizes of moov do not depend on the offsets' values (co64 is fixed width).
    moov = _moov(selections, per_track, movie_ts, creation)
    mdat_header = (
        struct.pack(">I4s", 8 + payload, b"mdat")
        if 8 + payload <= _U32_MAX
        else struct.pack(">I4sQ", 1, b"mdat", 16 + payload)
    )
    pos = len(ftyp) + len(moov) + len(mdat_header)
    for c in ordered:
        c.out_offset = pos
        pos += c.size
    moov = _moov(selections, per_track, movie_ts, creation)
    return ftyp + moov + mdat_header, ordered


def _moov(
    selections: list[_Selection], per_track: list[list[_Chunk]], movie_ts: int, creation: int
) -> bytes:
    traks = [
        _trak(sel, i + 1, chunks, creation)
        for i, (sel, chunks) in enumerate(zip(selections, per_track))
    ]
    duration = max(sum(d for d, _m in sel.edits) for sel in selections)
    return _box(b"moov", _mvhd(movie_ts, duration, len(selections) + 1, creation), *traks)


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


def _write_file(tmp_path: str, header: bytes, chunks: list[_Chunk], paths: list[str]) -> int:
    """Write the header then every chunk's bytes; return the file size."""
    fds: dict[int, int] = {}
    out = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(header)
        while view:
            view = view[os.write(out, view) :]
        copier = _Copier()
        for piece, offset, size in _merged_ranges(chunks):
            if piece not in fds:
                fds[piece] = os.open(paths[piece], os.O_RDONLY)
            copier.copy(fds[piece], out, offset, size)
        return os.fstat(out).st_size
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)


def _merged_ranges(chunks: list[_Chunk]) -> list[tuple[int, int, int]]:
    """Merge chunks that are adjacent both in their source file and in the output."""
    ranges: list[list[int]] = []
    for c in chunks:
        if ranges and ranges[-1][0] == c.piece and ranges[-1][1] + ranges[-1][2] == c.offset:
            ranges[-1][2] += c.size
        else:
            ranges.append([c.piece, c.offset, c.size])
    return [(p, o, s) for p, o, s in ranges]


# --------------------------------------------------------------------------
# Public: build_clip
# --------------------------------------------------------------------------


def build_clip(
    pieces: Sequence[SegmentPiece], start: float, stop: float, out_path: str
) -> ClipResult:
    """Write a progressive MP4 covering wall-clock ``[start, stop)``.

    ``pieces`` are consecutive segments of one continuous recording (same
    codec parameters), in order.  Video is kept from the last sync sample at
    or before ``start`` to the sample covering ``stop``; audio samples
    overlapping that span are kept; an edit list per track makes playback
    begin at ``start``.  ``start`` is clamped to the first available frame
    and snapped to the nearest frame boundary; ``stop`` is clamped to the end
    of the last frame.  The file is written under a temporary name next to
    ``out_path`` and renamed into place.  Raises :class:`Mp4Error` on unusable
    input or when nothing lies in range.
    """
    if not pieces:
        raise Mp4Error("no segments given")
    if not stop > start:
        raise Mp4Error(f"empty range: start {start} >= stop {stop}")
    segs = [read_segment(p.path) for p in pieces]
    _check_compatible(segs)
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
    creation = max(int(clip_start) + _MAC_EPOCH_OFFSET, 0)
    header, chunks = _layout(selections, vts, creation)
    size = _write_atomically(out_path, header, chunks, [p.path for p in pieces])
    return ClipResult(clip_start, clip_stop, (stop_t - start_t) / vts, size)


def _write_atomically(out_path: str, header: bytes, chunks: list[_Chunk], paths: list[str]) -> int:
    directory, name = os.path.split(os.path.abspath(out_path))
    tmp_path = os.path.join(directory, f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        size = _write_file(tmp_path, header, chunks, paths)
        os.replace(tmp_path, out_path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    return size
