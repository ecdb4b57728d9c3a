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

Option parsing helpers (:func:`video_options`, :func:`timestamp_option`)
turn request parameters into ffmpeg arguments and raise :class:`OptionError`
(a :class:`streamrec.errors.BadRequest`) naming the bad parameter.

With ``timestamp=True``, :func:`reencode` burns each frame's wall-clock time
(UTC, to the millisecond) into the bottom-left corner with ffmpeg's
``drawtext`` (:func:`timestamp_filter`); :func:`timestamp_font` checks once
per ffmpeg that it can, so a request is refused up front when it cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
    "TIMESTAMP_OPTION",
    "VIDEO_OPTIONS",
    "VideoOptions",
    "drawtext_filter",
    "reencode",
    "run_ffmpeg",
    "timestamp_filter",
    "timestamp_font",
    "timestamp_option",
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


#: The request parameter that burns each frame's wall-clock time into the
#: picture (``0`` or ``1``, see :func:`timestamp_option`). Not in
#: :data:`VIDEO_OPTIONS`: only an encoder whose filters keep frame times
#: (``transcode``) passes ``timestamp`` to :func:`reencode`.
TIMESTAMP_OPTION = "timestamp"


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


def timestamp_option(options: Mapping[str, str]) -> bool:
    """``timestamp``: ``1`` draws each frame's wall-clock time, ``0`` (the
    default, also when absent or empty) does not; any other value is an
    :class:`OptionError`."""
    raw = options.get(TIMESTAMP_OPTION)
    value = "" if raw is None else str(raw).strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise OptionError(f"{TIMESTAMP_OPTION} must be 0 or 1, not {raw!r}")


# --------------------------------------------------------------------------
# The wall-clock time burnt into the picture
# --------------------------------------------------------------------------

#: Monospace fonts where distributions put them (Debian's fonts-dejavu-core,
#: which Debian's ffmpeg pulls in through fontconfig, first). None found:
#: ``fc-match``'s monospace, else ffmpeg's own fontconfig is asked for one.
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/dejavu-sans-mono-fonts/DejaVuSansMono.ttf",  # Fedora
    "/usr/share/fonts/TTF/DejaVuSansMono.ttf",  # Arch
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
)

_DAY_US = 86_400 * 1_000_000
# A filter option's value is unescaped twice: once by the filter graph's
# parser (which splits filters at , ; [ ]), once by the filter's (which
# splits options at :). Backslashes and quotes are special to both.
_OPTION_SPECIALS = re.compile(r"([\\':])")
_GRAPH_SPECIALS = re.compile(r"([\\'\[\],;])")


def _filter_value(value: str) -> str:
    """``value`` escaped for one option of a filter in ``-filter:v``."""
    return _GRAPH_SPECIALS.sub(r"\\\1", _OPTION_SPECIALS.sub(r"\\\1", value))


def timestamp_text(start: float) -> str:
    """drawtext's text for the frames of a clip whose first frame (``t`` = 0)
    was shown at POSIX time ``start``: ``YYYY-MM-DD HH:MM:SS.mmm UTC``.

    Every field is an ``%{eif}`` of the same integer, the milliseconds from
    the midnight (UTC) before ``start`` to the frame, rounded: the fields can
    never disagree (a date of the day before with 00:00:00.000, a second
    behind its milliseconds), and the time of day, under a day plus the
    clip, keeps its microseconds in a double.  The date is the civil date of
    the day count (H. Hinnant's ``civil_from_days``).  Not ``%{pts:gmtime}``
    (whole seconds, truncated on their own) with ``%{pts:hms:OFFSET:24HH}``:
    ffmpeg 5.1 takes that, but imageio-ffmpeg's 9.0 refuses ``24HH``.
    """
    micros = round(start * 1_000_000)
    day, of_day = divmod(micros, _DAY_US)
    millis = f"floor((t+{of_day // 1_000_000}.{of_day % 1_000_000:06d})*1000+0.5)"
    # The date: ld(1) days since 0000-03-01; ld(2) its 400-year era; ld(3)
    # the day of the era; ld(4) the year of the era; ld(5) the day of the
    # year from March 1; ld(6) the month from March (0-11); ld(7) the month.
    date = ";".join(
        (
            f"st(1,{day}+floor({millis}/86400000)+719468)",
            "st(2,floor(ld(1)/146097))",
            "st(3,ld(1)-ld(2)*146097)",
            "st(4,floor((ld(3)-floor(ld(3)/1460)+floor(ld(3)/36524)-floor(ld(3)/146096))/365))",
            "st(5,ld(3)-(365*ld(4)+floor(ld(4)/4)-floor(ld(4)/100)))",
            "st(6,floor((5*ld(5)+2)/153))",
            "st(7,ld(6)+if(lt(ld(6),10),3,-9))",
        )
    )
    fields = (
        (f"{date};ld(4)+ld(2)*400+lte(ld(7),2)", 4),  # year
        (f"{date};ld(7)", 2),  # month
        (f"{date};ld(5)-floor((153*ld(6)+2)/5)+1", 2),  # day
        (f"mod(floor({millis}/3600000),24)", 2),
        (f"mod(floor({millis}/60000),60)", 2),
        (f"mod(floor({millis}/1000),60)", 2),
        (f"mod({millis},1000)", 3),
    )
    year, month, day_, hour, minute, second, milli = (
        f"%{{eif:{value}:d:{width}}}" for value, width in fields
    )
    return f"{year}-{month}-{day_} {hour}:{minute}:{second}.{milli} UTC"


def drawtext_filter(text: str, font: str | None) -> str:
    """``text`` (drawtext's expansions allowed) in the bottom-left corner,
    white on a dark box, a 24th of the picture's height (12 px at least).
    ``font`` is a font file, or None for fontconfig's monospace."""
    options = {"fontfile": font} if font else {"font": "monospace"}
    options.update(
        text=text,
        fontsize="max(12,h/24)",
        fontcolor="white",
        box="1",
        boxcolor="black@0.6",
        boxborderw="6",
        x="12",
        y="h-th-12",
    )
    return "drawtext=" + ":".join(f"{key}={_filter_value(value)}" for key, value in options.items())


def timestamp_filter(start: float, font: str | None) -> str:
    """The filter burning the wall-clock time of each frame into it (the
    first frame is ``start``'s): see :func:`timestamp_text`."""
    return drawtext_filter(timestamp_text(start), font)


def find_font() -> str | None:
    """A monospace font file for drawtext: one of :data:`FONT_FILES`, else
    ``fc-match``'s; None when neither is there (ffmpeg's fontconfig then)."""
    for path in FONT_FILES:
        if os.path.isfile(path):
            return path
    fc_match = shutil.which("fc-match")
    if fc_match is not None:
        try:
            found = subprocess.run(
                [fc_match, "--format=%{file}", "monospace"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found and os.path.isfile(found):
            return found
    return None


#: ffmpeg path -> (the font its drawtext drew with, None) or (None, why it could not).
_FONTS: dict[str, tuple[str | None, str | None]] = {}


def timestamp_font(ffmpeg: str) -> str | None:
    """The font with which ``ffmpeg`` draws :func:`timestamp_filter` (a file,
    or None for fontconfig's monospace).

    The first call per ffmpeg tries it on a few frames of a test picture
    (about 0.1 s, blocking: the first ``get_clip`` asking for it waits that
    long once), and the answer is kept.  An ffmpeg without ``drawtext`` (built without
    libfreetype) or without a font to draw with raises :class:`OptionError`
    naming ``timestamp``, so a request asking for it is refused up front.
    """
    if ffmpeg not in _FONTS:
        font = find_font()
        args = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi"]
        args += ["-i", "color=size=320x240:rate=25:duration=0.2", "-filter:v"]
        args += [timestamp_filter(0.0, font), "-f", "null", "-"]
        try:
            ran = subprocess.run(args, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as failure:  # not kept: may pass
            raise OptionError(f"{TIMESTAMP_OPTION}=1: cannot run {ffmpeg} ({failure})") from None
        _FONTS[ffmpeg] = (font, None) if ran.returncode == 0 else (None, _cannot_draw(ffmpeg, ran))
    font, why = _FONTS[ffmpeg]
    if why is not None:
        raise OptionError(why)
    return font


def _cannot_draw(ffmpeg: str, ran: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in ran.stderr.splitlines() if line.strip()]
    if any("No such filter: 'drawtext'" in line for line in lines):
        return (
            f"{TIMESTAMP_OPTION}=1 needs ffmpeg's drawtext filter, which {ffmpeg} does not"
            " have (it was built without libfreetype)"
        )
    last = lines[-1] if lines else f"exit status {ran.returncode}"
    return (
        f"{TIMESTAMP_OPTION}=1: {ffmpeg} cannot draw the time ({last});"
        " is a font installed (Debian: fonts-dejavu-core)?"
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
    timestamp: bool = False,
) -> ClipResult:
    """Re-encode ``request``'s range into ``request.out_path``.

    ``video_filters`` run on the exact frames of the range (the first is the
    one displayed at ``request.start``, timestamps from 0); ``video_args`` are
    the codec arguments (see :meth:`VideoOptions.x264_args`); ``audio_args``
    the AAC arguments, or None to drop the sound.  ``speed`` is how much
    shorter than the range the output is (for progress only).  ``timestamp``
    draws each frame's wall-clock time after ``video_filters`` (so at the
    output's size), counted from the copy clip's start, the instant its first
    frame was shown: ``video_filters`` must then keep frame times.  Returns the
    range actually covered (frame-snapped, as the copy clip's) and the size.
    """
    if timestamp:  # refused before any work when this ffmpeg cannot draw it
        font = await context.run_blocking(timestamp_font, context.ffmpeg)
    source, partial = _scratch_paths(request.out_path)
    try:
        exact: ClipResult = await context.run_blocking(
            build_clip,
            request.pieces,
            request.start,
            request.stop,
            source,
        )
        filters = list(video_filters)
        if timestamp:
            # The copy clip's first frame, t = 0 in ffmpeg, was shown at exact.start.
            filters.append(timestamp_filter(exact.start, font))
        args = [context.ffmpeg, *_INPUT_ARGS, source, "-map", "0:v:0"]
        if filters:
            args += ["-filter:v", ",".join(filters)]
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
