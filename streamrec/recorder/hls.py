"""An HLS source's own clock: ``EXT-X-PROGRAM-DATE-TIME``.

A live playlist may say, for each media segment, the instant its first
sample was taken. ffmpeg's HLS demuxer reads the tag and drops it, but it
logs each file it opens (``[hls @ ...] Opening 'URL' for reading``): the
first media segment it opens holds media time 0 of the run. The playlist
that lists it is fetched once more here, and that segment's date is the
source's time of media time 0, which the run's clock takes like a camera's
(:meth:`~streamrec.recorder.timeline.RunClock.observe_camera`).
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urljoin, urlsplit

import treq

#: ffmpeg's line for each file its HLS demuxer opens.
OPENING = re.compile(r"^\[hls @ [^\]]+\] Opening '([^']+)' for reading")

#: A playlist larger than this is not read for its dates.
MAX_PLAYLIST = 1 << 20

#: Seconds the playlist may take to come.
FETCH_TIMEOUT = 5.0


def is_playlist(url: str) -> bool:
    return urlsplit(url).path.lower().endswith((".m3u8", ".m3u"))


class FirstSegment:
    """Follows ffmpeg's log to the first media segment it opens, and the
    playlist that lists it (the last playlist opened before, else the source's
    URL itself)."""

    def __init__(self, url: str) -> None:
        self.playlist = url
        self.found: tuple[str, str] | None = None

    def line(self, line: str) -> tuple[str, str] | None:
        """``(playlist URL, segment URL)`` at the first media segment opened; None otherwise."""
        if self.found is not None:
            return None
        opened = OPENING.match(line)
        if opened is None:
            return None
        url = opened.group(1)
        if is_playlist(url):
            self.playlist = url
            return None
        self.found = (self.playlist, url)
        return self.found


def program_date_time(playlist: str, playlist_url: str, segment_url: str) -> float | None:
    """The POSIX time the playlist gives ``segment_url``'s first sample: its
    own ``EXT-X-PROGRAM-DATE-TIME``, or an earlier one plus the durations
    between. None when the playlist has no date for it (or does not list it)."""
    date: float | None = None
    duration = 0.0
    wanted = segment_url.split("?", 1)[0]
    for raw in playlist.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            try:
                date = datetime.fromisoformat(line.split(":", 1)[1].strip()).timestamp()
            except ValueError:
                date = None
        elif line.startswith("#EXTINF:"):
            try:
                duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
            except ValueError:
                duration = 0.0
        elif line.startswith("#EXT-X-DISCONTINUITY"):
            date = None  # a date after a discontinuity counts only if given again
        elif line and not line.startswith("#"):
            if urljoin(playlist_url, line).split("?", 1)[0] == wanted:
                return date
            if date is not None:
                date += duration
            duration = 0.0
    return None


async def fetch_program_date_time(playlist_url: str, segment_url: str) -> float | None:
    """Fetch the playlist and read ``segment_url``'s date from it."""
    response = await treq.get(playlist_url, timeout=FETCH_TIMEOUT, persistent=False)
    if response.code != 200:
        await response.text()
        return None
    chunks: list[bytes] = []

    def keep(data: bytes) -> None:
        chunks.append(data)
        if sum(map(len, chunks)) > MAX_PLAYLIST:
            raise ValueError(f"{playlist_url}: a playlist of more than {MAX_PLAYLIST} bytes")

    await treq.collect(response, keep)
    body = b"".join(chunks).decode("utf-8", "replace")
    return program_date_time(body, playlist_url, segment_url)
