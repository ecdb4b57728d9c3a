"""Reading fragmented-MP4 recording segments: the init ``moov`` and every
complete ``moof``/``trun`` sample table, as libavformat reports them.

The recorder writes fragmented MP4 segments (``ftyp``, ``moov`` with empty
sample tables, then one ``moof``/``mdat`` pair per fragment).  Every ``trun``
lists each sample's size, duration, sync flag and composition offset, and the
sample bytes sit contiguously in the ``mdat``: :func:`read_segment` returns
those tables without touching the sample bytes, and :func:`segment_span` the
presentation span of the complete fragments.  A truncated tail (the fragment
being written when ffmpeg died) is left out.  :mod:`streamrec.media.mp4`
writes clips from these tables.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

__all__ = [
    "IDENTITY_MATRIX",
    "SOUN",
    "VIDE",
    "Init",
    "Mp4Error",
    "Samples",
    "Segment",
    "Track",
    "read_segment",
    "segment_span",
]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class Mp4Error(Exception):
    """Unusable or unreadable MP4 input, or nothing to clip."""


# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

VIDE = b"vide"
SOUN = b"soun"
IDENTITY_MATRIX = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)

# trun flags
_TRUN_DATA_OFFSET = 0x1
_TRUN_FIRST_FLAGS = 0x4
_TRUN_DURATION = 0x100
_TRUN_SIZE = 0x200
_TRUN_FLAGS = 0x400
_TRUN_CTO = 0x800
# tfhd flags
_TFHD_BASE_OFFSET = 0x1
_TFHD_SDI = 0x2
_TFHD_DURATION = 0x8
_TFHD_SIZE = 0x10
_TFHD_FLAGS = 0x20
_TFHD_BASE_IS_MOOF = 0x20000
# sample flags
_SAMPLE_NON_SYNC = 0x10000


# --------------------------------------------------------------------------
# Box reading
# --------------------------------------------------------------------------


def _children(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(type, body_start, box_end)`` for the boxes in ``buf[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, typ = struct.unpack_from(">I4s", buf, pos)
        hdr = 8
        if size == 1:
            if pos + 16 > end:
                raise Mp4Error("truncated box header")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            hdr = 16
        elif size == 0:
            size = end - pos
        if size < hdr or pos + size > end:
            raise Mp4Error(f"malformed {typ!r} box")
        yield typ, pos + hdr, pos + size
        pos += size


def _child(buf: bytes, start: int, end: int, typ: bytes) -> tuple[int, int] | None:
    """Return ``(body_start, box_end)`` of the first child box of type ``typ``."""
    for t, body, box_end in _children(buf, start, end):
        if t == typ:
            return body, box_end
    return None


def _full_box(buf: bytes, body: int) -> tuple[int, int, int]:
    """Return ``(version, flags, payload_start)`` of a full box."""
    (vf,) = struct.unpack_from(">I", buf, body)
    return vf >> 24, vf & 0xFFFFFF, body + 4


@dataclass
class _TopBox:
    type: bytes
    pos: int
    header: int
    size: int


def _top_level_boxes(fd: int, file_size: int) -> Iterator[_TopBox]:
    """Yield the complete top-level boxes of a file; stop at a truncated tail."""
    pos = 0
    while pos + 8 <= file_size:
        head = os.pread(fd, 16, pos)
        size, typ = struct.unpack_from(">I4s", head)
        hdr = 8
        if size == 1:
            if len(head) < 16:
                return
            (size,) = struct.unpack_from(">Q", head, 8)
            hdr = 16
        elif size == 0:
            size = file_size - pos
        if size < hdr or pos + size > file_size:
            return  # truncated or garbage tail
        yield _TopBox(typ, pos, hdr, size)
        pos += size


# --------------------------------------------------------------------------
# Init segment (moov)
# --------------------------------------------------------------------------


@dataclass
class Track:
    """What is needed of one ``trak`` of an init ``moov``."""

    track_id: int
    handler: bytes
    timescale: int
    language: int
    stsd: bytes  # complete stsd box, copied verbatim
    hdlr: bytes  # complete hdlr box, copied verbatim
    media_header: bytes  # complete vmhd/smhd/... box, copied verbatim
    layer: int = 0
    alternate_group: int = 0
    volume: int = 0
    matrix: bytes = IDENTITY_MATRIX
    width: int = 0  # 16.16 fixed point
    height: int = 0
    # libavformat's time_offset from the edit list, in media timescale: dts is
    # reported as (decode time - time_offset).
    time_offset: int = 0
    default_sdi: int = 1
    default_duration: int = 0
    default_size: int = 0
    default_flags: int = 0


@dataclass
class Init:
    movie_timescale: int
    tracks: dict[int, Track]
    video: Track
    audio: Track | None


def _parse_tkhd(buf: bytes, body: int, track: dict) -> None:
    version, _flags, p = _full_box(buf, body)
    if version == 1:
        (track_id,) = struct.unpack_from(">I", buf, p + 16)
        p += 32
    else:
        (track_id,) = struct.unpack_from(">I", buf, p + 8)
        p += 20
    layer, alt, volume = struct.unpack_from(">hhh", buf, p + 8)
    matrix = buf[p + 16 : p + 52]
    width, height = struct.unpack_from(">II", buf, p + 52)
    track.update(
        track_id=track_id,
        layer=layer,
        alternate_group=alt,
        volume=volume,
        matrix=matrix,
        width=width,
        height=height,
    )


def _parse_elst(buf: bytes, body: int) -> list[tuple[int, int]]:
    """Return the edit list as ``[(segment_duration, media_time)]``."""
    version, _flags, p = _full_box(buf, body)
    (count,) = struct.unpack_from(">I", buf, p)
    p += 4
    fmt, step = (">Qq", 20) if version == 1 else (">Ii", 12)
    edits = []
    for _ in range(count):
        duration, media_time = struct.unpack_from(fmt, buf, p)
        edits.append((duration, media_time))
        p += step
    return edits


def _edit_time_offset(edits: list[tuple[int, int]], movie_ts: int, media_ts: int) -> int:
    """libavformat's ``time_offset`` for a simple edit list (empty edit + one edit)."""
    empty, start, first = 0, 0, 0
    if edits and edits[0][1] == -1:
        empty, first = edits[0][0], 1
    if len(edits) > first and edits[first][1] >= 0:
        start = edits[first][1]
    if empty and movie_ts:
        empty = empty * media_ts // movie_ts
    return start - empty


def _parse_trak(buf: bytes, start: int, end: int, movie_ts: int) -> Track | None:
    fields: dict = {}
    edits: list[tuple[int, int]] = []
    for typ, body, box_end in _children(buf, start, end):
        if typ == b"tkhd":
            _parse_tkhd(buf, body, fields)
        elif typ == b"edts":
            elst = _child(buf, body, box_end, b"elst")
            if elst:
                edits = _parse_elst(buf, elst[0])
        elif typ == b"mdia":
            _parse_mdia(buf, body, box_end, fields)
    required = ("track_id", "handler", "timescale", "stsd", "media_header")
    if any(k not in fields for k in required):
        return None
    track = Track(**fields)
    track.time_offset = _edit_time_offset(edits, movie_ts, track.timescale)
    return track


def _parse_mdia(buf: bytes, start: int, end: int, fields: dict) -> None:
    for typ, body, box_end in _children(buf, start, end):
        if typ == b"mdhd":
            version, _flags, p = _full_box(buf, body)
            if version == 1:
                timescale, _dur, lang = struct.unpack_from(">IQH", buf, p + 16)
            else:
                timescale, _dur, lang = struct.unpack_from(">IIH", buf, p + 8)
            fields.update(timescale=timescale, language=lang)
        elif typ == b"hdlr":
            fields["handler"] = buf[body + 8 : body + 12]
            fields["hdlr"] = bytes(buf[body - 8 : box_end])
        elif typ == b"minf":
            _parse_minf(buf, body, box_end, fields)


def _parse_minf(buf: bytes, start: int, end: int, fields: dict) -> None:
    for typ, body, box_end in _children(buf, start, end):
        if typ in (b"vmhd", b"smhd", b"nmhd", b"sthd", b"hmhd"):
            fields["media_header"] = bytes(buf[body - 8 : box_end])
        elif typ == b"stbl":
            for styp, sbody, send in _children(buf, body, box_end):
                if styp == b"stsd":
                    fields["stsd"] = bytes(buf[sbody - 8 : send])
                elif styp in (b"stts", b"stsz") and struct.unpack_from(">I", buf, sbody + 4)[0]:
                    raise Mp4Error("not a fragmented MP4: samples in the moov")


def _parse_moov(buf: bytes) -> Init:
    mvhd = _child(buf, 0, len(buf), b"mvhd")
    if mvhd is None:
        raise Mp4Error("moov without mvhd")
    version, _flags, p = _full_box(buf, mvhd[0])
    (movie_ts,) = struct.unpack_from(">I", buf, p + (16 if version == 1 else 8))
    tracks: dict[int, Track] = {}
    for typ, body, box_end in _children(buf, 0, len(buf)):
        if typ == b"trak":
            track = _parse_trak(buf, body, box_end, movie_ts)
            if track is not None:
                tracks[track.track_id] = track
        elif typ == b"mvex":
            _parse_mvex(buf, body, box_end, tracks)
    video = next((t for t in tracks.values() if t.handler == VIDE), None)
    audio = next((t for t in tracks.values() if t.handler == SOUN), None)
    if video is None:
        raise Mp4Error("no video track")
    return Init(movie_ts, tracks, video, audio)


def _parse_mvex(buf: bytes, start: int, end: int, tracks: dict[int, Track]) -> None:
    # trex boxes follow the trak boxes in ffmpeg's output; accept either order.
    for typ, body, _end in _children(buf, start, end):
        if typ == b"trex":
            tid, sdi, dur, size, flags = struct.unpack_from(">5I", buf, body + 4)
            track = tracks.get(tid)
            if track is not None:
                track.default_sdi, track.default_duration = sdi, dur
                track.default_size, track.default_flags = size, flags


# --------------------------------------------------------------------------
# Fragments (moof)
# --------------------------------------------------------------------------


@dataclass
class Samples:
    """Column-wise sample table of one track of one segment, in decode order."""

    dts: list[int] = field(default_factory=list)  # as libavformat reports it
    duration: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)  # absolute file position
    cto: list[int] = field(default_factory=list)  # pts - dts, as libavformat reports it
    sync: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dts)

    def extend(self, other: Samples) -> None:
        for name in ("dts", "duration", "size", "offset", "cto", "sync"):
            getattr(self, name).extend(getattr(other, name))

    def pts(self, i: int) -> int:
        return self.dts[i] + self.cto[i]


@dataclass
class _TrackState:
    """Per-track state carried from one fragment to the next."""

    next_dts: int = 0  # used when a traf has no tfdt
    dts_shift: int = 0  # libavformat: max(-composition offset) seen so far


@dataclass
class _Traf:
    track: Track
    raw_cto: list[int]
    samples: Samples


_TRUN_FIELD_ORDER = ((_TRUN_DURATION, "I"), (_TRUN_SIZE, "I"), (_TRUN_FLAGS, "I"), (_TRUN_CTO, "i"))


def _parse_trun(
    buf: bytes,
    body: int,
    box_end: int,
    tf: dict,
    data_pos: int,
    dts: int,
    out: Samples,
    raw_cto: list[int],
) -> tuple[int, int]:
    """Append one trun's samples to ``out``; return ``(next data_pos, next dts)``."""
    _version, flags, p = _full_box(buf, body)
    (count,) = struct.unpack_from(">I", buf, p)
    p += 4
    if flags & _TRUN_DATA_OFFSET:
        (rel,) = struct.unpack_from(">i", buf, p)
        data_pos = tf["base"] + rel
        p += 4
    first_flags = None
    if flags & _TRUN_FIRST_FLAGS:
        (first_flags,) = struct.unpack_from(">I", buf, p)
        p += 4
    present = [(bit, code) for bit, code in _TRUN_FIELD_ORDER if flags & bit]
    fmt = ">" + "".join(code for _bit, code in present)
    entry = struct.calcsize(fmt)
    if p + entry * count > box_end:
        raise Mp4Error("truncated trun")
    columns: dict[int, list[int]] = {}
    if present:
        rows = struct.iter_unpack(fmt, buf[p : p + entry * count])
        columns = {bit: list(col) for (bit, _code), col in zip(present, zip(*rows))}
    durations = columns.get(_TRUN_DURATION) or [tf["duration"]] * count
    sizes = columns.get(_TRUN_SIZE) or [tf["size"]] * count
    sample_flags = columns.get(_TRUN_FLAGS) or [tf["flags"]] * count
    if first_flags is not None and count:
        sample_flags = [first_flags] + list(sample_flags[1:])
    out.dts.extend(accumulate(durations[:-1], initial=dts))
    out.offset.extend(accumulate(sizes[:-1], initial=data_pos))
    out.duration.extend(durations)
    out.size.extend(sizes)
    out.sync.extend(not f & _SAMPLE_NON_SYNC for f in sample_flags)
    raw_cto.extend(columns.get(_TRUN_CTO) or [0] * count)
    if count:
        dts = out.dts[-1] + durations[-1]
        data_pos = out.offset[-1] + sizes[-1]
    return data_pos, dts


def _parse_traf(
    buf: bytes,
    start: int,
    end: int,
    moof_pos: int,
    default_base: int,
    init: Init,
    states: dict[int, _TrackState],
) -> tuple[_Traf | None, int]:
    """Parse one traf; return it (None for an unknown track) and where its data ends."""
    tfhd = _child(buf, start, end, b"tfhd")
    if tfhd is None:
        raise Mp4Error("traf without tfhd")
    _v, flags, p = _full_box(buf, tfhd[0])
    (track_id,) = struct.unpack_from(">I", buf, p)
    p += 4
    track = init.tracks.get(track_id)
    if track is None:
        return None, default_base
    tf = {
        "base": default_base,
        "duration": track.default_duration,
        "size": track.default_size,
        "flags": track.default_flags,
    }
    if flags & _TFHD_BASE_IS_MOOF:
        tf["base"] = moof_pos
    for bit, key, fmt in (
        (_TFHD_BASE_OFFSET, "base", ">Q"),
        (_TFHD_SDI, "sdi", ">I"),
        (_TFHD_DURATION, "duration", ">I"),
        (_TFHD_SIZE, "size", ">I"),
        (_TFHD_FLAGS, "flags", ">I"),
    ):
        if flags & bit:
            (tf[key],) = struct.unpack_from(fmt, buf, p)
            p += struct.calcsize(fmt)
    state = states.setdefault(track_id, _TrackState())
    dts = state.next_dts
    tfdt = _child(buf, start, end, b"tfdt")
    if tfdt is not None:
        version, _f, q = _full_box(buf, tfdt[0])
        (dts,) = struct.unpack_from(">Q" if version == 1 else ">I", buf, q)
        dts -= track.time_offset
    samples, raw_cto = Samples(), list[int]()
    data_pos = tf["base"]
    for typ, body, box_end in _children(buf, start, end):
        if typ == b"trun":
            data_pos, dts = _parse_trun(buf, body, box_end, tf, data_pos, dts, samples, raw_cto)
    state.next_dts = dts
    return _Traf(track, raw_cto, samples), data_pos


@dataclass
class Segment:
    """A parsed segment file: its init and the samples of its complete fragments."""

    path: str
    init: Init
    tracks: dict[int, Samples]

    @property
    def video(self) -> Samples:
        return self.tracks[self.init.video.track_id]

    def first_video_pts(self) -> int:
        video = self.video
        return min(video.dts[i] + video.cto[i] for i in range(len(video)))

    def span(self) -> tuple[float, float]:
        """(first video pts, end of the last video sample's presentation), seconds."""
        video, ts = self.video, self.init.video.timescale
        end = max(video.dts[i] + video.cto[i] + video.duration[i] for i in range(len(video)))
        return self.first_video_pts() / ts, end / ts


def _parse_moof(
    buf: bytes, moof_pos: int, init: Init, states: dict[int, _TrackState]
) -> list[_Traf]:
    trafs = []
    base = moof_pos
    for typ, body, box_end in _children(buf, 0, len(buf)):
        if typ == b"traf":
            traf, base = _parse_traf(buf, body, box_end, moof_pos, base, init, states)
            if traf is not None:
                trafs.append(traf)
    return trafs


def read_segment(path: str) -> Segment:
    """Parse a fragmented MP4 file: init moov and every complete fragment."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise Mp4Error(f"{path}: cannot open: {e.strerror}") from e
    try:
        return _read_segment_fd(path, fd)
    except (struct.error, ValueError, IndexError) as e:
        raise Mp4Error(f"{path}: malformed MP4 ({e})") from e
    except Mp4Error as e:
        raise Mp4Error(f"{path}: {e}") from e
    finally:
        os.close(fd)


def _read_segment_fd(path: str, fd: int) -> Segment:
    file_size = os.fstat(fd).st_size
    init: Init | None = None
    tracks: dict[int, Samples] = {}
    states: dict[int, _TrackState] = {}
    for box in _top_level_boxes(fd, file_size):
        if not _plausible_type(box.type):
            break  # garbage
        if box.type == b"moov":
            init = _parsed_moov(os.pread(fd, box.size - box.header, box.pos + box.header))
            tracks = {tid: Samples() for tid in init.tracks}
        elif box.type == b"moof" and init is not None:
            buf = os.pread(fd, box.size - box.header, box.pos + box.header)
            try:
                trafs = _parse_moof(buf, box.pos, init, states)
            except Mp4Error:
                break  # damaged fragment: keep what came before
            if not _fragment_complete(trafs, file_size):
                break
            _add_fragment(trafs, tracks, states)
    if init is None:
        raise Mp4Error("no moov box (not an MP4 file?)")
    if not tracks[init.video.track_id].dts:
        raise Mp4Error("no complete video fragment")
    return Segment(path, init, tracks)


#: Every segment of a run starts with the same moov: parsed once (never changed after).
_parsed_moov = functools.lru_cache(maxsize=1024)(lambda buf: _parse_moov(buf))
#: For readers of other top-level boxes (:mod:`.prft`).
top_level_boxes, parsed_moov = _top_level_boxes, _parsed_moov


def _plausible_type(typ: bytes) -> bool:
    """True for a box type made of printable ASCII (as every real box type is)."""
    return all(0x20 <= c < 0x7F for c in typ)


def _fragment_complete(trafs: list[_Traf], file_size: int) -> bool:
    """True when every sample's bytes of the fragment lie inside the file."""
    for traf in trafs:
        s = traf.samples
        if s.dts and max(o + n for o, n in zip(s.offset, s.size)) > file_size:
            return False
    return True


def _add_fragment(
    trafs: list[_Traf], tracks: dict[int, Samples], states: dict[int, _TrackState]
) -> None:
    """Append a fragment's samples, reporting pts the way libavformat does.

    libavformat adds ``dts_shift`` (the largest negated composition offset of
    the track seen so far, updated per parsed trun) to every pts it returns.
    """
    for traf in trafs:
        state = states[traf.track.track_id]
        if traf.raw_cto:
            state.dts_shift = max(state.dts_shift, -min(traf.raw_cto))
        shift = state.dts_shift
        traf.samples.cto = [c + shift for c in traf.raw_cto]
        tracks[traf.track.track_id].extend(traf.samples)


# --------------------------------------------------------------------------
# Public: segment_span
# --------------------------------------------------------------------------


def segment_span(path: str) -> tuple[float, float]:
    """(first_video_pts_seconds, end_pts_seconds) of the complete fragments in the file.

    ``first`` is the smallest video pts, ``end`` the largest video ``pts +
    duration`` (the end of presentation), both as libavformat reports them.
    Raises :class:`Mp4Error` if the file is unreadable or has no complete
    video fragment.  Used to index a segment whose close was not reported.
    """
    return read_segment(path).span()
