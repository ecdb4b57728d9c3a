"""Built-in clip encoder: a progressive MP4 assembled from the segments' sample
tables, sample bytes copied by range, an edit list to start at the exact instant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import hookimpl
from ..media.mp4 import ClipResult, build_clip
from ..plugins import Encoder, EncodeRequest, PluginContext


class FastCopyEncoder(Encoder):
    """No decoding, no re-muxing: tens of milliseconds for a minute of video."""

    #: Builds in milliseconds: get_clip waits for it and answers ``done`` at once.
    quick = True

    def __init__(self, context: PluginContext) -> None:
        self.run_blocking = context.run_blocking

    async def encode(self, request: EncodeRequest) -> ClipResult:
        result: ClipResult = await self.run_blocking(
            build_clip,
            request.pieces,
            request.start,
            request.stop,
            request.out_path,
        )
        request.progress(1.0)
        return result


@hookimpl(trylast=True)
def register_clip_encoders(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("copy", FastCopyEncoder)
