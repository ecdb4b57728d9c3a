"""A signed clip, end to end: a real service with ``--signing-key`` records a
real live source; the clip's ``sha256`` matches the bytes downloaded, its
manifest is served beside it, and the ``streamrec-verify`` command (the
installed console script, run as a user runs it) accepts the pair, then
refuses it once one byte of the clip is changed."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import treq
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from ..support.harness import FRAME, ServiceTestCase, until
from ..support.livesource import UdpTsSource

BIN = os.path.dirname(sys.executable)


async def command(name: str, *args: str) -> tuple[int, str]:
    """Run one of streamrec's console scripts: its exit code and its output."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise AssertionError(f"{path} is not installed (pip install . installs it)")
    out, err, code = await getProcessOutputAndValue(path, args, env=os.environ, reactor=reactor)
    return code, (out + err).decode()


class SignedClipTests(ServiceTestCase):
    @defer.inlineCallbacks
    def test_a_signed_clip_verifies_and_a_changed_one_does_not(self):
        yield defer.ensureDeferred(self._signed_clip())

    async def _signed_clip(self) -> None:
        keys = os.path.abspath(self.mktemp())
        os.makedirs(keys)
        private = os.path.join(keys, "signing.pem")
        code, out = await command("streamrec-keygen", private)
        self.assertEqual(code, 0, out)
        public = private + ".pub"

        source = UdpTsSource.running(self, audio="aac")
        service = await self.service(signing_key=private, node="evidence-node")
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first() -> float | None:
            return (await service.status(stream_id))["recorded"]["first"]

        start = await until(first, 30, "the first segment") + 1.37
        await service.recorded_until(stream_id, start + 3)
        job = await service.clip(stream_id, start=start, stop=start + 3)
        [clip] = job["clips"]
        self.assertRegex(clip["sha256"], "^[0-9a-f]{64}$")
        await self.fetch(service, clip)  # decodes, and checks the sha256 too

        # The clip's bytes, as a user downloads them.
        clip_path = await service.download(clip["link"], self.mktemp())
        with open(clip_path, "rb") as handle:
            data = handle.read()
        self.assertEqual(hashlib.sha256(data).hexdigest(), clip["sha256"])
        self.assertEqual(len(data), clip["size"])

        # Its manifest, served beside it.
        self.assertEqual(clip["manifest"], clip["link"] + ".manifest.json")
        response = await treq.get(clip["manifest"], timeout=30, persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        document = await response.content()
        manifest_path = os.path.join(os.path.dirname(clip_path), "clip.manifest.json")
        with open(manifest_path, "wb") as handle:
            handle.write(document)
        manifest = json.loads(document)["manifest"]
        self.assertEqual(
            {key: manifest[key] for key in ("stream_id", "stream_url", "sha256", "size")},
            {"stream_id": stream_id, "stream_url": source.url, "sha256": clip["sha256"],
             "size": clip["size"]},
        )  # fmt: skip
        self.assertEqual(
            (manifest["node"], manifest["encoder"], manifest["clock"]),
            ("evidence-node", "copy", "arrival"),
        )
        self.assertNear(manifest["start"], clip["start"], 0.001)
        self.assertNear(manifest["stop"], clip["stop"], 0.001)
        self.assertNear(manifest["stop"] - manifest["start"], 3, FRAME)
        self.assertLessEqual(manifest["created"], reactor.seconds())

        code, out = await command(
            "streamrec-verify", clip_path, manifest_path, "--public-key", public
        )
        self.assertEqual(code, 0, out)
        self.assertTrue(out.startswith("OK: "), out)

        # One byte of the clip changed (in the middle of its media data).
        with open(clip_path, "r+b") as handle:
            handle.seek(len(data) // 2)
            handle.write(bytes([data[len(data) // 2] ^ 0x01]))
        code, out = await command(
            "streamrec-verify", clip_path, manifest_path, "--public-key", public
        )
        self.assertEqual(code, 1, out)
        self.assertTrue(out.startswith("FAILED: "), out)
        self.assertIn("SHA-256", out)
