"""Who may call what: bearer tokens with roles, and requests a browser makes
on its own.

A token file (``--tokens FILE``) has one token per line, ``ROLE TOKEN`` or
``ROLE sha256:HEX`` (the hex SHA-256 of the token, so the file need not hold
the secret). Roles are ordered: a ``viewer`` reads (list, status, clips, every
view, metrics), an ``operator`` also creates, starts and stops streams, an
``admin`` also does what an operator should not (recording sources that
listen on the box's ports). ``streamrec-token ROLE`` mints a token and prints
its line.

Without a token file the API is open: every caller is an admin, as streamrec
0.1's clients expect, and the service says so at every start.

Whatever the mode, a request that changes state is refused when a browser
made it for another site's page (``<img src=".../stop">``, a cross-site form),
which is told by the ``Sec-Fetch-Site`` and ``Origin`` headers browsers add,
and ``HEAD`` never changes state.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import StreamrecError

#: The shortest plain token a file may hold: a guessable token is no token.
MIN_TOKEN_LENGTH = 16
HASH_PREFIX = "sha256:"


class Role(enum.IntEnum):
    viewer = 1
    operator = 2
    admin = 3


VIEWER, OPERATOR, ADMIN = Role.viewer, Role.operator, Role.admin


class Unauthenticated(StreamrecError):
    """No token, or one the service does not know."""


class Forbidden(StreamrecError):
    """A known caller without the role, or a request a browser made cross-site."""


class MethodNotAllowed(StreamrecError):
    """``HEAD`` (or another method) on a route that changes state."""


class TokenFileError(ValueError):
    pass


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_tokens(lines: Iterable[str], source: str = "tokens") -> dict[str, Role]:
    """SHA-256 hex digest -> role, from the lines of a token file."""
    known: dict[str, Role] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        where = f"{source}:{number}"
        if len(parts) != 2:
            raise TokenFileError(f"{where}: expected 'ROLE TOKEN' or 'ROLE sha256:HEX'")
        role_name, secret = parts
        try:
            role = Role[role_name.lower()]
        except KeyError:
            raise TokenFileError(
                f"{where}: unknown role {role_name!r}; roles are " + ", ".join(r.name for r in Role)
            ) from None
        if secret.lower().startswith(HASH_PREFIX):
            hexdigest = secret[len(HASH_PREFIX) :].lower()
            if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
                raise TokenFileError(f"{where}: sha256: needs 64 hex digits")
        elif len(secret) < MIN_TOKEN_LENGTH:
            raise TokenFileError(
                f"{where}: a token must have at least {MIN_TOKEN_LENGTH} characters"
                " (streamrec-token mints one)"
            )
        else:
            hexdigest = digest(secret)
        if hexdigest in known and known[hexdigest] != role:
            raise TokenFileError(f"{where}: the same token is given two roles")
        known[hexdigest] = role
    if not known:
        raise TokenFileError(f"{source}: no token in the file")
    return known


def load_tokens(path: str) -> dict[str, Role]:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_tokens(handle, path)
    except OSError as error:
        raise TokenFileError(f"cannot read tokens {path}: {error.strerror}") from None


def plain_tokens_exposed(path: str) -> bool:
    """Whether others than the file's owner and group may read a file that
    holds plain tokens (hash lines are no secret)."""
    mode = os.stat(path).st_mode
    with open(path, encoding="utf-8") as handle:
        plain = any(
            len(parts) == 2 and not parts[1].lower().startswith(HASH_PREFIX)
            for parts in (line.split() for line in handle if not line.lstrip().startswith("#"))
        )
    return plain and bool(mode & 0o004)


@dataclass(frozen=True)
class Access:
    """The callers the service knows: ``tokens`` None means the API is open."""

    tokens: dict[str, Role] | None = None

    @property
    def open(self) -> bool:
        return self.tokens is None

    def role_of(self, authorization: bytes | None, session: bytes | None = None) -> Role:
        """The caller's role from an ``Authorization: Bearer`` header, or else
        from the UI's session cookie (which holds a token too)."""
        if self.tokens is None:
            return ADMIN
        if authorization:
            scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("Authentication required")
        elif session:
            token = session.decode("latin-1")
        else:
            raise Unauthenticated("Authentication required")
        return self.role_of_token(token.strip())

    def role_of_token(self, token: str) -> Role:
        if self.tokens is None:
            return ADMIN
        offered = digest(token)
        for known, role in self.tokens.items():
            if hmac.compare_digest(known, offered):
                return role
        raise Unauthenticated("Invalid token")

    def check(self, headers: Headers, needed: Role, changes_state: bool) -> Role:
        """The caller's role, if it may do what needs ``needed``; else raises.
        ``headers`` holds the request's, and the session cookie under ``SESSION_KEY``."""
        if changes_state:
            refuse_cross_site(headers)
        role = self.role_of(headers.get(b"authorization"), headers.get(SESSION_KEY))
        if role < needed:
            raise Forbidden(f"This needs the {needed.name} role")
        return role


Headers = dict[bytes, bytes]

#: The UI's session cookie: a token a browser sends by itself with ``<video>``
#: and ``<img>`` requests (HttpOnly, SameSite=Strict).
SESSION_COOKIE = b"streamrec_session"
SESSION_KEY = b"cookie:" + SESSION_COOKIE

#: ``Sec-Fetch-Site`` values of requests a browser makes for another site's page.
CROSS_SITE = (b"cross-site", b"same-site")


def refuse_cross_site(headers: Headers) -> None:
    """A state change must not come from a page of another site, whatever the
    browser would send along with it by itself."""
    fetch_site = (headers.get(b"sec-fetch-site") or b"").strip().lower()
    if fetch_site in CROSS_SITE:
        raise Forbidden("Cross-site requests cannot change state")
    origin = (headers.get(b"origin") or b"").decode("latin-1").strip()
    if origin:
        host = (headers.get(b"host") or b"").decode("latin-1").strip().lower()
        if origin == "null" or urlsplit(origin).netloc.lower() != host:
            raise Forbidden("Cross-site requests cannot change state")


def mint(role: str) -> tuple[str, str]:
    """A new token for ``role`` and the line that gives it in a token file
    without holding it."""
    chosen = Role[role.lower()]
    token = secrets.token_urlsafe(32)
    return token, f"{chosen.name} {HASH_PREFIX}{digest(token)}"


def main(argv: list[str] | None = None) -> int:
    """``streamrec-token ROLE``: print a new token, then its token-file line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].lower() not in Role.__members__:
        print("usage: streamrec-token viewer|operator|admin", file=sys.stderr)
        print("  prints a new token, then the line to add to the --tokens file", file=sys.stderr)
        return 2
    token, line = mint(args[0])
    print(f"token: {token}")
    print(f"line:  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
