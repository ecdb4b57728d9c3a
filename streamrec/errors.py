"""What can go wrong, in the domain's words; importable from every floor.

Every error the API answers with is a :class:`StreamrecError`. The HTTP
status and message of each kind are in one table, ``streamrec.api.ERRORS``;
nothing below the API knows about HTTP.
"""

from __future__ import annotations

from typing import Any


class StreamrecError(Exception):
    """Base of the errors a caller of the domain is told about. ``reason``, when
    set, is the underlying cause in words (ffmpeg's last error line, say);
    ``fields`` go along in the answer as they are."""

    reason: str | None = None
    fields: dict[str, Any] = {}


class BadRequest(StreamrecError, ValueError):
    """A parameter is missing or wrong; the message says which and why."""


class InvalidSource(BadRequest):
    """A URL that streamrec will not record; the message says why."""


class UnknownEncoder(BadRequest):
    """A clip encoder that is not loaded was asked for."""


class StreamNotFound(StreamrecError, LookupError):
    pass


class JobNotFound(StreamrecError, LookupError):
    """No clip job of that id for that stream."""


class AlreadyStarted(StreamrecError):
    pass


class NotStarted(StreamrecError):
    pass


class CannotStart(StreamrecError):
    """ffmpeg could not be launched or gave up before the source opened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: str = reason


class CannotStop(StreamrecError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StatusUnavailable(StreamrecError):
    """A stream's status could not be put together (the store failed)."""


class ClipQueueFull(StreamrecError):
    """Too many clip jobs are waiting or being built to take a new one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DatabaseUnavailable(StreamrecError):
    """The database cannot be reached now (it restarts, or the network to it is
    down); the driver connects again by itself. Recording goes on meanwhile."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NothingRecorded(StreamrecError, LookupError):
    """Nothing is recorded at the instant asked for (None: at all yet). ``fields``
    may say where the recording goes on (``next``)."""

    def __init__(self, at: float | None, **fields: Any) -> None:
        super().__init__("Nothing recorded yet" if at is None else f"Nothing recorded at {at:.3f}")
        self.at = at
        self.fields = fields


class RecordingDeleted(StreamrecError):
    """The segments a playback was reading were deleted (retention) since it began."""


def log_failure(logger: Any, what: str, failure: Any, **fields: Any) -> None:
    """Log ``failure`` (a twisted Failure) under ``what``: a database outage as one
    line, since it is expected and passes, anything else with its traceback."""
    if failure.check(DatabaseUnavailable):
        logger.warn(what + ": {why}", why=failure.value.reason, **fields)
    else:
        logger.failure(what, failure, **fields)
