"""streamrec clip encoder ``timelapse``: the range sped up ``speed`` times.

Registered through the ``streamrec`` entry-point group.  Frames are taken
from the exact range (the first is the one displayed at ``start``), their
timestamps divided by ``speed``, and one frame kept per output frame
interval: the source frame displayed at that instant of the sped-up
timeline.  Sound is dropped.  Built on :mod:`streamrec.clips.reencode`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamrec import hookimpl
from streamrec.clips.reencode import (
    VIDEO_OPTIONS,
    OptionError,
    VideoOptions,
    reencode,
    video_options,
)
from streamrec.plugins import ClipResult, EncodeRequest, PluginContext

__version__ = "0.1.0"

DEFAULT_SPEED = 10.0
MIN_SPEED = 2.0
MAX_SPEED = 1000.0


def parse_speed(options: dict[str, str]) -> float:
    raw = options.get("speed")
    if raw is None or not str(raw).strip():
        return DEFAULT_SPEED
    try:
        speed = float(raw)
    except ValueError:
        raise OptionError(f"speed must be a number, not {raw!r}") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:  # also refuses nan
        raise OptionError(f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, not {raw}")
    return speed


def timelapse_filters(speed: float, choice: VideoOptions) -> list[str]:
    rate = f"{choice.fps:g}" if choice.fps is not None else "source_fps"
    filters = [
        f"setpts=(PTS-STARTPTS)/{speed:g}",
        # round=up: each output frame is the frame displayed at its instant.
        f"fps={rate}:round=up",
    ]
    scale = choice.scale_filter()
    if scale is not None:
        filters.append(scale)
    return filters


class TimelapseEncoder:
    """The clip sped up ``speed`` times, H.264, no sound."""

    options = ("speed", *(name for name in VIDEO_OPTIONS if name != "audio_bitrate"))

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def validate(self, options: dict[str, str]) -> tuple[float, VideoOptions]:
        """Raise :class:`streamrec.clips.reencode.OptionError` on a bad value."""
        return parse_speed(options), video_options(options)

    async def encode(self, request: EncodeRequest) -> ClipResult:
        speed, choice = self.validate(request.options)
        return await reencode(
            self.context,
            request,
            video_filters=timelapse_filters(speed, choice),
            video_args=choice.x264_args(),
            audio_args=None,
            speed=speed,
        )


@hookimpl
def register_clip_encoders(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("timelapse", TimelapseEncoder)
