"""A hostile client on the network against a real service on 127.0.0.1: bodies,
byte ranges, odd paths, nesting, redirects, tokens. Each answer is a clear
status (never a 500), and nothing is created, stopped or lost on the way."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import treq
from twisted.internet import defer, threads
from twisted.logger import globalLogPublisher

from streamrec.api import MAX_BODY

from ..support.harness import ServiceTestCase

CLIP = "0123456789abcdef.mp4"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def raw_exchange(port: int, request: bytes, read_limit: int = 1 << 20) -> bytes:
    """Send ``request`` on a fresh connection; what the server answers until it
    closes (bounded by ``read_limit`` and a 10 s socket timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is what counts
        answer = b""
        while len(answer) < read_limit:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


class HostileClientTests(ServiceTestCase):
    timeout = 120

    async def started(self, **config: Any) -> Any:
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            self.logged.append(formatEvent(event) or "")
            if event.get("log_failure") is not None:
                self.logged.append("Traceback " + repr(event["log_failure"].value))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        service = await self.service(**config)
        self.port = service.service.port.getHost().port
        clips = os.path.join(service.data_dir, "clips")
        os.makedirs(clips, exist_ok=True)
        self.clip_bytes = bytes(range(256)) * 40  # 10240 bytes
        with open(os.path.join(clips, CLIP), "wb") as handle:
            handle.write(self.clip_bytes)
        return service

    async def raw(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        answer = await threads.deferToThread(raw_exchange, self.port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"HTTP/1.1 "), answer[:200])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body

    def assertNoUnexpectedError(self) -> None:
        for line in self.logged:
            for sign in ("Traceback", "Unhandled Error", "unexpected error"):
                self.assertNotIn(sign, line)

    @defer.inlineCallbacks
    def test_bodies_past_the_limit_are_refused_unread(self):
        service = yield defer.ensureDeferred(self.started())
        # A form body announcing 50 MB: refused on its Content-Length alone.
        code, headers, body = yield defer.ensureDeferred(
            self.raw(
                b"POST /streams/create HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 52428800\r\n\r\nurl=rtsp%3A%2F%2F127.0.0.1%2Fa&description="
                + b"a"
                * 100_000
            )
        )
        self.assertEqual(code, 413)
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertIn("too large", json.loads(body)["error_message"])
        # Multipart, chunked: refused once the chunks pass the limit.
        chunk = b"b" * 16384
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // 16384 + 2)
        )
        code, _, body = yield defer.ensureDeferred(
            self.raw(
                b"POST /streams/create HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: multipart/form-data; boundary=xx\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
            )
        )
        self.assertEqual(code, 413)
        # A description under the body limit but past its own.
        code, answer = yield defer.ensureDeferred(
            service.call(
                "POST", "/streams/create", url="rtsp://127.0.0.1/cam", description="d" * 5000
            )
        )
        self.assertEqual(code, 400)
        self.assertIn("description", answer["error_message"])
        listing = yield defer.ensureDeferred(service.ok("GET", "/streams/"))
        self.assertEqual(listing["result"], [])
        self.assertNoUnexpectedError()

    @defer.inlineCallbacks
    def test_deep_json_and_odd_values(self):
        service = yield defer.ensureDeferred(self.started())
        for body, message in [
            (b"[" * 30_000 + b"]" * 30_000, "Request body is nested too deeply"),
            (b'{"url": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", None),
            (b'{"url": {"a": 1}}', "Parameter 'url' must be a string or a number"),
        ]:
            response = yield treq.post(
                service.base + "/streams/create",
                data=body,
                headers={b"Content-Type": [b"application/json"]},
                persistent=False,
            )
            answer = yield response.json()
            self.assertEqual(response.code, 400, answer)
            if message:
                self.assertEqual(answer["error_message"], message)
        self.assertNoUnexpectedError()

    @defer.inlineCallbacks
    def test_clip_files_answer_one_range_at_most(self):
        service = yield defer.ensureDeferred(self.started())
        size = len(self.clip_bytes)
        link = service.base + "/clips/" + CLIP

        def get(range_header: str | None) -> Any:
            headers = {b"Range": [range_header.encode()]} if range_header is not None else {}
            return treq.get(link, headers=headers, persistent=False)

        cases = {
            None: (200, None, self.clip_bytes),
            "bytes=0-99": (206, b"bytes 0-99/10240", self.clip_bytes[:100]),
            "bytes=10000-": (206, b"bytes 10000-10239/10240", self.clip_bytes[10000:]),
            "bytes=-99999999999": (206, b"bytes 0-10239/10240", self.clip_bytes),
            "bytes=-10": (206, b"bytes 10230-10239/10240", self.clip_bytes[-10:]),
            "bytes=": (200, None, self.clip_bytes),
            "bytes=5-2": (200, None, self.clip_bytes),
            "bytes=abc": (200, None, self.clip_bytes),
            ",".join(f"{i}-{i}" for i in range(100)).join(("bytes=", "")): (
                200,
                None,
                self.clip_bytes,
            ),
            "bytes=10240-": (416, b"bytes */10240", None),
            "bytes=-0": (416, b"bytes */10240", None),
            "bytes=99999999999999999999-": (416, b"bytes */10240", None),
        }
        for header, (code, content_range, body) in cases.items():
            response = yield get(header)
            received = yield response.content()
            self.assertEqual(response.code, code, header)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-range", [None])[0], content_range
            )
            if body is not None:
                self.assertEqual(received, body, header)
                self.assertLessEqual(len(received), size)
        self.assertNoUnexpectedError()

    @defer.inlineCallbacks
    def test_odd_paths(self):
        yield defer.ensureDeferred(self.started())
        for path in (
            b"/clips/%00",
            b"/clips/a%00b.mp4",
            b"/clips/..%2f..%2fetc%2fpasswd",
            b"/clips/.x",
        ):
            code, headers, _ = yield defer.ensureDeferred(
                self.raw(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
            )
            self.assertEqual(code, 404, path)
            self.assertEqual(headers[b"content-type"], b"application/json", path)
        # A redirect never points at a host the client named.
        code, headers, _ = yield defer.ensureDeferred(
            self.raw(b"GET /clips HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        )
        self.assertEqual((code, headers.get(b"location")), (308, b"/clips/"))
        self.assertNoUnexpectedError()

    @defer.inlineCallbacks
    def test_requests_twisted_cannot_take_are_answered_in_json(self):
        yield defer.ensureDeferred(self.started())
        long_line = b"GET /streams/create?url=" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        many_headers = b"GET /streams/ HTTP/1.1\r\n" + b"X-A: " + b"y" * 8000 + b"\r\n"
        many_headers += b"X-B: " + b"y" * 8000 + b"\r\nX-C: " + b"y" * 8000 + b"\r\n\r\n"
        for request, (status, message) in [
            (long_line, (431, "Request line or headers too large")),
            (many_headers, (431, "Request line or headers too large")),
            (b"NONSENSE\r\n\r\n", (400, "Malformed HTTP request")),
        ]:
            code, headers, body = yield defer.ensureDeferred(self.raw(request))
            self.assertEqual(code, status, request[:40])
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(json.loads(body), {"error_message": message})
        self.assertNoUnexpectedError()

    @defer.inlineCallbacks
    def test_unknown_ids_leave_nothing_behind(self):
        service = yield defer.ensureDeferred(self.started())
        for stream_id in range(1, 201):
            for action in ("start", "stop"):
                code, _ = yield defer.ensureDeferred(
                    service.call("POST", f"/streams/{stream_id}/{action}")
                )
                self.assertEqual(code, 404)
        self.assertEqual(service.service.node.locks._locks, {})

    @defer.inlineCallbacks
    def test_open_mode_is_announced(self):
        yield defer.ensureDeferred(self.started())
        self.assertTrue(any("the API is open" in line for line in self.logged))

    @defer.inlineCallbacks
    def test_clip_links_need_no_token(self):
        tokens = self.mktemp()
        with open(tokens, "w", encoding="utf-8") as handle:
            handle.write(f"admin {ADMIN_TOKEN}\n")
        service = yield defer.ensureDeferred(self.started(tokens=tokens))
        self.assertFalse(any("the API is open" in line for line in self.logged))
        code, answer = yield defer.ensureDeferred(service.call("GET", "/streams/"))
        self.assertEqual((code, answer), (401, {"error_message": "Authentication required"}))
        response = yield treq.get(
            service.base + "/streams/",
            headers={b"Authorization": [f"Bearer {ADMIN_TOKEN}".encode()]},
            persistent=False,
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield treq.get(service.base + "/clips/" + CLIP, persistent=False)
        self.assertEqual((yield response.content()), self.clip_bytes)
