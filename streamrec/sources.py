"""Which source URLs streamrec records, and the ffmpeg input options for each.

Only network protocols are accepted; anything that could make ffmpeg read
local files or build inputs out of other inputs is refused here, and ffmpeg
is also run with a protocol whitelist (see :data:`PROTOCOL_WHITELIST`) and a
demuxer whitelist (:data:`INPUT_FORMATS`).

The query options ffmpeg reads from a URL are allowed per scheme, with
bounded values (:data:`QUERY_OPTIONS`). A source that makes ffmpeg listen
(unicast ``udp://`` and ``rtp://``, ``srt://...?mode=listener``) names the
local address it listens on, ``0.0.0.0`` for every interface, and ffmpeg
binds exactly that address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from .errors import InvalidSource

#: The clocks a stream's recording may follow (the ``clock`` option of create):
#: the camera's own (RTSP sender reports), this box's at arrival, or the
#: camera's while it agrees with arrival.
CLOCKS = ("auto", "camera", "arrival")

ALLOWED_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "rtp")

# Protocols ffmpeg may open while reading a source: the schemes above plus
# the transports they are built on. No file, pipe, data, concat, subfile...
PROTOCOL_WHITELIST = ",".join(
    ("rtsp", "rtsps", "rtmp", "rtmps", "rtmpt", "rtmpts", "http", "https", "httpproxy")
    + ("tcp", "udp", "rtp", "srtp", "tls", "crypto", "srt")
)

MAX_URL_LENGTH = 2048

#: The demuxers ffmpeg may use for each scheme: what a live source is, and for
#: HLS what its segments and renditions are. SDP, DASH, ffconcat, images and
#: the rest are refused even when a server sends them.
_HLS = ("hls", "mpegts", "mov", "aac", "mp3", "ac3", "eac3", "webvtt")
INPUT_FORMATS = {
    "rtsp": "rtsp",
    "rtsps": "rtsp",
    "rtmp": "flv,live_flv",
    "rtmps": "flv,live_flv",
    "http": ",".join(_HLS + ("flv", "live_flv", "matroska", "mpjpeg")),
    "https": ",".join(_HLS + ("flv", "live_flv", "matroska", "mpjpeg")),
    "srt": "mpegts",
    "udp": "mpegts",
    "rtp": "rtp",
}

#: Bounds of what a URL may ask of ffmpeg: udp's ``fifo_size`` (188-byte
#: packets, about 19 MB), the addresses of a ``sources``/``block`` filter, and
#: the lowest port a listening source may take.
MAX_FIFO_PACKETS = 100_000
MAX_FILTER_ADDRESSES = 16
MIN_LISTEN_PORT = 1024

__all__ = [
    "InvalidSource",
    "input_options",
    "listen_address",
    "listens",
    "mask_secrets",
    "query_items",
    "validate_source_url",
]

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
    if not parts.hostname and scheme not in QUERY_OPTIONS:
        raise InvalidSource("URL has no host")
    if not url[len(scheme) :].startswith("://"):
        raise InvalidSource(f"malformed URL: expected {scheme}://host")
    if port == 0:
        raise InvalidSource("URL port must be between 1 and 65535")
    if scheme in QUERY_OPTIONS or scheme in ("rtsp", "rtsps"):
        _check_query(scheme, url)
    if scheme in QUERY_OPTIONS:
        _check_bind(scheme, url)
    return url


# -- what ffmpeg reads from a URL's query -------------------------------------------
Check = Callable[[str], str | None]


def _whole(low: int, high: int) -> Check:
    def check(value: str) -> str | None:
        if value.isascii() and value.isdigit() and low <= int(value) <= high:
            return None
        return f"must be a whole number from {low} to {high}"

    return check


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else "must be " + " or ".join(choices)

    return check


def _text(shortest: int, longest: int) -> Check:
    def check(value: str) -> str | None:
        if shortest <= len(value) <= longest:
            return None
        return f"must be {shortest} to {longest} characters long"

    return check


def _addresses(value: str) -> str | None:
    """``sources=`` and ``block=``: up to 16 IP addresses separated by commas."""
    found = value.split(",")
    if len(found) <= MAX_FILTER_ADDRESSES and all(_ip(one) for one in found):
        return None
    return f"must be up to {MAX_FILTER_ADDRESSES} IP addresses separated by commas"


_FLAG = _one_of("0", "1")
#: udp:// and rtp://: the receiving socket's buffer, at most 16 MiB (the kernel
#: caps it further at net.core.rmem_max).
_SOCKET_BUFFER = _whole(1, 16 * 1024 * 1024)
#: Microseconds of SRT latency: up to 10 s.
_LATENCY = _whole(0, 10_000_000)

#: The query options each scheme may carry, and what their values may be: the
#: options ffmpeg 5.1 reads from these schemes' URLs (libavformat/udp.c,
#: rtpproto.c, libsrt.c) that a receiver needs, with bounded values. Any other
#: option (fifo_size above the bound, rcvbuf, localport, connect, timeout...) is
#: refused. ``localaddr`` and ``reuse`` are for multicast groups only (see
#: :func:`_check_bind`).
QUERY_OPTIONS: dict[str, dict[str, Check]] = {
    "udp": {
        "buffer_size": _SOCKET_BUFFER,
        # 188-byte packets queued by ffmpeg's reading thread (default 28,672).
        "fifo_size": _whole(0, MAX_FIFO_PACKETS),
        "overrun_nonfatal": _FLAG,
        "pkt_size": _whole(1, 65507),
        "sources": _addresses,
        "block": _addresses,
        "localaddr": lambda value: None if _ip(value) else "must be an IP address",
        "reuse": _FLAG,
    },
    "rtp": {
        "buffer_size": _SOCKET_BUFFER,
        "pkt_size": _whole(1, 65507),
        "sources": _addresses,
        "block": _addresses,
    },
    "srt": {
        "mode": _one_of("caller", "listener"),
        "passphrase": _text(10, 79),
        "pbkeylen": _one_of("0", "16", "24", "32"),
        "enforced_encryption": _FLAG,
        "streamid": _text(1, 512),
        "latency": _LATENCY,
        "tsbpddelay": _LATENCY,
        "rcvlatency": _LATENCY,
        "peerlatency": _LATENCY,
        # Milliseconds.
        "connect_timeout": _whole(1, 60_000),
        "payload_size": _whole(1, 1456),
        "pkt_size": _whole(1, 1456),
        "transtype": _one_of("live"),
    },
}

#: Words of an rtsp:// query that ffmpeg takes for itself (libavformat/rtsp.c)
#: and that make it receive RTP on local UDP ports; the rest goes to the camera.
RTSP_REFUSED = ("udp", "multicast")

_MULTICAST_ONLY = ("localaddr", "reuse")


def query_items(url: str) -> list[tuple[str, str]]:
    """``(key, value)`` of a URL's query as ffmpeg's ``av_find_info_tag`` reads
    them: everything after the first ``?`` (a ``#`` included), split at ``&``,
    nothing decoded."""
    _, mark, query = url.partition("?")
    if not mark:
        return []
    return [(key, value) for key, _, value in (item.partition("=") for item in query.split("&"))]


def _check_query(scheme: str, url: str) -> None:
    if url.count("?") > 1:
        raise InvalidSource("URL must not have more than one '?'")
    allowed = QUERY_OPTIONS.get(scheme)
    for key, value in query_items(url):
        if allowed is None:
            if key.lower() in RTSP_REFUSED:
                raise InvalidSource(
                    f"rtsp option {key!r} is not allowed: streamrec reads RTSP over TCP"
                )
            continue
        check = allowed.get(key)
        if check is None:
            names = ", ".join(sorted(allowed))
            raise InvalidSource(f"{scheme} option {key!r} is not allowed: use {names}")
        problem = check(value)
        if problem is not None:
            raise InvalidSource(f"{scheme} option {key!r} {problem}")


# -- sources that listen --------------------------------------------------------------
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def listen_address(url: str) -> str | None:
    """The local address ffmpeg must bind for this source to receive on, when it
    listens on a unicast address (udp://, rtp://); None for every other source."""
    parts = urlsplit(url.partition("?")[0])
    if parts.scheme.lower() not in ("udp", "rtp") or not parts.hostname:
        return None
    address = _ip(parts.hostname)
    return None if address is None or address.is_multicast else str(address)


def listens(url: str) -> bool:
    """Whether recording ``url`` makes ffmpeg listen on a port of this box for
    whoever sends to it: a unicast udp:// or rtp:// source, an SRT listener.
    (A multicast group is joined; everything else is pulled.)"""
    try:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "srt":
            return ("mode", "listener") in query_items(url)
        return listen_address(url) is not None
    except ValueError:
        return False  # malformed: validate_source_url says why


def _check_bind(scheme: str, url: str) -> None:
    """udp://, rtp:// and SRT listeners bind a local address: it must be spelled
    out (0.0.0.0 for every interface, on purpose), and the port must be one a
    service may take."""
    parts = urlsplit(url.partition("?")[0])
    host, port, items = parts.hostname, parts.port, query_items(url)
    listener = scheme != "srt" or ("mode", "listener") in items
    if parts.username:
        raise InvalidSource(f"a {scheme}:// URL takes no user: write {scheme}://ADDRESS:PORT")
    if not host and not listener:
        raise InvalidSource("URL has no host")
    if port is None:
        raise InvalidSource(f"a {scheme}:// URL needs a port")
    if not listener:
        return
    address = _ip(host) if host else None
    if address is not None and "@" in parts.netloc:
        bare = parts.netloc.rpartition("@")[2]
        raise InvalidSource(f"write {scheme}://{bare}, without '@'")
    if address is None:
        raise InvalidSource(
            f"{scheme}://{parts.netloc} listens for the source: name the local IP address "
            f"to listen on, such as {scheme}://0.0.0.0:{port} for every interface"
        )
    top = 65534 if scheme == "rtp" else 65535  # rtp takes the next port for RTCP
    if not MIN_LISTEN_PORT <= port <= top:
        raise InvalidSource(f"a listening source's port must be from {MIN_LISTEN_PORT} to {top}")
    if not address.is_multicast and any(key in _MULTICAST_ONLY for key, _ in items):
        raise InvalidSource(f"{scheme} options localaddr and reuse are for multicast groups only")


def input_options(url: str, timeout_seconds: float) -> list[str]:
    """ffmpeg options placed before ``-i URL`` for this source."""
    scheme = urlsplit(url).scheme.lower()
    micros = str(int(timeout_seconds * 1_000_000))
    options = ["-protocol_whitelist", PROTOCOL_WHITELIST]
    options += ["-format_whitelist", INPUT_FORMATS[scheme]]
    if scheme in ("rtsp", "rtsps"):
        # TCP interleaving: cameras behind NAT and lossy links lose no packets.
        options += ["-rtsp_transport", "tcp", "-timeout", micros]
    elif scheme in ("udp", "rtp"):
        options += ["-timeout", micros, "-fflags", "+genpts"]
    else:
        options += ["-rw_timeout", micros]
    if scheme in ("http", "https"):
        options += ["-reconnect", "1", "-reconnect_streamed", "1", "-reconnect_delay_max", "5"]
    address = listen_address(url)
    if address is not None:
        # ffmpeg binds 0.0.0.0 for a unicast udp:// or rtp:// unless told otherwise.
        options += ["-localaddr", address]
    return options
