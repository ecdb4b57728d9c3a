"""The JSON shapes of streams, clip jobs and clips: the one place they are written."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .sources import mask_secrets
from .store import (
    JOB_DONE,
    JOB_PENDING,
    JOB_PROCESSING,
    MANIFEST_SUFFIX,
    Clip,
    ClipJob,
    Stream,
    Totals,
)


def stream_json(stream: Stream, totals: Totals, live: Mapping[str, Any]) -> dict[str, Any]:
    """A stream's status object: the seed's fields, then what its recorder reports
    (``live``: :meth:`streamrec.recorder.supervisor.Recorder.status`, empty when none runs)
    and what is recorded."""
    return {
        "id": stream.id,
        "url": mask_secrets(stream.url),
        "description": stream.description,
        "create_date": stream.create_date,
        "start_date": stream.start_date,
        "stop_date": stream.stop_date,
        "started": stream.wanted,
        "max_age": stream.max_age,
        "state": live.get("state", "stopped"),
        "node": stream.owner,
        "last_error": masked(live.get("last_error") or stream.last_error),
        "reconnects": live.get("reconnects", 0),
        "clock_option": stream.clock,
        "clock": live.get("clock"),
        "clock_reason": live.get("clock_reason"),
        "camera_offset_ms": live.get("camera_offset_ms"),
        "time_error_ms": live.get("time_error_ms"),
        "last_segment_at": totals.last,
        "recorded": {
            "segments": totals.segments,
            "seconds": round(totals.seconds, 3),
            "bytes": totals.bytes,
            "first": totals.first,
            "last": totals.last,
        },
    }


def masked(text: str | None) -> str | None:
    return None if text is None else mask_secrets(text)


def timeline_json(
    stream_id: int, start: float | None, stop: float | None, spans: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """A stream's recorded spans within [start, stop] (``null``: nothing recorded, no
    bound asked), in time order; the gaps are what lies between them. Times are
    the index's own, unrounded, so a span's start asks for its first instant."""
    return {
        "stream_id": stream_id,
        "start": start,
        "stop": stop,
        "spans": [{"start": first, "stop": last} for first, last in spans],
    }


def clip_json(clip: Clip, link: str | None = None, manifest: str | None = None) -> dict[str, Any]:
    """One clip of a job; ``link`` and ``manifest`` replace the stored links (fresh
    presigned URLs). ``manifest`` appears only for a signed clip."""
    answer: dict[str, Any] = {
        "link": clip.link if link is None else link,
        "start": round(clip.start, 3),
        "stop": round(clip.stop, 3),
        "duration": round(clip.stop - clip.start, 3),
        "size": clip.bytes,
        "clock": clip.clock,
        "first_frame": clip.first_frame,
        "last_frame": clip.last_frame,
        "time_error_ms": None if clip.time_error is None else round(clip.time_error * 1000),
        "sha256": clip.sha256,
    }
    if clip.manifest is not None:
        answer["manifest"] = clip.manifest if manifest is None else manifest
    return answer


def manifest_of(clip: Clip) -> Clip | None:
    """A signed clip's manifest as a stored object of its own (its key, its stored
    link), for the same ``link`` function as the clip; None when not signed."""
    if clip.manifest is None:
        return None
    return replace(clip, storage_key=clip.storage_key + MANIFEST_SUFFIX, link=clip.manifest)


def _clip_json(clip: Clip, link: Callable[[Clip], str]) -> dict[str, Any]:
    manifest = manifest_of(clip)
    return clip_json(clip, link(clip), None if manifest is None else link(manifest))


def job_json(job: ClipJob, link: Callable[[Clip], str] = lambda clip: clip.link) -> dict[str, Any]:
    """get_clip's answer: links appear only once the job is done."""
    done = job.status == JOB_DONE
    answer: dict[str, Any] = {
        "status": job.status,
        "clips": [_clip_json(clip, link) for clip in job.clips] if done else [],
        "job_id": job.id,
        "start": job.start,
        "stop": job.stop,
        "encoder": job.encoder,
        "progress": 1.0 if done else round(job.progress, 3),
    }
    if job.error_message:
        answer["error_message"] = job.error_message
    if job.waiting_for and job.status in (JOB_PENDING, JOB_PROCESSING):
        answer["waiting_for"] = job.waiting_for  # nodes holding part of it, gone for now
    return answer
