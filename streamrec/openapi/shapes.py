"""The JSON shapes of the answers (those :mod:`streamrec.views` writes) and the
answers every operation shares."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import StreamNotFound, StreamrecError
from ..sources import CLOCKS
from .build import Schema, answer, error_body, nullable, ref

ErrorTable = Mapping[type[StreamrecError], tuple[int, str]]

#: The seed's message for a create without a URL (answered with a 500, as the seed says).
URL_EMPTY = "URL cannot be empty"
#: The 401 messages (:meth:`streamrec.auth.Access.role_of`).
UNAUTHENTICATED = ("Authentication required", "Invalid token")
#: The states a recorder reports (:mod:`streamrec.recorder.supervisor`).
STATES = ("stopped", "starting", "recording", "reconnecting", "disk_full")
#: A clip job's life (:mod:`streamrec.store.records`).
JOB_STATES = ("pending", "processing", "done", "failed", "expired")
#: What the built-in ``transcode`` encoder takes beside ``start``, ``stop`` and ``encoder``.
TRANSCODE_OPTIONS: dict[str, Schema] = {
    "size": {"type": "string", "description": "WIDTHxHEIGHT, e.g. 1280x720"},
    "width": {"type": "integer", "minimum": 16, "maximum": 7680},
    "height": {"type": "integer", "minimum": 16, "maximum": 4320},
    "fps": {"type": "number", "minimum": 1, "maximum": 120},
    "crf": {"type": "integer", "minimum": 0, "maximum": 51},
    "video_bitrate": {"type": "string", "description": "bits/s, or with k/M (e.g. 800k)"},
    "audio_bitrate": {"type": "string", "description": "bits/s, or with k/M (e.g. 96k)"},
    "preset": {"type": "string", "description": "an x264 preset, e.g. veryfast"},
    "timestamp": {
        "type": "integer",
        "enum": [0, 1],
        "description": "1: each frame's UTC wall-clock time burnt into its bottom-left corner",
    },
}

#: What ``streamrec.core.check_time`` takes as a moment.
POSIX_TIME: Schema = {"type": "number", "minimum": 0, "maximum": 1e11}


def schemas() -> dict[str, Schema]:
    recorded = {
        "type": "object",
        "required": ["segments", "seconds", "bytes", "first", "last"],
        "properties": {
            "segments": {"type": "integer", "minimum": 0},
            "seconds": {"type": "number", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0},
            "first": nullable("number", description="POSIX seconds of the first recorded frame"),
            "last": nullable("number", description="POSIX seconds of the last recorded frame"),
        },
    }
    status = {
        "type": "object",
        "description": "A stream's status: the seed's fields first, then the recorder's.",
        "required": [
            "id",
            "url",
            "description",
            "create_date",
            "start_date",
            "stop_date",
            "started",
            "max_age",
            "state",
            "node",
            "last_error",
            "reconnects",
            "last_segment_at",
            "recorded",
        ],
        "properties": {
            "id": {"type": "integer"},
            "url": {
                "type": "string",
                "description": "The source URL, its credentials masked (user:***@)",
            },
            "description": {"type": "string"},
            "create_date": {"type": "number", "description": "POSIX seconds"},
            "start_date": nullable("number", description="the latest start; null until one"),
            "stop_date": nullable("number", description="the latest stop; null while recording"),
            "started": {"type": "boolean", "description": "whether recording is wanted"},
            "max_age": nullable("number", description="this stream's retention in seconds"),
            "state": {"type": ["string", "null"], "enum": [*STATES, None]},
            "node": nullable("string", description="the node recording it"),
            "last_error": nullable("string", description="credentials masked"),
            "reconnects": {"type": "integer", "minimum": 0},
            "clock_option": {"type": "string", "enum": list(CLOCKS)},
            "clock": {
                "type": ["string", "null"],
                "enum": ["camera", "arrival", None],
                "description": "the clock the running recording follows (null: not recording)",
            },
            "clock_reason": nullable("string", description="why that clock"),
            "camera_offset_ms": nullable(
                "integer",
                description=(
                    "the camera's clock minus arrival time, measured (negative: the"
                    " video arrives that late); null when the camera sends no clock"
                ),
            ),
            "time_error_ms": nullable(
                "integer", description="how far the recording's times may be off (README)"
            ),
            "last_segment_at": nullable("number"),
            "recorded": recorded,
        },
    }
    clip = {
        "type": "object",
        "required": ["link", "start", "stop", "duration", "size", "sha256"],
        "properties": {
            "link": {
                "type": "string",
                "format": "uri",
                "description": "An unguessable link to the MP4 file; it needs no token",
            },
            "start": {"type": "number"},
            "stop": {"type": "number"},
            "duration": {"type": "number", "minimum": 0},
            "size": {"type": "integer", "minimum": 0},
            "clock": {
                "type": ["string", "null"],
                "enum": ["camera", "arrival", None],
                "description": "the clock the clip's times come from (null: built before 0.2)",
            },
            "first_frame": nullable(
                "number", description="the instant of its first shown frame, POSIX seconds"
            ),
            "last_frame": nullable(
                "number", description="the instant of its last shown frame, POSIX seconds"
            ),
            "time_error_ms": nullable(
                "integer",
                description="how far its times may be off, milliseconds (README: Time)",
            ),
            "sha256": nullable(
                "string",
                pattern="^[0-9a-f]{64}$",
                description=(
                    "SHA-256 of the MP4 file's bytes, in hex (null for clips built"
                    " before streamrec kept it)"
                ),
            ),
            "manifest": {
                "type": "string",
                "format": "uri",
                "description": (
                    "With --signing-key: a link to the clip's manifest (stream, its URL"
                    " without credentials, times, clock, sha256, size, node, creation"
                    " time, encoder) signed with Ed25519; check it with streamrec-verify"
                ),
            },
        },
    }
    job = {
        "type": "object",
        "description": (
            "A clip job. Asking again with the same parameters answers the same job;"
            " `clips` fills only when `status` is `done`."
        ),
        "required": ["status", "clips", "job_id", "start", "stop", "encoder", "progress"],
        "properties": {
            "status": {"type": "string", "enum": list(JOB_STATES)},
            "clips": {"type": "array", "items": ref("schemas", "Clip")},
            "job_id": {"type": "integer"},
            "start": {"type": "number"},
            "stop": {"type": "number"},
            "encoder": {"type": "string"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "error_message": {"type": "string", "description": "why a job failed"},
            "waiting_for": {
                "type": "string",
                "description": "nodes holding part of the range, gone for now",
            },
        },
    }
    plugins = {
        "type": "object",
        "required": [
            "plugins",
            "storage_backends",
            "clip_encoders",
            "unavailable",
            "storage",
            "default_encoder",
        ],
        "properties": {
            "plugins": {"type": "array", "items": {"type": "string"}},
            "storage_backends": {"type": "array", "items": {"type": "string"}},
            "clip_encoders": {"type": "array", "items": {"type": "string"}},
            "unavailable": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "encoders that could not be loaded, with why",
            },
            "storage": {"type": "string"},
            "default_encoder": {"type": "string"},
        },
    }
    return {
        "Error": error_body(),
        "Status": status,
        "Clip": clip,
        "Job": job,
        "Plugins": plugins,
        "Timeline": {
            "type": "object",
            "description": "The recorded spans in time order; the gaps lie between them.",
            "required": ["stream_id", "start", "stop", "spans"],
            "properties": {
                "stream_id": {"type": "integer"},
                "start": nullable("number", description="null: nothing recorded, none asked"),
                "stop": nullable("number"),
                "spans": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["start", "stop"],
                        "properties": {"start": {"type": "number"}, "stop": {"type": "number"}},
                    },
                },
            },
        },
        "Ok": {
            "type": "object",
            "required": ["result"],
            "properties": {"result": {"const": "ok"}},
        },
    }


def responses(errors: ErrorTable) -> dict[str, Schema]:
    not_found = errors[StreamNotFound][1]
    return {
        "BadRequest": answer(
            "A parameter is missing or wrong; the message says which", ref("schemas", "Error")
        ),
        "Unauthenticated": answer(
            "No token, or one the service does not know (only with --tokens)",
            error_body(*UNAUTHENTICATED),
            headers={
                "WWW-Authenticate": {
                    "description": 'Bearer realm="streamrec"',
                    "schema": {"type": "string"},
                }
            },
        ),
        "Forbidden": answer(
            "The token's role is below the one the operation needs; or a browser"
            " sent a state change for another site's page",
            ref("schemas", "Error"),
        ),
        "NotFound": answer(
            "No stream has this id", error_body(not_found), example={"error_message": not_found}
        ),
        "TooLarge": answer("The request body is too large", ref("schemas", "Error")),
        "HeadTooLarge": answer(
            "The request line and headers are past 16 KiB", ref("schemas", "Error")
        ),
        "Unavailable": answer(
            "The database cannot be reached now, or the clip queue is full: try again later",
            ref("schemas", "Error"),
        ),
    }
