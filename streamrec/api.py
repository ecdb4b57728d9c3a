"""The HTTP API: routes only. Parse the request, call the domain, answer JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from klein import Klein
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest
from twisted.web.resource import ErrorPage, IResource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from .auth import (
    ADMIN,
    OPERATOR,
    SESSION_COOKIE,
    SESSION_KEY,
    VIEWER,
    Access,
    Forbidden,
    MethodNotAllowed,
    Role,
    Unauthenticated,
    refuse_cross_site,
)
from .byteranges import RangedResource
from .core import Streams
from .errors import (
    AlreadyStarted,
    BadRequest,
    CannotStart,
    CannotStop,
    ClipQueueFull,
    DatabaseUnavailable,
    InvalidSource,
    JobNotFound,
    NothingRecorded,
    NotStarted,
    RecordingDeleted,
    StatusUnavailable,
    StreamNotFound,
    StreamrecError,
)
from .metrics import Metrics
from .openapi import document as openapi_document
from .sources import listens, mask_secrets
from .ui import PAGE as UI_PAGE
from .ui import asset as ui_asset
from .ui import serve as serve_ui

log = Logger(namespace="streamrec.api")

#: The largest request body the API reads, whatever its type (JSON, form,
#: multipart): its parameters are a URL, a description and a few numbers.
MAX_BODY = 64 * 1024
#: The longest description a stream may have.
MAX_DESCRIPTION = 4096


class _Logged:
    """A request as the access log sees it: its URI with any credentials masked."""

    def __init__(self, request: IRequest) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def uri(self) -> bytes:
        path, _, query = self._request.uri.partition(b"?")
        if not query:
            return path
        pairs = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
        return path + b"?" + urlencode([(k, mask_secrets(v)) for k, v in pairs]).encode()


def access_log_line(timestamp: str, request: IRequest) -> str:
    """The combined log format, with no camera password in the logged URI."""
    return combinedLogFormatter(timestamp, _Logged(request))


class BoundedRequest(Request):
    """A request whose body is refused, unread, past :data:`MAX_BODY` bytes: by
    its ``Content-Length`` before a byte of it arrives, or as chunks add up."""

    max_body = MAX_BODY
    _body_bytes = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        """Answer 413 and hang up: the rest of the body is not worth reading."""
        if self._refused:
            return
        self._refused = True
        body = json.dumps(
            {"error_message": f"Request body is too large: at most {self.max_body} bytes"}
        ).encode()
        transport = self.channel.transport
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            transport.loseConnection()


class ApiError(Exception):
    """An answer other than 200: status, message and optional extra fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


#: How each domain error is answered: its kind -> (status, message), the most
#: specific kind first in the error's class hierarchy. ``{error}`` is the
#: error's own message. The seed's messages are exact.
ERRORS: dict[type[StreamrecError], tuple[int, str]] = {
    StreamNotFound: (404, "Stream not found"),
    JobNotFound: (404, "Clip job not found"),
    AlreadyStarted: (500, "Stream already started"),
    NotStarted: (500, "Stream not started"),
    CannotStart: (500, "Cannot start stream"),
    CannotStop: (500, "Cannot stop stream"),
    StatusUnavailable: (500, "Cannot get stream status"),
    DatabaseUnavailable: (503, "Database unavailable"),
    ClipQueueFull: (503, "Clip queue is full"),
    InvalidSource: (400, "Invalid URL: {error}"),
    BadRequest: (400, "{error}"),
    Unauthenticated: (401, "{error}"),
    Forbidden: (403, "{error}"),
    MethodNotAllowed: (405, "{error}"),
    NothingRecorded: (404, "{error}"),
    RecordingDeleted: (410, "The recording was deleted"),
}


def answer_for(error: StreamrecError) -> ApiError:
    """The answer to a domain error; its ``reason``, when it has one, goes along."""
    kind = next(k for k in type(error).__mro__ if k in ERRORS or k is StreamrecError)
    status, message = ERRORS.get(kind, (500, "Internal error"))
    extra = {"reason": mask_secrets(error.reason)} if error.reason is not None else {}
    extra.update(error.fields)
    return ApiError(status, mask_secrets(message.format(error=error)), **extra)


def json_response(request: IRequest, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode("utf-8")


def read_params(request: IRequest) -> dict[str, str]:
    """Parameters from the query string, a form body or a JSON object body."""
    params: dict[str, str] = {}
    for key, values in (request.args or {}).items():
        if values:
            params[key.decode("utf-8", "replace")] = values[-1].decode("utf-8", "replace")
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type == b"application/json" and request.content is not None:
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, "Request body is too large")
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise ApiError(400, "Request body is not valid JSON") from None
            except RecursionError:
                raise ApiError(400, "Request body is nested too deeply") from None
            if not isinstance(body, dict):
                raise ApiError(400, "Request body must be a JSON object")
            for key, value in body.items():
                if value is None:
                    continue
                if not isinstance(value, (str, int, float, bool)):
                    raise ApiError(400, f"Parameter {key!r} must be a string or a number")
                params[key] = value if isinstance(value, str) else json.dumps(value)
    return params


def parse_number(
    params: dict[str, str], name: str, required: bool = False, what: str = "a number"
) -> float | None:
    raw = params.get(name, "").strip()
    if not raw:
        if required:
            raise ApiError(400, f"Parameter '{name}' is required ({what})")
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"Parameter '{name}' must be {what}, got {raw!r}") from None


def parse_time(params: dict[str, str], name: str, required: bool) -> float | None:
    return parse_number(params, name, required, "a POSIX timestamp")


def parse_id(stream_id: str) -> int:
    if not (stream_id.isascii() and stream_id.isdigit()) or len(stream_id) > 18:
        raise ApiError(404, "Stream not found")
    return int(stream_id)


CLIP_PARAMS = ("start", "stop", "encoder")


def set_session_cookie(request: Any, value: bytes, max_age: int | None = None) -> None:
    """The UI's session cookie: never readable by scripts, never sent cross-site."""
    request.addCookie(
        SESSION_COOKIE,
        value,
        path=b"/",
        max_age=None if max_age is None else str(max_age),
        secure=request.isSecure() or None,
        httpOnly=True,
        sameSite="strict",
    )


def refuse_cross_site_request(request: IRequest) -> None:
    refuse_cross_site(
        {name: value for name in ACCESS_HEADERS if (value := request.getHeader(name)) is not None}
    )


#: The request headers the access check reads.
ACCESS_HEADERS = (b"authorization", b"sec-fetch-site", b"origin", b"host")

Handler = TypeVar("Handler", bound=Callable[..., Any])


def needs(role: Role, changes_state: bool = False) -> Callable[[Handler], Handler]:
    """A route's access rule: the caller needs ``role``; a route that changes
    state refuses ``HEAD`` and requests a browser makes for another site."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def checked(api: StreamrecAPI, request: IRequest, *args: Any, **kwargs: Any) -> Any:
            if changes_state and request.method == b"HEAD":
                request.setHeader(b"Allow", b"GET, POST")
                raise MethodNotAllowed("HEAD does not change state: use GET or POST")
            api.check_access(request, role, changes_state)
            return handler(api, request, *args, **kwargs)

        checked.role = role  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate


class StreamrecAPI:
    """The seed's API over a :class:`Streams` domain object."""

    app = Klein()
    #: The site's request class: bodies past MAX_BODY are refused unread.
    request_factory = BoundedRequest
    log_formatter = staticmethod(access_log_line)

    def __init__(
        self,
        streams: Streams,
        clip_files: IResource | None,
        plugins: dict[str, Any],
        access: Access | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.access = access or Access()
        self.streams = streams
        self.clip_files = clip_files
        self.plugin_info = plugins
        self.metrics = metrics

    def resource(self) -> IResource:
        if self.metrics is None:
            return self.app.resource()
        return self.metrics.timed(self.app.resource(), self.app.url_map)

    def check_access(self, request: IRequest, role: Role, changes_state: bool) -> Role:
        headers = {name: request.getHeader(name) for name in ACCESS_HEADERS}
        headers[SESSION_KEY] = request.getCookie(SESSION_COOKIE)
        return self.access.check(
            {k: v for k, v in headers.items() if v is not None}, role, changes_state
        )

    # -- the UI's session: a cookie holding a token ------------------------------
    @app.route("/session", methods=["GET"])
    def session(self, request: IRequest) -> bytes:
        role = self.check_access(request, VIEWER, changes_state=False)
        return json_response(request, {"role": role.name, "open": self.access.open})

    @app.route("/session", methods=["POST"])
    def sign_in(self, request: IRequest) -> bytes:
        refuse_cross_site_request(request)
        token = read_params(request).get("token", "").strip()
        if not token:
            raise ApiError(400, "Parameter 'token' is required")
        role = self.access.role_of_token(token)
        if not self.access.open:
            set_session_cookie(request, token.encode("latin-1", "replace"))
        return json_response(request, {"role": role.name, "open": self.access.open})

    @app.route("/session/end", methods=["POST"])
    def sign_out(self, request: IRequest) -> bytes:
        refuse_cross_site_request(request)
        set_session_cookie(request, b"", max_age=0)
        return json_response(request, {"result": "ok"})

    @app.handle_errors(ApiError, StreamrecError)
    def api_error(self, request: IRequest, failure: Any) -> bytes:
        error = failure.value
        if isinstance(error, StreamrecError):
            error = answer_for(error)
        if error.status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="streamrec"')
        return json_response(request, {"error_message": error.message, **error.extra}, error.status)

    @app.handle_errors(HTTPException)
    def no_such_route(self, request: IRequest, failure: Any) -> bytes:
        error = failure.value
        if isinstance(error, RequestRedirect):
            # Only the path: the Host header is the client's word, not ours.
            target = urlsplit(error.new_url)
            location = target.path + (f"?{target.query}" if target.query else "")
            request.setHeader(b"Location", location.encode("utf-8"))
        return json_response(request, {"error_message": error.description}, error.code)

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Any) -> bytes:
        log.failure("unexpected error answering {uri}", failure, uri=request.uri)
        return json_response(request, {"error_message": "Internal error"}, 500)

    @app.route("/streams", methods=["GET"])
    @app.route("/streams/", methods=["GET"])
    @needs(VIEWER)
    async def list_streams(self, request: IRequest) -> bytes:
        return json_response(request, {"result": await self.streams.list()})

    @app.route("/streams/create", methods=["GET", "POST"])
    @needs(OPERATOR, changes_state=True)
    async def create(self, request: IRequest) -> bytes:
        params = read_params(request)
        url = params.get("url", "").strip()
        if not url:
            raise ApiError(500, "URL cannot be empty")
        if listens(url):
            # ffmpeg would take a port of this box for whoever sends to it.
            self.check_access(request, ADMIN, changes_state=True)
        max_age = parse_number(params, "max_age")
        description = params.get("description", "")
        if len(description) > MAX_DESCRIPTION:
            raise ApiError(
                400, f"Parameter 'description' is longer than {MAX_DESCRIPTION} characters"
            )
        clock = params.get("clock", "auto")
        stream_id = await self.streams.create(url, description, max_age, clock)
        return json_response(request, {"stream_id": stream_id})

    @app.route("/streams/<stream_id>/start", methods=["GET", "POST"])
    @needs(OPERATOR, changes_state=True)
    async def start(self, request: IRequest, stream_id: str) -> bytes:
        await self.streams.start(parse_id(stream_id))
        return json_response(request, {"result": "ok"})

    @app.route("/streams/<stream_id>/stop", methods=["GET", "POST"])
    @needs(OPERATOR, changes_state=True)
    async def stop(self, request: IRequest, stream_id: str) -> bytes:
        await self.streams.stop(parse_id(stream_id))
        return json_response(request, {"result": "ok"})

    @app.route("/streams/<stream_id>/status", methods=["GET"])
    @needs(VIEWER)
    async def status(self, request: IRequest, stream_id: str) -> bytes:
        return json_response(request, await self.streams.status(parse_id(stream_id)))

    @app.route("/streams/<stream_id>/timeline", methods=["GET"])
    @needs(VIEWER)
    async def timeline(self, request: IRequest, stream_id: str) -> bytes:
        params = read_params(request)
        sid = parse_id(stream_id)
        start = parse_time(params, "start", required=False)
        stop = parse_time(params, "stop", required=False)
        return json_response(request, await self.streams.timeline(sid, start, stop))

    @app.route("/streams/<stream_id>/snapshot", methods=["GET"])
    @needs(VIEWER)
    async def snapshot(self, request: IRequest, stream_id: str) -> bytes:
        params = read_params(request)
        sid = parse_id(stream_id)
        t = parse_time(params, "t", required=False)
        width = parse_number(params, "width", what="a width in pixels")
        picture = await self.streams.snapshot(sid, t, width)
        # A past instant shows the same picture for good; the latest changes.
        cache = b"no-store" if t is None else b"private, max-age=86400, immutable"
        request.setHeader(b"Content-Type", b"image/jpeg")
        request.setHeader(b"Cache-Control", cache)
        request.setHeader(b"X-Streamrec-Time", b"%.6f" % picture.at)
        return picture.jpeg

    @app.route("/streams/<stream_id>/archive.mp4", methods=["GET"])
    @needs(VIEWER)
    async def archive(self, request: IRequest, stream_id: str) -> IResource:
        params = read_params(request)
        sid = parse_id(stream_id)
        start = parse_time(params, "start", required=True)
        assert start is not None
        stop = parse_time(params, "stop", required=False)
        file = await self.streams.archive(sid, start, stop)
        return RangedResource(
            lambda: self.streams.archive_body(file),
            size=file.size,
            etag=file.etag.encode(),
            content_type=b"video/mp4",
            headers={
                b"Cache-Control": b"private, no-cache",
                b"X-Streamrec-Start": b"%.6f" % file.start,
                b"X-Streamrec-Stop": b"%.6f" % file.stop,
            },
        )

    @app.route("/streams/<stream_id>/get_clip", methods=["GET", "POST"])
    @needs(VIEWER, changes_state=True)
    async def get_clip(self, request: IRequest, stream_id: str) -> bytes:
        params = read_params(request)
        sid = parse_id(stream_id)
        start = parse_time(params, "start", required=True)
        assert start is not None
        stop = parse_time(params, "stop", required=False)
        options = {k: v for k, v in params.items() if k not in CLIP_PARAMS}
        job = await self.streams.get_clip(sid, start, stop, params.get("encoder") or None, options)
        return json_response(request, job)

    @app.route("/streams/<stream_id>/cancel_clip", methods=["POST"])
    @needs(OPERATOR, changes_state=True)
    async def cancel_clip(self, request: IRequest, stream_id: str) -> bytes:
        params = read_params(request)
        sid = parse_id(stream_id)
        job_id = parse_number(params, "job_id", required=True, what="a clip job's id")
        assert job_id is not None
        if not job_id.is_integer() or not 0 < job_id < 2**62:
            raise ApiError(400, "Parameter 'job_id' must be a clip job's id")
        return json_response(request, await self.streams.cancel_clip(sid, int(job_id)))

    @app.route("/plugins", methods=["GET"])
    @needs(VIEWER)
    def plugins(self, request: IRequest) -> bytes:
        return json_response(request, self.plugin_info)

    @app.route("/metrics", methods=["GET"])
    @needs(VIEWER)
    async def prometheus(self, request: IRequest) -> bytes:
        if self.metrics is None:
            raise ApiError(404, "Metrics are not collected here")
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        body, content_type = await self.metrics.render(accept)
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return json_response(request, openapi_document(ERRORS))

    # -- the web UI: its files need no token; its API calls do ---------------------
    @app.route("/", methods=["GET"])
    def ui_page(self, request: IRequest) -> bytes:
        return self.ui_file(request, UI_PAGE)

    @app.route("/ui/<name>", methods=["GET"])
    def ui_file(self, request: IRequest, name: str) -> bytes:
        found = ui_asset(name)
        if found is None:
            raise ApiError(404, "Not found")
        return serve_ui(request, found)

    @app.route("/clips/", branch=True)
    def clips(self, request: IRequest) -> IResource:
        if self.clip_files is None:
            return ErrorPage(404, "Not Found", "Clips are not served here.")
        return self.clip_files
