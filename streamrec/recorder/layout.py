"""Where segments lie on disk: the one owner of the layout.

``DATA_DIR/segments/<stream id>/<run id>/seg000000.mp4``: one directory per
run (one ffmpeg process), numbered files in the order ffmpeg wrote them.
Bad segments are moved to the same place under ``DATA_DIR/quarantine``.
The live recorder, recovery after a crash and the tests all go through
:class:`SegmentLayout`.
"""

from __future__ import annotations

import os

#: ffmpeg's output pattern for the segments of a run (relative to the run directory).
SEGMENT_PATTERN = "seg%06d.mp4"


def segment_name(index: int) -> str:
    return SEGMENT_PATTERN % index


def segment_index(name: str) -> int | None:
    """The number in a segment's file name, or None if it is not one."""
    if not (name.startswith("seg") and name.endswith(".mp4")):
        return None
    digits = name[3:-4]
    return int(digits) if digits.isdigit() else None


class SegmentLayout:
    """The segment and quarantine trees under one data directory."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.root = os.path.join(self.data_dir, "segments")
        self.quarantine_root = os.path.join(self.data_dir, "quarantine")

    def run_dir(self, stream_id: int, run_id: int) -> str:
        return os.path.join(self.root, str(stream_id), str(run_id))

    def segment_path(self, run_dir: str, index: int) -> str:
        return os.path.join(run_dir, segment_name(index))

    def segment_names(self, run_dir: str) -> list[str]:
        """The segment files of a run, in the order they were written."""
        names = [name for name in os.listdir(run_dir) if segment_index(name) is not None]
        return sorted(names, key=lambda name: segment_index(name) or 0)

    def quarantine(self, path: str) -> str:
        """Move a bad segment under ``DATA_DIR/quarantine``, keeping its place in the tree."""
        relative = os.path.relpath(path, self.root)
        if relative.startswith(".."):
            relative = os.path.basename(path)
        target = os.path.join(self.quarantine_root, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(path, target)
        return target
