"""Built-in storage: clips as files under the data directory, served on the API port."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.web import resource, static
from twisted.web.resource import IResource

from .. import hookimpl
from ..byteranges import UNSATISFIABLE, one_range
from ..plugins import PluginContext


class JsonError(resource.Resource):
    """An error answered as the API answers its own: ``{"error_message": ...}``."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"error_message": self.message}).encode()


def no_clip() -> IResource:
    return JsonError(404, "No such clip")


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
                request.setHeader(b"Content-Range", b"bytes */%d" % size)
                return JsonError(416, "Range not satisfiable").render(request)
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
