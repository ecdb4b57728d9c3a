"""Running a real streamrec service inside a trial test, and reading its clips."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import av
import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from streamrec.cluster import Node, StreamLocks
from streamrec.config import Config
from streamrec.core import RecorderEvents
from streamrec.recorder.fleet import Recorders
from streamrec.service import StreamrecService
from streamrec.store import SqlStore, open_store
from streamrec.tap import build_service

from .framecode import read_frame_number
from .livesource import FPS, free_port

FRAME = 1.0 / FPS


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def until(
    check: Callable[[], Awaitable[Any]],
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await sleep(interval)


def decode(path: str) -> dict[str, Any]:
    """What a player shows: frame numbers of the displayed frames, codecs, duration."""
    with av.open(path) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        numbers = [
            read_frame_number(frame)
            for frame in container.decode(video=0)
            if frame.pts is None or frame.pts >= 0
        ]
        duration = container.duration / av.time_base if container.duration else None
        return {
            "numbers": numbers,
            "video": video.codec_context.name,
            "audio": audio,
            "duration": duration,
        }


def sqlite_store(testcase: unittest.TestCase) -> tuple[SqlStore, str]:
    """A fresh SQLite store in a temporary directory, closed on cleanup."""
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    store = open_store("sqlite:", directory)
    testcase.addCleanup(store.close)
    return store, directory


def one_node(
    reactor: Any,
    store: SqlStore,
    recorders: Recorders,
    notify: Callable[..., None] = lambda *a, **k: None,
    name: str = "test-node",
    **node_options: Any,
) -> dict[str, Any]:
    """The ``node`` and ``events`` a :class:`streamrec.core.Streams` takes, for one
    node alone on ``store`` (as the embedded default is)."""
    events = RecorderEvents(store=store, node=name, notify=notify)
    node = Node(
        reactor=reactor,
        store=store,
        recorders=recorders,
        listener=events,
        locks=StreamLocks(),
        name=name,
        public_url="http://127.0.0.1:1",
        **node_options,
    )
    return {"node": node, "events": events}


class Service:
    """A streamrec service in this process, on a free port, with its own data dir."""

    def __init__(
        self,
        testcase: unittest.TestCase,
        data_dir: str | None = None,
        plugin_manager: Any = None,
        **config: Any,
    ) -> None:
        self.data_dir = data_dir or testcase.mktemp()
        self.plugin_manager = plugin_manager
        self.config = config
        self.service: StreamrecService | None = None
        self.base = ""

    async def start(self) -> Service:
        config = Config(
            **{
                "listen": f"tcp:{free_port()}:interface=127.0.0.1",
                "data_dir": self.data_dir,
                "load_plugins": False,
                "start_timeout": 10,
                **self.config,
            }
        )
        self.service = build_service(config, reactor, plugin_manager=self.plugin_manager)
        self.service.startService()
        await self.service.ready
        self.base = f"http://127.0.0.1:{self.service.port.getHost().port}"
        return self

    async def stop(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()

    async def call(self, method: str, path: str, **params: Any) -> tuple[int, Any]:
        url = self.base + path + ("?" + urlencode(params) if params else "")
        response = await treq.request(method, url, timeout=30, persistent=False)
        return response.code, json.loads(await response.content())

    async def ok(self, method: str, path: str, **params: Any) -> Any:
        code, body = await self.call(method, path, **params)
        if code != 200:
            raise AssertionError(f"{method} {path} {params} -> {code} {body}")
        return body

    async def status(self, stream_id: int) -> dict[str, Any]:
        return await self.ok("GET", f"/streams/{stream_id}/status")

    async def recorded_until(self, stream_id: int, when: float, timeout: float = 30) -> None:
        async def reached() -> bool:
            last = (await self.status(stream_id))["recorded"]["last"]
            return last is not None and last >= when

        await until(reached, timeout, f"stream {stream_id} to record until {when:.2f}")

    async def clip(
        self,
        stream_id: int,
        timeout: float = 30,
        seen: list[float] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Ask for a clip and poll the same request until it is done.

        ``seen`` collects the job's ``progress`` at every poll.
        """

        async def finished() -> Any:
            job = await self.ok("GET", f"/streams/{stream_id}/get_clip", **params)
            if seen is not None:
                seen.append(job["progress"])
            return job if job["status"] in ("done", "failed") else None

        job = await until(finished, timeout, f"clip {params}", interval=0.1)
        if job["status"] != "done":
            raise AssertionError(f"clip failed: {job}")
        return job

    async def download(self, link: str, directory: str) -> str:
        response = await treq.get(link, timeout=30, persistent=False)
        if response.code != 200:
            raise AssertionError(f"GET {link} -> {response.code}")
        if response.headers.getRawHeaders(b"content-type") != [b"video/mp4"]:
            raise AssertionError(f"{link} is not served as video/mp4")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, link.split("?", 1)[0].rsplit("/", 1)[-1])
        with open(path, "wb") as handle:
            handle.write(await response.content())
        return path


class ServiceTestCase(unittest.TestCase):
    """Base for tests that run services: started ones are stopped on cleanup."""

    timeout = 180

    def assertNear(self, first: float, second: float, tolerance: float, msg: Any = None) -> None:
        if abs(first - second) > tolerance:
            self.fail(f"{first!r} != {second!r} within {tolerance!r}" + (f": {msg}" if msg else ""))

    async def service(
        self, data_dir: str | None = None, plugin_manager: Any = None, **config: Any
    ) -> Service:
        service = await Service(self, data_dir, plugin_manager, **config).start()
        self.addCleanup(lambda: defer.ensureDeferred(service.stop()))
        return service

    async def fetch(self, service: Service, clip: dict[str, Any]) -> dict[str, Any]:
        path = await service.download(clip["link"], self.mktemp())
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        self.assertEqual(clip.get("sha256"), digest, f"{clip}: sha256 of the bytes downloaded")
        decoded = decode(path)
        numbers = decoded["numbers"]
        self.assertTrue(numbers, f"{clip} shows no frame")
        self.assertEqual(
            numbers,
            list(range(numbers[0], numbers[0] + len(numbers))),
            "frames not consecutive",
        )
        return decoded
