"""A real browser plays a clip: the first frame it shows is the requested instant.

The clip builder hides the lead-in from the keyframe with an edit list
(see ``streamrec.media.mp4``).  PyAV honours it (``tests.media.test_mp4``); this
test checks that a browser does too.  Segments are recorded with
``tests.support.recordings.recording`` (frame number painted into the top 16 rows),
a clip starting mid-GOP is built and stored with ``LocalStorage`` and
served, with byte ranges, by its web resource from a Twisted ``Site`` on
127.0.0.1.  Headless Chromium loads a small page that

* on ``loadeddata`` (``currentTime`` 0), once the paused video has painted
  its first picture, draws it into a canvas and measures the mean luma of
  the 16 code blocks,
* then plays the video to the end (muted, autoplay allowed by a flag),
  measures the last frame shown the same way,

and POSTs everything as JSON back to the test server.  The block means are
decoded here with ``tests.support.framecode`` (the leftmost block is the most
significant bit).

The same range is also re-encoded by the built-in ``transcode`` encoder
(H.264 without B-frames, no edit list; ``preset=ultrafast``) and played the
same way: same first frame exactly, last frame within one, same duration.

Finally the whole chain: a live RTSP camera (``tests.support.livesource.RtspServer``)
recorded by a real streamrec service (``tests.harness``), a 3 s clip asked
for over the API starting mid-GOP, and Chromium playing the clip link from
the service's own port while the page comes from the test's Site: a
cross-origin ``<video crossorigin="anonymous">`` whose pixels the canvas can
read only because the clip files send ``Access-Control-Allow-Origin: *``.
What Chromium shows first and last is compared with what PyAV decodes from
the same link, and the first frame with the camera's clock.

Skipped when ``/usr/bin/chromium`` is absent (``scripts/install-system-packages``
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import av
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.endpoints import serverFromString
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server, static

from streamrec.builtin.local_storage import LocalStorage
from streamrec.builtin.transcode_encoder import TranscodeEncoder
from streamrec.media.mp4 import ClipResult, build_clip
from streamrec.plugins import EncodeRequest, PluginContext
from tests.support import framecode
from tests.support.harness import FRAME, ServiceTestCase, until
from tests.support.livesource import GOP, RtspServer
from tests.support.recordings import FFMPEG, FPS, Recording, decoded_numbers, recording, wall

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
<video id="v" muted playsinline preload="auto"%(crossorigin)s src="%(src)s"></video>
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

// The 16 code blocks of the frame shown (tests.support.framecode.READ_CODE_JS).
%(read_code)s
function grab() {
  const read = readCode(video, video.videoWidth, video.videoHeight);
  return {...read, currentTime: video.currentTime, duration: video.duration};
}

for (const name of ["loadedmetadata", "loadeddata", "canplay", "play", "playing",
                    "waiting", "stalled", "seeking", "seeked", "pause", "ended"]) {
  video.addEventListener(name, () => log(name));
}

// The first frame, once the paused video has painted it (a loaded machine may
// fire loadeddata before the picture can be drawn), then play.
let tries = 0;
function grabFirst() {
  try {
    result.first = grab();
  } catch (e) {
    result.error = "grab: " + e;
    send();
    return;
  }
  if (!result.first.painted && tries++ < 100) {
    setTimeout(grabFirst, 20);
    return;
  }
  video.play().catch((e) => { result.error = "play: " + e; send(); });
}
video.addEventListener("loadeddata", grabFirst, {once: true});

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
    """Frame number from the 16 block means, as tests.support.framecode paints it."""
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


def video_codec_and_numbers(path: str) -> tuple[str, list[int]]:
    """The video stream's codec (as PyAV names it) and the frame numbers shown."""
    with av.open(path) as container:
        codec = container.streams.video[0].codec_context.name
    return codec, decoded_numbers(path)


@dataclass(frozen=True)
class PageSite:
    """What :meth:`ChromiumTestCase.page_site` sets up: a Site on 127.0.0.1
    (``base``) whose ``root`` gets the page, and the page's report."""

    root: resource.Resource
    results: ResultResource
    base: str


@dataclass(frozen=True)
class ClipSite(PageSite):
    """What :meth:`BrowserPlaybackTests.clip_site` sets up for one test."""

    rec: Recording
    data_dir: str
    context: PluginContext
    storage: LocalStorage


class ChromiumTestCase(unittest.TestCase):
    """Headless Chromium playing a clip on a page served from 127.0.0.1."""

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
    def page_site(self):  # type: ignore[no-untyped-def]
        """A Site on 127.0.0.1 serving ``/result`` (and, once :meth:`play` runs, the page)."""
        root = resource.Resource()
        results = ResultResource()
        root.putChild(b"result", results)
        port = yield self.serve(server.Site(root))
        return PageSite(root, results, f"http://127.0.0.1:{port}")

    @defer.inlineCallbacks
    def play(self, site: PageSite, src: str):  # type: ignore[no-untyped-def]
        """Chromium loads the page playing ``src``; the page's report.

        ``src`` is a path on ``site`` or the URL of another origin: the
        ``<video>`` is then ``crossorigin="anonymous"``, so the canvas stays
        readable only if that origin allows it (CORS).
        """
        same_origin = src.startswith("/") or src.startswith(site.base + "/")
        site.root.putChild(
            b"page.html",
            static.Data(
                (
                    PAGE
                    % {
                        "src": src,
                        "crossorigin": "" if same_origin else ' crossorigin="anonymous"',
                        "read_code": framecode.READ_CODE_JS,
                    }
                ).encode(),
                "text/html; charset=utf-8",
            ),
        )

        chromium = self.spawn_chromium(site.base + "/page.html")

        # Whichever comes first: the page's report, Chromium's exit, the time limit.
        outcome: defer.Deferred[tuple[str, Any]] = defer.Deferred()

        def first_of(kind: str, value: Any = None) -> None:
            if not outcome.called:
                outcome.callback((kind, value))

        site.results.received.addCallback(lambda report: first_of("report", report))
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
        return report

    def check_playback(
        self,
        label: str,
        report: dict[str, Any],
        first_frame: int,
        last_frame: int,
        durations: list[float],
        last_slack: int,
        hint: str = "",
    ) -> None:
        """The first frame shown is ``first_frame`` exactly, the last ``last_frame``
        within ``last_slack`` frames, ``ended`` fired and the duration is
        each of ``durations`` within a frame."""
        context = f"{label}: page report: {json.dumps(report)}"
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
            first_frame,
            f"first frame shown {shown}, expected {first_frame}{hint}; {context}",
        )

        self.assertTrue(report["ended"], context)
        last = report["last"]
        self.assertIsNotNone(last, context)
        self.assertTrue(all(abs(m - 128) > 40 for m in last["means"]), context)
        shown_duration = last["duration"]
        for duration in durations:
            self.assertApproximates(shown_duration, duration, 1.0 / FPS, context)
        self.assertApproximates(last["currentTime"], shown_duration, 1.0 / FPS, context)
        shown_last = number_from_means(last["means"])
        self.assertLessEqual(
            abs(shown_last - last_frame),
            last_slack,
            f"last frame shown {shown_last}, expected {last_frame}"
            f"{f' ±{last_slack}' if last_slack else ''}; {context}",
        )
        print(
            f"\n{label}: frames shown {shown}..{shown_last} "
            f"(expected {first_frame}..{last_frame}), duration {shown_duration:.3f} s"
        )


class BrowserPlaybackTests(ChromiumTestCase):
    """Clips built from a local recording, served from the test's own Site."""

    @defer.inlineCallbacks
    def clip_site(self):  # type: ignore[no-untyped-def]
        """The recording; a Site on 127.0.0.1 serving ``/clips`` (LocalStorage), ``/result``."""
        rec = yield threads.deferToThread(
            recording, "browser_h264_bf2_aac", seconds=8, bf=2, audio=True
        )
        page = yield self.page_site()
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        context = PluginContext(reactor, data_dir, page.base, FFMPEG)
        storage = LocalStorage(context)
        page.root.putChild(b"clips", storage.resource())
        return ClipSite(
            root=page.root,
            results=page.results,
            base=page.base,
            rec=rec,
            data_dir=data_dir,
            context=context,
            storage=storage,
        )

    @defer.inlineCallbacks
    def store(self, site: ClipSite, local: str, key: str):  # type: ignore[no-untyped-def]
        """Store ``local`` as ``key``; the path of the file the Site serves."""
        url = yield defer.Deferred.fromCoroutine(site.storage.store_clip(local, key))
        self.assertEqual(url, f"{site.base}/clips/{key}")
        return os.path.join(site.storage.directory, key)

    def check_clip_playback(
        self, label: str, report: dict[str, Any], clip: ClipResult, last_slack: int
    ) -> None:
        """FIRST_FRAME..LAST_FRAME shown, for as long as the range and the clip last."""
        self.check_playback(
            label,
            report,
            FIRST_FRAME,
            LAST_FRAME,
            [STOP - START, clip.duration],
            last_slack,
            hint=f" (keyframe before it: {FPS * int(START)})",
        )

    @defer.inlineCallbacks
    def test_first_frame_is_requested_instant_and_plays(self):  # type: ignore[no-untyped-def]
        site = yield self.clip_site()
        local = os.path.join(site.data_dir, "building.mp4")
        clip = yield threads.deferToThread(
            build_clip, site.rec.pieces, wall(START), wall(STOP), local
        )
        served = yield self.store(site, local, "clip.mp4")

        # The clip itself is right (PyAV applies the edit list): the browser is what is tested.
        numbers = yield threads.deferToThread(decoded_numbers, served)
        self.assertEqual((numbers[0], numbers[-1]), (FIRST_FRAME, LAST_FRAME))

        report = yield self.play(site, "/clips/clip.mp4")
        self.check_clip_playback("copy", report, clip, last_slack=0)

    @defer.inlineCallbacks
    def test_transcoded_clip_plays(self):  # type: ignore[no-untyped-def]
        """The ``transcode`` encoder's clip (H.264, no edit list) of the same range."""
        site = yield self.clip_site()
        local = os.path.join(site.data_dir, "transcoding.mp4")
        request = EncodeRequest(
            pieces=site.rec.pieces,
            start=wall(START),
            stop=wall(STOP),
            out_path=local,
            options={"preset": "ultrafast"},
            progress=lambda fraction: None,
        )
        clip = yield defer.Deferred.fromCoroutine(TranscodeEncoder(site.context).encode(request))
        served = yield self.store(site, local, "transcoded.mp4")

        codec, numbers = yield threads.deferToThread(video_codec_and_numbers, served)
        self.assertEqual(codec, "h264")
        with open(served, "rb") as f:
            self.assertNotIn(b"elst", f.read(), "the transcoded clip has an edit list")
        self.assertEqual(numbers[0], FIRST_FRAME)
        self.assertApproximates(numbers[-1], LAST_FRAME, 1)

        report = yield self.play(site, "/clips/transcoded.mp4")
        self.check_clip_playback("transcode", report, clip, last_slack=1)


#: Live clip: starts this long after the first recorded segment (a keyframe)
#: so 0.37 s of GOP lead-in is hidden, and lasts this long.
LIVE_OFFSET = 2.37
LIVE_SECONDS = 3.0


class LiveCameraBrowserTests(ChromiumTestCase, ServiceTestCase):
    """RTSP camera -> streamrec service -> clip link -> Chromium, cross-origin."""

    timeout = 60

    @defer.inlineCallbacks
    def test_live_clip_link_plays_cross_origin_from_requested_instant(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self._live_clip_link())

    async def _live_clip_link(self) -> None:
        camera = RtspServer.running(self, h265=False)
        service = await self.service()
        url = camera.url("h264aac")
        stream_id = (await service.ok("POST", "/streams/create", url=url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first_segment() -> float | None:
            return (await service.status(stream_id))["recorded"]["first"]

        first = await until(first_segment, 20, "the first segment")
        start = first + LIVE_OFFSET
        stop = start + LIVE_SECONDS
        await service.recorded_until(stream_id, first + 6, timeout=20)
        job = await service.clip(stream_id, timeout=20, start=start, stop=stop)
        [clip] = job["clips"]
        self.assertNear(clip["duration"], LIVE_SECONDS, FRAME, job)
        link = clip["link"]
        self.assertTrue(link.startswith(service.base + "/"), (link, service.base))

        # What PyAV shows from the link (treq download, edit list honoured).
        decoded = await self.fetch(service, clip)
        numbers = decoded["numbers"]
        self.assertEqual((decoded["video"], decoded["audio"]), ("h264", "aac"))
        self.assertNear(decoded["duration"], LIVE_SECONDS, FRAME)
        # The camera's keyframes are its frames 0, 25, 50...: a clip starting on
        # one would leave nothing for the edit list to hide.
        self.assertNotEqual(numbers[0] % GOP, 0, f"clip starts on a keyframe: {numbers[0]}")
        error = camera.frame_time(numbers[0]) - start
        print(
            f"\nlive RTSP clip: first frame {numbers[0]} "
            f"({numbers[0] % GOP} after its keyframe), start error {error * 1000:+.0f} ms"
        )
        self.assertLess(abs(error), 0.5, f"frame {numbers[0]} left the camera {error:+.3f} s off")

        # The page from another origin (the test's Site) plays the service's link.
        page = await self.page_site()
        self.assertNotEqual(urlsplit(page.base).netloc, urlsplit(link).netloc)
        report = await self.play(page, link)
        self.check_playback(
            "live RTSP, cross-origin",
            report,
            numbers[0],
            numbers[-1],
            [LIVE_SECONDS, clip["duration"]],
            last_slack=1,
        )
