"""Evidence that a clip is what was recorded: the SHA-256 of its bytes and,
with ``--signing-key``, a manifest signed with Ed25519 stored beside it.

``streamrec-keygen PRIVATE.pem`` makes a key pair; ``streamrec-verify CLIP
MANIFEST --public-key PRIVATE.pem.pub`` checks a downloaded clip against its
manifest. The signature is over the manifest object as canonical JSON
(:func:`canonical`: sorted keys, no spaces, ASCII), so the signed document may
be read and pretty-printed by anyone without breaking it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from twisted.logger import Logger

from .sources import mask_secrets
from .store import Clip, Stream

log = Logger(namespace="streamrec.evidence")

#: What a manifest says it is (a verifier refuses any other).
FORMAT = "streamrec-clip-manifest/1"
ALGORITHM = "Ed25519"
_CHUNK = 1 << 20


def file_digest(path: str) -> tuple[str, int]:
    """The SHA-256 (hex) and the size of a file's bytes. Blocking: run it in a thread."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: the manifest as JSON, keys sorted, no spaces, ASCII."""
    return json.dumps(
        manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The SHA-256 (hex) of the raw public key: which key signed a manifest."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _iso(when: Any) -> str:
    if not isinstance(when, int | float):
        return repr(when)
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


class Signer:
    """Writes the signed manifests of one node's clips (``--signing-key``)."""

    def __init__(self, private_key: Ed25519PrivateKey, node: str | None = None) -> None:
        self.private_key = private_key
        self.node = node
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def from_file(cls, path: str, node: str | None = None) -> Signer:
        """The key of an unencrypted PEM file (as ``streamrec-keygen`` writes);
        ValueError saying what is wrong with it."""
        try:
            with open(path, "rb") as handle:
                key = serialization.load_pem_private_key(handle.read(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"--signing-key {path}: {error}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"--signing-key {path}: not an Ed25519 private key")
        if os.stat(path).st_mode & 0o004:
            log.warn(
                "{path} holds the signing key and every user of this box may read it", path=path
            )
        return cls(key, node)

    def manifest(
        self,
        *,
        stream: Stream | None,
        stream_id: int,
        clip: Clip,
        size: int,
        encoder: str,
        created: float,
    ) -> dict[str, Any]:
        """What a clip's manifest says (``clip.sha256`` taken from its bytes)."""
        return {
            "format": FORMAT,
            "stream_id": stream_id,
            "stream_url": None if stream is None else mask_secrets(stream.url),
            "clip": clip.storage_key,
            "start": clip.start,
            "stop": clip.stop,
            # Where those times come from, and how far off they may be.
            "clock": clip.clock or "arrival",
            "first_frame": clip.first_frame,
            "last_frame": clip.last_frame,
            "time_error": clip.time_error,
            "sha256": clip.sha256,
            "size": size,
            "node": self.node,
            "created": created,
            "encoder": encoder,
        }

    def sign(self, manifest: Mapping[str, Any]) -> bytes:
        """The signed document: the manifest and the signature of its canonical bytes."""
        signature = self.private_key.sign(canonical(manifest))
        document = {
            "manifest": dict(manifest),
            "signature": {
                "algorithm": ALGORITHM,
                "key_id": self.key_id,
                "value": base64.b64encode(signature).decode("ascii"),
            },
        }
        return json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    def write(self, path: str, manifest: Mapping[str, Any]) -> str:
        """Sign ``manifest`` into the file ``path``. Blocking: run it in a thread."""
        with open(path, "wb") as handle:
            handle.write(self.sign(manifest))
        return path


def verify(
    clip: bytes | str, document: bytes, public_key: Ed25519PublicKey
) -> tuple[list[str], dict[str, Any]]:
    """What is wrong with a clip (its bytes, or the path of its file) and its signed
    manifest (``document``) under ``public_key``: no problems means it verifies.
    Also the manifest, to show what it says."""
    try:
        signed = json.loads(document)
        manifest = signed["manifest"]
        signature = signed["signature"]
        if not isinstance(manifest, dict) or not isinstance(signature, dict):
            raise TypeError("manifest and signature must be objects")
        value = base64.b64decode(signature["value"], validate=True)
    except (ValueError, TypeError, KeyError, binascii.Error) as error:
        return [f"the manifest is not a signed streamrec manifest ({error})"], {}
    problems = []
    if signature.get("algorithm") != ALGORITHM or manifest.get("format") != FORMAT:
        problems.append(f"the manifest is not a {FORMAT} signed with {ALGORITHM}")
    try:
        public_key.verify(value, canonical(manifest))
    except (InvalidSignature, ValueError, TypeError):
        if signature.get("key_id") not in (None, key_id(public_key)):
            problems.append("the signature does not verify: the manifest was signed by another key")
        else:
            problems.append("the signature does not verify: the manifest was changed after signing")
    if isinstance(clip, str):
        digest, size = file_digest(clip)
    else:
        digest, size = hashlib.sha256(clip).hexdigest(), len(clip)
    if digest != manifest.get("sha256"):
        problems.append(
            f"the clip's SHA-256 is {digest}, the manifest says {manifest.get('sha256')}"
        )
    if size != manifest.get("size"):
        problems.append(f"the clip has {size} bytes, the manifest says {manifest.get('size')}")
    return problems, manifest


def load_public_key(path: str) -> Ed25519PublicKey:
    with open(path, "rb") as handle:
        key = serialization.load_pem_public_key(handle.read())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify_main(argv: Sequence[str] | None = None) -> int:
    """``streamrec-verify CLIP MANIFEST --public-key PUB.pem``: 0 when the clip is
    the one its manifest describes and the manifest is signed by that key, else 1."""
    parser = argparse.ArgumentParser(
        prog="streamrec-verify",
        description="Check a downloaded clip against its signed manifest.",
    )
    parser.add_argument("clip", help="the clip's MP4 file")
    parser.add_argument("manifest", help="its manifest (the clip's `manifest` link)")
    parser.add_argument(
        "--public-key", required=True, help="the PEM public key (streamrec-keygen's .pub)"
    )
    args = parser.parse_args(argv)
    try:
        public_key = load_public_key(args.public_key)
        with open(args.manifest, "rb") as handle:
            document = handle.read()
        problems, manifest = verify(args.clip, document, public_key)
    except (OSError, ValueError, TypeError) as error:
        print(f"FAILED: {error}")
        return 1
    if problems:
        print(f"FAILED: {args.clip} does not verify against {args.manifest}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"OK: {args.clip} is the clip {args.manifest} describes, signed by {args.public_key}")
    print(f"  stream   {manifest.get('stream_id')} {manifest.get('stream_url')}")
    print(f"  from     {_iso(manifest.get('start'))} ({manifest.get('clock')} clock)")
    print(f"  to       {_iso(manifest.get('stop'))}")
    print(f"  sha256   {manifest.get('sha256')} ({manifest.get('size')} bytes)")
    print(
        f"  made     {_iso(manifest.get('created'))} on node {manifest.get('node')}"
        f" by the {manifest.get('encoder')} encoder"
    )
    return 0


def keygen_main(argv: Sequence[str] | None = None) -> int:
    """``streamrec-keygen PRIVATE.pem``: a new Ed25519 key pair, the private key
    (mode 0600) in PRIVATE.pem and the public key in PRIVATE.pem.pub."""
    parser = argparse.ArgumentParser(
        prog="streamrec-keygen",
        description="Make an Ed25519 key pair for twistd streamrec --signing-key.",
    )
    parser.add_argument("private", help="the private key's file (not overwritten)")
    args = parser.parse_args(argv)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        descriptor = os.open(args.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        print(f"streamrec-keygen: {error}", file=sys.stderr)
        return 1
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private)
    try:
        with open(args.private + ".pub", "xb") as handle:
            handle.write(public)
    except OSError as error:
        os.remove(args.private)  # no private key without its public one
        print(f"streamrec-keygen: {error}", file=sys.stderr)
        return 1
    print(f"private key: {args.private} (for --signing-key; keep it secret)")
    print(f"public key:  {args.private}.pub (for streamrec-verify --public-key)")
    print(f"key id:      {key_id(key.public_key())}")
    return 0
