#!/usr/bin/env python3
"""Benchmark streamrec's clip builder against ffmpeg's concat remux and a byte copy.

Usage::

    python bench/clip_bench.py [--seconds 60] [--size 1280x720] [--repeat 7]

What it does:

1. Records ``seconds + 10`` s of 25 fps H.264 (libx264 veryfast, 2 Mb/s, GOP
   2 s) + AAC into 2 s fragmented-MP4 segments with ffmpeg's segment muxer,
   exactly as the recorder does (cached in the temp dir, keyed by the
   parameters).  Each segment's ``wall_start`` is ``T0`` plus the summed
   durations (from ``segment_span``) of the segments before it.
2. For a ``seconds``-long clip and a 10 s clip, both starting mid-GOP, times
   side by side (interleaved, ``--repeat`` times each, after one untimed
   warm-up run):

   * ``build_clip``: frame-exact progressive MP4 from the fMP4 sample tables;
   * ``ffmpeg concat``: ``ffmpeg -f concat -safe 0 -i list.txt -c copy
     -movflags +faststart out.mp4`` over the same segments, run as a process;
   * ``byte copy``: the floor, the same segment files copied end to end into
     one file with ``os.copy_file_range`` (``shutil.copyfileobj`` fallback).
3. Measures the peak RSS (``ru_maxrss``) of a fresh Python process before and
   after ``build_clip`` for several clip lengths, to show memory does not grow
   with the clip length.

Timings are informative only (shared machines): nothing is asserted and the
script exits 0 once the table is printed.  Standard library + PyAV; ffmpeg
from PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the working tree, not an installed copy

import av  # noqa: E402

from streamrec.media import mp4  # noqa: E402
from streamrec.media.fmp4 import segment_span  # noqa: E402
from streamrec.media.mp4 import SegmentPiece, build_clip  # noqa: E402

FPS = 25
GOP_SECONDS = 2
SEGMENT_SECONDS = 2
VIDEO_BITRATE = "2M"
AUDIO_BITRATE = "64k"
T0 = 1_700_000_000.0  # wall time given to the first segment
START_OFFSET = 3.0  # clip start, seconds after T0: 1 s into the second GOP
FRAG = "movflags=+frag_keyframe+empty_moov+default_base_moof"
CACHE_VERSION = 1


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------


def ffmpeg_path() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        sys.exit("ffmpeg not found on PATH")
    return path


def record(ffmpeg: str, seconds: int, size: str) -> tuple[str, list[str]]:
    """Return (directory, segment paths) of a cached recording of ``seconds`` s."""
    key = hashlib.sha1(
        json.dumps(
            [CACHE_VERSION, seconds, size, VIDEO_BITRATE, FPS, GOP_SECONDS, SEGMENT_SECONDS]
        ).encode()
    ).hexdigest()[:12]
    directory = os.path.join(tempfile.gettempdir(), f"streamrec-clip-bench-{key}")
    manifest = os.path.join(directory, "segments.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            names = json.load(f)
        paths = [os.path.join(directory, n) for n in names]
        if all(os.path.exists(p) for p in paths):
            print(f"recording: cached in {directory}")
            return directory, paths
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    gop = FPS * GOP_SECONDS
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={FPS}",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        str(seconds),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        VIDEO_BITRATE,
        "-maxrate",
        VIDEO_BITRATE,
        "-bufsize",
        "4M",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        AUDIO_BITRATE,
        "-f",
        "segment",
        "-segment_time",
        str(SEGMENT_SECONDS),
        "-segment_format",
        "mp4",
        "-segment_format_options",
        FRAG,
        "-segment_list",
        "pipe:1",
        "-segment_list_type",
        "csv",
        os.path.join(directory, "seg%06d.mp4"),
    ]
    print(f"recording: {seconds} s of {size} into {directory} ...", end=" ", flush=True)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    names = [line.split(",")[0] for line in out.splitlines() if line.strip()]
    with open(manifest + ".tmp", "w") as f:
        json.dump(names, f)
    os.replace(manifest + ".tmp", manifest)  # written last: marks the cache complete
    print(f"{time.perf_counter() - t:.1f} s")
    return directory, [os.path.join(directory, n) for n in names]


def make_pieces(paths: list[str]) -> list[tuple[SegmentPiece, float]]:
    """(piece, duration) per segment; wall_start = T0 + sum of previous durations."""
    pieces, wall = [], T0
    for path in paths:
        first, end = segment_span(path)
        pieces.append((SegmentPiece(path, wall), end - first))
        wall += end - first
    return pieces


def overlapping(
    pieces: list[tuple[SegmentPiece, float]], start: float, stop: float
) -> list[SegmentPiece]:
    """The segments a recorder index would return for [start, stop)."""
    return [p for p, d in pieces if p.wall_start < stop and p.wall_start + d > start]


# --------------------------------------------------------------------------
# The three ways to produce the clip
# --------------------------------------------------------------------------


def run_build_clip(pieces: list[SegmentPiece], start: float, stop: float, out: str) -> None:
    build_clip(pieces, start, stop, out)


def run_ffmpeg_concat(ffmpeg: str, list_path: str, out: str) -> None:
    subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            list_path,
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            out,
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def run_byte_copy(paths: list[str], out: str) -> None:
    with open(out, "wb", buffering=0) as dst:  # unbuffered: shares the fd offset
        for path in paths:
            with open(path, "rb") as src:
                remaining = os.fstat(src.fileno()).st_size
                try:
                    while remaining > 0:
                        n = os.copy_file_range(src.fileno(), dst.fileno(), remaining)
                        if n == 0:
                            break
                        remaining -= n
                except OSError:  # e.g. EXDEV/ENOSYS: fall back to a userspace copy
                    shutil.copyfileobj(src, dst, 1 << 20)


def write_concat_list(paths: list[str], list_path: str) -> None:
    with open(list_path, "w") as f:
        for path in paths:
            escaped = path.replace("'", "'\\''")
            f.write(f"file '{escaped}'\n")


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    method: str
    run: Callable[[], None]
    out: str
    times: list[float] = field(default_factory=list)


def media_duration(path: str) -> float | None:
    """Container duration as libavformat (PyAV) reports it, edit lists applied."""
    try:
        with av.open(path) as container:
            return container.duration / av.time_base if container.duration else None
    except av.FFmpegError:
        return None


# Peak RSS is read in a fresh interpreter.  Its ru_maxrss is useless for this:
# Linux carries the parent's high-water mark across fork+exec (signal->maxrss),
# so the child reports the benchmark process's peak.  VmHWM in
# /proc/self/status belongs to the new address space only; ru_maxrss is
# reported too, for comparison.
_RSS_CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from streamrec.media.mp4 import SegmentPiece, build_clip

def hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

job = json.load(sys.stdin)
pieces = [SegmentPiece(p, w) for p, w in job["pieces"]]
before = {"hwm": hwm(), "maxrss": maxrss()}
result = build_clip(pieces, job["start"], job["stop"], job["out"])
after = {"hwm": hwm(), "maxrss": maxrss()}
print(json.dumps({"before": before, "after": after, "size": result.size}))
"""


def peak_rss(pieces: list[SegmentPiece], start: float, stop: float, out: str) -> dict:
    """Peak RSS (KiB) of a fresh interpreter before and after one build_clip."""
    job = {
        "pieces": [(p.path, p.wall_start) for p in pieces],
        "start": start,
        "stop": stop,
        "out": out,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, REPO],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="long clip length (s)")
    parser.add_argument("--size", default="1280x720", help="video size WxH")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per method")
    args = parser.parse_args()
    if args.seconds < 1 or args.repeat < 1:
        parser.error("--seconds and --repeat must be >= 1")

    ffmpeg = ffmpeg_path()
    print(
        f"python {sys.version.split()[0]}, PyAV {av.__version__}, "
        f"{subprocess.run([ffmpeg, '-version'], capture_output=True, text=True).stdout.split(chr(10))[0]}"
    )
    print(f"streamrec.media.mp4 from {mp4.__file__}")

    _directory, paths = record(ffmpeg, args.seconds + 10, args.size)
    pieces = make_pieces(paths)
    total = sum(d for _p, d in pieces)
    total_bytes = sum(os.path.getsize(p.path) for p, _d in pieces)
    print(
        f"segments: {len(pieces)} x ~{SEGMENT_SECONDS} s, {total:.2f} s, "
        f"{total_bytes / 1e6:.1f} MB ({total_bytes * 8 / total / 1e6:.2f} Mb/s)"
    )

    work = tempfile.mkdtemp(prefix="streamrec-clip-bench-out-")
    try:
        lengths = sorted({10, args.seconds})
        rows: list[Row] = []
        groups: dict[str, list[Row]] = {}
        for length in lengths:
            start = T0 + START_OFFSET
            stop = min(start + length, T0 + total)
            used = overlapping(pieces, start, stop)
            used_paths = [p.path for p in used]
            label = f"{stop - start:g} s"
            list_path = os.path.join(work, f"list-{length}.txt")
            write_concat_list(used_paths, list_path)
            outs = {m: os.path.join(work, f"{m}-{length}.mp4") for m in ("clip", "concat", "copy")}
            group = [
                Row(
                    label,
                    "build_clip",
                    lambda u=used, a=start, b=stop, o=outs["clip"]: run_build_clip(u, a, b, o),
                    outs["clip"],
                ),
                Row(
                    label,
                    "ffmpeg concat -c copy",
                    lambda lp=list_path, o=outs["concat"]: run_ffmpeg_concat(ffmpeg, lp, o),
                    outs["concat"],
                ),
                Row(
                    label,
                    "byte copy (floor)",
                    lambda u=used_paths, o=outs["copy"]: run_byte_copy(u, o),
                    outs["copy"],
                ),
            ]
            groups[label] = group
            rows += group
            print(
                f"clip {label}: wall [T0+{start - T0:g}, T0+{stop - T0:g}) "
                f"(mid-GOP start), {len(used)} segments, "
                f"{sum(os.path.getsize(p) for p in used_paths) / 1e6:.1f} MB in"
            )

        rss_at_start = maxrss_kib()
        for row in rows:  # warm-up: page cache, imports, ffmpeg binary
            row.run()
        for i in range(args.repeat):
            # Interleave the methods and rotate their order so drift on a
            # shared machine hits all of them alike.
            order = rows[i % len(rows) :] + rows[: i % len(rows)]
            for row in order:
                t = time.perf_counter()
                row.run()
                row.times.append(time.perf_counter() - t)
        rss_after_runs = maxrss_kib()  # before PyAV opens the outputs below

        print()
        print(
            f"{args.repeat} timed runs each (after 1 warm-up), interleaved; "
            f"ratio = median / median of ffmpeg concat"
        )
        header = (
            f"{'clip':>6}  {'method':<22} {'median ms':>10} {'min ms':>8} {'max ms':>8} "
            f"{'out bytes':>11} {'out dur s':>9} {'x ffmpeg':>9}"
        )
        print(header)
        print("-" * len(header))
        for label, group in groups.items():
            base = statistics.median(group[1].times)
            for row in group:
                med = statistics.median(row.times)
                dur = media_duration(row.out) if row.method != "byte copy (floor)" else None
                print(
                    f"{label:>6}  {row.method:<22} {fmt_ms(med):>10} "
                    f"{fmt_ms(min(row.times)):>8} {fmt_ms(max(row.times)):>8} "
                    f"{os.path.getsize(row.out):>11,} "
                    f"{(f'{dur:.2f}' if dur is not None else '-'):>9} {med / base:>9.3f}"
                )

        print()
        print(
            "peak RSS around one build_clip in a fresh Python process "
            "(streamrec imported before; KiB):"
        )
        print(
            f"{'clip':>8} {'VmHWM before':>13} {'after':>9} {'growth':>7}   "
            f"{'ru_maxrss before':>16} {'after':>9} {'out bytes':>12}"
        )
        rss_lengths = sorted({10, args.seconds, int(total - START_OFFSET)})
        for length in rss_lengths:
            start = T0 + START_OFFSET
            stop = min(start + length, T0 + total)
            used = overlapping(pieces, start, stop)
            r = peak_rss(used, start, stop, os.path.join(work, f"rss-{length}.mp4"))
            b, a = r["before"], r["after"]
            growth = a["hwm"] - b["hwm"] if a["hwm"] is not None else None
            print(
                f"{stop - start:>7.1f}s {b['hwm'] or '-':>13,} {a['hwm'] or '-':>9,} "
                f"{growth if growth is not None else '-':>7,}   "
                f"{b['maxrss']:>16,} {a['maxrss']:>9,} {r['size']:>12,}"
            )
        print("(ru_maxrss of a child starts at the parent's peak on Linux, hence VmHWM)")
        print(
            f"this benchmark process (PyAV loaded), ru_maxrss: {rss_at_start:,} KiB before "
            f"the warm-up and timed runs, {rss_after_runs:,} KiB after all "
            f"{(args.repeat + 1) * len(rows)} runs"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
