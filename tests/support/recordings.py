"""Recorded fragmented-MP4 segments for the media tests, and reading them back.

Real segments are recorded once per test run with ffmpeg from a lavfi source
that paints its frame number into the picture (see :mod:`.framecode`), so
clips are checked by decoding them with PyAV and reading the numbers back.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

import av

from streamrec.media.mp4 import SegmentPiece

from . import framecode

FPS = 25
T0 = 1_700_000_000.0  # wall time of frame number 0
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"

_NUMBERED = framecode.source_filter(320, 240, FPS)
FRAGMENTED = "movflags=+frag_keyframe+empty_moov+default_base_moof"


# --------------------------------------------------------------------------
# Recording fixtures (generated once per test run)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    directory: str
    pieces: list[SegmentPiece]
    audio: bool
    codec: str


_WORKDIR = tempfile.mkdtemp(prefix="test_mp4_")
atexit.register(shutil.rmtree, _WORKDIR, True)
_RECORDINGS: dict[str, Recording] = {}


def encoder_available(name: str) -> bool:
    out = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True)
    return any(line.split()[1:2] == [name] for line in out.stdout.splitlines() if line.strip())


def recording(
    name: str,
    seconds: int = 12,
    bf: int = 0,
    audio: bool = True,
    codec: str = "libx264",
    movflags: str = FRAGMENTED,
) -> Recording:
    """Record ``seconds`` of numbered frames into 2 s fragmented-MP4 segments."""
    if name in _RECORDINGS:
        return _RECORDINGS[name]
    directory = os.path.join(_WORKDIR, name)
    shutil.rmtree(directory, ignore_errors=True)  # a failed earlier attempt
    os.makedirs(directory)
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", _NUMBERED]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    cmd += ["-t", str(seconds), "-map", "0:v:0"]
    if audio:
        cmd += ["-map", "1:a:0", "-c:a", "aac"]
    cmd += ["-c:v", codec, "-g", "25", "-bf", str(bf)]
    if codec == "libx265":
        cmd += ["-tag:v", "hvc1", "-x265-params", "log-level=error"]
    cmd += [
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-segment_format",
        "mp4",
        "-segment_format_options",
        movflags,
        "-segment_list",
        "pipe:1",
        "-segment_list_type",
        "csv",
        os.path.join(directory, "seg%06d.mp4"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    pieces = []
    for row in csv.reader(io.StringIO(out)):
        path = os.path.join(directory, row[0])
        # wall_start = wall time of the first video frame (read back from pixels).
        pieces.append(SegmentPiece(path, T0 + decoded_numbers(path, limit=1)[0] / FPS))
    rec = Recording(directory, pieces, audio, codec)
    _RECORDINGS[name] = rec
    return rec


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def frame_number(frame: av.VideoFrame) -> int:
    return framecode.read_frame_number(frame)


def decoded_numbers(path: str, limit: int | None = None) -> list[int]:
    """Frame numbers of the displayed frames (those the edit list keeps)."""
    numbers = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            if frame.pts is not None and frame.pts < 0:
                continue
            numbers.append(frame_number(frame))
            if limit and len(numbers) >= limit:
                break
    return numbers


def top_level_types(path: str) -> list[bytes]:
    types, pos, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            n, typ = struct.unpack(">I4s", f.read(8))
            if n == 1:
                (n,) = struct.unpack(">Q", f.read(8))
            types.append(typ)
            pos += n
    return types


def ffprobe(path: str) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", path],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def pyav_packets(path: str) -> dict[int, list[av.Packet]]:
    """Packets per track id, in demux order (empty flush packets dropped)."""
    result: dict[int, list] = {}
    with av.open(path) as container:
        ids = {s.index: s.id for s in container.streams}
        for packet in container.demux():
            if packet.size:
                result.setdefault(ids[packet.stream.index], []).append(
                    (packet.pts, packet.dts, packet.duration, packet.time_base)
                )
    return result


def wall(seconds: float) -> float:
    return T0 + seconds
