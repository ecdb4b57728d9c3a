"""streamrec-mirror: clips stored as usual, and mirrored into a second directory.

``twistd streamrec --storage mirror`` keeps and serves clips exactly like the
built-in ``local`` backend, and also copies each one into the directory named
by ``STREAMREC_MIRROR_DIR`` (a NAS mount, a backup disk, a folder that
another tool watches). Deleting a clip deletes both copies.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from twisted.web.resource import IResource

from streamrec import hookimpl
from streamrec.builtin.local_storage import LocalStorage
from streamrec.plugins import PluginContext


class MirrorStorage:
    def __init__(self, context: PluginContext) -> None:
        # Check the settings now: a mistake stops the service at start.
        mirror = os.environ.get("STREAMREC_MIRROR_DIR", "")
        if not mirror:
            raise ValueError("mirror storage: set STREAMREC_MIRROR_DIR")
        if not os.path.isdir(mirror) or not os.access(mirror, os.W_OK):
            raise ValueError(f"mirror storage: {mirror} is not a writable directory")
        self.mirror = mirror
        self.local = LocalStorage(context)
        # Blocking work runs in the reactor's thread pool.
        self.run_blocking = context.run_blocking

    def _copy(self, local_path: str, key: str) -> None:
        partial = os.path.join(self.mirror, f".{key}.partial")
        shutil.copyfile(local_path, partial)
        os.replace(partial, os.path.join(self.mirror, key))  # never a half-written clip

    def _remove(self, key: str) -> None:
        try:
            os.remove(os.path.join(self.mirror, key))
        except FileNotFoundError:
            pass

    async def store_clip(self, local_path: str, key: str) -> str:
        await self.run_blocking(self._copy, local_path, key)
        return await self.local.store_clip(local_path, key)

    async def delete_clip(self, key: str) -> None:
        await self.run_blocking(self._remove, key)
        await self.local.delete_clip(key)

    def resource(self) -> IResource | None:
        return self.local.resource()  # links are served by streamrec, as with "local"


@hookimpl
def register_storage_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("mirror", MirrorStorage)
