"""Chromium plays ``archive.mp4``, seeks inside it, and shows a snapshot.

A recorded stream without a recorder (:mod:`tests.support.indexed`: 16 s of
numbered frames, GOP 25, B-frames, AAC, 2 s segments, one run) behind the
real API on a port of 127.0.0.1, which also serves the test page (same
origin, so the canvas stays readable). The page

* plays ``archive.mp4?start=S`` with S mid-GOP and reads, through a canvas,
  the frame number painted in the first picture shown (``currentTime`` 0);
* sets ``currentTime`` to instants later and earlier in the file and reads
  the frame shown after each ``seeked``;
* draws ``snapshot?t=T`` from an ``<img>`` and reads its number;

and posts what it read. Each number is compared with the frame at that
wall-clock instant. Skipped without ``/usr/bin/chromium``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.web import resource, server, static

from tests.e2e.test_browser import RESULT_TIMEOUT, ChromiumTestCase, ResultResource
from tests.support import framecode
from tests.support.indexed import indexed_stream
from tests.support.recordings import FPS, T0

START = 2.52  # 13 frames after the keyframe at 2.0 s
SEEKS = [6.02, 11.5, 1.1]  # currentTime: forward, further, back
SNAPSHOT = 9.3

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>archive</title></head>
<body>
<video id="v" muted playsinline preload="auto" src="%(src)s"></video>
<canvas id="c"></canvas>
<script>
"use strict";
const video = document.getElementById("v");
const canvas = document.getElementById("c");
const seeks = %(seeks)s;
const result = {first: null, seeks: [], snapshot: null, duration: null};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function send() {
  fetch("/result", {method: "POST", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(result)});
}

// The 16 code blocks of a picture (tests.support.framecode.READ_CODE_JS).
%(read_code)s
const means = readCode;

async function grabVideo() {
  for (let tries = 0; tries < 100; tries++) {
    const got = means(video, video.videoWidth, video.videoHeight);
    if (got.painted) return {...got, currentTime: video.currentTime};
    await sleep(20);
  }
  throw new Error("nothing painted");
}

function seekTo(t) {
  return new Promise((resolve) => {
    video.addEventListener("seeked", resolve, {once: true});
    video.currentTime = t;
  });
}

async function run() {
  await new Promise((resolve) => video.addEventListener("loadeddata", resolve, {once: true}));
  result.duration = video.duration;
  result.first = await grabVideo();
  for (const t of seeks) {
    await seekTo(t);
    await sleep(100);
    result.seeks.push(await grabVideo());
  }
  const img = new Image();
  img.src = "%(snapshot)s";
  await img.decode();
  result.snapshot = means(img, img.naturalWidth, img.naturalHeight);
}

video.addEventListener("error", () => {
  result.error = "video error " + (video.error ? video.error.code + " " + video.error.message : "?");
  send();
});
run().then(send, (e) => { result.error = String(e); send(); });
</script>
</body></html>
"""


class Root(resource.Resource):
    """The page and the report at ``/page.html`` and ``/result``; the API for
    everything else (notes the ``Range`` of each ``archive.mp4`` request)."""

    def __init__(self, api: resource.IResource, results: ResultResource) -> None:
        super().__init__()
        self.api = api
        self.results = results
        self.page = b""
        self.ranges: list[str | None] = []

    def getChildWithDefault(self, path: bytes, request: Any) -> resource.IResource:
        if path == b"page.html":
            return static.Data(self.page, "text/html; charset=utf-8")
        if path == b"result":
            return self.results
        if request.path.endswith(b"/archive.mp4"):
            header = request.getHeader(b"range")
            self.ranges.append(header.decode() if header else None)
        request.postpath.insert(0, request.prepath.pop())  # the API routes the whole path
        return self.api


def number(read: dict[str, Any]) -> int:
    return framecode.number_from_means(read["means"])


class ArchiveInChromiumTests(ChromiumTestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_plays_seeks_and_shows_a_snapshot(self):  # type: ignore[no-untyped-def]
        indexed = yield defer.ensureDeferred(
            indexed_stream(self, "views_bf2", [list(range(8))], bf=2)
        )
        results = ResultResource()
        root = Root(indexed.api.resource(), results)
        port = yield self.serve(server.Site(root))
        base = f"http://127.0.0.1:{port}"
        stream = f"/streams/{indexed.stream_id}"
        root.page = (
            PAGE
            % {
                "src": f"{stream}/archive.mp4?start={T0 + START:.3f}",
                "seeks": json.dumps(SEEKS),
                "snapshot": f"{stream}/snapshot?t={T0 + SNAPSHOT:.3f}",
                "read_code": framecode.READ_CODE_JS,
            }
        ).encode()
        chromium = self.spawn_chromium(base + "/page.html")
        outcome: defer.Deferred[Any] = defer.Deferred()
        results.received.addCallback(lambda report: outcome.called or outcome.callback(report))
        chromium.ended().addCallback(lambda _: outcome.called or outcome.callback(None))
        timer = reactor.callLater(RESULT_TIMEOUT, lambda: outcome.called or outcome.callback(None))
        self.addCleanup(lambda: timer.active() and timer.cancel())
        report = yield outcome
        if report is None:
            self.fail(f"no report from the page; Chromium said:\n{chromium.text()}")
        context = f"page report: {json.dumps(report)}; ranges asked: {root.ranges}"
        self.assertNotIn("error", report, context)

        first = round(START * FPS)
        self.assertEqual(number(report["first"]), first, context)
        self.assertEqual(report["first"]["currentTime"], 0, context)
        self.assertAlmostEqual(report["duration"], 16 - START, delta=1.0 / FPS, msg=context)
        shown = [number(read) for read in report["seeks"]]
        self.assertEqual(shown, [first + int(t * FPS) for t in SEEKS], context)
        self.assertTrue(all(abs(m - 128) > 40 for read in report["seeks"] for m in read["means"]))
        self.assertEqual(number(report["snapshot"]), int(SNAPSHOT * FPS), context)
        self.assertTrue(any(r is not None for r in root.ranges), context)
        print(
            f"\narchive.mp4 in Chromium: first {first}, after seeks {shown}; ranges {root.ranges}"
        )
