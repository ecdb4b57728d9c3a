"""The floors of the house (docs/architecture.md), checked on the source.

Each room may import only from the rooms below it; ffmpeg children, threads
and the segment layout each have one owner; no module grows past 600 lines.
"""

from __future__ import annotations

import ast
import os

from twisted.trial import unittest

import streamrec

PACKAGE = os.path.dirname(os.path.abspath(streamrec.__file__))

#: room -> the rooms it may import from (besides itself). A room is a
#: subpackage or a top-level module of streamrec; "streamrec" is its __init__.
ALLOWED: dict[str, set[str]] = {
    "streamrec": set(),
    "errors": set(),
    "threads": set(),
    "config": set(),
    "hookspecs": set(),
    "media": set(),
    "byteranges": set(),
    "store": {"errors"},
    "sources": {"errors"},
    "auth": {"errors"},
    "views": {"sources", "store"},
    "evidence": {"sources", "store"},
    "plugins": {"hookspecs", "media", "threads"},
    "recorder": {"errors", "media", "sources", "store"},
    "clips": {"errors", "evidence", "media", "plugins", "store", "views"},
    "builtin": {"streamrec", "byteranges", "clips", "errors", "media", "plugins"},
    "janitor": {"errors", "store"},
    "cluster": {"errors", "recorder", "store"},
    "playback": {"errors", "media", "recorder", "store", "threads"},
    "core": {"cluster", "errors", "playback", "plugins", "recorder", "sources", "store", "views"},
    "openapi": {"streamrec", "auth", "errors", "sources"},
    "ui": set(),
    "metrics": {"errors", "recorder", "store"},
    "api": {"auth", "byteranges", "core", "errors", "metrics", "openapi", "sources", "ui"},
    "web": {"config"},
    "service": {"api", "clips", "cluster", "core", "janitor", "recorder", "store", "web"},
    "tap": {
        "api",
        "auth",
        "clips",
        "cluster",
        "config",
        "core",
        "evidence",
        "janitor",
        "media",
        "metrics",
        "plugins",
        "recorder",
        "service",
        "store",
        "threads",
        "web",
    },
}


def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for directory, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                dotted = relative.replace(os.sep, ".").removesuffix(".__init__")
                with open(path, encoding="utf-8") as handle:
                    found[dotted] = ast.parse(handle.read(), path)
    return found


def room(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "streamrec"


def is_package(dotted: str) -> bool:
    return os.path.exists(os.path.join(os.path.dirname(PACKAGE), *dotted.split("."), "__init__.py"))


def imported(dotted: str, tree: ast.Module, known: dict[str, ast.Module]) -> set[str]:
    """The streamrec modules ``dotted`` imports: ``from . import x`` is module x."""
    names = set()
    here = dotted.split(".") if is_package(dotted) else dotted.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "streamrec":
                for alias in node.names:
                    module = f"{target}.{alias.name}"
                    names.add(module if module in known else target)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "streamrec")
    return names


class FloorTests(unittest.SynchronousTestCase):
    def test_rooms_import_only_from_below(self):
        found = modules()
        wrong = []
        for dotted, tree in found.items():
            mine = room(dotted)
            for target in imported(dotted, tree, found):
                theirs = room(target)
                if theirs != mine and theirs not in ALLOWED[mine]:
                    wrong.append(f"{dotted} imports {target}")
        self.assertEqual(wrong, [])

    def test_every_room_is_placed(self):
        self.assertEqual(sorted({room(name) for name in modules()}), sorted(ALLOWED))

    def test_no_module_is_too_large(self):
        sizes = {}
        for directory, _dirs, files in os.walk(PACKAGE):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(directory, name), encoding="utf-8") as handle:
                        sizes[os.path.join(directory, name)] = len(handle.readlines())
        self.assertEqual({path: n for path, n in sizes.items() if n >= 600}, {})


def calls_of(tree: ast.Module, names: set[str]) -> int:
    """How often ``tree`` calls an attribute or function named in ``names``."""
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            count += name in names
    return count


def path_parts(tree: ast.Module) -> list[str]:
    """The string constants passed to ``os.path.join``, and %-patterns of segment names."""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "join":
            parts += [a.value for a in node.args if isinstance(a, ast.Constant)]
        elif isinstance(node, ast.Constant) and str(node.value).startswith("seg%"):
            parts.append(node.value)
    return parts


class OwnerTests(unittest.SynchronousTestCase):
    def owners(self, names: set[str]) -> list[str]:
        return sorted(dotted for dotted, tree in modules().items() if calls_of(tree, names))

    def test_one_way_to_run_and_stop_a_child_process(self):
        self.assertEqual(
            self.owners({"spawnProcess", "signalProcess", "kill"}), ["streamrec.media.ffmpeg"]
        )

    def test_one_way_to_run_blocking_work(self):
        self.assertEqual(
            self.owners({"deferToThreadPool", "deferToThread", "callInThread"}),
            ["streamrec.threads"],
        )

    def test_one_owner_of_the_segment_layout(self):
        owners = [
            dotted
            for dotted, tree in modules().items()
            if any(part in ("segments", "quarantine", "seg%06d.mp4") for part in path_parts(tree))
        ]
        self.assertEqual(owners, ["streamrec.recorder.layout"])
