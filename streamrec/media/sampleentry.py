"""What a video track's sample entry (``stsd``) says about its parameter sets.

H.264 and H.265 decoders need their parameter sets (SPS/PPS, VPS/SPS/PPS)
before the first picture. ``avc1``/``hvc1`` carry them in the sample entry's
``avcC``/``hvcC`` box; ``avc3``/``hev1`` may carry them in the stream itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Bytes of a VisualSampleEntry before its child boxes (ISO/IEC 14496-12 12.1.3).
_VISUAL_ENTRY_FIELDS = 78
_IN_BAND = (b"avc3", b"avc4", b"hev1", b"dvhe")


@dataclass(frozen=True)
class VideoConfig:
    fourcc: bytes  # avc1, hvc1, ...
    parameter_sets: int  # NAL units in avcC/hvcC; 0 when there is no such box

    @property
    def in_band(self) -> bool:
        """Parameter sets may come with the pictures instead of the sample entry."""
        return self.fourcc in _IN_BAND


def video_config(stsd: bytes) -> VideoConfig:
    """Read the first sample entry of a complete ``stsd`` box."""
    if len(stsd) < 24:
        return VideoConfig(b"", 0)
    entry = 16  # box header, version/flags, entry count
    size, fourcc = struct.unpack_from(">I4s", stsd, entry)
    end = min(entry + size, len(stsd))
    pos = entry + 8 + _VISUAL_ENTRY_FIELDS
    while pos + 8 <= end:
        box_size, box_type = struct.unpack_from(">I4s", stsd, pos)
        if box_size < 8:
            break
        body = stsd[pos + 8 : min(pos + box_size, end)]
        if box_type == b"avcC" and len(body) >= 7:
            return VideoConfig(fourcc, _avcc_count(body))
        if box_type == b"hvcC" and len(body) >= 23:
            return VideoConfig(fourcc, _hvcc_count(body))
        pos += box_size
    return VideoConfig(fourcc, 0)


def _avcc_count(body: bytes) -> int:
    sps = body[5] & 0x1F
    pos = 6
    for _ in range(sps):
        if pos + 2 > len(body):
            return 0
        pos += 2 + struct.unpack_from(">H", body, pos)[0]
    if pos >= len(body):
        return 0
    pps = body[pos]
    return sps + pps if sps and pps else 0


def _hvcc_count(body: bytes) -> int:
    arrays, pos, count = body[22], 23, 0
    for _ in range(arrays):
        if pos + 3 > len(body):
            return 0
        units = struct.unpack_from(">H", body, pos + 1)[0]
        pos += 3
        for _ in range(units):
            if pos + 2 > len(body):
                return 0
            pos += 2 + struct.unpack_from(">H", body, pos)[0]
        count += units
    return count
