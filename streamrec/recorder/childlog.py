"""A segmenter's stderr as the service log gets it.

Every line is masked first (:func:`streamrec.sources.mask_secrets`: ffmpeg
quotes the source URL, password and all) and cut to :data:`MAX_LINE`
characters; the supervisor keeps the last ones of each run to explain why it
ended. At most ``limit`` lines of a stream are logged every ``interval``
seconds: a source that makes ffmpeg complain at every packet fills no disk.
The lines left out are counted, and the count is logged when the next
interval begins or the recorder stops.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ..sources import mask_secrets

log = Logger(namespace="streamrec.recorder")

#: Lines of one stream's ffmpeg logged per interval: about what one launch
#: says (its input, its mapping, why it stopped).
LINES_PER_INTERVAL = 30
INTERVAL = 60.0
#: The longest line kept or logged (ffmpeg's own are at most 1024 characters).
MAX_LINE = 2000


def clean(line: str) -> str:
    """One of ffmpeg's lines with its secrets masked, cut to MAX_LINE characters."""
    masked = mask_secrets(line)
    return masked if len(masked) <= MAX_LINE else masked[:MAX_LINE] + "..."


def worth_logging(line: str) -> bool:
    # The segment muxer's "Opening 'seg000123.mp4' for writing", once per
    # segment, says nothing the index does not.
    return bool(line.strip()) and not line.endswith("' for writing")


class ChildLog:
    """The log of one stream's segmenters, within a budget of lines."""

    def __init__(
        self,
        reactor: Any,
        stream_id: int,
        limit: int = LINES_PER_INTERVAL,
        interval: float = INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.stream_id = stream_id
        self.limit = limit
        self.interval = interval
        self.logged = 0
        self.suppressed = 0
        self._since: float | None = None

    def write(self, line: str) -> None:
        """Log a cleaned line if this interval's budget allows, else count it."""
        if not worth_logging(line):
            return
        now = self.reactor.seconds()
        if self._since is None or now - self._since >= self.interval:
            self.flush()
            self._since, self.logged = now, 0
        if self.logged < self.limit:
            self.logged += 1
            log.debug("stream {stream_id}: {line}", stream_id=self.stream_id, line=line)
        else:
            self.suppressed += 1

    def flush(self) -> None:
        """Log how many lines were left out since the last count, if any."""
        if self.suppressed:
            log.info(
                "stream {stream_id}: {count} lines of ffmpeg not logged"
                " (at most {limit} every {interval:g} s)",
                stream_id=self.stream_id,
                count=self.suppressed,
                limit=self.limit,
                interval=self.interval,
            )
            self.suppressed = 0
