"""Built-in clip encoder ``transcode``: the range re-encoded to H.264 + AAC.

For H.265 cameras (whose clips most browsers cannot play), for tools that
ignore edit lists, and for smaller files.  The output is a progressive MP4
with no edit list: its first frame is the source frame displayed at
``start``, its last the one displayed just before ``stop``.  Parameters
(all optional, see :func:`streamrec.clips.reencode.video_options`): ``size``
or ``width``/``height``, ``fps``, ``crf`` or ``video_bitrate``,
``audio_bitrate``, ``preset``.

The work one request can ask for is bounded: at most 3840x2160 pixels (a
larger source is scaled down), about 60 frames a second (a faster source is
thinned), presets up to ``medium``, ``crf`` from 10, and an hour of range
(``max_seconds``, which ``get_clip`` checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import hookimpl
from ..clips.reencode import MAX_SECONDS, VIDEO_OPTIONS, VideoOptions, reencode, video_options
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
    options = VIDEO_OPTIONS
    #: The longest range one re-encode may take (get_clip refuses longer ones).
    max_seconds = MAX_SECONDS

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def validate(self, options: dict[str, str]) -> VideoOptions:
        """Raise :class:`streamrec.clips.reencode.OptionError` on a bad value."""
        return video_options(options)

    async def encode(self, request: EncodeRequest) -> ClipResult:
        choice = self.validate(request.options)
        return await reencode(
            self.context,
            request,
            video_filters=video_filters(choice),
            video_args=[*choice.x264_args(), *choice.rate_args()],
            audio_args=choice.aac_args(),
        )


@hookimpl(trylast=True)
def register_clip_encoders(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("transcode", TranscodeEncoder)
