"""Built-in storage: clips as files under the data directory, served on the API port."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.web import static
from twisted.web.resource import ErrorPage, IResource

from .. import hookimpl
from ..plugins import PluginContext


class ClipFiles(static.File):
    """Clip files with byte ranges, no directory listings, no dotfiles."""

    def directoryListing(self) -> IResource:
        return ErrorPage(404, "Not Found", "No such clip.")

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path.startswith(b"."):
            return ErrorPage(404, "Not Found", "No such clip.")
        return super().getChild(path, request)

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
