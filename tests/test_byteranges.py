"""Answering a file's bytes over HTTP (streamrec.byteranges), through StubTreq.

A file of known bytes, read by a body that counts its reads and can be told
to fail: ranges, conditional requests, HEAD, and what a client sees when the
bytes are lost half-way (a connection closed early, never other bytes).
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource

from streamrec.byteranges import CHUNK, UNSATISFIABLE, RangedResource, one_range, tag_matches

DATA = bytes(range(256)) * 4000  # 1 MB: several chunks
ETAG = b'"v1"'


class Body:
    """The bytes of DATA; fails every read from ``fail_from`` on."""

    def __init__(self, log: list[Any], fail_from: int | None = None) -> None:
        self.log = log
        self.fail_from = fail_from

    def read(self, offset: int, length: int) -> defer.Deferred[bytes]:
        self.log.append(("read", offset, length))
        if self.fail_from is not None and offset >= self.fail_from:
            return defer.fail(OSError("the file was deleted"))
        return defer.succeed(DATA[offset : offset + length])

    def close(self) -> None:
        self.log.append(("close",))


class Root(Resource):
    def __init__(self, log: list[Any], fail_from: int | None = None) -> None:
        super().__init__()
        self.log = log
        self.fail_from = fail_from

    def getChild(self, path: bytes, request: Any) -> Resource:
        return RangedResource(
            lambda: Body(self.log, self.fail_from),
            size=len(DATA),
            etag=ETAG,
            content_type=b"video/mp4",
            headers={b"X-Extra": b"1"},
        )


class OneRangeTests(SynchronousTestCase):
    def test_the_rules(self) -> None:
        self.assertEqual(one_range(b"bytes=0-9", 100), (0, 9))
        self.assertEqual(one_range(b"bytes=90-", 100), (90, 99))
        self.assertEqual(one_range(b"bytes=-10", 100), (90, 99))
        self.assertEqual(one_range(b"bytes=50-500", 100), (50, 99))
        self.assertEqual(one_range(b"bytes=100-", 100), UNSATISFIABLE)
        self.assertEqual(one_range(b"bytes=-0", 100), UNSATISFIABLE)
        self.assertIsNone(one_range(b"bytes=0-1,5-6", 100))  # several: the whole file
        self.assertIsNone(one_range(b"bytes=9-1", 100))
        self.assertIsNone(one_range(b"lines=1-2", 100))

    def test_tags(self) -> None:
        self.assertTrue(tag_matches(b'"a", "v1"', ETAG))
        self.assertTrue(tag_matches(b'W/"v1"', ETAG))
        self.assertTrue(tag_matches(b"*", ETAG))
        self.assertFalse(tag_matches(b'"v2"', ETAG))
        self.assertFalse(tag_matches(None, ETAG))


class RangedResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log: list[Any] = []

    def get(
        self, method: str = "GET", fail_from: int | None = None, **headers: str
    ) -> tuple[Any, bytes]:
        http = StubTreq(Root(self.log, fail_from))
        raw = {k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()}
        response = self.successResultOf(
            http.request(method, "http://example.test/file", headers=raw)
        )
        body = self.successResultOf(http.content(response))
        http.flush()
        return response, body

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def test_whole_file_in_chunks(self) -> None:
        response, body = self.get()
        self.assertEqual(response.code, 200)
        self.assertEqual(body, DATA)
        self.assertEqual(response.length, len(DATA))  # Content-Length
        self.assertEqual(self.header(response, "accept-ranges"), "bytes")
        self.assertEqual(self.header(response, "etag"), ETAG.decode())
        self.assertEqual(self.header(response, "content-type"), "video/mp4")
        self.assertEqual(self.header(response, "x-extra"), "1")
        reads = [entry for entry in self.log if entry[0] == "read"]
        self.assertEqual(len(reads), -(-len(DATA) // CHUNK))
        self.assertTrue(all(length <= CHUNK for _r, _o, length in reads))
        self.assertEqual(self.log[-1], ("close",))

    def test_one_range(self) -> None:
        response, body = self.get(range="bytes=1000-300000")
        self.assertEqual(response.code, 206)
        self.assertEqual(body, DATA[1000:300001])
        self.assertEqual(self.header(response, "content-range"), f"bytes 1000-300000/{len(DATA)}")
        self.assertEqual(response.length, 300001 - 1000)

    def test_ranges_reassemble(self) -> None:
        parts, first = [], 0
        for last in (0, 99, 262143, 262144, 700000, len(DATA) - 1):
            response, body = self.get(range=f"bytes={first}-{last}")
            self.assertEqual(response.code, 206)
            parts.append(body)
            first = last + 1
        self.assertEqual(b"".join(parts), DATA)

    def test_several_ranges_get_the_whole_file(self) -> None:
        response, body = self.get(range="bytes=0-1,10-20")
        self.assertEqual((response.code, body), (200, DATA))

    def test_past_the_end(self) -> None:
        response, body = self.get(range=f"bytes={len(DATA)}-")
        self.assertEqual(response.code, 416)
        self.assertEqual(self.header(response, "content-range"), f"bytes */{len(DATA)}")
        self.assertEqual(self.log, [])

    def test_head_reads_nothing(self) -> None:
        response, body = self.get("HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "content-length"), str(len(DATA)))
        self.assertEqual(self.log, [])
        response, body = self.get("HEAD", range="bytes=10-19")
        self.assertEqual((response.code, body), (206, b""))
        self.assertEqual(self.header(response, "content-length"), "10")

    def test_not_modified(self) -> None:
        response, body = self.get(if_none_match=ETAG.decode())
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(self.log, [])
        response, body = self.get(if_none_match='"other"')
        self.assertEqual((response.code, body), (200, DATA))

    def test_if_range(self) -> None:
        response, body = self.get(range="bytes=5-9", if_range=ETAG.decode())
        self.assertEqual((response.code, body), (206, DATA[5:10]))
        # Another version of the file: the whole of this one, not a piece of it.
        response, body = self.get(range="bytes=5-9", if_range='"v0"')
        self.assertEqual((response.code, body), (200, DATA))

    def test_lost_bytes_close_the_connection(self) -> None:
        http = StubTreq(Root(self.log, fail_from=2 * CHUNK))
        response = self.successResultOf(http.request("GET", "http://example.test/file"))
        self.assertEqual(response.code, 200)
        received: list[bytes] = []
        self.failureResultOf(http.collect(response, received.append), ResponseFailed)
        # What arrived before the loss is the file's own bytes, and no more.
        self.assertEqual(b"".join(received), DATA[: 2 * CHUNK])
        self.assertEqual(self.log[-1], ("close",))
        self.assertEqual([e for e in self.log if e[0] == "read"][-1][1], 2 * CHUNK)
