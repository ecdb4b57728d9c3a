"""The ffmpeg command line of a segmenter."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from ..sources import input_options
from .layout import SEGMENT_PATTERN

PROGRESS_FD = 3

# Fragmented MP4: clips are cut from the moof/trun sample tables without
# remuxing, and a killed ffmpeg leaves every fragment (one per GOP) on disk:
# the segment's own muxer flushes each one as it is written.
FRAGMENTED_MP4 = "movflags=+frag_keyframe+empty_moov+default_base_moof:flush_packets=1"


@dataclass(frozen=True)
class SegmenterSettings:
    segment_seconds: float = 2.0
    io_timeout: float = 10.0
    audio_bitrate: str = "64k"
    loglevel: str = "info"


def segmenter_args(ffmpeg: str, url: str, settings: SegmenterSettings) -> list[str]:
    """argv for an ffmpeg that records ``url`` into numbered fMP4 segments.

    It runs in the run's directory. Each closed segment is reported on stdout
    as ``name,start,end`` (csv segment list); progress goes to fd 3.
    Video is copied; audio (AAC, G.711, ...) is encoded to AAC, since the
    mp4 muxer refuses G.711.
    """
    return [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        settings.loglevel,
        *input_options(url, settings.io_timeout),
        "-i",
        url,
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        "-b:a",
        settings.audio_bitrate,
        # AAC frames of 1024 samples last 128 ms at G.711's 8 kHz and the
        # encoder delays as much again, which holds video back in the muxer and
        # skews the wall clock; at 48 kHz both are 21 ms.
        "-ar",
        "48000",
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
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "INT"] if setpriv else []
