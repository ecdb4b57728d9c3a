#!/usr/bin/env python3
"""Benchmark the ``transcode`` clip encoder against ffmpeg's own re-encode.

Usage::

    python bench/transcode_bench.py [--seconds 60] [--size 1280x720] [--repeat 1]
                                    [--preset veryfast]

What it does:

1. Uses ``clip_bench.py``'s cached recording (``seconds + 10`` s of 25 fps
   H.264 + AAC in 2 s fragmented-MP4 segments; recorded on first use).
2. For a ``seconds``-long clip starting mid-GOP (``T0 + 3 s``), times side by
   side, in one run, interleaved (``--repeat`` rounds, after no warm-up: a
   re-encode dwarfs page-cache effects):

   * ``streamrec transcode``: ``TranscodeEncoder.encode`` in a real reactor,
     i.e. ``build_clip`` to a scratch file plus ffmpeg as a Twisted child
     process (libx264 ``--preset``, crf 23, no B-frames, AAC 96k, faststart);
   * ``ffmpeg -ss -i concat``: ``ffmpeg -ss OFFSET -f concat -safe 0 -i
     list.txt -t SECONDS`` with the same codec settings, run as one process
     (fast input seeking: it decodes from the keyframe before OFFSET).
   * ``build_clip`` (copy, no re-encode) for scale.

   For each: wall time, CPU time of the children (ffmpeg), output bytes,
   duration as PyAV reports it, whether the file has an edit list.

Timings are informative only (shared machines): nothing is asserted.
Standard library + PyAV + Twisted; ffmpeg from PATH.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)  # the working tree, and clip_bench's helpers

import av  # noqa: E402
import clip_bench  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from streamrec.builtin.transcode_encoder import TranscodeEncoder  # noqa: E402
from streamrec.media.mp4 import SegmentPiece, build_clip  # noqa: E402
from streamrec.plugins import EncodeRequest, PluginContext  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def has_edit_list(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4 << 20)  # faststart: moov comes first
    return b"elst" in head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="clip length (s)")
    parser.add_argument("--size", default="1280x720", help="video size WxH")
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds")
    parser.add_argument("--preset", default="veryfast", help="libx264 preset for both")
    args = parser.parse_args()
    if args.seconds < 1 or args.repeat < 1:
        parser.error("--seconds and --repeat must be >= 1")
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))
    return 0


async def run(reactor: object, args: argparse.Namespace) -> None:
    ffmpeg = clip_bench.ffmpeg_path()
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True)
    print(
        f"python {sys.version.split()[0]}, {version.stdout.splitlines()[0]}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    _directory, paths = clip_bench.record(ffmpeg, args.seconds + 10, args.size)
    pieces = clip_bench.make_pieces(paths)
    total = sum(d for _p, d in pieces)
    start = clip_bench.T0 + clip_bench.START_OFFSET
    stop = min(start + args.seconds, clip_bench.T0 + total)
    used: list[SegmentPiece] = clip_bench.overlapping(pieces, start, stop)
    work = tempfile.mkdtemp(prefix="streamrec-transcode-bench-")
    try:
        list_path = os.path.join(work, "list.txt")
        clip_bench.write_concat_list([p.path for p in used], list_path)
        offset = start - used[0].wall_start
        print(
            f"clip {stop - start:g} s of {args.size} from {len(used)} segments, "
            f"starting {offset:.2f} s into the first (mid-GOP); preset {args.preset}"
        )

        encoder = TranscodeEncoder(
            PluginContext(reactor=reactor, data_dir=work, public_url="", ffmpeg=ffmpeg)
        )
        outs = {
            "streamrec transcode": os.path.join(work, "transcode.mp4"),
            "ffmpeg -ss -i concat": os.path.join(work, "ffmpeg.mp4"),
            "build_clip (copy)": os.path.join(work, "copy.mp4"),
        }

        async def streamrec_transcode() -> None:
            request = EncodeRequest(
                pieces=used,
                start=start,
                stop=stop,
                out_path=outs["streamrec transcode"],
                options={"preset": args.preset},
                progress=lambda fraction: None,
            )
            await encoder.encode(request)

        async def ffmpeg_reencode() -> None:
            cmd = [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                "-ss", f"{offset:.6f}", "-f", "concat", "-safe", "0", "-i", list_path,
                "-t", f"{stop - start:.6f}",
                "-c:v", "libx264", "-preset", args.preset, "-crf", "23", "-bf", "0",
                "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
                "-movflags", "+faststart", outs["ffmpeg -ss -i concat"],
            ]  # fmt: skip
            await _run_blocking(cmd)  # in a thread: the reactor stays free

        async def copy_clip() -> None:
            build_clip(used, start, stop, outs["build_clip (copy)"])  # ms: timed inline

        methods: dict[str, Callable[[], object]] = {
            "streamrec transcode": streamrec_transcode,
            "ffmpeg -ss -i concat": ffmpeg_reencode,
            "build_clip (copy)": copy_clip,
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        cpu: dict[str, list[float]] = {name: [] for name in methods}
        names = list(methods)
        for i in range(args.repeat):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                before_cpu = children_cpu()
                t = time.perf_counter()
                await methods[name]()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(children_cpu() - before_cpu)
                print(f"  round {i + 1}: {name}: {times[name][-1]:.2f} s", flush=True)

        base = statistics.median(times["ffmpeg -ss -i concat"])
        print()
        header = (
            f"{'method':<22} {'wall s':>8} {'ffmpeg CPU s':>13} {'x ffmpeg':>9} "
            f"{'out bytes':>12} {'out dur s':>9} {'edit list':>9} {'codecs':>10}"
        )
        print(header)
        print("-" * len(header))
        for name in names:
            path = outs[name]
            wall = statistics.median(times[name])
            dur = clip_bench.media_duration(path)
            print(
                f"{name:<22} {wall:>8.2f} {statistics.median(cpu[name]):>13.2f} "
                f"{wall / base:>9.2f} {os.path.getsize(path):>12,} "
                f"{(f'{dur:.2f}' if dur is not None else '-'):>9} "
                f"{('yes' if has_edit_list(path) else 'no'):>9} {codecs(path):>10}"
            )
        print()
        print(
            "ffmpeg -ss before -i over concat decodes from the keyframe before the "
            "offset and drops the lead-in; streamrec decodes the exact copy clip "
            "(its edit list does the same)."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def codecs(path: str) -> str:
    with av.open(path) as container:
        kinds = ("video", "audio")
        return "+".join(s.codec_context.name for s in container.streams if s.type in kinds)


async def _run_blocking(cmd: list[str]) -> None:
    await deferToThread(subprocess.run, cmd, check=True, stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
