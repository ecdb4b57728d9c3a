"""The database port: one interface for every adapter.

Nothing here knows about HTTP or ffmpeg. Every method returns an awaitable
(a Deferred); no adapter blocks the reactor thread.

:class:`SqlStore` holds the one implementation of every method. Transactions
are generators of SQL steps (:mod:`.steps`); the adapter's driver runs them:
SQLite (:mod:`.sqlite`, the embedded default) or PostgreSQL
(:mod:`.postgresql`, the shared engine). :func:`open_store` picks one from
the ``--database`` URL.
"""

from __future__ import annotations

import os
from typing import Any

from .records import (
    JOB_DONE,
    JOB_EXPIRED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_PROCESSING,
    MANIFEST_SUFFIX,
    Clip,
    ClipJob,
    Segment,
    SpanTask,
    Stream,
    Totals,
)
from .sqlstore import LONGEST_SEGMENT, SqlStore

__all__ = [
    "JOB_DONE",
    "JOB_EXPIRED",
    "JOB_FAILED",
    "JOB_PENDING",
    "JOB_PROCESSING",
    "MANIFEST_SUFFIX",
    "LONGEST_SEGMENT",
    "Clip",
    "ClipJob",
    "Segment",
    "SpanTask",
    "SqlStore",
    "Stream",
    "Totals",
    "UnsupportedDatabase",
    "open_store",
]


def open_sqlite(path: str) -> SqlStore:
    """A store on a SQLite file, used from one worker thread."""
    from .sqlite import sqlite_driver

    return SqlStore(sqlite_driver(path))


def open_postgresql(url: str, reactor: Any = None) -> SqlStore:
    """A store on a PostgreSQL database (``postgresql://USER@HOST:PORT/DB``).

    Connects on first use (``migrate()`` does, first thing in the service).
    """
    from .postgresql import postgres_driver

    return SqlStore(postgres_driver(url, reactor=reactor))


class UnsupportedDatabase(ValueError):
    pass


def open_store(url: str, data_dir: str, reactor: Any = None) -> SqlStore:
    """Open the store named by a ``--database`` URL.

    ``sqlite:///PATH`` (absolute), ``sqlite:PATH`` or ``sqlite://`` (the data
    directory's ``streamrec.sqlite``); ``postgresql://USER@HOST:PORT/DB`` (or
    ``postgres://``, any libpq connection URI) for the shared engine.
    """
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        if rest.startswith("//"):
            rest = rest[2:]
        path = rest or os.path.join(data_dir, "streamrec.sqlite")
        if not os.path.isabs(path):
            path = os.path.join(data_dir, path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open_sqlite(path)
    if url.startswith(("postgresql://", "postgres://")):
        return open_postgresql(url, reactor=reactor)
    raise UnsupportedDatabase(
        f"unsupported database URL {url!r}: use sqlite:///PATH"
        " or postgresql://USER@HOST:PORT/DATABASE"
    )
