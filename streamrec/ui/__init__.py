"""The web UI: static files the API serves at ``/`` and ``/ui/<name>``.

Plain HTML, CSS and JavaScript modules beside this file, with no build step:
the page talks to the same JSON API as any other client, and signs in through
``/session`` when the service has tokens, so that ``<video>`` and ``<img>``
requests carry the session cookie. Loading the page itself needs no token.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.resources import files

from twisted.web.http import CACHED
from twisted.web.iweb import IRequest

#: The page at ``/``.
PAGE = "index.html"

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: What the page may load: its own files and the API, pictures fetched as
#: blobs, and clip links wherever the storage backend keeps them.
POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: http: https:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: bytes


@functools.cache
def names() -> frozenset[str]:
    """The files the UI is made of."""
    return frozenset(
        entry.name
        for entry in files(__name__).iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in TYPES)
    )


@functools.cache
def asset(name: str) -> Asset | None:
    """One file of the UI by its bare name, or None (nothing outside this directory)."""
    if name not in names():
        return None
    body = files(__name__).joinpath(name).read_bytes()
    content_type = next(kind for suffix, kind in TYPES.items() if name.endswith(suffix))
    etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
    return Asset(body, content_type, etag)


def serve(request: IRequest, found: Asset) -> bytes:
    """Answer with ``found``; a browser revalidates it (304) rather than keep
    an older UI than the service's."""
    request.setHeader(b"Content-Type", found.content_type.encode())
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Content-Security-Policy", POLICY.encode())
    if request.setETag(found.etag) == CACHED:
        return b""
    request.setHeader(b"Content-Length", str(len(found.body)).encode())
    return found.body
