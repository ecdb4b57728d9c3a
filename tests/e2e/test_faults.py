"""Fault tests, end to end: real ffmpeg segmenters, real UDP sources on 127.0.0.1,
real files and SQLite. Each fault is inflicted on a recording service and the
archive is checked afterwards:

- gap: wall-clock seconds with no recording, measured in the index;
- lost: indexed segments that disappeared, plus files under
  DATA_DIR/segments that are neither indexed nor moved to DATA_DIR/quarantine
  once the dust has settled (the service stopped gracefully).

Every test prints one ``FAULT ...`` line with what it measured.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.trial import unittest

from ..support.harness import FRAME, Service, ServiceTestCase, sleep, until
from ..support.livesource import FPS, UdpTsSource, free_port
from ..support.service_process import (
    ServiceProcess,
    alive,
    kill_processes_under,
    processes_under,
)

GAP = 0.5  # seconds between two indexed segments that count as a gap


# -- the archive as it is on disk and in SQLite ----------------------------------
def query(data_dir: str, sql: str, params: tuple = ()) -> list[tuple]:
    connection = sqlite3.connect(os.path.join(data_dir, "streamrec.sqlite"), timeout=15)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def indexed(data_dir: str, stream_id: int | None = None) -> dict[str, tuple[int, float, float]]:
    """{path: (run_id, start, end)} of the indexed segments."""
    sql = "SELECT path, run_id, start_time, end_time FROM segments"
    params: tuple = ()
    if stream_id is not None:
        sql += " WHERE stream_id = ?"
        params = (stream_id,)
    return {path: (run, start, end) for path, run, start, end in query(data_dir, sql, params)}


def files_under(directory: str) -> set[str]:
    found = set()
    for parent, _dirs, names in os.walk(directory):
        for name in names:
            found.add(os.path.join(parent, name))
    return found


def segment_files(data_dir: str) -> set[str]:
    return files_under(os.path.join(data_dir, "segments"))


def quarantined(data_dir: str) -> set[str]:
    return files_under(os.path.join(data_dir, "quarantine"))


def gaps(data_dir: str, stream_id: int, after: float = 0.0) -> list[float]:
    """Wall time with no recording between consecutive runs (segmenter processes)
    that recorded something, plus any hole inside a run; rounded seconds."""
    runs: dict[int, list[tuple[float, float]]] = {}
    for run, start, end in indexed(data_dir, stream_id).values():
        runs.setdefault(run, []).append((start, end))
    found = []
    previous_end = None
    for run in sorted(runs, key=lambda r: min(runs[r])):
        spans = sorted(runs[run])
        if previous_end is not None and spans[0][0] > after:
            found.append(round(spans[0][0] - previous_end, 2))
        for (_s1, end), (start, _e2) in zip(spans, spans[1:]):
            if start - end > GAP and start > after:
                found.append(round(start - end, 2))
        previous_end = spans[-1][1]
    return found


def losses(data_dir: str, seen: set[str], deleted_ok: bool = False) -> dict[str, list[str]]:
    """What the archive lost once nothing writes to it any more.

    ``seen``: paths that were indexed at some point. With ``deleted_ok``
    (retention ran), an indexed segment that left the index together with its
    file was deleted on purpose; one still indexed whose file is gone is lost.
    """
    data_dir = os.path.abspath(data_dir)
    now_indexed = set(indexed(data_dir))
    on_disk = segment_files(data_dir)
    gone = {path for path in now_indexed if not os.path.exists(path)}
    if not deleted_ok:
        gone |= {path for path in seen if path not in now_indexed or not os.path.exists(path)}
    return {
        "indexed_gone": sorted(gone),
        "unindexed": sorted(on_disk - now_indexed),
    }


def lost_count(loss: dict[str, list[str]]) -> int:
    return len(loss["indexed_gone"]) + len(loss["unindexed"])


class FaultCase(ServiceTestCase):
    timeout = 150

    async def start_stream(self, service: Service, url: str) -> int:
        stream_id = (await service.ok("POST", "/streams/create", url=url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")
        await until(lambda: self._first(service, stream_id), 25, f"the first segment of {url}")
        return stream_id

    async def _first(self, service: Service, stream_id: int) -> float | None:
        return (await service.status(stream_id))["recorded"]["first"]

    async def recorded_after(self, service: Service, stream_id: int, when: float) -> bool:
        last = (await service.status(stream_id))["recorded"]["last"]
        return last is not None and last > when

    def assertNothingLost(self, loss: dict[str, list[str]], data_dir: str) -> None:
        if lost_count(loss):
            self.fail(
                f"lost: {json.dumps(loss, indent=1)}\nquarantine: {sorted(quarantined(data_dir))}"
            )


# -- 1. kill -9 of the segmenter, three times ----------------------------------------
class SegmenterKillTests(FaultCase):
    @defer.inlineCallbacks
    def test_segmenter_killed_three_times(self):
        yield defer.ensureDeferred(self._kill_three_times())

    async def _kill_three_times(self) -> None:
        source = UdpTsSource.running(self, audio=None)
        service = await self.service(reconnect_max=2)
        data_dir = os.path.abspath(service.data_dir)
        stream_id = await self.start_stream(service, source.url)
        recorder = service.service.streams.recorders.by_stream[stream_id]
        seen: set[str] = set()
        kills: list[float] = []
        killed_runs: list[int] = []

        async def new_run_recording() -> bool:
            run = recorder.run
            return bool(
                run is not None
                and run.run_id not in killed_runs
                and not run.exited
                and run.segments >= 1
                and recorder.process is not None
                and recorder.state == "recording"
            )

        for _ in range(3):
            await until(new_run_recording, 30, "a run recording with a closed segment")
            if kills:
                await sleep(max(0.0, kills[-1] + 4 - time.time()))
            seen |= set(indexed(data_dir))
            killed_runs.append(recorder.run.run_id)
            kills.append(time.time())
            os.kill(recorder.process.pid, signal.SIGKILL)
        await until(new_run_recording, 30, "recording again after the last kill")
        await until(lambda: self.recorded_after(service, stream_id, kills[-1] + 3), 30, "3 s more")
        status = await service.status(stream_id)
        self.assertEqual(status["state"], "recording")
        self.assertGreaterEqual(status["reconnects"], 3)
        seen |= set(indexed(data_dir))
        await service.stop()  # the dust settles: the last segment is closed and indexed
        seen |= set(indexed(data_dir))
        found = gaps(data_dir, stream_id)
        loss = losses(data_dir, seen)
        print(
            f"\nFAULT kill-9 segmenter x3: gaps {found} s, lost {lost_count(loss)}"
            f" (quarantined {len(quarantined(data_dir))})"
        )
        self.assertNothingLost(loss, data_dir)
        self.assertEqual(len(found), 3, f"one gap per kill expected: {found}")
        for gap in found:
            self.assertLess(gap, 8)


# -- 2. the source goes away for 20 s ------------------------------------------------
class SourceOutageTests(FaultCase):
    @defer.inlineCallbacks
    def test_source_outage_of_20_seconds(self):
        yield defer.ensureDeferred(self._outage())

    async def _outage(self) -> None:
        source = UdpTsSource.running(self, audio=None)
        service = await self.service(reconnect_max=2)
        data_dir = os.path.abspath(service.data_dir)
        stream_id = await self.start_stream(service, source.url)
        await service.recorded_until(stream_id, time.time() + 2)
        t0_before = source.refresh_t0()
        going = time.time()
        outage = source.outage(20)
        ended: list[Any] = []
        outage.addBoth(ended.append)
        # A client asks for the range across the outage while the camera is down:
        # the job waits until the recording has reached its end.
        job_params = {"start": going - 4, "stop": going + 24.5}
        job = await service.ok("GET", f"/streams/{stream_id}/get_clip", **job_params)
        self.assertEqual(job["status"], "pending", job)
        states = []
        while not ended:
            state = (await service.status(stream_id))["state"]
            if not states or states[-1] != state:
                states.append(state)
            await sleep(0.5)
        if isinstance(ended[0], Failure):
            ended[0].raiseException()
        went, came_back = ended[0]
        # The moment the first segment after the outage is indexed, a clip of it
        # already shows the right frames (its clock anchor is final).
        first_run = {run for run, _s, _e in indexed(data_dir, stream_id).values()}

        async def fresh_segment() -> Any:
            new = [
                (start, end)
                for run, start, end in indexed(data_dir, stream_id).values()
                if run not in first_run
            ]
            return min(new) if new else None

        fresh_start, fresh_end = await until(
            fresh_segment, 40, "the first segment after the outage", interval=0.05
        )
        fresh_params = {"start": fresh_start + 0.5, "stop": fresh_end - 0.3}
        fresh = await service.clip(stream_id, timeout=30, **fresh_params)
        await until(
            lambda: self.recorded_after(service, stream_id, came_back + 4),
            40,
            "recording again after the outage",
        )
        status = await service.status(stream_id)
        job = await service.clip(stream_id, timeout=30, **job_params)
        self.assertEqual(len(job["clips"]), 2, job)
        before, after = job["clips"]
        shown = [await self.fetch(service, clip) for clip in (before, after)]
        clip_gap = after["start"] - before["stop"]
        # What the source sent during the outage was nothing: the frame numbers
        # jump by about the outage.
        jump = (shown[1]["numbers"][0] - shown[0]["numbers"][-1]) / FPS
        # Each clip starts with the frame that left the source at its start.
        t0_after = source.refresh_t0()
        [fresh_clip] = fresh["clips"]
        fresh_shown = await self.fetch(service, fresh_clip)
        errors = [
            t0_before + shown[0]["numbers"][0] / FPS - before["start"],
            t0_after + shown[1]["numbers"][0] / FPS - after["start"],
            t0_after + fresh_shown["numbers"][0] / FPS - fresh_clip["start"],
        ]
        seen = set(indexed(data_dir))
        await service.stop()
        seen |= set(indexed(data_dir))
        found = gaps(data_dir, stream_id)
        loss = losses(data_dir, seen)
        print(
            f"\nFAULT source outage {came_back - went:.1f} s: gaps {found} s"
            f" (clips {clip_gap:.2f} s apart, frames jump {jump:.2f} s), states {states},"
            f" clip start errors (before, after, asked at once) {[round(e, 2) for e in errors]} s,"
            f" lost {lost_count(loss)}"
        )
        self.assertIn("reconnecting", states, f"states seen during the outage: {states}")
        self.assertEqual(status["state"], "recording")
        self.assertNothingLost(loss, data_dir)
        self.assertEqual(len(found), 1, found)
        self.assertTrue(15 <= found[0] <= 35, found)
        self.assertTrue(15 <= clip_gap <= 35, clip_gap)
        # The clips say when their video was recorded: the first frame shown is the
        # one at the clip's start (the same tolerance as the end-to-end tests).
        for which, error in zip(("before", "after", "asked at once after"), errors):
            self.assertLess(abs(error), 0.3, f"the clip {which} the outage is off by {error:.2f} s")
        self.assertLess(abs(clip_gap - found[0]), 0.3, "clips and index disagree on the gap")


# -- 3. kill -9 of the whole service ----------------------------------------------------
class ServiceKillTests(FaultCase):
    @defer.inlineCallbacks
    def test_service_killed_and_restarted(self):
        yield defer.ensureDeferred(self._service_killed())

    async def _service_killed(self) -> None:
        source = UdpTsSource.running(self, audio=None)
        data_dir = os.path.abspath(self.mktemp())
        segments_dir = os.path.join(data_dir, "segments")
        port = free_port("tcp")
        self.addCleanup(kill_processes_under, data_dir)
        first = ServiceProcess(self, data_dir, port, log_path=data_dir + ".first.log")
        self.addCleanup(lambda: defer.ensureDeferred(first.stop()))
        await first.start()
        stream_id = await self.start_stream(first, source.url)
        await first.recorded_until(stream_id, time.time() + 6, timeout=30)
        segmenters = [
            pid for pid, parent in processes_under(segments_dir).items() if parent == first.pid
        ]
        self.assertEqual(len(segmenters), 1, f"segmenters of {first.pid}: {segmenters}")
        [segmenter] = segmenters
        # A job whose end is still to come: it stays pending across the crash.
        recorded = (await first.status(stream_id))["recorded"]
        job_params = {"start": recorded["first"] + 1.0, "stop": time.time() + 4.0}
        job = await first.ok("GET", f"/streams/{stream_id}/get_clip", **job_params)
        self.assertEqual(job["status"], "pending", job)
        before_kill = set(indexed(data_dir))
        killed_at = time.time()
        await first.kill(signal.SIGKILL)
        self.assertFalse(first.running())
        # Left alone, does the orphaned ffmpeg notice (SIGPIPE / EPIPE on its pipes)?
        deadline = time.time() + 5
        while alive(segmenter) and time.time() < deadline:
            await sleep(0.1)
        died_alone = not alive(segmenter)
        died_after = time.time() - killed_at
        # Restart on the same data dir and port.
        second = ServiceProcess(self, data_dir, port, log_path=data_dir + ".second.log")
        self.addCleanup(lambda: defer.ensureDeferred(second.stop()))
        restarted_at = time.time()
        await second.start()
        answered_after = time.time() - restarted_at
        self.assertFalse(alive(segmenter), f"old segmenter {segmenter} still runs")
        strangers = {
            pid: parent
            for pid, parent in processes_under(segments_dir).items()
            if parent != second.pid
        }
        self.assertEqual(strangers, {}, "processes in DATA_DIR/segments not the new service's")
        recovery = re.search(
            r"recovery: (\d+) segments indexed from disk, (\d+) quarantined, (\d+) leftover",
            second.log_text(),
        )
        # Everything the dead service's runs left on disk is indexed (or quarantined).
        old_files = {
            path for path in segment_files(data_dir) if path.startswith(segments_dir + os.sep)
        }
        now_indexed = set(indexed(data_dir))
        recovered = {p for p in old_files if p not in before_kill and p in now_indexed}
        self.assertEqual(sorted(old_files - now_indexed), [], "old segments not indexed")
        self.assertEqual(sorted(before_kill - now_indexed), [], "indexed segments gone")

        async def recording() -> bool:
            status = await second.status(stream_id)
            return status["state"] == "recording"

        await until(recording, 12, "recording again after the restart")
        recording_after = time.time() - restarted_at
        # The pending job ends done, never stuck.
        job = await second.clip(stream_id, timeout=40, **job_params)
        self.assertEqual(job["status"], "done", job)
        self.assertGreaterEqual(len(job["clips"]), 1, job)
        for clip in job["clips"]:
            await self.fetch(second, clip)
        seen = set(indexed(data_dir)) | before_kill
        await second.stop()
        self.assertFalse(processes_under(segments_dir), "segmenters left after a graceful stop")
        seen |= set(indexed(data_dir))
        found = gaps(data_dir, stream_id)
        loss = losses(data_dir, seen)
        pending = query(
            data_dir, "SELECT id, status FROM clip_jobs WHERE status IN ('pending', 'processing')"
        )
        print(
            f"\nFAULT kill-9 service: gaps {found} s, lost {lost_count(loss)};"
            f" ffmpeg {'ended by itself' if died_alone else 'survived'}"
            f" ({died_after:.1f} s), recovery {recovery.groups() if recovery else None}"
            f" (indexed/quarantined/orphans), {len(recovered)} segments indexed from disk,"
            f" API after {answered_after:.1f} s, recording after {recording_after:.1f} s,"
            f" job {job['status']} with {len(job['clips'])} clips"
        )
        self.assertNothingLost(loss, data_dir)
        self.assertEqual(pending, [])
        self.assertLess(recording_after, 12)
        self.assertEqual(len(found), 1, found)
        self.assertLess(found[0], 15, found)


# -- 4. the data disk fills up --------------------------------------------------------------
def fill(path: str) -> int:
    """Write ``path`` until the file system says ENOSPC; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as handle:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512):
            block = b"\0" * chunk
            while True:
                try:
                    written += handle.write(block)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    return written


class DiskFullTests(FaultCase):
    @defer.inlineCallbacks
    def test_disk_fills_then_room_comes_back(self):
        """No free-space rule: ffmpeg hits the full disk, the state says so,
        and recording resumes by itself once there is room again."""
        yield defer.ensureDeferred(self._disk_full(min_free=0))

    @defer.inlineCallbacks
    def test_retention_keeps_room_on_a_filling_disk(self):
        """With --min-free, the janitor deletes the oldest segments and
        recording carries on while something else fills the disk."""
        yield defer.ensureDeferred(self._disk_full(min_free=2 << 20))

    def mount_tmpfs(self, size: str) -> str:
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a tmpfs needs root")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if result.returncode != 0:
            raise unittest.SkipTest(f"cannot mount a tmpfs: {result.stderr.strip()}")

        def unmount() -> None:
            kill_processes_under(where)
            if subprocess.run(["umount", where], capture_output=True, timeout=20).returncode:
                subprocess.run(["umount", "-l", where], capture_output=True, timeout=20)

        self.addCleanup(unmount)
        return where

    async def _disk_full(self, min_free: int) -> None:
        data_dir = self.mount_tmpfs("20m")
        source = UdpTsSource.running(self, audio=None)
        service = await self.service(
            data_dir=data_dir, min_free=min_free, retention_interval=1, reconnect_max=2
        )
        stream_id = await self.start_stream(service, source.url)
        await service.recorded_until(stream_id, time.time() + 5)
        janitor = service.service.janitor
        seen = set(indexed(data_dir))
        filler = os.path.join(data_dir, "filler")
        full_at = time.time()
        filled = await threads.deferToThread(fill, filler)
        observed: list[tuple[str, str | None]] = []
        codes: list[int] = []

        async def watch() -> bool:
            code, status = await service.call("GET", f"/streams/{stream_id}/status")
            codes.append(code)
            if code != 200:
                return False
            seen.update(indexed(data_dir))
            entry = (status["state"], status["last_error"])
            if not observed or observed[-1] != entry:
                observed.append(entry)
            return status["state"] == "disk_full"

        if min_free:
            # The janitor makes room: recording goes on over the oldest segments.
            await soft(watch, 8, interval=0.1)
            self.assertGreater(janitor.deleted_segments, 0, "the janitor freed nothing")
            recorded = await soft(lambda: self.recorded_after(service, stream_id, full_at + 4), 15)
            self.assertTrue(recorded, f"recording stopped on a filling disk: {observed}")
        else:
            full_seen = await soft(watch, 25, interval=0.1)
            self.assertTrue(full_seen, f"no disk_full state in the status: {observed}")
            error = (await service.status(stream_id))["last_error"] or ""
            self.assertIn("no space left", error.lower())
        # The API keeps answering while the disk is full.
        code, _ = await service.call("GET", "/streams/")
        codes.append(code)
        os.remove(filler)
        freed_at = time.time()

        async def recording_again() -> bool:
            status = await service.status(stream_id)
            fresh = [s for _r, s, _e in indexed(data_dir, stream_id).values() if s > freed_at]
            return status["state"] == "recording" and bool(fresh)

        resumed = await soft(recording_again, 25)
        seen.update(indexed(data_dir))
        await service.stop()
        found = gaps(data_dir, stream_id, after=full_at - 5)
        loss = losses(data_dir, seen, deleted_ok=True)
        print(
            f"\nFAULT disk full, min_free={min_free >> 20} MiB ({filled >> 10} KiB filler on a"
            f" 20 MiB tmpfs): gaps {found} s, lost {lost_count(loss)}, janitor deleted"
            f" {janitor.deleted_segments} segments, states {[state for state, _ in observed]},"
            f" recording again after the filler went: {resumed}"
        )
        # The database could not write while the disk was full: logged, survived.
        self.flushLoggedErrors(sqlite3.OperationalError)
        self.assertEqual(set(codes), {200}, "the API must keep answering")
        self.assertTrue(resumed, "not recording again after the disk got room")
        self.assertNothingLost(loss, data_dir)
        if min_free:
            self.assertEqual(found, [], "a gap while the janitor kept room")


async def soft(check: Any, timeout: float, interval: float = 0.25) -> bool:
    """``until`` that answers False instead of failing (to measure before asserting)."""
    try:
        await until(check, timeout, "", interval)
    except AssertionError:
        return False
    return True


# -- 5. restart while a clip job was being built ------------------------------------------
class InterruptedClipJobTests(FaultCase):
    @defer.inlineCallbacks
    def test_job_left_processing_is_rebuilt(self):
        yield defer.ensureDeferred(self._interrupted_job())

    async def _interrupted_job(self) -> None:
        source = UdpTsSource.running(self, audio=None)
        data_dir = os.path.abspath(self.mktemp())
        first = await Service(self, data_dir, reconnect_max=2).start()
        self.addCleanup(lambda: defer.ensureDeferred(first.stop()))
        stream_id = await self.start_stream(first, source.url)
        start_at = (await first.status(stream_id))["recorded"]["first"]
        await first.recorded_until(stream_id, start_at + 6)
        await first.stop()
        seen = set(indexed(data_dir))
        start, stop = round(start_at + 1.3, 3), round(start_at + 4.7, 3)  # as get_clip keeps them
        now = time.time()
        connection = sqlite3.connect(os.path.join(data_dir, "streamrec.sqlite"), timeout=15)
        with connection:
            job_id = connection.execute(
                "INSERT INTO clip_jobs (stream_id, start_time, stop_time, stop_given, encoder,"
                " options, status, progress, created_at, updated_at)"
                " VALUES (?, ?, ?, 1, 'copy', '{}', 'processing', 0.4, ?, ?)",
                (stream_id, start, stop, now - 2, now - 1),
            ).lastrowid
        connection.close()
        junk = os.path.join(data_dir, "tmp", "half-built-clip.mp4")
        os.makedirs(os.path.dirname(junk), exist_ok=True)
        with open(junk, "wb") as handle:
            handle.write(b"\0\0\0\x18ftypisom" + os.urandom(4000))
        restarted = time.time()
        second = await self.service(data_dir, reconnect_max=2)
        job = await second.clip(stream_id, timeout=40, start=start, stop=stop)
        built_in = time.time() - restarted
        self.assertEqual(job["job_id"], job_id, job)
        [clip] = job["clips"]
        shown = await self.fetch(second, clip)
        self.assertNear(clip["duration"], stop - start, FRAME)
        self.assertNear(len(shown["numbers"]), round((stop - start) * FPS), 1)
        self.assertFalse(os.path.exists(junk), "the half-built file is still in DATA_DIR/tmp")
        left = query(
            data_dir, "SELECT id, status FROM clip_jobs WHERE status IN ('pending', 'processing')"
        )
        self.assertEqual(left, [])
        seen |= set(indexed(data_dir))
        await second.stop()
        seen |= set(indexed(data_dir))
        found = gaps(data_dir, stream_id)
        loss = losses(data_dir, seen)
        print(
            f"\nFAULT restart during a clip job: job {job_id} {job['status']} after"
            f" {built_in:.1f} s ({len(shown['numbers'])} frames), junk removed, gaps {found} s,"
            f" lost {lost_count(loss)}"
        )
        self.assertNothingLost(loss, data_dir)
