"""The service's settings, as ``twistd streamrec`` options and the config file give them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Config:
    listen: str = "tcp:8080"
    data_dir: str = "./data"
    database: str = ""
    public_url: str = ""
    storage: str = "local"
    encoder: str = "copy"
    ffmpeg: str = ""
    segment_seconds: float = 2.0
    start_timeout: float = 8.0
    max_clip_seconds: float = 4 * 3600.0
    clip_workers: int = 2
    load_plugins: bool = True
    max_age: float = 0.0
    max_bytes: int = 0
    min_free: int = 1 << 30
    clip_ttl: float = 7 * 86400.0
    retention_interval: float = 60.0
    reconnect_max: float = 30.0
    # Under a stream's clock=auto, the camera's clock is followed while it is
    # within this many seconds of arrival time.
    clock_tolerance: float = 5.0
    # Several nodes on one database: this node's name (default: the host name),
    # how many streams it records at most (0: no limit), and the lease length.
    node: str = ""
    max_streams: int = 0
    lease_seconds: float = 15.0
    # How long a clip job waits for a node that holds part of its recording.
    clip_wait: float = 600.0
    # Clip jobs pending or being built at most (0: no bound); past it, 503.
    max_clip_jobs: int = 200
    # How long get_clip waits for a quick (copy) clip of a recorded range.
    clip_answer_wait: float = 2.0
    # The API's callers and their roles (streamrec.auth); empty: the API is open.
    tokens: str = ""
    # The Ed25519 private key (PEM) that signs each clip's manifest; empty: unsigned.
    signing_key: str = ""
    # What HTTP clients may hold (streamrec.web; 0 turns one off): connections
    # in all and per address, file descriptors kept for recording, and the
    # seconds a request's head, its body and an idle connection may take.
    max_connections: int = 512
    max_connections_per_ip: int = 128
    fd_reserve: int = 256
    header_timeout: float = 15.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    # Settings of plugins by name: the [NAME] sections of the --config file.
    plugin_settings: dict[str, dict[str, str]] = field(default_factory=dict)


class ConfigError(ValueError):
    pass


def plugin_config(config: Config) -> dict[str, Any]:
    """What plugins see as ``context.config``: the options, and each plugin's
    own section of the config file under its name (``config["s3"]``)."""
    options = {key: value for key, value in vars(config).items() if key != "plugin_settings"}
    return {**options, **config.plugin_settings}


_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def public_url(config: Config) -> str:
    """The base of the links handed out: ``--public-url``, else ``http://HOST:PORT``
    of a ``tcp:``/``ssl:`` ``--listen`` (127.0.0.1 for every interface)."""
    if config.public_url:
        return config.public_url.rstrip("/")
    kind, *args = [part.replace("\\:", ":") for part in _UNESCAPED_COLON.split(config.listen)]
    keywords = dict(arg.split("=", 1) for arg in args if "=" in arg)
    positional = [arg for arg in args if "=" not in arg]
    port = keywords.get("port") or (positional[0] if positional else "")
    if kind not in ("tcp", "tcp6", "ssl") or not port.isdigit():
        raise ConfigError(f"--public-url is needed to link to clips served on {config.listen!r}")
    if int(port) == 0:
        raise ConfigError("--listen on port 0 (any free port) needs --public-url")
    host = keywords.get("interface", "")
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}"
