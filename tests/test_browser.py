"""A real browser plays a clip: the first frame it shows is the requested instant.

The clip builder hides the lead-in from the keyframe with an edit list
(see ``streamrec.clips.mp4``).  PyAV honours it (``tests.test_mp4``); this
test checks that a browser does too.  Segments are recorded with
``tests.test_mp4.recording`` (frame number painted into the top 16 rows),
a clip starting mid-GOP is built and stored with ``LocalStorage`` and
served, with byte ranges, by its web resource from a Twisted ``Site`` on
127.0.0.1.  Headless Chromium loads a small page that

* on ``loadeddata`` (``currentTime`` 0) draws the video into a canvas and
  measures the mean luma of the 16 code blocks,
* then plays the video to the end (muted, autoplay allowed by a flag),
  measures the last frame shown the same way,

and POSTs everything as JSON back to the test server.  The block means are
decoded here with ``tests.framecode`` (the leftmost block is the most
significant bit).

Skipped when ``/usr/bin/chromium`` is absent (``scripts/install-system-packages``
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.endpoints import serverFromString
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server, static

from streamrec.builtin.local_storage import LocalStorage
from streamrec.clips.mp4 import build_clip
from streamrec.plugins import PluginContext
from tests import framecode
from tests.test_mp4 import FFMPEG, FPS, decoded_numbers, recording, wall

CHROMIUM = "/usr/bin/chromium"
SETSID = shutil.which("setsid")

#: Clip bounds, seconds from frame 0 of the recording.  Keyframes every
#: second (GOP 25), segments every 2 s: the clip starts 0.52 s after the
#: keyframe at 3.0 s (13 frames of lead-in to hide) and crosses the segment
#: boundary at 4.0 s.
START = 3.52
STOP = 5.52
FIRST_FRAME = round(START * FPS)  # 88
LAST_FRAME = round(STOP * FPS) - 1  # 137

#: Bounds on the waits (the trial timeout is the last resort).
RESULT_TIMEOUT = 40.0
EXIT_TIMEOUT = 5.0

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root here
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
]

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>clip</title></head>
<body>
<video id="v" muted playsinline preload="auto" src="%(src)s"></video>
<canvas id="c"></canvas>
<script>
"use strict";
const video = document.getElementById("v");
const canvas = document.getElementById("c");
const result = {events: [], first: null, last: null, ended: false};
const t0 = performance.now();
let sent = false;

function log(name) {
  result.events.push([name, Math.round(performance.now() - t0), video.currentTime]);
}

function send() {
  if (sent) return;
  sent = true;
  fetch("/result", {method: "POST", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(result)});
}

// Mean luma (BT.601 on the RGB the browser gives us) of the 16 code blocks,
// left to right, over the inner part of each block (as tests.framecode reads it).
function grab() {
  const w = video.videoWidth, h = video.videoHeight;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(video, 0, 0, w, h);
  const bw = w / 16, bh = Math.round(16 * h / 240), m = 2;
  const px = ctx.getImageData(0, 0, w, bh).data;
  const means = [];
  for (let k = 0; k < 16; k++) {
    let sum = 0, n = 0;
    for (let y = m; y < bh - m; y++) {
      for (let x = Math.round(k * bw) + m; x < Math.round((k + 1) * bw) - m; x++) {
        const i = 4 * (y * w + x);
        sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
        n++;
      }
    }
    means.push(sum / n);
  }
  return {currentTime: video.currentTime, duration: video.duration,
          width: w, height: h, means: means};
}

for (const name of ["loadedmetadata", "loadeddata", "canplay", "play", "playing",
                    "waiting", "stalled", "seeking", "seeked", "pause", "ended"]) {
  video.addEventListener(name, () => log(name));
}

video.addEventListener("loadeddata", () => {
  try {
    result.first = grab();
  } catch (e) {
    result.error = "grab: " + e;
    send();
    return;
  }
  video.play().catch((e) => { result.error = "play: " + e; send(); });
}, {once: true});

video.addEventListener("ended", () => {
  result.ended = true;
  try {
    result.last = grab();
  } catch (e) {
    result.error = "grab at end: " + e;
  }
  send();
});

video.addEventListener("error", () => {
  const e = video.error;
  result.error = "video error " + (e ? e.code + " " + e.message : "?");
  send();
});
</script>
</body></html>
"""


def number_from_means(means: list[float]) -> int:
    """Frame number from the 16 block means, as tests.framecode paints it."""
    return framecode.number_from_means(means)


class ResultResource(resource.Resource):
    """Receives the page's JSON report (once) and fires ``self.received``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: defer.Deferred[dict[str, Any]] = defer.Deferred()

    def render_POST(self, request: server.Request) -> bytes:
        body = json.loads(request.content.read())
        if not self.received.called:
            self.received.callback(body)
        request.setHeader(b"content-type", b"text/plain")
        return b"ok"


class ChromiumProtocol(protocol.ProcessProtocol):
    """Collects Chromium's output (for failure messages) and notices its exit."""

    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.exit: Failure | None = None
        self._waiters: list[defer.Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exit = reason
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # not cancelled
                waiter.callback(None)

    def ended(self) -> defer.Deferred[None]:
        """A new Deferred that fires when Chromium has exited."""
        if self.exit is not None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def text(self, limit: int = 4000) -> str:
        return b"".join(self.output).decode("utf-8", "replace")[-limit:]


class BrowserPlaybackTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest(
                f"{CHROMIUM} not found: install Debian's chromium "
                "(scripts/install-system-packages) to run the browser tests"
            )
        if not os.path.exists(FFMPEG):
            raise unittest.SkipTest(f"{FFMPEG} not found")

    @defer.inlineCallbacks
    def serve(self, site: server.Site):  # type: ignore[no-untyped-def]
        """Listen on a free port of 127.0.0.1; the cleanup waits for the connections to go."""
        factory = policies.WrappingFactory(site)
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)

        @defer.inlineCallbacks
        def stop():  # type: ignore[no-untyped-def]
            # Runs after Chromium is gone: its connections close within a few reactor turns.
            for _ in range(100):
                if not factory.protocols:
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)
            for proto in list(factory.protocols):
                proto.transport.abortConnection()
            yield port.stopListening()

        self.addCleanup(stop)
        return port.getHost().port

    def spawn_chromium(self, url: str) -> ChromiumProtocol:
        profile = tempfile.mkdtemp(prefix="streamrec-chromium-")
        args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url]
        if SETSID:  # own process group: the cleanup can kill all of Chromium's processes
            args = [SETSID, *args]
        proto = ChromiumProtocol()
        env = dict(os.environ, HOME=profile)
        transport = reactor.spawnProcess(proto, args[0], args, env=env)
        pid = transport.pid

        @defer.inlineCallbacks
        def stop():  # type: ignore[no-untyped-def]
            if proto.exit is None:
                transport.signalProcess("TERM")
                try:
                    yield proto.ended().addTimeout(EXIT_TIMEOUT, reactor)
                except defer.TimeoutError:
                    transport.signalProcess("KILL")
                    yield proto.ended()
            if SETSID:
                try:  # stragglers (renderer, GPU, zygote) of the group we created
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            shutil.rmtree(profile, ignore_errors=True)

        self.addCleanup(stop)
        return proto

    @defer.inlineCallbacks
    def test_first_frame_is_requested_instant_and_plays(self):  # type: ignore[no-untyped-def]
        rec = yield threads.deferToThread(
            recording, "browser_h264_bf2_aac", seconds=8, bf=2, audio=True
        )

        root = resource.Resource()
        results = ResultResource()
        root.putChild(b"result", results)
        site = server.Site(root)
        port = yield self.serve(site)
        base = f"http://127.0.0.1:{port}"

        data_dir = self.mktemp()
        os.makedirs(data_dir)
        storage = LocalStorage(PluginContext(reactor, data_dir, base, FFMPEG))
        root.putChild(b"clips", storage.resource())
        local = os.path.join(data_dir, "building.mp4")
        clip = yield threads.deferToThread(build_clip, rec.pieces, wall(START), wall(STOP), local)
        url = yield defer.Deferred.fromCoroutine(storage.store_clip(local, "clip.mp4"))
        self.assertEqual(url, base + "/clips/clip.mp4")

        # The clip itself is right (PyAV applies the edit list): the browser is what is tested.
        served = os.path.join(storage.directory, "clip.mp4")
        numbers = yield threads.deferToThread(decoded_numbers, served)
        self.assertEqual((numbers[0], numbers[-1]), (FIRST_FRAME, LAST_FRAME))

        root.putChild(
            b"page.html",
            static.Data((PAGE % {"src": "/clips/clip.mp4"}).encode(), "text/html; charset=utf-8"),
        )
        chromium = self.spawn_chromium(base + "/page.html")

        # Whichever comes first: the page's report, Chromium's exit, the time limit.
        outcome: defer.Deferred[tuple[str, Any]] = defer.Deferred()

        def first_of(kind: str, value: Any = None) -> None:
            if not outcome.called:
                outcome.callback((kind, value))

        results.received.addCallback(lambda report: first_of("report", report))
        chromium.ended().addCallback(lambda _: first_of("exited"))
        timer = reactor.callLater(RESULT_TIMEOUT, first_of, "timeout")
        self.addCleanup(lambda: timer.active() and timer.cancel())
        kind, report = yield outcome
        if kind == "timeout":
            self.fail(
                f"no report from the page within {RESULT_TIMEOUT:.0f} s; "
                f"Chromium said:\n{chromium.text()}"
            )
        if kind == "exited":
            self.fail(
                f"Chromium exited before the page reported ({chromium.exit.value}):\n"
                f"{chromium.text()}"
            )

        context = f"page report: {json.dumps(report)}"
        self.assertNotIn("error", report, context)
        first = report["first"]
        self.assertIsNotNone(first, context)
        self.assertEqual((first["width"], first["height"]), (320, 240), context)
        self.assertEqual(first["currentTime"], 0, context)
        # Every block is clearly black or white (x264 leaves black blocks at about
        # 10-55 here): one decoded picture, not a blend or a blank canvas.
        self.assertTrue(all(abs(m - 128) > 40 for m in first["means"]), context)
        shown = number_from_means(first["means"])
        self.assertEqual(
            shown,
            FIRST_FRAME,
            f"first frame shown {shown}, expected "
            f"{FIRST_FRAME} (keyframe before it: {FPS * int(START)}); {context}",
        )

        self.assertTrue(report["ended"], context)
        duration = report["last"]["duration"]
        self.assertApproximates(duration, STOP - START, 1.0 / FPS, context)
        self.assertApproximates(duration, clip.duration, 1.0 / FPS, context)
        self.assertApproximates(report["last"]["currentTime"], duration, 1.0 / FPS, context)
        self.assertEqual(number_from_means(report["last"]["means"]), LAST_FRAME, context)
