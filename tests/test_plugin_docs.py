"""The plugin authors' guide (docs/plugins.md) and its example plugin
(docs/example-plugin/) stay true: every hook documented, the guide's files
equal to the example's, the example installed with pip and used by a real
service; and the plugin manager behaves as the guide says."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import re
import shutil
import sys
from typing import Any

import pluggy
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from streamrec import hookimpl, hookspecs
from streamrec.builtin.fast_encoder import FastCopyEncoder
from streamrec.builtin.local_storage import LocalStorage
from streamrec.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    EncodeRequest,
    PluginContext,
    collect,
    get_plugin_manager,
    notify,
    plugin_names,
)

from .support.harness import ServiceTestCase, until
from .support.livesource import UdpTsSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "plugins.md")
EXAMPLE = os.path.join(ROOT, "docs", "example-plugin")
#: What a build leaves in a source tree; not part of the example.
BUILD_LEFTOVERS = ("__pycache__", "build", "dist")

EXAMPLE_FILE = re.compile(
    r"^<!-- example-file: (?P<name>\S+) -->\n[^\n]*\n\n```[a-z]*\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def read_guide() -> str:
    with open(GUIDE, encoding="utf-8") as handle:
        return handle.read()


def hooks() -> dict[str, Any]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "streamrec_spec")
    }


def guide_section(guide: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of any level."""
    start = guide.index(heading + "\n") + len(heading)
    following = re.search(r"^#{1,6} ", guide[start:], re.MULTILINE)
    return guide[start : start + following.start()] if following else guide[start:]


def example_files_in_guide() -> dict[str, str]:
    return {m["name"]: m["body"] for m in EXAMPLE_FILE.finditer(read_guide())}


def example_files_on_disk() -> dict[str, str]:
    found = {}
    for directory, subdirs, files in os.walk(EXAMPLE):
        subdirs[:] = [
            d for d in subdirs if d not in BUILD_LEFTOVERS and not d.endswith(".egg-info")
        ]
        for name in files:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as handle:
                found[os.path.relpath(path, EXAMPLE)] = handle.read()
    return found


class GuideTests(unittest.SynchronousTestCase):
    def test_there_are_hooks(self) -> None:
        self.assertGreaterEqual(
            set(hooks()),
            {"register_storage_backends", "register_clip_encoders", "segment_closed"},
        )

    def test_every_hook_has_a_docstring(self) -> None:
        undocumented = [name for name, fn in hooks().items() if not (fn.__doc__ or "").strip()]
        self.assertEqual(undocumented, [], "hooks without a docstring in streamrec/hookspecs.py")

    def test_every_hook_is_in_the_guide_with_its_parameters_and_an_example(self) -> None:
        guide = read_guide()
        for name, function in hooks().items():
            params = list(inspect.signature(function).parameters)
            heading = f"### `{name}({', '.join(params)})`"
            self.assertIn(heading + "\n", guide, f"docs/plugins.md lacks a section '{heading}'")
            section = guide_section(guide, heading)
            self.assertRegex(
                section,
                rf"@hookimpl\n(?:\s+)?def {name}\(",
                f"the section on {name} has no example implementation",
            )
            self.assertGreater(len(section.split("```")[0].split()), 8, f"{name}: say what it is")

    def test_guide_hooks_exist(self) -> None:
        """No section on a hook that was renamed or removed."""
        documented = re.findall(r"^### `(\w+)\(", read_guide(), re.MULTILINE)
        self.assertEqual(sorted(documented), sorted(hooks()))

    def test_interfaces_are_described(self) -> None:
        guide = read_guide()
        for cls in (PluginContext, EncodeRequest):
            for field in dataclasses.fields(cls):
                self.assertIn(f"| `{field.name}`", guide, f"{cls.__name__}.{field.name}")
        for text in (
            "store_clip(local_path, key)",
            "delete_clip(key)",
            "resource()",
            "[project.entry-points.streamrec]",
            "--storage",
            "--encoder",
            "encoder=NAME",
            "GET /plugins",
        ):
            self.assertIn(text, guide)

    def test_the_guide_shows_the_example_plugin_verbatim(self) -> None:
        in_guide = example_files_in_guide()
        on_disk = example_files_on_disk()
        self.assertTrue(on_disk, "docs/example-plugin/ is empty")
        self.assertEqual(sorted(in_guide), sorted(on_disk), "files shown vs files in the directory")
        for name, text in on_disk.items():
            self.assertEqual(in_guide[name], text, f"docs/plugins.md shows another {name}")


class PluginManagerTests(unittest.SynchronousTestCase):
    def test_builtins_are_registered(self) -> None:
        pm = get_plugin_manager(load_entrypoints=False)
        self.assertLessEqual(set(DEFAULT_PLUGINS), set(plugin_names(pm)))
        self.assertIs(collect(pm.hook.register_storage_backends)["local"], LocalStorage)
        self.assertIs(collect(pm.hook.register_clip_encoders)["copy"], FastCopyEncoder)

    def test_check_pending_catches_a_misspelled_hook(self) -> None:
        class Misspelled:
            @hookimpl
            def segmant_closed(self, stream_id: int) -> None:
                pass

        pm = get_plugin_manager(load_entrypoints=False)
        pm.register(Misspelled(), name="misspelled")
        try:
            error = self.assertRaises(pluggy.PluginValidationError, pm.check_pending)
            self.assertIn("segmant_closed", str(error))
        finally:
            pm.unregister(name="misspelled")
        pm.check_pending()  # and nothing is left behind

    def test_a_failing_lifecycle_hook_is_logged_not_raised(self) -> None:
        calls: list[tuple[int, str]] = []

        class Broken:
            @hookimpl
            def stream_started(self, stream_id: int, url: str) -> None:
                raise RuntimeError("plugin bug")

        class Working:
            @hookimpl
            def stream_started(self, stream_id: int, url: str) -> None:
                calls.append((stream_id, url))

        pm = get_plugin_manager(load_entrypoints=False)
        pm.register(Broken(), name="broken")
        pm.register(Working(), name="working")
        try:
            notify(pm, "stream_started", stream_id=7, url="udp://127.0.0.1:1234")
        finally:
            pm.unregister(name="broken")
            pm.unregister(name="working")
        self.assertEqual(calls, [(7, "udp://127.0.0.1:1234")])
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(logged.value), "plugin bug")

    def test_a_third_party_encoder_wins_over_the_builtin_of_the_same_name(self) -> None:
        class BetterCopy:
            def __init__(self, context: PluginContext) -> None:
                self.context = context

        class ThirdParty:
            @hookimpl
            def register_clip_encoders(self, register: Any) -> None:
                register("copy", BetterCopy)

        pm = get_plugin_manager(load_entrypoints=False)
        pm.register(ThirdParty(), name="third-party")
        try:
            encoders = collect(pm.hook.register_clip_encoders)
        finally:
            pm.unregister(name="third-party")
        self.assertIs(encoders["copy"], BetterCopy)
        self.assertIs(collect(pm.hook.register_clip_encoders)["copy"], FastCopyEncoder)


class ExamplePluginTests(ServiceTestCase):
    """``pip install docs/example-plugin`` for real, then use it through a service."""

    timeout = 120

    async def install_example(self) -> str:
        source = os.path.join(self.mktemp(), "example-plugin")
        shutil.copytree(EXAMPLE, source)  # builds leave files in the source tree
        target = self.mktemp()
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-input",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                target,
                source,
            ],
            env=dict(os.environ),
            reactor=reactor,
        )
        if code != 0:
            self.fail(f"pip install failed ({code}):\n{out.decode()}\n{err.decode()}")
        sys.path.insert(0, target)
        importlib.invalidate_caches()
        self.addCleanup(self.uninstall, target)
        return target

    def uninstall(self, target: str) -> None:
        while target in sys.path:
            sys.path.remove(target)
        for name in list(sys.modules):
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(target):
                del sys.modules[name]
        importlib.invalidate_caches()

    def set_env(self, name: str, value: str | None) -> None:
        old = os.environ.get(name)
        self.addCleanup(
            lambda: (
                os.environ.__setitem__(name, old) if old is not None else os.environ.pop(name, None)
            )
        )
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    @defer.inlineCallbacks
    def test_installed_example_plugin_in_a_real_service(self) -> Any:
        yield defer.ensureDeferred(self._installed_example())

    async def _installed_example(self) -> None:
        await self.install_example()
        distribution = importlib.metadata.distribution("streamrec-mirror")
        [entry_point] = distribution.entry_points.select(group=ENTRY_POINT_GROUP)
        self.assertEqual((entry_point.name, entry_point.value), ("mirror", "streamrec_mirror"))

        pm = get_plugin_manager(load_entrypoints=True)
        self.assertIn("mirror", plugin_names(pm))
        backend = collect(pm.hook.register_storage_backends)["mirror"]
        self.assertEqual(backend.__module__, "streamrec_mirror")

        # The factory checks its setting when the service starts.
        self.set_env("STREAMREC_MIRROR_DIR", None)
        context = PluginContext(reactor, self.mktemp(), "http://127.0.0.1:1", "ffmpeg")
        error = self.assertRaises(ValueError, backend, context)
        self.assertIn("STREAMREC_MIRROR_DIR", str(error))

        mirror = os.path.abspath(self.mktemp())
        os.makedirs(mirror)
        self.set_env("STREAMREC_MIRROR_DIR", mirror)
        source = UdpTsSource.running(self, audio="aac")
        service = await self.service(storage="mirror", load_plugins=True)
        plugins = await service.ok("GET", "/plugins")
        self.assertEqual(plugins["storage"], "mirror")
        self.assertIn("mirror", plugins["storage_backends"])
        self.assertIn("mirror", plugins["plugins"])

        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first() -> Any:
            return (await service.status(stream_id))["recorded"]["first"]

        start = await until(first, 30, "the first segment") + 2.37
        await service.recorded_until(stream_id, start + 3)
        job = await service.clip(stream_id, start=start, stop=start + 3)
        [clip] = job["clips"]
        self.assertTrue(clip["link"].startswith(service.base + "/clips/"), clip)
        shown = await self.fetch(service, clip)  # served by the service, decodes, plays
        self.assertEqual(shown["video"], "h264")
        key = clip["link"].rsplit("/", 1)[-1]
        copy = os.path.join(mirror, key)
        with open(copy, "rb") as handle:
            mirrored = handle.read()
        self.assertEqual(len(mirrored), clip["size"])
        with open(os.path.join(service.data_dir, "clips", key), "rb") as handle:
            self.assertEqual(handle.read(), mirrored)
        self.assertEqual(sorted(os.listdir(mirror)), [key], "no partial files left")

        await service.service.worker.storage.delete_clip(key)
        self.assertEqual(os.listdir(mirror), [])
        code, _ = await service.call("GET", "/streams/")  # still answering
        self.assertEqual(code, 200)


class BrokenEncoderTests(ServiceTestCase):
    """An encoder plugin that cannot build itself is left out; the service runs."""

    @defer.inlineCallbacks
    def test_broken_encoder_is_left_out(self):
        pm = get_plugin_manager(load_entrypoints=False)
        pm.register(BrokenEncoderPlugin(), name="broken-encoder")
        service = yield defer.ensureDeferred(self.service(plugin_manager=pm))
        code, answer = yield defer.ensureDeferred(service.call("GET", "/plugins"))
        self.assertEqual(code, 200)
        self.assertNotIn("broken", answer["clip_encoders"])
        self.assertIn("copy", answer["clip_encoders"])
        self.assertEqual(answer["unavailable"], {"broken": "RuntimeError: needs a GPU"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BrokenEncoderPlugin:
    @hookimpl
    def register_clip_encoders(self, register: Any) -> None:
        def factory(context: Any) -> Any:
            raise RuntimeError("needs a GPU")

        register("broken", factory)
