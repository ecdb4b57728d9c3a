"""The API document: valid OpenAPI 3.1, a description of every route the Klein
app has (with the role each needs), the seed's messages, and the JSON shapes
that views.py writes. Served without a token."""

from __future__ import annotations

import json
import re
from typing import Any

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from streamrec.api import ERRORS, StreamrecAPI
from streamrec.auth import SESSION_COOKIE, VIEWER, Access, digest
from streamrec.openapi import document
from streamrec.store import JOB_DONE, JOB_PENDING, Clip, ClipJob, Stream, Totals
from streamrec.views import job_json, stream_json, timeline_json

#: Methods a route answers that the document need not list as operations.
IMPLIED = {"HEAD", "OPTIONS"}
#: What the seed says each route answers with a 500 or 404, word for word.
SEED = {
    ("/streams/create", "500"): {"URL cannot be empty"},
    ("/streams/{stream_id}/start", "404"): {"Stream not found"},
    ("/streams/{stream_id}/start", "500"): {"Stream already started", "Cannot start stream"},
    ("/streams/{stream_id}/stop", "404"): {"Stream not found"},
    ("/streams/{stream_id}/stop", "500"): {"Stream not started", "Cannot stop stream"},
    ("/streams/{stream_id}/status", "404"): {"Stream not found"},
    ("/streams/{stream_id}/status", "500"): {"Cannot get stream status"},
    ("/streams/{stream_id}/get_clip", "404"): {"Stream not found"},
    ("/streams/{stream_id}/get_clip", "500"): {"Stream not started"},
}
TOKEN = "viewer-token-0123456789abcdef"
#: Routes without ``@needs`` that check the caller themselves, and the role they need.
#: Where a token may be: the Authorization header, or the web UI's session cookie.
SCHEMES = ("bearerAuth", "sessionCookie")
OWN_CHECK = {("GET", "/session"): VIEWER}


def routes() -> dict[tuple[str, str], Any]:
    """(method, OpenAPI path) -> handler of every rule of the Klein app. A
    branch route (``/clips/`` and what lies below it) is its ``{key}`` path."""
    app = StreamrecAPI.app
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    found: dict[tuple[str, str], Any] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint + "_branch" in endpoints:
            continue  # the branch's root: described with the branch
        path = re.sub(r"<path:__rest__>$", "{key}", rule.rule)
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
        for method in set(rule.methods or {"GET"}) - IMPLIED:
            found[method, path] = app.endpoints[rule.endpoint]
    return found


def schema_of(doc: dict[str, Any], name: str) -> OAS31Validator:
    """A validator of the document's component schema ``name`` (its refs resolve
    inside the document)."""
    return OAS31Validator({**doc, "$ref": f"#/components/schemas/{name}"})


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        _, kind, group, name = node["$ref"].split("/")
        node = doc[kind][group][name]
    return node


class DocumentTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = document(ERRORS)

    def operations(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (path, method): spec
            for path, item in self.doc["paths"].items()
            for method, spec in item.items()
        }

    def test_valid_openapi_3_1(self):
        self.assertTrue(self.doc["openapi"].startswith("3.1"))
        errors = [error.message for error in OpenAPIV31SpecValidator(self.doc).iter_errors()]
        self.assertEqual(errors, [])
        json.dumps(self.doc)  # it is served as JSON

    def test_validator_catches_a_broken_document(self):
        broken = json.loads(json.dumps(self.doc))
        del broken["paths"]["/plugins"]["get"]["responses"]["200"]["description"]
        self.assertTrue(list(OpenAPIV31SpecValidator(broken).iter_errors()))

    def test_every_route_is_documented(self):
        missing = [
            f"{method} {path}"
            for method, path in sorted(routes())
            if method.lower() not in self.doc["paths"].get(path, {})
        ]
        self.assertEqual(missing, [])

    def test_every_operation_is_a_route(self):
        known = routes()
        extra = [
            f"{method.upper()} {path}"
            for path, method in self.operations()
            if (method.upper(), path) not in known
        ]
        self.assertEqual(extra, [])

    def test_each_operation_names_the_role_its_route_needs(self):
        wrong = []
        for (method, path), handler in sorted(routes().items()):
            role = getattr(handler, "role", None) or OWN_CHECK.get((method, path))
            expected = [] if role is None else [{k: [role.name]} for k in SCHEMES]
            spec = self.doc["paths"][path][method.lower()]
            if spec["security"] != expected:
                wrong.append(f"{method} {path}: {spec['security']} != {expected}")
            if role is not None and not {"401", "403"} <= set(spec["responses"]):
                wrong.append(f"{method} {path}: 401 and 403 are not documented")
        self.assertEqual(wrong, [])
        schemes = self.doc["components"]["securitySchemes"]
        self.assertEqual(sorted(schemes), sorted(SCHEMES))
        self.assertEqual(
            (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]), ("http", "bearer")
        )
        self.assertEqual(schemes["sessionCookie"]["name"], SESSION_COOKIE.decode())

    def test_the_seed_answers_with_its_exact_messages(self):
        wrong = {}
        for (path, status), messages in SEED.items():
            for method, spec in self.doc["paths"][path].items():
                answer = resolve(self.doc, spec["responses"][status])
                schema = resolve(self.doc, answer["content"]["application/json"]["schema"])
                listed = set(schema["properties"]["error_message"].get("enum", ()))
                if listed != messages:
                    wrong[f"{method} {path} {status}"] = listed
        self.assertEqual(wrong, {})

    def test_every_json_answer_is_a_documented_object(self):
        for (path, method), spec in self.operations().items():
            for status, answer in spec["responses"].items():
                content = resolve(self.doc, answer).get("content", {})
                self.assertTrue(content, f"{method} {path} {status} has no content")
                if int(status) >= 400 and "application/json" in content:
                    schema = resolve(self.doc, content["application/json"]["schema"])
                    self.assertIn("error_message", schema["required"], f"{method} {path}")

    def test_a_status_from_views_fits_the_schema(self):
        stream = Stream(1, "rtsp://admin:secret@cam/1", "gate", 1.5, 2.5, None, True, None)
        totals = Totals(segments=3, seconds=6.0, bytes=1000, first=2.6, last=8.6)
        validator = schema_of(self.doc, "Status")
        live = {"state": "recording", "reconnects": 2, "last_error": "lost rtsp://a:b@cam/1"}
        for answer in (stream_json(stream, totals, live), stream_json(stream, totals, {})):
            self.assertEqual(list(validator.iter_errors(answer)), [])
        stopped = stream_json(stream, Totals(0, 0.0, 0, None, None), {"state": "dreaming"})
        self.assertTrue(list(validator.iter_errors(stopped)), "an unknown state passed")

    def test_a_job_from_views_fits_the_schema(self):
        clip = Clip(seq=0, link="http://127.0.0.1:8080/clips/abc.mp4", storage_key="abc.mp4",
                    start=10.0, stop=20.0, bytes=12345)  # fmt: skip
        done = ClipJob(7, 1, 10.0, 20.0, True, "copy", {}, JOB_DONE, None, 1.0, 5.0, (clip,))
        pending = ClipJob(8, 1, 10.0, 30.0, False, "copy", {}, JOB_PENDING, None, 0.25, 5.0,
                          waiting_for="node-b")  # fmt: skip
        validator = schema_of(self.doc, "Job")
        for job in (done, pending):
            self.assertEqual(list(validator.iter_errors(job_json(job))), [])
        answer = job_json(done)
        del answer["clips"][0]["link"]
        self.assertTrue(list(validator.iter_errors(answer)), "a clip without a link passed")

    def test_a_timeline_from_views_fits_the_schema(self):
        validator = schema_of(self.doc, "Timeline")
        for answer in (
            timeline_json(3, 10.0, 20.0, [(10.0, 12.5), (14.0, 20.0)]),
            timeline_json(3, None, None, []),
        ):
            self.assertEqual(list(validator.iter_errors(answer)), [])
        self.assertTrue(list(validator.iter_errors(timeline_json(3, 1.0, 2.0, [(1.0, None)]))))


class ServedTests(unittest.TestCase):
    """``/openapi.json`` through the real Klein app, with a token file in force."""

    def setUp(self) -> None:
        api = StreamrecAPI(None, None, {}, access=Access({digest(TOKEN): VIEWER}))  # type: ignore[arg-type]
        self.http = StubTreq(api.resource())
        self.doc = document(ERRORS)

    async def get(self, path: str, token: str | None = None) -> tuple[int, str, Any]:
        headers = {b"Authorization": [b"Bearer " + token.encode()]} if token else {}
        response = await self.http.get("http://streamrec.test" + path, headers=headers)
        types = response.headers.getRawHeaders(b"content-type", [b""])
        return response.code, types[0].decode(), json.loads(await response.content())

    def answer_schema(self, path: str, method: str, status: str) -> OAS31Validator:
        answer = resolve(self.doc, self.doc["paths"][path][method]["responses"][status])
        return OAS31Validator({**self.doc, **answer["content"]["application/json"]["schema"]})

    @defer.inlineCallbacks
    def test_served_without_a_token(self):
        code, content_type, body = yield defer.ensureDeferred(self.get("/openapi.json"))
        self.assertEqual((code, content_type), (200, "application/json"))
        self.assertEqual(body, self.doc)

    @defer.inlineCallbacks
    def test_401_and_403_answer_as_documented(self):
        code, content_type, body = yield defer.ensureDeferred(self.get("/streams/"))
        self.assertEqual((code, content_type), (401, "application/json"))
        self.assertEqual(list(self.answer_schema("/streams/", "get", "401").iter_errors(body)), [])
        code, content_type, body = yield defer.ensureDeferred(
            self.get("/streams/create?url=rtsp://cam/1", TOKEN)
        )
        self.assertEqual((code, content_type), (403, "application/json"))
        schema = self.answer_schema("/streams/create", "get", "403")
        self.assertEqual(list(schema.iter_errors(body)), [])
