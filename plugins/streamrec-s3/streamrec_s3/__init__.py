"""streamrec storage backend ``s3``: clips in any S3-compatible object store.

Works with AWS S3, MinIO, Ceph RGW and the like through boto3. Every boto3
call runs in the reactor's thread pool, never on the reactor thread. Clips
bigger than the multipart threshold are uploaded in parts. Links are either
presigned URLs or ``PUBLIC_URL/KEY`` for a bucket (or CDN) that is readable
without signing. Credentials come from boto3's usual chain: environment
variables, ``~/.aws`` files (optionally a named profile), an instance or task
role.

Settings come from ``STREAMREC_S3_*`` environment variables and, overriding
them, from ``context.config["s3"]`` (a dict with the same names in lower case
without the prefix), see :data:`SETTINGS`.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from twisted.logger import Logger

from streamrec import hookimpl
from streamrec.plugins import PluginContext

__version__ = "0.1.0"

log = Logger(namespace="streamrec_s3")

ENV_PREFIX = "STREAMREC_S3_"
MiB = 1024 * 1024
#: The longest a SigV4 presigned URL may live: seven days.
MAX_EXPIRES = 7 * 24 * 3600

#: Every setting: name -> (default, help). The environment variable is
#: ``STREAMREC_S3_`` + the name in upper case.
SETTINGS: dict[str, tuple[Any, str]] = {
    "bucket": (None, "Bucket to store clips in (required)."),
    "prefix": ("", "Key prefix, e.g. 'streamrec/clips/'."),
    "endpoint_url": (None, "Endpoint of a non-AWS store, e.g. http://minio:9000."),
    "region": (None, "Region (default: boto3's: AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config)."),
    "profile": (None, "Profile in ~/.aws/credentials and ~/.aws/config."),
    "addressing_style": ("auto", "auto, path (MinIO, Ceph without wildcard DNS) or virtual."),
    "links": ("presigned", "presigned, or public: PUBLIC_URL + '/' + key."),
    "public_url": (None, "Base URL of public links, e.g. https://cdn.example.com/clips."),
    "expires": (MAX_EXPIRES, "Lifetime of presigned links in seconds (at most 7 days)."),
    "acl": (None, "Canned ACL for uploads, e.g. public-read (default: the bucket's)."),
    "multipart_threshold": (8 * MiB, "Clips from this many bytes on upload in parts."),
    "multipart_chunksize": (8 * MiB, "Size of each part (at least 5 MiB)."),
}


class S3ConfigError(ValueError):
    """The ``s3`` storage backend is not configured well enough to start."""


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str = "auto"
    links: str = "presigned"
    public_url: str | None = None
    expires: int = MAX_EXPIRES
    acl: str | None = None
    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB

    @classmethod
    def load(
        cls, config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> S3Settings:
        """Settings from ``environ`` (default ``os.environ``), overridden by ``config``."""
        environ = os.environ if environ is None else environ
        config = dict(config or {})
        unknown = sorted(set(config) - set(SETTINGS))
        if unknown:
            raise S3ConfigError(f"s3 storage: unknown setting(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, (default, _) in SETTINGS.items():
            value = config.get(name, environ.get(ENV_PREFIX + name.upper()))
            if isinstance(value, str):
                value = value.strip()
            values[name] = default if value in (None, "") else value
        if not values["bucket"]:
            raise S3ConfigError(
                "s3 storage: no bucket configured; set STREAMREC_S3_BUCKET"
                " (or 'bucket' in the 's3' config)"
            )
        for name in ("expires", "multipart_threshold", "multipart_chunksize"):
            try:
                values[name] = int(values[name])
            except (TypeError, ValueError):
                raise S3ConfigError(
                    f"s3 storage: {name} must be a whole number, got {values[name]!r}"
                ) from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.links not in ("presigned", "public"):
            raise S3ConfigError(
                f"s3 storage: links must be 'presigned' or 'public', got {self.links!r}"
            )
        if self.links == "public" and not self.public_url:
            raise S3ConfigError(
                "s3 storage: public links need a base URL; set STREAMREC_S3_PUBLIC_URL"
            )
        if not 1 <= self.expires <= MAX_EXPIRES:
            raise S3ConfigError(f"s3 storage: expires must be between 1 and {MAX_EXPIRES} seconds")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise S3ConfigError(
                "s3 storage: addressing_style must be auto, path or virtual,"
                f" got {self.addressing_style!r}"
            )
        if self.multipart_chunksize < 5 * MiB or self.multipart_threshold < 5 * MiB:
            raise S3ConfigError("s3 storage: multipart sizes must be at least 5 MiB")

    @property
    def key_prefix(self) -> str:
        prefix = self.prefix.strip("/")
        return prefix + "/" if prefix else ""


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client: boto3's credential chain, the settings' endpoint and region."""
    try:
        session = boto3.session.Session(profile_name=settings.profile)
    except botocore.exceptions.ProfileNotFound as error:
        raise S3ConfigError(f"s3 storage: {error}") from None
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            retries={"mode": "standard"},
        ),
    )


class S3Storage:
    """Uploads finished clips to a bucket and links to them there."""

    def __init__(
        self, context: PluginContext, settings: S3Settings | None = None, client: Any = None
    ) -> None:
        self.run_blocking = context.run_blocking
        self.settings = settings or S3Settings.load(context.config.get("s3"))
        self.client = client if client is not None else make_client(self.settings)
        self.transfer = TransferConfig(
            multipart_threshold=self.settings.multipart_threshold,
            multipart_chunksize=self.settings.multipart_chunksize,
        )
        log.info(
            "clips go to s3://{bucket}/{prefix} ({links} links)",
            bucket=self.settings.bucket,
            prefix=self.settings.key_prefix,
            links=self.settings.links,
        )

    def object_key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad clip key {key!r}")
        return self.settings.key_prefix + key

    async def store_clip(self, local_path: str, key: str) -> str:
        link: str = await self.run_blocking(self._upload, local_path, self.object_key(key))
        return link

    async def delete_clip(self, key: str) -> None:
        await self.run_blocking(
            lambda: self.client.delete_object(Bucket=self.settings.bucket, Key=self.object_key(key))
        )

    def resource(self) -> None:
        return None  # links point at the object store, nothing is served here

    def link(self, key: str) -> str:
        """A link valid from now on: presigned links are made anew for each answer."""
        return self._link(self.object_key(key))

    # -- in a pool thread ---------------------------------------------------------
    def _upload(self, local_path: str, object_key: str) -> str:
        extra = {"ContentType": mimetypes.guess_type(object_key)[0] or "application/octet-stream"}
        if self.settings.acl:
            extra["ACL"] = self.settings.acl
        self.client.upload_file(
            local_path, self.settings.bucket, object_key, ExtraArgs=extra, Config=self.transfer
        )
        os.remove(local_path)
        return self._link(object_key)

    def _link(self, object_key: str) -> str:
        if self.settings.links == "public":
            assert self.settings.public_url is not None
            return self.settings.public_url.rstrip("/") + "/" + quote(object_key)
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.settings.bucket, "Key": object_key},
            ExpiresIn=self.settings.expires,
        )
        return url


@hookimpl
def register_storage_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("s3", S3Storage)
