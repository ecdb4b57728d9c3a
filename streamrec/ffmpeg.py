"""Finding the ffmpeg binary: the one on PATH, else the one imageio-ffmpeg ships."""

from __future__ import annotations

import shutil


class FfmpegNotFound(RuntimeError):
    pass


def find_ffmpeg(explicit: str | None = None) -> str:
    """Path of the ffmpeg to run: ``explicit``, else PATH's, else imageio-ffmpeg's."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise FfmpegNotFound(f"ffmpeg binary {explicit!r} not found")
        return found
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - a dependency of the package
        raise FfmpegNotFound("no ffmpeg on PATH and imageio-ffmpeg is not installed") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:
        raise FfmpegNotFound(f"no ffmpeg on PATH and none from imageio-ffmpeg: {error}") from None
