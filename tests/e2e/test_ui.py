"""The web UI in headless Chromium, driven by Playwright, against a real service.

A live source (``tests.support.livesource.UdpTsSource``, its frame number
painted into every picture) is recorded by a streamrec service running in
this process (``tests.support.harness``). Playwright's sync API runs in a
thread of its own (one thread: Playwright objects belong to the thread that
made them), so the reactor, and with it the service, keeps running while the
browser waits; Chromium is Debian's ``/usr/bin/chromium``.

An operator, with the API open:

* loads the page: no console error and no page error, from the first load to
  the end of the test;
* adds the camera and starts it from the page, stops it and starts it again:
  the timeline shows one gap, where the stop and the start were made;
* zooms in with the wheel and clicks inside the second span: the ``<video>``
  plays from that instant, read through a canvas (the painted frame number
  against what PyAV shows of ``archive.mp4`` from the same start);
* clicks a second before the gap: playback goes on from the next span;
* selects a range with Shift+drag and exports it: the clip's link plays in
  the page, starting with the frame the archive shows at the range's start;
* screenshots of the page at 1366x768 and at 390x844 (a phone, touch) are
  kept under the trial temp directory; their paths are printed.

With a token file: the sign-in form, a wrong token refused, a viewer whose
start/stop controls are disabled (and a 403 shown as "Your role cannot do
this" when one is forced), sign-out, and an operator who sees the API's words
for a start that fails.

Skipped when ``/usr/bin/chromium`` or the ``playwright`` package is absent.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import treq
from treq.testing import StubTreq
from twisted.internet import defer, reactor, threads
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from streamrec.api import StreamrecAPI
from streamrec.auth import VIEWER, Access, digest
from tests.support import framecode
from tests.support.harness import Service, ServiceTestCase, decode, sleep, until
from tests.support.livesource import FFMPEG, FPS, UdpTsSource, free_port

try:
    from playwright.sync_api import ConsoleMessage, Page, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # pragma: no cover - the skip below says so
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--mute-audio", "--disable-dev-shm-usage"]
#: The browser's zone: an offset with minutes, so a wrong conversion shows.
ZONE = "Asia/Kolkata"
DESKTOP = (1366, 768)
PHONE = (390, 844)
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"
#: How long Playwright waits for a selector or a condition (ms).
WAIT = 25_000

#: Pauses the page's <video>, then reads the painted frame number's blocks
#: through a canvas (as tests/e2e/test_browser.py does).
GRAB = (
    """async () => {"""
    + framecode.READ_CODE_JS
    + """
  const video = document.getElementById("video");
  video.pause();
  await new Promise((resolve) => setTimeout(resolve, 200));
  const read = readCode(video, video.videoWidth, video.videoHeight);
  return {start: Number(video.dataset.start), currentTime: video.currentTime,
          src: video.currentSrc, width: read.width, height: read.height, means: read.means};
}"""
)

#: True once the <video> plays something that started at or after ``after``.
PLAYING = """(after) => {
  const video = document.getElementById("video");
  return !video.hidden && Number(video.dataset.start) >= after && video.readyState >= 2
    && video.currentTime > 0.4;
}"""

#: Spans and gaps as the timeline draws them, and its window.
TIMELINE = """() => {
  const read = (selector) => [...document.querySelectorAll(selector)].map((node) => {
    const box = node.getBoundingClientRect();
    return {start: Number(node.dataset.start), stop: Number(node.dataset.stop), width: box.width};
  });
  const root = document.getElementById("timeline");
  return {spans: read("#timeline .tl-span"), gaps: read("#timeline .tl-gap"),
          start: Number(root.dataset.start), end: Number(root.dataset.end)};
}"""


class Browser:
    """Chromium driven by Playwright's sync API from one thread of its own."""

    def __init__(self) -> None:
        self.pool = ThreadPool(1, 1, "playwright")
        self.playwright: Any = None
        self.chromium: Any = None
        #: every page's console errors and uncaught exceptions, as text
        self.errors: list[str] = []

    def run(self, work: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, self.pool, work, *args)

    async def start(self) -> Browser:
        self.pool.start()
        await self.run(self._launch)
        return self

    def _launch(self) -> None:
        self.playwright = sync_playwright().start()
        self.chromium = self.playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

    async def close(self) -> None:
        try:
            await self.run(self._close)
        finally:
            self.pool.stop()

    def _close(self) -> None:
        if self.chromium is not None:
            self.chromium.close()
        if self.playwright is not None:
            self.playwright.stop()

    def page(self, url: str, size: tuple[int, int], phone: bool = False) -> Page:
        """A new page (in a context of its own: no cookies shared) that has loaded ``url``."""
        width, height = size
        context = self.chromium.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            is_mobile=phone,
            has_touch=phone,
            timezone_id=ZONE,
            locale="en-GB",
        )
        page = context.new_page()
        page.set_default_timeout(WAIT)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.goto(url)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            self.errors.append(f"console: {message.text} [{where}]")


def time_of(text: str) -> float:
    """POSIX seconds of a time as the page's inputs write it (in ZONE)."""
    return datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=ZoneInfo(ZONE)).timestamp()


def number(grab: dict[str, Any]) -> int:
    return framecode.number_from_means(grab["means"])


class UiFilesTests(unittest.TestCase):
    """The page and its files through the real Klein app, with a token file in
    force: no token is needed to load them, and nothing else is served."""

    def setUp(self) -> None:
        access = Access({digest(VIEWER_TOKEN): VIEWER})
        api = StreamrecAPI(None, None, {}, access=access)  # type: ignore[arg-type]
        self.http = StubTreq(api.resource())

    async def get(self, path: str, **headers: str) -> tuple[int, Any, bytes]:
        sent = {
            name.replace("_", "-").encode(): [value.encode()] for name, value in headers.items()
        }
        response = await self.http.get("http://streamrec.test" + path, headers=sent)
        return response.code, response.headers, await response.content()

    @defer.inlineCallbacks
    def test_the_page_and_its_files_need_no_token(self):  # type: ignore[no-untyped-def]
        code, headers, body = yield defer.ensureDeferred(self.get("/"))
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(
            b"frame-ancestors 'none'", headers.getRawHeaders(b"content-security-policy")[0]
        )
        page = body.decode()
        # Every file the page and its modules name is served, with its type.
        named = set(re.findall(r'"ui/([\w.-]+)"', page))
        queue = sorted(named)
        while queue:
            name = queue.pop()
            code, headers, body = yield defer.ensureDeferred(self.get(f"/ui/{name}"))
            self.assertEqual(code, 200, name)
            if name.endswith(".js"):
                self.assertEqual(
                    headers.getRawHeaders(b"content-type"), [b"text/javascript; charset=utf-8"]
                )
                imported = set(re.findall(r'from "\./([\w.-]+)"', body.decode()))
                queue += sorted(imported - named)
                named |= imported
        modules = {"app.js", "api.js", "export.js", "player.js", "preview.js", "ticks.js"}
        self.assertTrue(modules | {"timeline.js", "app.css", "icon.svg"} <= named, named)
        code, _, body = yield defer.ensureDeferred(self.get("/streams/"))
        self.assertEqual(code, 401, body)

    @defer.inlineCallbacks
    def test_a_browser_revalidates_rather_than_keeps_an_old_file(self):  # type: ignore[no-untyped-def]
        code, headers, _ = yield defer.ensureDeferred(self.get("/ui/app.js"))
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-cache"])
        [etag] = headers.getRawHeaders(b"etag")
        code, _, body = yield defer.ensureDeferred(
            self.get("/ui/app.js", if_none_match=etag.decode())
        )
        self.assertEqual((code, body), (304, b""))

    @defer.inlineCallbacks
    def test_nothing_else_is_served(self):  # type: ignore[no-untyped-def]
        for path in ["/ui/__init__.py", "/ui/nothing.js", "/ui/..%2Fapi.py", "/ui/%2e%2e/auth.py"]:
            code, _, body = yield defer.ensureDeferred(self.get(path))
            self.assertEqual(code, 404, path)
            self.assertIn(b"error_message", body, path)


class UiTestCase(ServiceTestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest(
                f"{CHROMIUM} not found: install Debian's chromium "
                "(scripts/install-system-packages) to run the UI's browser tests"
            )
        if sync_playwright is None:
            raise unittest.SkipTest("playwright is not installed: pip install -e '.[test]'")
        if not os.path.exists(FFMPEG):
            raise unittest.SkipTest(f"{FFMPEG} not found")

    async def browser(self) -> Browser:
        browser = await Browser().start()
        self.addCleanup(lambda: defer.ensureDeferred(browser.close()))
        return browser

    def artefact(self, name: str) -> str:
        """A path in this test's directory of artefacts (under the trial temp
        directory, kept after the run)."""
        directory = getattr(self, "_artefacts", None)
        if directory is None:
            directory = self._artefacts = os.path.abspath(self.mktemp())
            os.makedirs(directory)
        return os.path.join(directory, name)

    async def first_frame(self, service: Service, link: str) -> int:
        """The first frame PyAV shows of ``link`` (edit list honoured)."""
        path = await service.download(link, self.mktemp())
        numbers = (await threads.deferToThread(decode, path))["numbers"]
        self.assertTrue(numbers, f"{link} shows no frame")
        return numbers[0]

    def assertShows(self, grab: dict[str, Any], first: int, what: str) -> None:
        """The page's video shows the frame ``currentTime`` after ``first``."""
        self.assertEqual((grab["width"], grab["height"]), (320, 240), grab)
        self.assertTrue(all(abs(m - 128) > 40 for m in grab["means"]), f"{what}: {grab}")
        expected = first + round(grab["currentTime"] * FPS)
        shown = number(grab)
        self.assertLessEqual(
            abs(shown - expected),
            1,
            f"{what}: frame {shown} shown at currentTime {grab['currentTime']:.3f}, "
            f"expected {expected} (the file's first frame is {first}): {grab}",
        )


# -- what the operator does, run in the browser's thread ------------------------------


#: What the page shows, for failure messages.
STATE = """() => {
  const video = document.getElementById("video");
  const text = (id) => { const node = document.getElementById(id);
                         return node.hidden ? null : node.textContent; };
  return {video: {src: video.currentSrc, start: video.dataset.start, hidden: video.hidden,
                  readyState: video.readyState, currentTime: video.currentTime,
                  error: video.error && `${video.error.code} ${video.error.message}`},
          toast: text("toast"), cameraError: text("camera-error"),
          exportError: text("export-error"), exportStatus: text("export-status"),
          stage: text("stage-label"), timeline: document.getElementById("timeline").dataset};
}"""


def waiting(step: Callable[..., Any]) -> Callable[..., Any]:
    """A step whose failure says what the page showed then."""

    @functools.wraps(step)
    def run(page: Page, *args: Any) -> Any:
        try:
            return step(page, *args)
        except PlaywrightError as error:
            try:
                shown = json.dumps(page.evaluate(STATE), indent=1)
            except PlaywrightError:
                shown = "(the page cannot say)"
            raise AssertionError(f"{step.__name__}: {error.message}\npage: {shown}") from None

    return run


@waiting
def add_camera(page: Page, url: str, description: str) -> None:
    page.wait_for_selector("#no-cameras:not([hidden])")
    page.click("#add")
    page.fill("#create-url", url)
    page.fill("#create-description", description)
    page.check("#create-start")
    page.click("#create-submit")
    page.wait_for_selector("#camera-title:has-text('gate')")
    page.wait_for_selector("#stop:not([hidden]):not([disabled])")
    page.wait_for_selector(".camera-card .state-recording", timeout=30_000)
    # Which clock its times follow (a UDP source: arrival), and how far off.
    page.wait_for_selector("#camera-meta:has-text('arrival time, ±')", timeout=30_000)


@waiting
def press(page: Page, button: str, then: str) -> tuple[float, float]:
    """Click start or stop; the wall-clock times of the click and of the answer."""
    clicked = time.time()
    page.click(button)
    page.wait_for_selector(f"{then}:not([hidden]):not([disabled])", timeout=30_000)
    return clicked, time.time()


@waiting
def wait_for_gap(page: Page, until_time: float) -> dict[str, Any]:
    """The timeline once it shows a gap and a span reaching ``until_time``."""
    page.wait_for_function(
        """(until) => {
          const spans = [...document.querySelectorAll("#timeline .tl-span")];
          return document.querySelector("#timeline .tl-gap") &&
            spans.some((span) => Number(span.dataset.stop) >= until);
        }""",
        arg=until_time,
        timeout=30_000,
    )
    return page.evaluate(TIMELINE)


@waiting
def zoom_onto(page: Page, t: float, width: float) -> dict[str, Any]:
    """Wheel over ``t`` until the window is at most ``width`` seconds, drag ``t``
    to the middle; the timeline then."""
    for _ in range(30):
        view = page.evaluate(TIMELINE)
        if view["end"] - view["start"] <= width:
            break
        page.mouse.move(x_of(page, view, t), track_y(page))
        page.mouse.wheel(0, -150)
        page.wait_for_timeout(60)
    # Dragged so that ``t`` is in the middle.
    view = page.evaluate(TIMELINE)
    box = page.locator("#timeline .tl-track").bounding_box()
    page.mouse.move(x_of(page, view, t), track_y(page))
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, track_y(page), steps=8)
    page.mouse.up()
    page.wait_for_timeout(300)  # past the timeline's wait before it asks for spans
    page.wait_for_function(
        "() => !document.getElementById('timeline').classList.contains('tl-busy')"
    )
    return page.evaluate(TIMELINE)


def track_y(page: Page) -> float:
    box = page.locator("#timeline .tl-track").bounding_box()
    return box["y"] + box["height"] / 2


def x_of(page: Page, view: dict[str, Any], t: float) -> float:
    box = page.locator("#timeline .tl-track").bounding_box()
    return box["x"] + (t - view["start"]) / (view["end"] - view["start"]) * box["width"]


@waiting
def click_at(page: Page, t: float, after: float) -> dict[str, Any]:
    """Click the timeline at ``t``; what the video shows once it plays from ``after`` on."""
    view = page.evaluate(TIMELINE)
    page.mouse.click(x_of(page, view, t), track_y(page))
    page.wait_for_function(PLAYING, arg=after, timeout=30_000)
    return page.evaluate(GRAB)


@waiting
def select_range(page: Page, start: float, stop: float) -> tuple[str, str]:
    """Shift+drag across [start, stop]; the export inputs' texts."""
    view = page.evaluate(TIMELINE)
    y = track_y(page)
    page.keyboard.down("Shift")
    page.mouse.move(x_of(page, view, start), y)
    page.mouse.down()
    page.mouse.move(x_of(page, view, stop), y, steps=6)
    page.mouse.up()
    page.keyboard.up("Shift")
    return page.input_value("#export-start"), page.input_value("#export-stop")


@waiting
def export(page: Page) -> list[dict[str, str]]:
    page.click("#export-button")
    page.wait_for_selector("#clips .clip-link", timeout=40_000)
    return page.eval_on_selector_all(
        "#clips .clip",
        "items => items.map((item) => ({link: item.querySelector('a').href,"
        " text: item.textContent}))",
    )


@waiting
def play_clip(page: Page, start: float) -> dict[str, Any]:
    page.click("#clips .clip-play")
    page.wait_for_function(PLAYING, arg=start - 0.01, timeout=30_000)
    return page.evaluate(GRAB)


@waiting
def preview(page: Page, t: float) -> dict[str, Any]:
    """Hover the timeline at ``t`` until its preview shows a picture."""
    view = page.evaluate(TIMELINE)
    page.mouse.move(x_of(page, view, t) - 3, track_y(page))
    page.mouse.move(x_of(page, view, t), track_y(page))
    page.wait_for_function(
        "() => { const img = document.querySelector('.tl-preview img');"
        " return !img.closest('.tl-preview').hidden && img.complete && img.naturalWidth > 0; }"
    )
    return page.evaluate(
        "() => ({time: document.querySelector('.tl-preview-time').textContent,"
        " width: document.querySelector('.tl-preview img').naturalWidth})"
    )


def screenshot(page: Page, path: str, full: bool = False) -> None:
    page.screenshot(path=path, full_page=full)


def phone_page(browser: Browser, url: str, path: str) -> dict[str, Any]:
    """The page on a phone: its layout once the camera shows, and a screenshot."""
    page = browser.page(url, PHONE, phone=True)
    page.wait_for_selector("#timeline .tl-span")
    page.wait_for_selector(".camera-card .thumb img:not([hidden])")
    page.wait_for_selector("#live:not([hidden])")
    for _ in range(2):
        page.tap("#timeline button[title^='Zoom in']")
    page.wait_for_selector("#timeline .tl-gap")
    page.wait_for_timeout(300)
    screenshot(page, path, full=True)
    layout = page.evaluate(
        """() => ({scrollWidth: document.documentElement.scrollWidth,
                  track: document.querySelector('#timeline .tl-track').getBoundingClientRect().width})"""
    )
    page.context.close()
    return layout


class OperatorTests(UiTestCase):
    """The API open: everything an operator does, from the page."""

    @defer.inlineCallbacks
    def test_record_find_the_gap_play_and_export(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self._operator())

    async def _operator(self) -> None:
        source = UdpTsSource(audio=None)
        self.addCleanup(source.close)
        await source.start_deferred()
        service = await self.service()
        browser = await self.browser()
        page = await browser.run(browser.page, service.base + "/", DESKTOP)

        # A camera added and started from the page records.
        await browser.run(add_camera, page, source.url, "gate")
        [stream] = (await service.ok("GET", "/streams/"))["result"]
        stream_id = stream["id"]
        first = await until(
            lambda: self._first(service, stream_id), 20, "the first recorded segment"
        )
        await service.recorded_until(stream_id, first + 5, timeout=20)

        # Stopped and started again from the page: a gap of four seconds or so.
        stop_clicked, stop_done = await browser.run(press, page, "#stop", "#start")
        await sleep(4)
        start_clicked, start_done = await browser.run(press, page, "#start", "#stop")
        await service.recorded_until(stream_id, start_done + 4, timeout=20)

        view = await browser.run(wait_for_gap, page, start_done + 3)
        [gap] = view["gaps"]
        print(
            f"\ngap shown {gap['start']:.2f}..{gap['stop']:.2f}; stop clicked "
            f"{stop_clicked:.2f} (answered {stop_done:.2f}), start clicked "
            f"{start_clicked:.2f} (answered {start_done:.2f})"
        )
        self.assertGreaterEqual(gap["start"], stop_clicked - 2.5, view)
        self.assertLessEqual(gap["start"], stop_done + 0.5, view)
        self.assertGreaterEqual(gap["stop"], start_clicked - 0.5, view)
        self.assertLessEqual(gap["stop"], start_done + 3, view)
        self.assertGreaterEqual(gap["width"], 2, view)

        # Zoomed in on the gap: it is drawn where the API says.
        view = await browser.run(zoom_onto, page, gap["stop"], 70)
        [gap] = view["gaps"]
        timeline = await service.ok(
            "GET", f"/streams/{stream_id}/timeline", start=view["start"], stop=view["end"]
        )
        spans = timeline["spans"]
        self.assertEqual(len(spans), 2, timeline)
        # (a run's segments may move by a few ms while its clock settles)
        self.assertNear(gap["start"], spans[0]["stop"], 0.1, view)
        self.assertNear(gap["stop"], spans[1]["start"], 0.1, view)
        later = spans[1]

        # A click in the second span plays from that instant.
        instant = later["start"] + 1.3
        grab = await browser.run(click_at, page, instant, later["start"])
        seconds_per_pixel = (view["end"] - view["start"]) / DESKTOP[0] * 1.5
        self.assertNear(grab["start"], instant, seconds_per_pixel)
        link = f"{service.base}/streams/{stream_id}/archive.mp4?start={grab['start']:.3f}"
        first_frame = await self.first_frame(service, link)
        self.assertShows(grab, first_frame, "click in the second span")
        camera_frame = source.expected_frame(grab["start"])
        self.assertLess(abs(first_frame - camera_frame), FPS / 2, (first_frame, camera_frame))
        print(f"clicked {instant:.3f}: plays from frame {first_frame}, showed {number(grab)}")

        # A click just before the gap: playback goes on after it.
        grab = await browser.run(click_at, page, gap["start"] - 1.0, gap["stop"] - 0.01)
        self.assertNear(grab["start"], later["start"], 0.1, grab)
        link = f"{service.base}/streams/{stream_id}/archive.mp4?start={grab['start']:.3f}"
        self.assertShows(grab, await self.first_frame(service, link), "after the gap")

        # Shift+drag over two seconds of the second span, export: the link plays.
        texts = await browser.run(select_range, page, later["start"] + 0.6, later["start"] + 2.6)
        start, stop = (time_of(text) for text in texts)
        self.assertNear(start, later["start"] + 0.6, seconds_per_pixel)
        self.assertNear(stop, later["start"] + 2.6, seconds_per_pixel)
        [clip] = await browser.run(export, page)
        grab = await browser.run(play_clip, page, start)
        clip_first = await self.first_frame(service, clip["link"])
        self.assertShows(grab, clip_first, "the exported clip")
        archive = f"{service.base}/streams/{stream_id}/archive.mp4?start={start:.3f}"
        self.assertEqual(clip_first, await self.first_frame(service, archive))
        print(f"exported {texts[0]} .. {texts[1]} ({ZONE}): {clip['text']}")

        # The picture under the pointer, then the screenshots.
        await browser.run(lambda: page.evaluate("() => window.scrollTo(0, 0)"))
        earlier = spans[0]
        shown = await browser.run(preview, page, (earlier["start"] + earlier["stop"]) / 2)
        self.assertEqual(shown["width"], 240, shown)
        desktop = self.artefact("ui-1366x768.png")
        await browser.run(screenshot, page, desktop)
        phone = self.artefact("ui-390x844.png")
        layout = await browser.run(phone_page, browser, service.base + "/", phone)
        self.assertLessEqual(layout["scrollWidth"], PHONE[0], layout)
        self.assertGreater(layout["track"], PHONE[0] * 0.8, layout)
        print(f"screenshots: {desktop} {phone}")

        self.assertEqual(browser.errors, [])

    async def _first(self, service: Service, stream_id: int) -> float | None:
        return (await service.status(stream_id))["recorded"]["first"]


@waiting
def sign_in(page: Page, token: str) -> str:
    """Sign in with ``token``; what the page then says (its role, or the form's error)."""
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_function(
        "() => !document.getElementById('app').hidden"
        " || !document.getElementById('signin-error').hidden"
    )
    if page.is_visible("#signin-error"):
        return page.inner_text("#signin-error")
    page.wait_for_selector(".camera-card")
    page.wait_for_selector("#camera:not([hidden])")
    return page.inner_text("#role")


def controls(page: Page) -> dict[str, Any]:
    return page.evaluate(
        """() => ({start: document.getElementById("start").disabled,
                  add: document.getElementById("add").disabled,
                  title: document.getElementById("start").title,
                  cookie: document.cookie})"""
    )


@waiting
def forced_start(page: Page) -> str:
    """A start the page would not offer: the error it shows."""
    page.evaluate(
        "() => { const start = document.getElementById('start');"
        " start.disabled = false; start.click(); }"
    )
    page.wait_for_selector("#camera-error:not([hidden])")
    return page.inner_text("#camera-error")


@waiting
def start_error(page: Page) -> str:
    page.wait_for_selector("#start:not([disabled])")
    page.click("#start")
    page.wait_for_selector("#camera-error:not([hidden])", timeout=30_000)
    return page.inner_text("#camera-error")


@waiting
def sign_out(page: Page) -> int:
    """Sign out; the status of GET /session afterwards."""
    page.click("#sign-out")
    page.wait_for_selector("#signin:not([hidden])")
    return page.evaluate("async () => (await fetch('session')).status")


class TokenTests(UiTestCase):
    """With a token file: signing in, roles, signing out."""

    @defer.inlineCallbacks
    def test_sign_in_roles_and_sign_out(self):  # type: ignore[no-untyped-def]
        yield defer.ensureDeferred(self._tokens())

    async def _tokens(self) -> None:
        tokens = os.path.abspath(self.mktemp())
        with open(tokens, "w") as handle:
            handle.write(f"operator {OPERATOR_TOKEN}\nviewer {VIEWER_TOKEN}\n")
        os.chmod(tokens, 0o600)
        service = await self.service(tokens=tokens)
        # A camera whose start fails at once: nothing listens on its port.
        response = await treq.post(
            service.base + "/streams/create",
            json={"url": f"http://127.0.0.1:{free_port()}/camera", "description": "gate"},
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            persistent=False,
        )
        self.assertEqual(response.code, 200, await response.text())

        browser = await self.browser()
        page = await browser.run(browser.page, service.base + "/", DESKTOP)
        self.assertEqual(
            await browser.run(sign_in, page, "not-a-token-0123456789"), "Invalid token"
        )

        self.assertEqual(await browser.run(sign_in, page, VIEWER_TOKEN), "Signed in: viewer")
        viewer = await browser.run(controls, page)
        self.assertTrue(viewer["start"] and viewer["add"], viewer)
        self.assertIn("viewer", viewer["title"])
        self.assertNotIn("streamrec_session", viewer["cookie"])  # HttpOnly
        said = await browser.run(forced_start, page)
        self.assertTrue(said.startswith("Your role cannot do this"), said)
        self.assertIn("operator", said)
        status = await self._status(service)
        self.assertEqual((status["state"], status["started"]), ("stopped", False), status)

        self.assertEqual(await browser.run(sign_out, page), 401)
        self.assertEqual(await browser.run(sign_in, page, OPERATOR_TOKEN), "Signed in: operator")
        operator = await browser.run(controls, page)
        self.assertFalse(operator["start"] or operator["add"], operator)
        said = await browser.run(start_error, page)
        self.assertTrue(said.startswith("Cannot start stream"), said)
        print(f"\nthe page says: {said}")

        # Only the answers the test asked for are in the console: the browser
        # logs every 401, 403 and 500 fetch.
        unexpected = [
            error
            for error in browser.errors
            if not any(f"status of {code} " in error for code in (401, 403, 500))
        ]
        self.assertEqual(unexpected, [])

    async def _status(self, service: Service) -> dict[str, Any]:
        response = await treq.get(
            service.base + "/streams/1/status",
            headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
            persistent=False,
        )
        return await response.json()
