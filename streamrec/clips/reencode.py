"""Re-encoding a clip with ffmpeg, run as a Twisted child process.

Encoders that change the pictures (the built-in ``transcode``, plugins such
as ``timelapse``) share this module.  :func:`reencode` does the whole job:

1. builds the frame-exact copy clip with :func:`streamrec.media.mp4.build_clip`
   (with ``context.run_blocking``) to a scratch file next to ``out_path``.
   That clip's edit list starts it at the requested instant, and its last
   video sample is the one shown just before ``stop``; ffmpeg's decoder
   honours the edit list (the lead-in from the keyframe is decoded and
   dropped), so the first frame it hands the encoder is the one displayed at
   ``start``;
2. runs ffmpeg on it (``reactor.spawnProcess``, never blocking the reactor),
   with ``-progress pipe:1`` parsed into ``request.progress(fraction)``;
3. writes a progressive MP4 (``+faststart``) *without an edit list*: H.264
   without B-frames (every frame's decode time is its presentation time, so
   neither an edit list nor signed composition offsets are needed) and AAC
   whose encoder delay is compensated by dropping that many input samples,
   so sound stays in sync from the first sample;
4. kills ffmpeg if the job is cancelled (the Deferred it awaits is
   cancelled) or the reactor shuts down, and raises :class:`FfmpegFailed`
   naming ffmpeg's own last error line when it fails.

Option parsing helpers (:func:`video_options`) turn request parameters into
ffmpeg arguments and raise :class:`OptionError` (a
:class:`streamrec.errors.BadRequest`) naming the bad parameter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import BadRequest
from ..media.ffmpeg import FfmpegFailed, run_ffmpeg
from ..media.mp4 import ClipResult, build_clip
from ..plugins import EncodeRequest, PluginContext

__all__ = [
    "AAC_PRIMING_SAMPLES",
    "FfmpegFailed",
    "OptionError",
    "VIDEO_OPTIONS",
    "VideoOptions",
    "reencode",
    "run_ffmpeg",
    "video_options",
]

#: Samples of encoder delay ("priming") of ffmpeg's native AAC encoder.
AAC_PRIMING_SAMPLES = 1024

#: The libx264 presets a request may ask for, fastest first: the slower ones
#: (slow, slower, veryslow, placebo) cost many times the work for a few per
#: cent of size, and one request could hold a worker for hours.
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
)

#: What one re-encode may make: at most 4K UHD pictures (as many pixels as
#: 3840x2160, in either orientation), 60 frames a second, and a range of an hour.
MAX_WIDTH, MAX_HEIGHT = 3840, 3840
MAX_PIXELS = 3840 * 2160
MAX_FPS = 60
MAX_SECONDS = 3600.0
#: Below this constant rate factor, files grow towards lossless sizes (GB a minute).
MIN_CRF = 10

#: The request parameters :func:`video_options` understands.
VIDEO_OPTIONS = (
    "size",
    "width",
    "height",
    "fps",
    "crf",
    "video_bitrate",
    "audio_bitrate",
    "preset",
)


class OptionError(BadRequest):
    """A clip encoder parameter has a bad value; the message says which and why."""


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoOptions:
    """Validated re-encoding choices (see :func:`video_options`)."""

    width: int | None = None  # None: keep (or follow the other side's aspect)
    height: int | None = None
    fps: float | None = None  # None: the source's rate
    crf: int = 23
    video_bitrate: int | None = None  # bits/s; replaces crf when given
    audio_bitrate: int = 96_000
    preset: str = "veryfast"

    def scale_filter(self) -> str | None:
        if self.width is None and self.height is None:
            return None
        return f"scale={self.width or -2}:{self.height or -2}"

    def bound_filter(self) -> str | None:
        """Scales pictures of more than :data:`MAX_PIXELS` down to that many (the
        aspect ratio kept): the source's size, or one side given, may be more.
        None when both sides are given (they were checked)."""
        if self.width is not None and self.height is not None:
            return None
        return f"scale=w='min(iw,trunc(sqrt({MAX_PIXELS}*iw/ih)/2)*2)':h=-2"

    def rate_filter(self) -> str | None:
        """Where the source's rate is kept: a faster source (more than about
        :data:`MAX_FPS` frames a second) thinned to at most that, by dropping
        each frame that comes too soon after the last one kept. Any other
        source passes frame for frame. None when ``fps`` is given."""
        if self.fps is not None:
            return None
        gap = 0.9 / MAX_FPS  # below 1/MAX_FPS: timestamps in milliseconds jitter
        return f"select='isnan(prev_selected_t)+gte(t-prev_selected_t,{gap:.6g})'"

    def rate_args(self) -> list[str]:
        """With :meth:`rate_filter`: frames keep their times (no frame is repeated
        to fill the gaps the filter leaves)."""
        return ["-fps_mode", "vfr"] if self.fps is None else []

    def x264_args(self) -> list[str]:
        """libx264, no B-frames, 8-bit 4:2:0 (what every browser decodes)."""
        args = ["-c:v", "libx264", "-preset", self.preset, "-bf", "0", "-pix_fmt", "yuv420p"]
        if self.video_bitrate is not None:
            rate = str(self.video_bitrate)
            args += ["-b:v", rate, "-maxrate", rate, "-bufsize", str(2 * self.video_bitrate)]
        else:
            args += ["-crf", str(self.crf)]
        return args + ["-x264-params", "log-level=error"]

    def aac_args(self) -> list[str]:
        return ["-c:a", "aac", "-b:a", str(self.audio_bitrate)]


_BITRATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX:]\s*(\d+)\s*$")


def _number(
    options: Mapping[str, str], name: str, low: float, high: float, integer: bool
) -> float | None:
    raw = options.get(name)
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise OptionError(f"{name} must be {kind}, not {raw!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise OptionError(f"{name} must be between {low:g} and {high:g}, not {raw}")
    return value


def _bitrate(options: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = options.get(name)
    if raw is None or str(raw).strip() == "":
        return None
    match = _BITRATE.match(str(raw))
    if not match:
        raise OptionError(f"{name} must be bits per second like 800k or 2M, not {raw!r}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if not low <= value <= high:
        raise OptionError(f"{name} must be between {_rate(low)} and {_rate(high)}, not {raw}")
    return int(value)


def _rate(bits: float) -> str:
    """``50000`` -> ``50k``, ``50000000`` -> ``50M``, ``512000`` -> ``512k``."""
    return f"{bits / 1e6:g}M" if bits >= 1e6 else f"{bits / 1e3:g}k"


def _even(name: str, value: float | None) -> int | None:
    if value is None:
        return None
    if int(value) % 2:
        raise OptionError(f"{name} must be even (H.264 4:2:0), not {int(value)}")
    return int(value)


def video_options(options: Mapping[str, str]) -> VideoOptions:
    """Validate the re-encoding parameters of a clip request.

    ``size`` (``WxH``) or ``width``/``height`` (even pixels, 16-3840, at most
    3840x2160 pixels in all; one side alone keeps the aspect ratio), ``fps``
    (1-60, default: the source's), ``crf`` (10-51, default 23) or
    ``video_bitrate`` (e.g. ``800k``, 50k-50M; not both), ``audio_bitrate``
    (16k-512k, default 96k), ``preset`` (a libx264 preset from ``ultrafast``
    to ``medium``, default ``veryfast``).  Raises :class:`OptionError` naming
    the first bad parameter.
    """
    width = _number(options, "width", 16, MAX_WIDTH, integer=True)
    height = _number(options, "height", 16, MAX_HEIGHT, integer=True)
    size = options.get("size")
    if size is not None and str(size).strip():
        if width is not None or height is not None:
            raise OptionError("give size or width/height, not both")
        match = _SIZE.match(str(size))
        if not match:
            raise OptionError(f"size must be WIDTHxHEIGHT like 1280x720, not {size!r}")
        width, height = (
            _number({"width": match.group(1)}, "width", 16, MAX_WIDTH, integer=True),
            _number({"height": match.group(2)}, "height", 16, MAX_HEIGHT, integer=True),
        )
    if width is not None and height is not None and width * height > MAX_PIXELS:
        raise OptionError(
            f"{int(width)}x{int(height)} has more pixels than 3840x2160, the most a clip may have"
        )
    fps = _number(options, "fps", 1, MAX_FPS, integer=False)
    crf = _number(options, "crf", MIN_CRF, 51, integer=True)
    video_bitrate = _bitrate(options, "video_bitrate", 50_000, 50_000_000)
    if crf is not None and video_bitrate is not None:
        raise OptionError("give crf or video_bitrate, not both")
    audio_bitrate = _bitrate(options, "audio_bitrate", 16_000, 512_000)
    preset = str(options.get("preset") or VideoOptions.preset).strip().lower()
    if preset not in X264_PRESETS:
        raise OptionError(f"preset must be one of {', '.join(X264_PRESETS)}, not {preset!r}")
    return VideoOptions(
        width=_even("width", width),
        height=_even("height", height),
        fps=fps,
        crf=int(crf) if crf is not None else VideoOptions.crf,
        video_bitrate=video_bitrate,
        audio_bitrate=audio_bitrate or VideoOptions.audio_bitrate,
        preset=preset,
    )


# --------------------------------------------------------------------------
# The whole re-encode
# --------------------------------------------------------------------------


_INPUT_ARGS = (
    "-hide_banner -nostdin -nostats -loglevel error -progress pipe:1 -y -protocol_whitelist file -i"
).split()
# No edit list, no metadata copied from the scratch clip, moov first.
_OUTPUT_ARGS = (
    "-map_metadata -1 -map_chapters -1 -use_editlist 0 -movflags +faststart -f mp4".split()
)


def _scratch_paths(out_path: str) -> tuple[str, str]:
    """(exact copy clip, ffmpeg's output) next to ``out_path``, hidden."""
    directory, name = os.path.split(os.path.abspath(out_path))
    return (
        os.path.join(directory, f".{name}.source.mp4"),
        os.path.join(directory, f".{name}.part"),
    )


def _move_into_place(partial: str, out_path: str) -> int:
    os.replace(partial, out_path)
    return os.path.getsize(out_path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


async def reencode(
    context: PluginContext,
    request: EncodeRequest,
    *,
    video_filters: Sequence[str] = (),
    video_args: Sequence[str],
    audio_args: Sequence[str] | None,
    speed: float = 1.0,
) -> ClipResult:
    """Re-encode ``request``'s range into ``request.out_path``.

    ``video_filters`` run on the exact frames of the range (the first is the
    one displayed at ``request.start``, timestamps from 0); ``video_args`` are
    the codec arguments (see :meth:`VideoOptions.x264_args`); ``audio_args``
    the AAC arguments, or None to drop the sound.  ``speed`` is how much
    shorter than the range the output is (for progress only).  Returns the
    range actually covered (frame-snapped, as the copy clip's) and the size.
    """
    source, partial = _scratch_paths(request.out_path)
    try:
        exact: ClipResult = await context.run_blocking(
            build_clip,
            request.pieces,
            request.start,
            request.stop,
            source,
        )
        args = [context.ffmpeg, *_INPUT_ARGS, source, "-map", "0:v:0"]
        if video_filters:
            args += ["-filter:v", ",".join(video_filters)]
        args += video_args
        if audio_args is None:
            args += ["-an"]
        else:
            # The AAC encoder's delay is not hidden by an edit list: feed it
            # from that many samples on, so the first sound heard is in sync.
            args += ["-map", "0:a:0?", "-filter:a", f"atrim=start_sample={AAC_PRIMING_SAMPLES}"]
            args += audio_args
        args += [*_OUTPUT_ARGS, partial]
        await run_ffmpeg(context.reactor, args, exact.duration / speed, request.progress)
        size = _move_into_place(partial, request.out_path)
        return ClipResult(exact.start, exact.stop, exact.duration, size)
    finally:
        _remove(source)
        _remove(partial)
