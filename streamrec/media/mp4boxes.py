"""The ISO BMFF boxes of a progressive MP4, written with ``struct``.

Each function returns one complete box (header included) from plain values:
the sample tables (``stts``, ``ctts``, ``stss``, ``stsz``, ``stsc``,
``co64``), the edit list, and the movie, track and media headers.
:mod:`streamrec.media.mp4` decides what goes in them.
"""

from __future__ import annotations

import struct
from itertools import groupby

from .fmp4 import IDENTITY_MATRIX, Track

U32_MAX = 0xFFFFFFFF
#: Seconds from 1904-01-01 (the MP4 epoch) to 1970-01-01.
MAC_EPOCH_OFFSET = 2082844800


def box(typ: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), typ) + body


def full_box(typ: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(typ, struct.pack(">I", (version << 24) | flags), *payload)


def run_length(values: list[int]) -> list[tuple[int, int]]:
    """Run-length encode ``values`` as ``[(count, value)]``."""
    return [(sum(1 for _ in run), value) for value, run in groupby(values)]


def _pack_pairs(fmt: str, pairs: list[tuple[int, int]]) -> bytes:
    flat = [x for pair in pairs for x in pair]
    return struct.pack(">" + fmt * len(pairs), *flat)


def stts(durations: list[int]) -> bytes:
    runs = run_length(durations)
    return full_box(b"stts", 0, 0, struct.pack(">I", len(runs)), _pack_pairs("II", runs))


def ctts(ctos: list[int]) -> bytes:
    runs = run_length(ctos)
    version = 1 if any(v < 0 for _c, v in runs) else 0
    return full_box(
        b"ctts",
        version,
        0,
        struct.pack(">I", len(runs)),
        _pack_pairs("Ii" if version else "II", runs),
    )


def stsz(sizes: list[int]) -> bytes:
    if sizes and all(s == sizes[0] for s in sizes):
        return full_box(b"stsz", 0, 0, struct.pack(">II", sizes[0], len(sizes)))
    return full_box(b"stsz", 0, 0, struct.pack(f">II{len(sizes)}I", 0, len(sizes), *sizes))


def stss(sync: list[bool]) -> bytes:
    numbers = [i + 1 for i, s in enumerate(sync) if s]
    return full_box(b"stss", 0, 0, struct.pack(f">I{len(numbers)}I", len(numbers), *numbers))


def stsc(chunk_counts: list[int]) -> bytes:
    entries: list[tuple[int, int, int]] = []
    for i, n in enumerate(chunk_counts):
        if not entries or entries[-1][1] != n:
            entries.append((i + 1, n, 1))
    flat = [x for e in entries for x in e]
    return full_box(b"stsc", 0, 0, struct.pack(f">I{len(flat)}I", len(entries), *flat))


def co64(offsets: list[int]) -> bytes:
    return full_box(b"co64", 0, 0, struct.pack(f">I{len(offsets)}Q", len(offsets), *offsets))


def edts(edits: list[tuple[int, int]]) -> bytes:
    """An ``edts`` holding the edit list ``[(segment_duration, media_time)]``."""
    wide = any(d > U32_MAX or not -(2**31) <= m < 2**31 for d, m in edits)
    fmt = ">Qqhh" if wide else ">Iihh"
    body = b"".join(struct.pack(fmt, d, m, 1, 0) for d, m in edits)
    return box(b"edts", full_box(b"elst", 1 if wide else 0, 0, struct.pack(">I", len(edits)), body))


def _times_and_duration(duration: int, extra: bytes, creation: int) -> tuple[int, bytes]:
    """Version and ``creation, modification, <extra>, duration`` payload of a header box."""
    if duration > U32_MAX or creation > U32_MAX:
        return 1, struct.pack(">QQ", creation, creation) + extra + struct.pack(">Q", duration)
    return 0, struct.pack(">II", creation, creation) + extra + struct.pack(">I", duration)


def mvhd(timescale: int, duration: int, next_track_id: int, creation: int) -> bytes:
    version, head = _times_and_duration(duration, struct.pack(">I", timescale), creation)
    tail = struct.pack(">ih10x", 0x10000, 0x100) + IDENTITY_MATRIX + bytes(24)
    return full_box(b"mvhd", version, 0, head, tail, struct.pack(">I", next_track_id))


def tkhd(track: Track, track_id: int, duration: int, creation: int) -> bytes:
    if duration > U32_MAX or creation > U32_MAX:
        version = 1
        head = struct.pack(">QQI4xQ", creation, creation, track_id, duration)
    else:
        version = 0
        head = struct.pack(">III4xI", creation, creation, track_id, duration)
    tail = struct.pack(">8xhhh2x", track.layer, track.alternate_group, track.volume)
    return full_box(
        b"tkhd", version, 3, head, tail, track.matrix, struct.pack(">II", track.width, track.height)
    )


def mdhd(track: Track, duration: int, creation: int) -> bytes:
    version, head = _times_and_duration(duration, struct.pack(">I", track.timescale), creation)
    return full_box(b"mdhd", version, 0, head, struct.pack(">HH", track.language, 0))


#: A data reference saying "the samples are in this file".
DINF = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))


def ftyp(video: Track) -> bytes:
    brands = [b"isom", b"iso2", b"mp41"]
    codec = video.stsd[20:24] if len(video.stsd) >= 24 else b""
    if codec in (b"avc1", b"avc3"):
        brands.insert(2, b"avc1")
    return box(b"ftyp", b"isom", struct.pack(">I", 0x200), *brands)


def mdat_header(payload: int) -> bytes:
    """The header of an ``mdat`` holding ``payload`` bytes (64-bit size past 4 GiB)."""
    if 8 + payload <= U32_MAX:
        return struct.pack(">I4s", 8 + payload, b"mdat")
    return struct.pack(">I4sQ", 1, b"mdat", 16 + payload)
