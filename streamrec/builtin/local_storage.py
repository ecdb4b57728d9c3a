"""Built-in storage: clips as files under the data directory, served on the API port."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from twisted.web import static
from twisted.web.resource import ErrorPage, IResource

from .. import hookimpl
from ..plugins import PluginContext

#: ``Range: bytes=...`` with one range: ``first-last``, ``first-`` or ``-suffix``.
_ONE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
UNSATISFIABLE = (-1, -1)


def one_range(header: bytes, size: int) -> tuple[int, int] | None:
    """The byte range ``(first, last)`` a ``Range`` header asks of ``size`` bytes:
    None to answer the whole file (no range, a malformed one, or several:
    one answer at most, so a request cannot multiply the bytes sent), or
    :data:`UNSATISFIABLE` for a range past the end."""
    match = _ONE_RANGE.match(header.decode("latin-1"))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        return UNSATISFIABLE if suffix == 0 or size == 0 else (max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, min(int(last), size - 1) if last else size - 1


def no_clip() -> IResource:
    return ErrorPage(404, "Not Found", "No such clip.")


class ClipFiles(static.File):
    """Clip files with one byte range at most, no directory listings, no dotfiles."""

    def directoryListing(self) -> IResource:
        return no_clip()

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path.startswith(b".") or b"\0" in path or b"/" in path or b"\\" in path:
            return no_clip()
        return super().getChild(path, request)

    def render_GET(self, request: Any) -> bytes | int:
        header = request.getHeader(b"range")
        if header is not None and self.isfile():
            size = self.getsize()
            chosen = one_range(header, size)
            if chosen is None:
                request.requestHeaders.removeHeader(b"range")
            elif chosen == UNSATISFIABLE:
                request.setResponseCode(416)
                request.setHeader(b"Content-Range", b"bytes */%d" % size)
                request.setHeader(b"Content-Type", b"text/plain")
                return b"Range not satisfiable\n"
            else:
                request.requestHeaders.setRawHeaders(b"range", [b"bytes=%d-%d" % chosen])
        return super().render_GET(request)

    def render(self, request: Any) -> bytes | int:
        # Links are unguessable capabilities: any web page that holds one may
        # play the clip and read its pixels (a <video crossorigin> on a canvas).
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"Access-Control-Expose-Headers", b"Content-Length, Content-Range")
        return super().render(request)

    def createSimilarFile(self, path: str) -> static.File:
        similar = ClipFiles(path, self.defaultType, self.ignoredExts, self.registry)
        similar.processors = self.processors
        similar.indexNames = []
        return similar


class LocalStorage:
    """Moves finished clips into ``DATA_DIR/clips`` and links to ``PUBLIC_URL/clips/KEY``."""

    def __init__(self, context: PluginContext) -> None:
        self.directory = os.path.join(context.data_dir, "clips")
        os.makedirs(self.directory, exist_ok=True)
        self.base = context.public_url.rstrip("/") + "/clips/"

    def _path(self, key: str) -> str:
        if "/" in key or key.startswith(".") or not key:
            raise ValueError(f"bad clip key {key!r}")
        return os.path.join(self.directory, key)

    async def store_clip(self, local_path: str, key: str) -> str:
        os.replace(local_path, self._path(key))
        return self.base + key

    async def delete_clip(self, key: str) -> None:
        try:
            os.remove(self._path(key))
        except FileNotFoundError:
            pass

    def resource(self) -> IResource:
        files = ClipFiles(self.directory, defaultType="application/octet-stream")
        files.contentTypes = dict(files.contentTypes, **{".mp4": "video/mp4"})
        files.indexNames = []
        return files


@hookimpl(trylast=True)
def register_storage_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("local", LocalStorage)
