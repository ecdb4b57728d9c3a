"""Built-in clip encoder ``transcode``: the range re-encoded to H.264 + AAC.

For H.265 cameras (whose clips most browsers cannot play), for tools that
ignore edit lists, and for smaller files.  The output is a progressive MP4
with no edit list: its first frame is the source frame displayed at
``start``, its last the one displayed just before ``stop``.  Parameters
(all optional, see :func:`streamrec.clips.reencode.video_options`): ``size``
or ``width``/``height``, ``fps``, ``crf`` or ``video_bitrate``,
``audio_bitrate``, ``preset``; and ``timestamp=1``, which burns each frame's
wall-clock time (``YYYY-MM-DD HH:MM:SS.mmm UTC``) into its bottom-left
corner (:func:`streamrec.clips.reencode.timestamp_option`).  An ffmpeg that
cannot draw it (no ``drawtext``, no font) has ``get_clip`` refuse it.

The work one request can ask for is bounded: at most 3840x2160 pixels (a
larger source is scaled down), about 60 frames a second (a faster source is
thinned), presets up to ``medium``, ``crf`` from 10, and an hour of range
(``max_seconds``, which ``get_clip`` checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import hookimpl
from ..clips.reencode import (
    MAX_SECONDS,
    TIMESTAMP_OPTION,
    VIDEO_OPTIONS,
    VideoOptions,
    reencode,
    timestamp_font,
    timestamp_option,
    video_options,
)
from ..media.mp4 import ClipResult
from ..plugins import EncodeRequest, PluginContext


def video_filters(choice: VideoOptions) -> list[str]:
    filters = []
    if choice.fps is not None:
        # round=up: each output frame is the source frame displayed at its instant.
        filters.append(f"fps={choice.fps:g}:round=up")
    # A fast source thinned, the size asked for, a large source scaled down.
    bounded = (choice.rate_filter(), choice.scale_filter(), choice.bound_filter())
    return filters + [one for one in bounded if one is not None]


class TranscodeEncoder:
    """ffmpeg re-encode of the exact range to H.264 (libx264) + AAC."""

    #: The request parameters this encoder takes (get_clip keeps only these).
    options = (*VIDEO_OPTIONS, TIMESTAMP_OPTION)
    #: The longest range one re-encode may take (get_clip refuses longer ones).
    max_seconds = MAX_SECONDS

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def validate(self, options: dict[str, str]) -> tuple[VideoOptions, bool]:
        """Raise :class:`streamrec.clips.reencode.OptionError` on a bad value,
        or when ``timestamp=1`` and this service's ffmpeg cannot draw it."""
        choice, timestamp = video_options(options), timestamp_option(options)
        if timestamp:
            timestamp_font(self.context.ffmpeg)  # checked once per ffmpeg
        return choice, timestamp

    async def encode(self, request: EncodeRequest) -> ClipResult:
        # reencode checks the drawing in a thread (a job may be older than the service).
        choice, timestamp = video_options(request.options), timestamp_option(request.options)
        return await reencode(
            self.context,
            request,
            video_filters=video_filters(choice),
            video_args=[*choice.x264_args(), *choice.rate_args()],
            audio_args=choice.aac_args(),
            timestamp=timestamp,
        )


@hookimpl(trylast=True)
def register_clip_encoders(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("transcode", TranscodeEncoder)
