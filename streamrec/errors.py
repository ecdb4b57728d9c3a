"""What can go wrong, in the domain's words; importable from every floor.

Every error the API answers with is a :class:`StreamrecError`. The HTTP
status and message of each kind are in one table, ``streamrec.api.ERRORS``;
nothing below the API knows about HTTP.
"""

from __future__ import annotations

from typing import Any


class StreamrecError(Exception):
    """Base of the errors a caller of the domain is told about. ``reason``, when
    set, is the underlying cause in words (ffmpeg's last error line, say)."""

    reason: str | None = None


class BadRequest(StreamrecError, ValueError):
    """A parameter is missing or wrong; the message says which and why."""


class InvalidSource(BadRequest):
    """A URL that streamrec will not record; the message says why."""


class UnknownEncoder(BadRequest):
    """A clip encoder that is not loaded was asked for."""


class StreamNotFound(StreamrecError, LookupError):
    pass


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


class DatabaseUnavailable(StreamrecError):
    """The database cannot be reached now (it restarts, or the network to it is
    down); the driver connects again by itself. Recording goes on meanwhile."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def log_failure(logger: Any, what: str, failure: Any, **fields: Any) -> None:
    """Log ``failure`` (a twisted Failure) under ``what``: a database outage as one
    line, since it is expected and passes, anything else with its traceback."""
    if failure.check(DatabaseUnavailable):
        logger.warn(what + ": {why}", why=failure.value.reason, **fields)
    else:
        logger.failure(what, failure, **fields)
