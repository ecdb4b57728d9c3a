"""Signed clip manifests: signing, verifying, and what breaks a verification."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial import unittest

from streamrec.api import ERRORS
from streamrec.evidence import (
    FORMAT,
    Signer,
    canonical,
    file_digest,
    keygen_main,
    load_public_key,
    verify,
    verify_main,
)
from streamrec.openapi import document as openapi_document
from streamrec.store import JOB_DONE, Clip, ClipJob, Stream
from streamrec.views import job_json

from .test_openapi import schema_of

CLIP_BYTES = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40
SHA256_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def manifest_of(signer: Signer, data: bytes = CLIP_BYTES) -> dict:
    stream = Stream(7, "rtsp://admin:secret@cam.test/live", "gate", 1.0, 2.0, None, True, None)
    clip = Clip(
        0,
        "http://127.0.0.1/clips/k.mp4",
        "k.mp4",
        1700000000.25,
        1700000004.25,
        len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        clock="camera",
        first_frame=1700000000.25,
        last_frame=1700000004.21,
        time_error=0.04,
    )
    return signer.manifest(
        stream=stream, stream_id=7, clip=clip, size=len(data), encoder="copy", created=1700000010.5
    )


class EvidenceTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.signer = Signer(Ed25519PrivateKey.generate(), node="node-a")
        self.public = self.signer.private_key.public_key()
        self.manifest = manifest_of(self.signer)
        self.document = self.signer.sign(self.manifest)

    def test_file_digest(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b"abc")
        self.assertEqual(file_digest(path), (SHA256_OF_ABC, 3))

    def test_manifest_says_what_the_clip_is_without_credentials(self) -> None:
        self.assertEqual(
            self.manifest,
            {
                "format": FORMAT,
                "stream_id": 7,
                "stream_url": "rtsp://admin:***@cam.test/live",
                "clip": "k.mp4",
                "start": 1700000000.25,
                "stop": 1700000004.25,
                "clock": "camera",
                "first_frame": 1700000000.25,
                "last_frame": 1700000004.21,
                "time_error": 0.04,
                "sha256": self.manifest["sha256"],
                "size": len(CLIP_BYTES),
                "node": "node-a",
                "created": 1700000010.5,
                "encoder": "copy",
            },
        )
        self.assertNotIn(b"secret", self.document)

    def test_a_signed_clip_verifies(self) -> None:
        problems, manifest = verify(CLIP_BYTES, self.document, self.public)
        self.assertEqual((problems, manifest), ([], self.manifest))

    def test_the_signature_is_over_the_canonical_manifest(self) -> None:
        signed = json.loads(self.document)
        self.assertEqual(signed["signature"]["algorithm"], "Ed25519")
        self.assertEqual(
            canonical(signed["manifest"]),
            json.dumps(self.manifest, sort_keys=True, separators=(",", ":")).encode(),
        )
        # Any layout of the same JSON verifies: only the manifest's content is signed.
        compact = json.dumps(signed).encode()
        self.assertEqual(verify(CLIP_BYTES, compact, self.public)[0], [])

    def test_one_byte_changed_in_the_clip_fails(self) -> None:
        changed = bytearray(CLIP_BYTES)
        changed[len(changed) // 2] ^= 0x01
        problems, _ = verify(bytes(changed), self.document, self.public)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("SHA-256", problems[0])

    def test_a_shorter_clip_fails_on_its_size_too(self) -> None:
        problems, _ = verify(CLIP_BYTES[:-1], self.document, self.public)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("bytes", problems[1])

    def test_another_key_fails(self) -> None:
        other = Ed25519PrivateKey.generate().public_key()
        problems, _ = verify(CLIP_BYTES, self.document, other)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("signed by another key", problems[0])

    def test_a_changed_manifest_fails(self) -> None:
        for field, value in (("start", 1700000001.25), ("stream_id", 8), ("node", "node-b")):
            signed = json.loads(self.document)
            signed["manifest"][field] = value
            problems, _ = verify(CLIP_BYTES, json.dumps(signed).encode(), self.public)
            self.assertEqual(len(problems), 1, (field, problems))
            self.assertIn("changed after signing", problems[0])

    def test_a_manifest_that_claims_another_clip_fails(self) -> None:
        """Hash and size changed to another clip's: the signature no longer holds."""
        other = b"another clip"
        signed = json.loads(self.document)
        signed["manifest"].update(sha256=manifest_of(self.signer, other)["sha256"], size=12)
        problems, _ = verify(other, json.dumps(signed).encode(), self.public)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("changed after signing", problems[0])

    def test_a_broken_signature_or_document_fails(self) -> None:
        signed = json.loads(self.document)
        signed["signature"]["value"] = "not base64!"
        problems, _ = verify(CLIP_BYTES, json.dumps(signed).encode(), self.public)
        self.assertEqual(len(problems), 1, problems)
        for document in (b"", b"[]", b'{"manifest": 1, "signature": {}}', b"\xff"):
            problems, manifest = verify(CLIP_BYTES, document, self.public)
            self.assertEqual((len(problems), manifest), (1, {}), document)


class AnswerTests(unittest.SynchronousTestCase):
    """What get_clip answers about a clip's evidence (streamrec.views)."""

    def test_a_signed_clip_links_its_manifest_through_the_same_links(self) -> None:
        signed = Clip(0, "https://s3.test/a.mp4?sig=0", "a.mp4", 10.0, 14.0, 100,
                      sha256="ab" * 32, manifest="https://s3.test/a.mp4.manifest.json?sig=0")  # fmt: skip
        unsigned = Clip(1, "https://s3.test/b.mp4?sig=0", "b.mp4", 15.0, 16.0, 50)
        job = ClipJob(7, 1, 10.0, 16.0, True, "copy", {}, JOB_DONE, None, 1.0, 5.0,
                      (signed, unsigned))  # fmt: skip
        asked = []

        def fresh(clip: Clip) -> str:  # as a backend with expiring links answers
            asked.append(clip.storage_key)
            return f"https://s3.test/{clip.storage_key}?sig=1"

        answer = job_json(job, fresh)
        self.assertEqual(asked, ["a.mp4", "a.mp4.manifest.json", "b.mp4"])
        first, second = answer["clips"]
        self.assertEqual(
            (first["sha256"], first["manifest"]),
            ("ab" * 32, "https://s3.test/a.mp4.manifest.json?sig=1"),
        )
        self.assertEqual(second["sha256"], None)
        self.assertNotIn("manifest", second)
        validator = schema_of(openapi_document(ERRORS), "Job")
        self.assertEqual(list(validator.iter_errors(answer)), [])
        self.assertEqual(list(validator.iter_errors(job_json(job))), [])
        first["sha256"] = "not hex"
        self.assertTrue(list(validator.iter_errors(answer)), "a sha256 that is not one passed")


class CommandTests(unittest.SynchronousTestCase):
    """streamrec-keygen and streamrec-verify, as their entry points run them."""

    def run_main(self, main, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(list(argv))
        return code, out.getvalue()

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "signing.pem")
        code, out = self.run_main(keygen_main, self.key)
        self.assertEqual(code, 0, out)
        self.clip = os.path.join(self.dir, "k.mp4")
        with open(self.clip, "wb") as handle:
            handle.write(CLIP_BYTES)
        signer = Signer.from_file(self.key, node="node-a")
        self.manifest = signer.write(os.path.join(self.dir, "k.json"), manifest_of(signer))

    def test_keygen_writes_a_private_key_only_its_owner_reads(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)
        self.assertIsNotNone(load_public_key(self.key + ".pub"))
        code, out = self.run_main(keygen_main, self.key)
        self.assertEqual(code, 1, "an existing key is not overwritten")
        self.assertIn("exists", out)

    def test_verify_ok(self) -> None:
        code, out = self.run_main(
            verify_main, self.clip, self.manifest, "--public-key", self.key + ".pub"
        )
        self.assertEqual(code, 0, out)
        self.assertTrue(out.startswith("OK: "), out)
        self.assertIn("rtsp://admin:***@cam.test/live", out)
        self.assertIn("2023-11-14T22:13:20.250+00:00", out)

    def test_verify_a_changed_clip_fails(self) -> None:
        with open(self.clip, "r+b") as handle:
            handle.seek(100)
            byte = handle.read(1)
            handle.seek(100)
            handle.write(bytes([byte[0] ^ 0x80]))
        code, out = self.run_main(
            verify_main, self.clip, self.manifest, "--public-key", self.key + ".pub"
        )
        self.assertEqual(code, 1, out)
        self.assertTrue(out.startswith("FAILED: "), out)
        self.assertIn("SHA-256", out)

    def test_verify_with_another_key_fails(self) -> None:
        other = os.path.join(self.dir, "other.pem")
        self.assertEqual(self.run_main(keygen_main, other)[0], 0)
        code, out = self.run_main(
            verify_main, self.clip, self.manifest, "--public-key", other + ".pub"
        )
        self.assertEqual(code, 1, out)
        self.assertIn("another key", out)

    def test_verify_with_files_missing_or_wrong_fails(self) -> None:
        for argv in (
            (self.clip, self.manifest, "--public-key", self.key + ".missing"),
            (self.clip + ".missing", self.manifest, "--public-key", self.key + ".pub"),
            (self.clip, self.manifest, "--public-key", self.clip),
        ):
            code, out = self.run_main(verify_main, *argv)
            self.assertEqual(code, 1, (argv, out))
            self.assertTrue(out.startswith("FAILED: "), out)

    def test_a_signing_key_that_is_not_one_is_refused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            Signer.from_file(self.key + ".pub")
        self.assertIn("--signing-key", str(caught.exception))
        with self.assertRaises(ValueError):
            Signer.from_file(os.path.join(self.dir, "missing.pem"))
