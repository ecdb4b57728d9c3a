"""The ffmpeg command line of a segmenter."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..media.ffmpeg import death_launcher
from ..sources import input_options
from .layout import SEGMENT_PATTERN

PROGRESS_FD = 3

# Fragmented MP4: clips are cut from the moof/trun sample tables without
# remuxing. A fragment is closed at every key frame and every 0.25 s
# (frag_duration) whatever the GOP, and flushed as it is written, so a killed
# ffmpeg loses at most the quarter second it was writing, and a clip that ends
# at the live edge is cut from the fragments of the segment still being
# written. delay_moov: the init moov waits for the first fragment, so AAC
# copied from ADTS (MPEG-TS sources) has its AudioSpecificConfig in the first
# segment of a run too. write_prft: each fragment carries a producer reference
# time, which is the camera's own clock once an RTSP sender report has come
# (:mod:`streamrec.media.prft`).
FRAGMENTED_MP4 = (
    "movflags=+frag_keyframe+empty_moov+default_base_moof+delay_moov"
    ":frag_duration=250000:flush_packets=1:write_prft=wallclock"
)


#: Source audio recorded as it is: what MP4 and browsers take. The rest
#: (G.711, MP3, Opus, ...) is encoded to AAC. "none": the source has no audio.
COPIED_AUDIO = frozenset({"aac", "none"})


#: Seconds ffmpeg reads a source to learn its streams before recording. Live
#: MPEG-TS makes it read all of it (streams may appear at any time), and H.264
#: there shows its size only with a key frame: two seconds cover the usual
#: GOP. RTSP cameras describe their streams up front and end the probe
#: early. A source whose parameters ffmpeg did not find in time is probed
#: longer from its next launch on (:func:`needs_longer_probe`), up to
#: ``MAX_PROBE_SECONDS``.
PROBE_SECONDS = 2.0
MAX_PROBE_SECONDS = 10.0

#: What ffmpeg says when it gave up probing before it knew a stream's parameters.
_SHORT_PROBE_WORDS = (
    "could not find codec parameters",
    "unspecified size",
    "dimensions not set",
    "unspecified sample rate",
)


DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded")

#: Words of ffmpeg's stderr lines that tell why it stopped.
ERROR_WORDS = (
    *("error", "refused", "not found", "invalid", "failed", "denied", "unauthorized"),
    *("forbidden", "timed out", "timeout", "no route", "unreachable", "no such"),
    *("unsupported", "not allowed", "cannot"),
)


#: ffmpeg's word for a demuxer it may not use (``-format_whitelist``).
_REFUSED_FORMAT = re.compile(r"\[(\w+) @ [^\]]*\] Format not on whitelist")


def explain(lines: list[str]) -> str:
    """The most telling of ffmpeg's last stderr lines."""
    for line in lines:
        refused = _REFUSED_FORMAT.search(line)
        if refused:
            return f"the source is {refused.group(1)}, not a live video format streamrec records"
    meaningful = [line for line in lines if line.strip()]
    for line in reversed(meaningful):
        lowered = line.lower()
        if any(word in lowered for word in ERROR_WORDS):
            return line.strip()
    return meaningful[-1].strip() if meaningful else "ffmpeg exited"


@dataclass(frozen=True)
class SegmenterSettings:
    segment_seconds: float = 2.0
    io_timeout: float = 10.0
    audio_bitrate: str = "64k"
    loglevel: str = "info"
    probe_seconds: float = PROBE_SECONDS


def needs_longer_probe(stderr_lines: list[str]) -> bool:
    """Did ffmpeg give up because it had not probed the source long enough?"""
    return any(word in line.lower() for line in stderr_lines for word in _SHORT_PROBE_WORDS)


def copies_audio(source_audio: str | None) -> bool:
    """Whether a segmenter records this source audio codec as it is. A source not
    seen yet (None) is copied: most cameras send AAC, and a segmenter that finds
    another codec is launched again, before it records, to encode it."""
    return source_audio is None or source_audio in COPIED_AUDIO


def audio_args(copy: bool, settings: SegmenterSettings) -> list[str]:
    if copy:
        return ["-c:a", "copy"]
    # AAC frames of 1024 samples last 128 ms at G.711's 8 kHz and the encoder
    # delays as much again, which holds video back in the muxer and skews the
    # wall clock; at 48 kHz both are 21 ms.
    return ["-c:a", "aac", "-b:a", settings.audio_bitrate, "-ar", "48000"]


def segmenter_args(
    ffmpeg: str, url: str, settings: SegmenterSettings, copy_audio: bool = False
) -> list[str]:
    """argv for an ffmpeg that records ``url`` into numbered fMP4 segments.

    It runs in the run's directory. Each closed segment is reported on stdout
    as ``name,start,end`` (csv segment list); progress goes to fd 3.
    Video is copied; audio is copied (``copy_audio``, for AAC) or encoded to
    AAC (G.711 and the rest: the mp4 muxer refuses G.711).
    """
    return [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        settings.loglevel,
        *input_options(url, settings.io_timeout),
        "-analyzeduration",
        str(int(settings.probe_seconds * 1_000_000)),
        "-i",
        url,
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-c:v",
        "copy",
        *audio_args(copy_audio, settings),
        "-f",
        "segment",
        "-segment_time",
        f"{settings.segment_seconds:g}",
        "-segment_format",
        "mp4",
        "-segment_format_options",
        FRAGMENTED_MP4,
        "-segment_list",
        "pipe:1",
        "-segment_list_type",
        "csv",
        "-progress",
        f"pipe:{PROGRESS_FD}",
        "-stats_period",
        "0.5",
        SEGMENT_PATTERN,
    ]


def input_audio(lines: list[str]) -> str | None:
    """The codec of the first audio stream of ffmpeg's input, from its ``Input #0``
    report (``"none"`` when it has none); None until the report is complete."""
    codec = None
    for index, line in enumerate(lines):
        if line.startswith("Input #0"):
            for later in lines[index + 1 :]:
                if not later.startswith(" "):
                    return codec or "none"
                if codec is None and later.lstrip().startswith("Stream #0:") and "Audio: " in later:
                    codec = later.split("Audio: ", 1)[1].split()[0].rstrip(",")
            return None
    return None


_INPUT = re.compile(r"^Input #0, (.+?), from ")
_DURATION = re.compile(r"^\s+Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def source_end(lines: list[str]) -> str | None:
    """Why recording this source again is pointless once ffmpeg read it to its end,
    from its ``Input #0`` report: a source with a length (an HLS playlist that
    has its ``#EXT-X-ENDLIST``, a file served over HTTP) is not live. None for a
    live source, whose duration ffmpeg reports as ``N/A``."""
    kind = None
    for line in lines:
        found = _INPUT.match(line)
        if found:
            kind = found.group(1)
        elif kind is not None and (length := _DURATION.match(line)):
            hours, minutes, seconds = length.groups()
            total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            if total <= 0:  # live FLV over RTMP may say 0
                return None
            if kind == "hls":
                return "the source ended (HLS playlist with EXT-X-ENDLIST)"
            return f"the source ended (a {kind.split(',')[0]} file of {total:g} s, not live)"
    return None


def is_segmenter(argv: list[bytes]) -> bool:
    """Whether a process command line (``/proc/PID/cmdline`` split at NULs) is a
    segmenter's: ffmpeg writing its segment list to stdout."""
    return b"-segment_list" in argv and b"pipe:1" in argv and b"ffmpeg" in argv[0]


def parent_death_launcher() -> list[str]:
    """A prefix that makes the kernel send SIGINT to ffmpeg if streamrec dies.

    ffmpeg then closes its segment and exits instead of recording on, unseen,
    until the disk is full; the next start indexes what it left. Empty where
    util-linux's ``setpriv`` is missing (the next start ends leftovers then).
    """
    return death_launcher("INT")
