"""What the store keeps, as the rest of streamrec sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stream:
    id: int
    url: str
    description: str
    create_date: float
    start_date: float | None
    stop_date: float | None
    wanted: bool
    last_error: str | None
    max_age: float | None = None
    source_audio: str | None = None  # the audio codec last seen ("none": no audio)
    owner: str | None = None  # the node holding its lease (several nodes on one database)
    epoch: int = 0  # grows with each new owner
    recorder_state: str | None = None  # as its owner reports it
    clock: str = "auto"  # the clock its segments follow: auto, camera or arrival


@dataclass(frozen=True)
class Segment:
    id: int
    stream_id: int
    run_id: int
    path: str
    start: float
    end: float
    bytes: int
    node: str | None = None  # the node that recorded it (its run's)


#: A clip's signed manifest is stored beside it, under its key and this suffix.
MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Clip:
    seq: int
    link: str
    storage_key: str
    start: float
    stop: float
    bytes: int
    sha256: str | None = None  # hex of the clip's bytes (None: built before schema 9)
    manifest: str | None = None  # the link of its signed manifest (None: not signed)
    # Time provenance (None: built before schema 10): the clock its times come
    # from, its first and last shown frames, and a bound on their error (s).
    clock: str | None = None
    first_frame: float | None = None
    last_frame: float | None = None
    time_error: float | None = None


@dataclass(frozen=True)
class ClipJob:
    id: int
    stream_id: int
    start: float
    stop: float
    stop_given: bool
    encoder: str
    options: dict[str, Any]
    status: str
    error_message: str | None
    progress: float
    created_at: float
    clips: tuple[Clip, ...] = field(default=())
    planned_at: float | None = None  # when it was cut into spans
    waiting_for: str | None = None  # nodes holding spans that none alive can build


@dataclass(frozen=True)
class SpanTask:
    """One span of a planned job: built by a node that can read its segments."""

    job_id: int
    stream_id: int
    seq: int
    run_id: int
    node: str | None  # the node that recorded it
    start: float
    stop: float
    status: str
    builder: str | None
    total: int  # spans in the job
    planned_at: float


@dataclass(frozen=True)
class Totals:
    segments: int
    seconds: float
    bytes: int
    first: float | None
    last: float | None


JOB_PENDING = "pending"
JOB_PROCESSING = "processing"
JOB_DONE = "done"
JOB_FAILED = "failed"
JOB_EXPIRED = "expired"
