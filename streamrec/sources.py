"""Which source URLs streamrec records, and the ffmpeg input options for each.

Only network protocols are accepted; anything that could make ffmpeg read
local files or build inputs out of other inputs is refused here, and ffmpeg
is also run with a protocol whitelist (see :data:`PROTOCOL_WHITELIST`).
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

from .errors import InvalidSource

ALLOWED_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "rtp")

# Protocols ffmpeg may open while reading a source: the schemes above plus
# the transports they are built on. No file, pipe, data, concat, subfile...
PROTOCOL_WHITELIST = ",".join(
    ("rtsp", "rtsps", "rtmp", "rtmps", "rtmpt", "rtmpts", "http", "https", "httpproxy")
    + ("tcp", "udp", "rtp", "srtp", "tls", "crypto", "srt")
)

MAX_URL_LENGTH = 2048

__all__ = ["InvalidSource", "input_options", "mask_secrets", "validate_source_url"]

MASK = "***"

# ``scheme://user:password@`` anywhere in a text: the password is a secret.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:?#]*:)[^\s/?#]*@")
# ``?passphrase=...`` and its kin in a URL's query.
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;](?:[a-z_]*pass(?:word|phrase|wd)?|pwd|token|secret|key|auth|"
    r"srtp_in_params|srtp_out_params|cryptokey)=)[^&\s#]*"
)


@functools.lru_cache(maxsize=8192)
def mask_secrets(text: str) -> str:
    """``text`` with every credential of a source URL in it replaced by ``***``:
    ``rtsp://admin:***@host/...``, ``srt://host:9000?passphrase=***``. Applied
    to URLs in answers and to any text (an error, a log line) that may quote one.
    Cached: the same URLs are masked again at every listing."""
    if "@" in text:
        text = _USERINFO.sub(_masked_userinfo, text)
    if "=" in text:
        text = _SECRET_PARAMETER.sub(_masked_value, text)
    return text


def _masked_userinfo(match: re.Match[str]) -> str:
    return match.group(1) + MASK + "@"


def _masked_value(match: re.Match[str]) -> str:
    return match.group(1) + MASK


def validate_source_url(url: str) -> str:
    """Return the URL if streamrec may record it, else raise InvalidSource."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidSource(f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise InvalidSource("URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidSource(f"malformed URL: {error}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidSource(
            "URL has no scheme: use one of " + ", ".join(f"{s}://" for s in ALLOWED_SCHEMES)
        )
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidSource(
            f"URL scheme {scheme!r} is not allowed: use one of "
            + ", ".join(f"{s}://" for s in ALLOWED_SCHEMES)
        )
    if not parts.hostname and scheme not in ("udp", "rtp"):
        raise InvalidSource("URL has no host")
    if not url[len(scheme) :].startswith("://"):
        raise InvalidSource(f"malformed URL: expected {scheme}://host")
    if port == 0:
        raise InvalidSource("URL port must be between 1 and 65535")
    return url


def input_options(url: str, timeout_seconds: float) -> list[str]:
    """ffmpeg options placed before ``-i URL`` for this source."""
    scheme = urlsplit(url).scheme.lower()
    micros = str(int(timeout_seconds * 1_000_000))
    options = ["-protocol_whitelist", PROTOCOL_WHITELIST]
    if scheme in ("rtsp", "rtsps"):
        # TCP interleaving: cameras behind NAT and lossy links lose no packets.
        options += ["-rtsp_transport", "tcp", "-timeout", micros]
    elif scheme in ("udp", "rtp"):
        options += ["-timeout", micros, "-fflags", "+genpts"]
    else:
        options += ["-rw_timeout", micros]
    if scheme in ("http", "https"):
        options += ["-reconnect", "1", "-reconnect_streamed", "1", "-reconnect_delay_max", "5"]
    return options
