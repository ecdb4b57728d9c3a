"""The ``s3`` storage backend against a real S3-compatible server: moto's
standalone server, a separate process on 127.0.0.1 started by each test.

Run from the streamrec repository root (the end-to-end tests use its
``tests`` package)::

    pip install './plugins/streamrec-s3[test]'
    python -m twisted.trial plugins/streamrec-s3/tests/test_streamrec_s3.py
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from typing import Any

import boto3
import botocore.exceptions
import treq
from boto3.exceptions import S3UploadFailedError
from streamrec_s3 import MiB, S3ConfigError, S3Settings, S3Storage
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from streamrec.plugins import PluginContext, collect, get_plugin_manager

BUCKET = "streamrec-clips"

#: Dummy credentials, and nothing from the developer's own AWS setup.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": None,
    "AWS_SECURITY_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_PROFILE": None,
    "AWS_REGION": None,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def set_env(testcase: unittest.TestCase, **values: str | None) -> None:
    """Set (or, for None, unset) environment variables until the test ends."""
    for name, value in values.items():
        testcase.addCleanup(_restore_env, name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ServerProtocol(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


async def start_moto(testcase: unittest.TestCase, timeout: float = 30) -> str:
    """Start ``python -m moto.server`` on 127.0.0.1; return its endpoint URL.

    It is stopped (TERM, then KILL after 5 s) when the test ends."""
    port = free_port()
    server = _ServerProtocol()
    transport = reactor.spawnProcess(
        server,
        sys.executable,
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ),
    )

    async def stop() -> None:
        if server.ended.called:
            return
        transport.signalProcess("TERM")
        deadline = time.monotonic() + 5
        while not server.ended.called and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        if not server.ended.called:
            transport.signalProcess("KILL")
            await server.ended

    testcase.addCleanup(lambda: defer.ensureDeferred(stop()))
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if server.ended.called:
            raise AssertionError(f"moto server exited:\n{server.output.decode(errors='replace')}")
        try:
            response = await treq.get(endpoint + "/moto-api/", timeout=2, persistent=False)
            await response.content()
            return endpoint
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"moto server did not answer within {timeout:g} s:\n"
                    + server.output.decode(errors="replace")
                ) from None
        await task.deferLater(reactor, 0.2, lambda: None)


def context(testcase: unittest.TestCase, **s3: Any) -> PluginContext:
    return PluginContext(
        reactor=reactor,
        data_dir=testcase.mktemp(),
        public_url="http://127.0.0.1:1",
        ffmpeg="ffmpeg",
        config={"s3": s3} if s3 else {},
    )


def write_file(path: str, size: int) -> str:
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


async def fetch(link: str) -> tuple[int, bytes, list[bytes] | None]:
    response = await treq.get(link, timeout=30, persistent=False)
    body = await response.content()
    return response.code, body, response.headers.getRawHeaders(b"content-type")


class SettingsTests(unittest.SynchronousTestCase):
    def test_missing_bucket_is_a_clear_error(self) -> None:
        error = self.assertRaises(S3ConfigError, S3Settings.load, {}, {})
        self.assertIn("STREAMREC_S3_BUCKET", str(error))

    def test_from_environment(self) -> None:
        settings = S3Settings.load(
            None,
            {
                "STREAMREC_S3_BUCKET": "b1",
                "STREAMREC_S3_PREFIX": "/cams/clips/",
                "STREAMREC_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
                "STREAMREC_S3_REGION": "eu-west-1",
                "STREAMREC_S3_EXPIRES": "3600",
                "STREAMREC_S3_LINKS": "public",
                "STREAMREC_S3_PUBLIC_URL": "https://cdn.example/b1",
            },
        )
        self.assertEqual(
            (settings.bucket, settings.key_prefix, settings.endpoint_url, settings.region),
            ("b1", "cams/clips/", "http://127.0.0.1:9000", "eu-west-1"),
        )
        self.assertEqual((settings.expires, settings.links), (3600, "public"))

    def test_config_dict_overrides_environment(self) -> None:
        settings = S3Settings.load(
            {"bucket": "from-config", "expires": 60},
            {"STREAMREC_S3_BUCKET": "from-env", "STREAMREC_S3_PREFIX": "p"},
        )
        self.assertEqual(
            (settings.bucket, settings.prefix, settings.expires), ("from-config", "p", 60)
        )

    def test_bad_settings(self) -> None:
        for config, words in [
            ({"links": "public"}, "STREAMREC_S3_PUBLIC_URL"),
            ({"links": "signed"}, "presigned"),
            ({"expires": 8 * 24 * 3600}, "expires"),
            ({"expires": "soon"}, "whole number"),
            ({"multipart_chunksize": MiB}, "5 MiB"),
            ({"bucket_name": "x"}, "unknown setting"),
        ]:
            error = self.assertRaises(S3ConfigError, S3Settings.load, {"bucket": "b", **config}, {})
            self.assertIn(words, str(error), config)

    def test_registered_through_the_entry_point(self) -> None:
        pm = get_plugin_manager(load_entrypoints=True)
        self.assertIs(collect(pm.hook.register_storage_backends)["s3"], S3Storage)


class S3StorageTests(unittest.TestCase):
    timeout = 60

    async def storage(self, **s3: Any) -> tuple[S3Storage, Any, str]:
        set_env(self, **AWS_ENV)
        endpoint = await start_moto(self)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        storage = S3Storage(
            context(self, bucket=BUCKET, endpoint_url=endpoint, prefix="cam/", **s3)
        )
        return storage, client, endpoint

    def clip_file(self, size: int) -> tuple[str, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "clip.mp4")
        return path, write_file(path, size)

    @defer.inlineCallbacks
    def test_small_clip_presigned_link(self) -> Any:
        yield defer.ensureDeferred(self._small_clip_presigned_link())

    async def _small_clip_presigned_link(self) -> None:
        storage, client, endpoint = await self.storage(expires=900)
        path, digest = self.clip_file(300_000)
        link = await storage.store_clip(path, "k1.mp4")
        self.assertFalse(os.path.exists(path), "the local file is removed after the upload")
        self.assertTrue(link.startswith(f"{endpoint}/{BUCKET}/cam/k1.mp4?"), link)
        self.assertIn("X-Amz-Signature=", link)
        self.assertIn("X-Amz-Expires=900", link)
        head = client.head_object(Bucket=BUCKET, Key="cam/k1.mp4")
        self.assertNotIn("-", head["ETag"], "a small clip is one PUT")
        self.assertEqual(head["ContentType"], "video/mp4")
        code, body, content_type = await fetch(link)
        self.assertEqual((code, content_type), (200, [b"video/mp4"]))
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest)
        self.assertIsNone(storage.resource())
        # Each answer can carry a newly signed link to the same object.
        fresh = storage.link("k1.mp4")
        self.assertTrue(fresh.startswith(f"{endpoint}/{BUCKET}/cam/k1.mp4?"), fresh)
        code, body, _ = await fetch(fresh)
        self.assertEqual((code, hashlib.sha256(body).hexdigest()), (200, digest))

    @defer.inlineCallbacks
    def test_big_clip_is_a_multipart_upload(self) -> Any:
        yield defer.ensureDeferred(self._multipart())

    async def _multipart(self) -> None:
        storage, client, _ = await self.storage(
            multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
        )
        path, digest = self.clip_file(11 * MiB)
        link = await storage.store_clip(path, "big.mp4")
        head = client.head_object(Bucket=BUCKET, Key="cam/big.mp4")
        self.assertTrue(head["ETag"].endswith('-3"'), f"3 parts expected: {head['ETag']}")
        code, body, _ = await fetch(link)
        self.assertEqual(code, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest)

    @defer.inlineCallbacks
    def test_public_links(self) -> Any:
        yield defer.ensureDeferred(self._public_links())

    async def _public_links(self) -> None:
        set_env(self, **AWS_ENV)
        endpoint = await start_moto(self)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        # This time from the environment, as an operator configures it.
        set_env(
            self,
            STREAMREC_S3_BUCKET=BUCKET,
            STREAMREC_S3_ENDPOINT_URL=endpoint,
            STREAMREC_S3_PREFIX="public clips",
            STREAMREC_S3_LINKS="public",
            STREAMREC_S3_PUBLIC_URL=f"{endpoint}/{BUCKET}/",
            STREAMREC_S3_ACL="public-read",  # moto refuses anonymous reads otherwise
        )
        storage = S3Storage(context(self))
        path, digest = self.clip_file(1000)
        link = await storage.store_clip(path, "k2.mp4")
        self.assertEqual(link, f"{endpoint}/{BUCKET}/public%20clips/k2.mp4")
        code, body, _ = await fetch(link)
        self.assertEqual(code, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest)

    @defer.inlineCallbacks
    def test_delete(self) -> Any:
        yield defer.ensureDeferred(self._delete())

    async def _delete(self) -> None:
        storage, client, _ = await self.storage()
        path, _ = self.clip_file(1000)
        link = await storage.store_clip(path, "k3.mp4")
        await storage.delete_clip("k3.mp4")
        with self.assertRaises(botocore.exceptions.ClientError):
            client.head_object(Bucket=BUCKET, Key="cam/k3.mp4")
        code, _, _ = await fetch(link)
        self.assertEqual(code, 404)
        await storage.delete_clip("k3.mp4")  # deleting twice is fine

    @defer.inlineCallbacks
    def test_failed_upload_keeps_the_file(self) -> Any:
        yield defer.ensureDeferred(self._failed_upload())

    async def _failed_upload(self) -> None:
        storage, _, endpoint = await self.storage()
        missing = S3Storage(
            context(self, bucket="no-such-bucket", endpoint_url=endpoint), client=storage.client
        )
        path, _ = self.clip_file(1000)
        with self.assertRaises(S3UploadFailedError):
            await missing.store_clip(path, "k4.mp4")
        self.assertTrue(os.path.exists(path))


class S3ServiceTests(unittest.TestCase):
    """A real streamrec service with ``--storage s3`` records a live source and
    hands out S3 links to clips that play."""

    timeout = 120

    def setUp(self) -> None:
        try:
            from tests.support import harness, livesource
        except ImportError:
            raise unittest.SkipTest("run from the streamrec repository root") from None
        self.harness = harness
        self.livesource = livesource

    @defer.inlineCallbacks
    def test_service_records_and_links_to_s3(self) -> Any:
        yield defer.ensureDeferred(self._service())

    async def _service(self) -> None:
        set_env(self, **AWS_ENV)
        endpoint = await start_moto(self)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        set_env(
            self,
            STREAMREC_S3_BUCKET=BUCKET,
            STREAMREC_S3_ENDPOINT_URL=endpoint,
            STREAMREC_S3_PREFIX="e2e",
            STREAMREC_S3_LINKS=None,
            STREAMREC_S3_PUBLIC_URL=None,
            STREAMREC_S3_EXPIRES="3600",
        )
        source = self.livesource.UdpTsSource.running(self, audio="aac")
        service = await self.harness.Service(self, storage="s3", load_plugins=True).start()
        self.addCleanup(lambda: defer.ensureDeferred(service.stop()))
        plugins = await service.ok("GET", "/plugins")
        self.assertEqual(plugins["storage"], "s3")
        self.assertIn("s3", plugins["plugins"])
        self.assertIn("s3", plugins["storage_backends"])
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first() -> Any:
            return (await service.status(stream_id))["recorded"]["first"]

        start = await self.harness.until(first, 30, "the first segment") + 2.37
        await service.recorded_until(stream_id, start + 3)
        job = await service.clip(stream_id, start=start, stop=start + 3)
        [clip] = job["clips"]
        self.assertTrue(clip["link"].startswith(f"{endpoint}/{BUCKET}/e2e/"), clip)
        self.assertIn("X-Amz-Expires=3600", clip["link"])
        key = clip["link"].split("?")[0].rsplit("/", 1)[-1]
        head = client.head_object(Bucket=BUCKET, Key=f"e2e/{key}")
        self.assertEqual(head["ContentLength"], clip["size"])
        self.assertEqual(os.listdir(os.path.join(service.data_dir, "tmp")), [])
        code, body, content_type = await fetch(clip["link"])
        self.assertEqual((code, content_type), (200, [b"video/mp4"]))
        path = self.mktemp() + ".mp4"
        with open(path, "wb") as handle:
            handle.write(body)
        shown = self.harness.decode(path)
        numbers = shown["numbers"]
        self.assertEqual((shown["video"], shown["audio"]), ("h264", "aac"))
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + len(numbers))))
        self.assertLess(abs(len(numbers) - 3 * self.livesource.FPS), 2, clip)
