"""The routes of the API: every path, method, parameter and answer."""

from __future__ import annotations

from ..auth import OPERATOR, VIEWER, Role
from ..errors import (
    AlreadyStarted,
    CannotStart,
    CannotStop,
    JobNotFound,
    NotStarted,
    StatusUnavailable,
    StreamNotFound,
    StreamrecError,
)
from ..sources import ALLOWED_SCHEMES, CLOCKS, MAX_URL_LENGTH
from .build import (
    JSON,
    Schema,
    answer,
    error_body,
    get_and_post,
    nullable,
    operation,
    query,
    ref,
    seed_error,
)
from .shapes import POSIX_TIME, TRANSCODE_OPTIONS, URL_EMPTY, ErrorTable


def stream_links() -> dict[str, Schema]:
    """From a created stream's id to what can be done with it."""
    stream_id = {"stream_id": "$response.body#/stream_id"}
    return {
        name: {"operationId": operation_id, "parameters": stream_id}
        for name, operation_id in (
            ("status", "stream_status"),
            ("start", "start_stream"),
            ("start_post", "start_stream_post"),
            ("stop", "stop_stream"),
            ("stop_post", "stop_stream_post"),
            ("get_clip", "get_clip"),
            ("get_clip_post", "get_clip_post"),
        )
    }


def paths(errors: ErrorTable) -> dict[str, Schema]:
    """Every route of the API, each method an operation."""

    def seed(kind: type[StreamrecError]) -> str:
        return errors[kind][1]

    stream_id = {
        "name": "stream_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
        "example": 1,
    }
    not_found = ref("responses", "NotFound")
    unavailable = ref("responses", "Unavailable")
    bad_request = ref("responses", "BadRequest")
    state_change = (
        "Changes state: `HEAD` is refused (405), and so is a request a browser"
        " makes for another site's page (403)."
    )
    streams = answer(
        "Every stream's status, by id",
        {
            "type": "object",
            "required": ["result"],
            "properties": {"result": {"type": "array", "items": ref("schemas", "Status")}},
        },
    )
    list_streams = operation(
        "list_streams", "List the streams", VIEWER, streams, {"503": unavailable}
    )
    clip_parameters: dict[str, Schema] = {
        "start": {**POSIX_TIME, "description": "POSIX seconds, fractions allowed"},
        "stop": {
            **POSIX_TIME,
            "description": (
                "POSIX seconds; may be in the future. Without it: now while recording,"
                " else the last stop"
            ),
        },
        "encoder": {"type": "string", "description": "a clip encoder plugin, e.g. copy"},
        **TRANSCODE_OPTIONS,
    }
    clip_file = {"type": "string", "contentMediaType": "video/mp4"}
    return {
        "/streams/": {"get": list_streams},
        "/streams": {"get": {**list_streams, "operationId": "list_streams_no_slash"}},
        "/streams/create": get_and_post(
            "create_stream",
            "Register a source",
            OPERATOR,
            answer(
                "The new stream's id",
                {
                    "type": "object",
                    "required": ["stream_id"],
                    "properties": {"stream_id": {"type": "integer"}},
                },
                links=stream_links(),
            ),
            {
                "400": answer(
                    "A URL streamrec does not record, a bad max_age or clock",
                    ref("schemas", "Error"),
                ),
                "500": seed_error("No URL was given (the seed's answer)", URL_EMPTY),
                "503": unavailable,
            },
            {
                "url": {
                    "type": "string",
                    "maxLength": MAX_URL_LENGTH,
                    "pattern": "^(?:" + "|".join(ALLOWED_SCHEMES) + ")://",
                    "description": (
                        "A live source: "
                        + ", ".join(f"{s}://" for s in ALLOWED_SCHEMES)
                        + " (credentials in it are masked in every answer)"
                    ),
                    "examples": ["rtsp://127.0.0.1:9/unreachable"],
                },
                "description": {"type": "string"},
                "max_age": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "this stream's retention in seconds",
                },
                "clock": {
                    "type": "string",
                    "enum": list(CLOCKS),
                    "default": "auto",
                    "description": (
                        "The clock the recording's times follow: `camera` (the source's"
                        " own: an RTSP camera's RTCP sender reports, or a live HLS"
                        " playlist's EXT-X-PROGRAM-DATE-TIME), `arrival`"
                        " (this box's clock when the video arrives), or `auto` (the"
                        " camera's while it agrees with arrival within --clock-tolerance)"
                    ),
                },
            },
            required=("url",),
            description=state_change,
        ),
        "/streams/{stream_id}/start": get_and_post(
            "start_stream",
            "Start recording",
            OPERATOR,
            answer("Recording (or still connecting after --start-timeout)", ref("schemas", "Ok")),
            {
                "404": not_found,
                "500": seed_error(
                    "Already started, or the source could not be opened (`reason` says why)",
                    seed(AlreadyStarted),
                    seed(CannotStart),
                    reason=True,
                ),
                "503": unavailable,
            },
            {},
            path_parameters=[stream_id],
            description=state_change,
        ),
        "/streams/{stream_id}/stop": get_and_post(
            "stop_stream",
            "Stop recording",
            OPERATOR,
            answer("Stopped; the last segment is complete", ref("schemas", "Ok")),
            {
                "404": not_found,
                "500": seed_error(
                    "Not started (or already stopped), or the segmenter failed to stop",
                    seed(NotStarted),
                    seed(CannotStop),
                    reason=True,
                ),
                "503": unavailable,
            },
            {},
            path_parameters=[stream_id],
            description=state_change,
        ),
        "/streams/{stream_id}/timeline": {
            "get": operation(
                "timeline",
                "What is recorded between two moments",
                VIEWER,
                answer("The recorded spans", ref("schemas", "Timeline")),
                {"400": bad_request, "404": not_found, "503": unavailable},
                parameters=[
                    stream_id,
                    *query(
                        {
                            "start": {**POSIX_TIME, "description": "default: the first recorded"},
                            "stop": {**POSIX_TIME, "description": "default: the last recorded"},
                        }
                    ),
                ],
            )
        },
        "/streams/{stream_id}/snapshot": {
            "get": operation(
                "snapshot",
                "The picture a player shows at a moment",
                VIEWER,
                answer(
                    "The frame shown at `t`, or the latest recorded keyframe, as JPEG",
                    {"type": "string", "contentMediaType": "image/jpeg"},
                    "image/jpeg",
                ),
                {
                    "400": bad_request,
                    "404": answer(
                        "No such stream, or nothing recorded at `t` (`Nothing recorded at T`)",
                        ref("schemas", "Error"),
                    ),
                    "503": unavailable,
                },
                parameters=[
                    stream_id,
                    *query(
                        {
                            "t": {**POSIX_TIME, "description": "default: the latest recorded"},
                            "width": {
                                "type": "integer",
                                "minimum": 16,
                                "maximum": 1920,
                                "description": "default: as recorded; the height keeps the shape",
                            },
                        }
                    ),
                ],
                description=(
                    "Decoded from the keyframe at or before `t`. A past `t` is answered"
                    " with `Cache-Control: private, max-age=86400, immutable`, the latest"
                    " with `no-store`; `X-Streamrec-Time` is the wall time of the frame shown."
                ),
            )
        },
        "/streams/{stream_id}/archive.mp4": {
            "get": operation(
                "archive",
                "Play the recording from a moment, without a clip job",
                VIEWER,
                answer(
                    "A progressive MP4 from `start` to `stop` or the first gap",
                    clip_file,
                    "video/mp4",
                ),
                {
                    "206": answer("The one byte range asked (`Range`)", clip_file, "video/mp4"),
                    "400": bad_request,
                    "404": answer(
                        "No such stream, or nothing recorded at `start`: `next` is where"
                        " the recording goes on (null: nowhere yet)",
                        error_body(extra={"next": nullable("number")}),
                    ),
                    "410": answer(
                        "The segments this URL was answered with were deleted since",
                        ref("schemas", "Error"),
                    ),
                    "416": answer(
                        "The range begins past the end", {"type": "string"}, "text/plain"
                    ),
                    "503": unavailable,
                },
                parameters=[
                    stream_id,
                    *query(
                        {
                            "start": {**POSIX_TIME, "description": "the first instant shown"},
                            "stop": {
                                **POSIX_TIME,
                                "description": "default: the end of the span (at most"
                                " --max-clip-seconds)",
                            },
                        },
                        required=("start",),
                    ),
                ],
                description=(
                    "One continuous span: it ends at `stop` or at the first gap;"
                    " `X-Streamrec-Start` and `X-Streamrec-Stop` say where it begins and"
                    " ends. Byte ranges (one at most), `ETag`, `If-None-Match` (304) and"
                    " `If-Range`. The same URL is the same file while it is played."
                ),
            )
        },
        "/streams/{stream_id}/status": {
            "get": operation(
                "stream_status",
                "A stream's status",
                VIEWER,
                answer("The status object", ref("schemas", "Status")),
                {
                    "404": not_found,
                    "500": seed_error("The status could not be read", seed(StatusUnavailable)),
                    "503": unavailable,
                },
                parameters=[stream_id],
            )
        },
        "/streams/{stream_id}/get_clip": get_and_post(
            "get_clip",
            "Ask for the video between two moments",
            VIEWER,
            answer("The clip job; ask again until it is done", ref("schemas", "Job")),
            {
                "400": bad_request,
                "404": not_found,
                "500": seed_error("The stream was never started", seed(NotStarted)),
                "503": unavailable,
            },
            clip_parameters,
            required=("start",),
            path_parameters=[stream_id],
            description=(
                "Other parameters are the encoder's (those of `transcode` are listed)."
                " Refused for a page of another site (403); `HEAD` is refused (405)."
            ),
        ),
        "/streams/{stream_id}/cancel_clip": {
            "post": operation(
                "cancel_clip",
                "Cancel a clip job",
                OPERATOR,
                answer(
                    "The job, failed with the reason (or as it ended, if it had)",
                    ref("schemas", "Job"),
                ),
                {
                    "400": bad_request,
                    "404": answer(
                        "No such stream, or no such job of the stream",
                        error_body(seed(StreamNotFound), seed(JobNotFound)),
                    ),
                    "503": unavailable,
                },
                parameters=[stream_id],
                body={
                    "type": "object",
                    "properties": {"job_id": {"type": "integer", "minimum": 1}},
                    "required": ["job_id"],
                },
                description="A build under way is stopped and its encoder killed. " + state_change,
            )
        },
        "/plugins": {
            "get": operation(
                "plugins",
                "The plugins loaded",
                VIEWER,
                answer("Plugins, storage backends and clip encoders", ref("schemas", "Plugins")),
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "This node's metrics, in Prometheus's text format",
                VIEWER,
                answer(
                    "The metrics (OpenMetrics when the Accept header asks for it)",
                    {"type": "string"},
                    "text/plain",
                ),
            )
        },
        "/clips/{key}": {
            "get": operation(
                "clip_file",
                "A clip file (the built-in local storage)",
                None,
                answer("The clip", clip_file, "video/mp4"),
                {
                    "206": answer("The one byte range asked for", clip_file, "video/mp4"),
                    "404": {
                        "description": (
                            "No such clip (an HTML page), or a path no route takes, such as"
                            " a key with a line break (JSON)"
                        ),
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            JSON: {"schema": ref("schemas", "Error")},
                        },
                    },
                    "416": answer("The range lies past the end", {"type": "string"}, "text/plain"),
                },
                parameters=[
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "One range (bytes=FIRST-LAST, FIRST-, -SUFFIX)",
                    },
                ],
                description=(
                    "A clip's link is an unguessable capability URL: it works without a"
                    " token, so `<video src>` plays it. One byte range at most."
                ),
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                None,
                answer(
                    "OpenAPI 3.1",
                    {"type": "object", "required": ["openapi", "info", "paths"]},
                ),
            )
        },
        **session_paths(),
        **ui_paths(),
    }


def session_paths() -> dict[str, Schema]:
    """The web UI's sign-in: a token exchanged for a session cookie."""
    session = answer(
        "The caller's role; `open` when the service has no tokens",
        {
            "type": "object",
            "required": ["role", "open"],
            "properties": {
                "role": {"type": "string", "enum": [role.name for role in Role]},
                "open": {"type": "boolean"},
            },
        },
    )
    cross_site = answer("A request a browser made for another site's page", ref("schemas", "Error"))
    signed_in = {
        **session,
        "headers": {
            "Set-Cookie": {
                "description": "The session cookie (HttpOnly, SameSite=Strict); not when open",
                "schema": {"type": "string"},
            }
        },
    }
    token = {"token": {"type": "string", "description": "a token of the --tokens file"}}
    return {
        "/session": {
            "get": operation(
                "session",
                "Who the caller is",
                VIEWER,
                session,
                description="By the token in `Authorization` or in the session cookie.",
            ),
            "post": operation(
                "sign_in",
                "Sign in: the token becomes the session cookie",
                None,
                signed_in,
                {
                    "400": ref("responses", "BadRequest"),
                    "401": ref("responses", "Unauthenticated"),
                    "403": cross_site,
                },
                body={"type": "object", "properties": token, "required": ["token"]},
                description="Needs no other token; refused for a page of another site.",
            ),
        },
        "/session/end": {
            "post": operation(
                "sign_out",
                "Sign out: the session cookie is cleared",
                None,
                answer("Signed out", ref("schemas", "Ok")),
                {"403": cross_site},
                description="Needs no token; refused for a page of another site.",
            )
        },
    }


def ui_paths() -> dict[str, Schema]:
    """The web UI's files: they need no token (the API calls they make do)."""
    page = {"type": "string"}
    kinds = ("text/html", "text/javascript", "text/css", "image/svg+xml", "image/png")
    return {
        "/": {"get": operation("ui", "The web UI", None, answer("The page", page, "text/html"))},
        "/ui/{name}": {
            "get": operation(
                "ui_file",
                "A file of the web UI",
                None,
                {
                    "description": "The file",
                    "content": {kind: {"schema": page} for kind in kinds},
                },
                {"404": answer("No such file", ref("schemas", "Error"))},
                parameters=[
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
    }
