"""streamrec: record live video sources and cut MP4 clips over a JSON HTTP API."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("streamrec")
"""Decorator for plugin hook implementations: ``@streamrec.hookimpl``."""

__all__ = ["hookimpl", "__version__"]
