"""Tokens, roles, requests a browser makes on its own, and camera secrets in answers."""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import redirect_stdout
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.trial import unittest

from streamrec.auth import (
    ADMIN,
    OPERATOR,
    VIEWER,
    Access,
    Forbidden,
    TokenFileError,
    Unauthenticated,
    digest,
    load_tokens,
    main,
    parse_tokens,
    plain_tokens_exposed,
    refuse_cross_site,
)
from streamrec.config import Config, ConfigError
from streamrec.tap import api_access

from .test_api import APIBase

VIEWER_TOKEN = "viewer-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


class TokenFileTests(unittest.TestCase):
    def test_plain_and_hashed_lines(self):
        tokens = parse_tokens(
            [
                "# who may call",
                "",
                f"viewer {VIEWER_TOKEN}",
                f"OPERATOR sha256:{digest(OPERATOR_TOKEN).upper()}",
                f"  admin   {ADMIN_TOKEN}  ",
            ]
        )
        access = Access(tokens)
        self.assertEqual(access.role_of(f"Bearer {VIEWER_TOKEN}".encode()), VIEWER)
        self.assertEqual(access.role_of(f"bearer {OPERATOR_TOKEN}".encode()), OPERATOR)
        self.assertEqual(access.role_of(f"Bearer  {ADMIN_TOKEN} ".encode()), ADMIN)
        self.assertNotIn(VIEWER_TOKEN, repr(tokens))  # only digests are kept

    def test_bad_lines_say_where(self):
        cases = {
            "viewer": "tokens:1: expected 'ROLE TOKEN' or 'ROLE sha256:HEX'",
            f"root {VIEWER_TOKEN}": "tokens:1: unknown role 'root'",
            "viewer short": "tokens:1: a token must have at least 16 characters",
            "viewer sha256:abc": "tokens:1: sha256: needs 64 hex digits",
            "# nothing": "tokens: no token in the file",
            f"viewer {VIEWER_TOKEN}\nadmin {VIEWER_TOKEN}": (
                "tokens:2: the same token is given two roles"
            ),
        }
        for text, message in cases.items():
            with self.assertRaises(TokenFileError) as caught:
                parse_tokens(text.splitlines())
            self.assertIn(message, str(caught.exception), text)

    def test_missing_file_is_a_config_error(self):
        with self.assertRaises(ConfigError) as caught:
            api_access(Config(tokens="/nonexistent/tokens"))
        self.assertIn("cannot read tokens /nonexistent/tokens", str(caught.exception))
        self.assertTrue(api_access(Config()).open)

    def test_world_readable_plain_tokens_are_noticed(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"viewer {VIEWER_TOKEN}\n")
        os.chmod(path, 0o644)
        self.assertTrue(plain_tokens_exposed(path))
        os.chmod(path, 0o600)
        self.assertFalse(plain_tokens_exposed(path))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"viewer sha256:{digest(VIEWER_TOKEN)}\n")
        os.chmod(path, 0o644)
        self.assertFalse(plain_tokens_exposed(path))
        self.assertEqual(set(load_tokens(path).values()), {VIEWER})

    def test_unknown_and_missing_tokens(self):
        access = Access(parse_tokens([f"viewer {VIEWER_TOKEN}"]))
        for header in (None, b"", b"Bearer", b"Basic dXNlcjpwYXNz", b"Bearer " + b"x" * 20):
            with self.assertRaises(Unauthenticated):
                access.role_of(header)
        self.assertEqual(Access().role_of(None), ADMIN)  # open: everyone

    def test_minted_line_admits_the_minted_token(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["operator"]), 0)
        lines = dict(line.split(":", 1) for line in out.getvalue().splitlines())
        token, line = lines["token"].strip(), lines["line"].strip()
        self.assertTrue(line.startswith("operator sha256:"))
        self.assertNotIn(token, line)
        access = Access(parse_tokens([line]))
        self.assertEqual(access.role_of(f"Bearer {token}".encode()), OPERATOR)
        self.assertEqual(main(["root"]), 2)


class CrossSiteTests(unittest.TestCase):
    def test_browser_headers(self):
        host = {b"host": b"nvr.local:8080"}
        refuse_cross_site(host)  # curl, a REST program: no browser headers
        refuse_cross_site({**host, b"sec-fetch-site": b"same-origin"})
        refuse_cross_site({**host, b"sec-fetch-site": b"none"})  # typed in the address bar
        refuse_cross_site({**host, b"origin": b"http://nvr.local:8080"})
        for headers in (
            {b"sec-fetch-site": b"cross-site"},
            {b"sec-fetch-site": b"same-site"},
            {b"origin": b"http://evil.example"},
            {b"origin": b"null"},
            {b"origin": b"http://nvr.local:8081"},
        ):
            with self.assertRaises(Forbidden, msg=headers):
                refuse_cross_site({**host, **headers})


class TokenAPITests(APIBase):
    """The API with a token file: 401 without a token, 403 without the role."""

    def setUp(self) -> Any:
        d = super().setUp()
        self.api.access = Access(
            parse_tokens(
                [f"viewer {VIEWER_TOKEN}", f"operator {OPERATOR_TOKEN}", f"admin {ADMIN_TOKEN}"]
            )
        )
        return d

    async def request(
        self, method: str, path: str, token: str | None = None, **headers: str
    ) -> tuple[int, Any, Any]:
        sent = {
            name.replace("_", "-").encode(): [value.encode()] for name, value in headers.items()
        }
        if token is not None:
            sent[b"Authorization"] = [f"Bearer {token}".encode()]
        response = await self.http.request(method, "http://streamrec.test" + path, headers=sent)
        body = await response.content()
        return response.code, (json.loads(body) if body else None), response.headers

    async def created(self) -> int:
        code, body, _ = await self.request(
            "POST", "/streams/create?url=rtsp://admin:secret@127.0.0.1/cam", OPERATOR_TOKEN
        )
        self.assertEqual(code, 200, body)
        return body["stream_id"]

    @defer.inlineCallbacks
    def test_every_route_needs_a_token(self):
        stream_id = yield defer.ensureDeferred(self.created())
        for method, path in [
            ("GET", "/streams/"),
            ("GET", "/streams"),
            ("POST", "/streams/create?url=rtsp://127.0.0.1/x"),
            ("GET", f"/streams/{stream_id}/start"),
            ("POST", f"/streams/{stream_id}/stop"),
            ("GET", f"/streams/{stream_id}/status"),
            ("GET", f"/streams/{stream_id}/get_clip?start=1"),
            ("GET", "/plugins"),
        ]:
            code, body, headers = yield defer.ensureDeferred(self.request(method, path))
            self.assertEqual(
                (code, body), (401, {"error_message": "Authentication required"}), path
            )
            self.assertEqual(
                headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="streamrec"']
            )
            code, body, _ = yield defer.ensureDeferred(self.request(method, path, "x" * 30))
            self.assertEqual((code, body), (401, {"error_message": "Invalid token"}), path)
        # Nothing was created or started by the refused calls.
        code, body, _ = yield defer.ensureDeferred(self.request("GET", "/streams/", VIEWER_TOKEN))
        self.assertEqual([s["id"] for s in body["result"]], [stream_id])
        self.assertEqual(body["result"][0]["start_date"], None)

    @defer.inlineCallbacks
    def test_viewer_reads_operator_changes(self):
        stream_id = yield defer.ensureDeferred(self.created())
        for path in ("/streams/create?url=rtsp://127.0.0.1/x", f"/streams/{stream_id}/start"):
            code, body, _ = yield defer.ensureDeferred(self.request("GET", path, VIEWER_TOKEN))
            self.assertEqual((code, body), (403, {"error_message": "This needs the operator role"}))
        for path in ("/streams/", f"/streams/{stream_id}/status", "/plugins"):
            code, body, _ = yield defer.ensureDeferred(self.request("GET", path, VIEWER_TOKEN))
            self.assertEqual(code, 200, (path, body))
        code, body, _ = yield defer.ensureDeferred(
            self.request("GET", f"/streams/{stream_id}/start", OPERATOR_TOKEN)
        )
        self.assertEqual((code, body), (200, {"result": "ok"}))
        code, body, _ = yield defer.ensureDeferred(
            self.request(
                "GET", f"/streams/{stream_id}/get_clip?start={time.time() - 5}", VIEWER_TOKEN
            )
        )
        self.assertEqual(code, 200, body)
        self.assertIn(body["status"], ("pending", "processing"))
        code, body, _ = yield defer.ensureDeferred(
            self.request("POST", f"/streams/{stream_id}/stop", ADMIN_TOKEN)
        )
        self.assertEqual((code, body), (200, {"result": "ok"}))

    @defer.inlineCallbacks
    def test_listening_sources_need_an_admin(self):
        for url in ("udp://0.0.0.0:5000", "srt://127.0.0.1:9000?mode=listener"):
            path = "/streams/create?" + urlencode({"url": url})
            code, body, _ = yield defer.ensureDeferred(self.request("POST", path, OPERATOR_TOKEN))
            self.assertEqual((code, body), (403, {"error_message": "This needs the admin role"}))
            code, body, _ = yield defer.ensureDeferred(self.request("POST", path, ADMIN_TOKEN))
            self.assertEqual(code, 200, body)
        # Pulled and multicast sources are an operator's.
        for url in ("udp://239.1.1.1:5000", "srt://127.0.0.1:9000"):
            path = "/streams/create?" + urlencode({"url": url})
            code, body, _ = yield defer.ensureDeferred(self.request("POST", path, OPERATOR_TOKEN))
            self.assertEqual(code, 200, (url, body))

    @defer.inlineCallbacks
    def test_head_never_changes_state(self):
        stream_id = yield defer.ensureDeferred(self.created())
        yield defer.ensureDeferred(self.request("GET", f"/streams/{stream_id}/start", ADMIN_TOKEN))
        for path in (f"/streams/{stream_id}/stop", "/streams/create?url=rtsp://127.0.0.1/y"):
            code, _, headers = yield defer.ensureDeferred(self.request("HEAD", path, ADMIN_TOKEN))
            self.assertEqual(code, 405, path)
            self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET, POST"])
        code, _, _ = yield defer.ensureDeferred(
            self.request("HEAD", f"/streams/{stream_id}/status", VIEWER_TOKEN)
        )
        self.assertEqual(code, 200)
        code, status, _ = yield defer.ensureDeferred(
            self.request("GET", f"/streams/{stream_id}/status", VIEWER_TOKEN)
        )
        self.assertTrue(status["started"])
        self.assertEqual(self.recorders[stream_id].calls, ["start"])
        code, body, _ = yield defer.ensureDeferred(self.request("GET", "/streams/", VIEWER_TOKEN))
        self.assertEqual(len(body["result"]), 1)

    @defer.inlineCallbacks
    def test_cross_site_requests_change_nothing(self):
        stream_id = yield defer.ensureDeferred(self.created())
        yield defer.ensureDeferred(self.request("GET", f"/streams/{stream_id}/start", ADMIN_TOKEN))
        # What <img src=".../stop"> on another site sends, even with a token a
        # browser might hold for the UI.
        code, body, _ = yield defer.ensureDeferred(
            self.request(
                "GET", f"/streams/{stream_id}/stop", ADMIN_TOKEN, Sec_Fetch_Site="cross-site"
            )
        )
        self.assertEqual(
            (code, body), (403, {"error_message": "Cross-site requests cannot change state"})
        )
        code, body, _ = yield defer.ensureDeferred(
            self.request(
                "POST", f"/streams/{stream_id}/stop", ADMIN_TOKEN, Origin="http://evil.example"
            )
        )
        self.assertEqual(code, 403)
        # Reading is not refused: a viewer's page on another origin may read.
        code, _, _ = yield defer.ensureDeferred(
            self.request(
                "GET", f"/streams/{stream_id}/status", VIEWER_TOKEN, Sec_Fetch_Site="cross-site"
            )
        )
        self.assertEqual(code, 200)
        self.assertEqual(self.recorders[stream_id].calls, ["start"])

    @defer.inlineCallbacks
    def test_ui_session_cookie(self):
        stream_id = yield defer.ensureDeferred(self.created())
        code, body, _ = yield defer.ensureDeferred(self.request("GET", "/session"))
        self.assertEqual((code, body), (401, {"error_message": "Authentication required"}))
        response = yield self.http.request(
            "POST",
            "http://streamrec.test/session",
            data=json.dumps({"token": OPERATOR_TOKEN}).encode(),
            headers={b"Content-Type": [b"application/json"]},
        )
        self.assertEqual((yield response.json()), {"role": "operator", "open": False})
        (cookie,) = response.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        session = cookie.split(b";")[0].decode()
        self.assertEqual(session, f"streamrec_session={OPERATOR_TOKEN}")
        code, body, _ = yield defer.ensureDeferred(self.request("GET", "/session", Cookie=session))
        self.assertEqual((code, body), (200, {"role": "operator", "open": False}))
        # What the cookie allows, it allows from the UI's own pages only.
        code, body, _ = yield defer.ensureDeferred(
            self.request(
                "POST", f"/streams/{stream_id}/start", Cookie=session, Sec_Fetch_Site="cross-site"
            )
        )
        self.assertEqual(code, 403)
        code, body, _ = yield defer.ensureDeferred(
            self.request(
                "POST", f"/streams/{stream_id}/start", Cookie=session, Sec_Fetch_Site="same-origin"
            )
        )
        self.assertEqual((code, body), (200, {"result": "ok"}))
        code, body, _ = yield defer.ensureDeferred(
            self.request("GET", "/session", Cookie="streamrec_session=" + "x" * 20)
        )
        self.assertEqual((code, body), (401, {"error_message": "Invalid token"}))
        response = yield self.http.request("POST", "http://streamrec.test/session/end")
        (cleared,) = response.headers.getRawHeaders(b"set-cookie")
        self.assertTrue(cleared.startswith(b"streamrec_session=;"), cleared)
        self.assertIn(b"Max-Age=0", cleared)
        response = yield self.http.request(
            "POST", "http://streamrec.test/session", data={"token": "y" * 20}
        )
        self.assertEqual(response.code, 401)

    @defer.inlineCallbacks
    def test_camera_password_never_answered(self):
        self.fail_start = "rtsp://admin:secret@127.0.0.1/cam: 401 Unauthorized"
        stream_id = yield defer.ensureDeferred(self.created())
        code, body, _ = yield defer.ensureDeferred(
            self.request("POST", f"/streams/{stream_id}/start", OPERATOR_TOKEN)
        )
        self.assertEqual(code, 500)
        self.assertEqual(body["reason"], "rtsp://admin:***@127.0.0.1/cam: 401 Unauthorized")
        code, listing, _ = yield defer.ensureDeferred(
            self.request("GET", "/streams/", VIEWER_TOKEN)
        )
        code, status, _ = yield defer.ensureDeferred(
            self.request("GET", f"/streams/{stream_id}/status", VIEWER_TOKEN)
        )
        for answer in (listing, status):
            self.assertNotIn("secret", json.dumps(answer))
        self.assertEqual(status["url"], "rtsp://admin:***@127.0.0.1/cam")


class AccessLogTests(unittest.TestCase):
    def test_logged_uri_hides_camera_passwords(self):
        from twisted.web.test.requesthelper import DummyRequest

        from streamrec.api import access_log_line

        request = DummyRequest([b"streams", b"create"])
        request.uri = b"/streams/create?url=rtsp%3A%2F%2Fadmin%3Asecret%40cam%2Fs&description=door"
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 12
        line = access_log_line("[04/Dec/2026:12:00:00 +0000]", request)
        self.assertNotIn("secret", line)
        self.assertIn("GET /streams/create?url=rtsp%3A%2F%2Fadmin%3A%2A%2A%2A%40cam%2Fs", line)
        self.assertIn("description=door", line)
