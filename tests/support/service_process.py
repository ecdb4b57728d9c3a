"""streamrec as a real child process (``twistd -n streamrec``), for fault tests.

The service is spawned with ``subprocess.Popen`` (never waited on while the
reactor runs: only polled), talks HTTP on 127.0.0.1 and can be killed with
any signal, as an operator's box would kill it. ``/proc`` helpers find the
segmenters it leaves behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.trial import unittest

from .harness import Service, sleep
from .livesource import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ``python -m twisted.scripts.twistd`` does nothing (that module has no
# ``__main__`` guard), so the entry point is called the way the twistd script does.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


def twistd_command(*args: str) -> list[str]:
    return [*TWISTD, *args]


def child_env() -> dict[str, str]:
    """The environment of the child: the repository first on the path, so the
    dropin ``twisted/plugins/streamrec_plugin.py`` and this checkout are used."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- /proc ------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of a process, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def processes_under(directory: str) -> dict[int, int]:
    """{pid: ppid} of live processes whose working directory is inside ``directory``."""
    root = os.path.realpath(directory) + os.sep
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        if (cwd + os.sep).startswith(root):
            found[pid] = stat[1]
    return found


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                kids.append(int(entry))
    return kids


def kill_processes_under(directory: str) -> list[int]:
    """SIGKILL what still runs in ``directory`` (segmenters a test left behind)."""
    pids = list(processes_under(directory))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


class ServiceProcess(Service):
    """``twistd -n --pidfile= streamrec`` in a child process on a fixed port.

    ``call``/``ok``/``status``/``clip``/``download`` come from the in-process
    harness: they only need ``self.base``.
    """

    def __init__(
        self,
        testcase: unittest.TestCase,
        data_dir: str,
        port: int | None = None,
        log_path: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(testcase, data_dir)
        self.port = port or free_port("tcp")
        self.base = f"http://127.0.0.1:{self.port}"
        self.options = {"reconnect_max": 2, "start_timeout": 10, **options}
        self.log_path = log_path or os.path.abspath(data_dir) + f".{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        args = [
            "-n",
            "--pidfile=",
            "streamrec",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--data-dir",
            os.path.abspath(self.data_dir),
            "--no-plugins",
        ]
        for name, value in self.options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return twistd_command(*args)

    def spawn(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(("\n$ " + " ".join(self.command()) + "\n").encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self.in_child,
        )

    #: Run in the child before it executes the service (limits, say); None: nothing.
    in_child: Any = None

    async def start(self, timeout: float = 40) -> ServiceProcess:
        """Spawn and wait (bounded) until the API answers."""
        self.spawn()
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"streamrec exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                code, _ = await self.call("GET", "/streams/")
                if code == 200:
                    return self
            except Exception:
                pass
            if time.time() > deadline:
                raise AssertionError(
                    f"streamrec did not answer within {timeout:g} s:\n{self.log_tail()}"
                )
            await sleep(0.2)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_exit(self, timeout: float) -> bool:
        deadline = time.time() + timeout
        while self.process is not None and self.process.poll() is None:
            if time.time() > deadline:
                return False
            await sleep(0.05)
        return True

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the service (only to it: its ffmpegs are left alone)."""
        if self.running():
            os.kill(self.process.pid, sig)
        await self.wait_exit(10)

    async def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful), SIGKILL if it does not exit within ``timeout``."""
        if self.running():
            os.kill(self.process.pid, signal.SIGTERM)
            if not await self.wait_exit(timeout):
                os.kill(self.process.pid, signal.SIGKILL)
                await self.wait_exit(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, size: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - size))
                return handle.read().decode("utf-8", "replace")
        except OSError as error:
            return f"(no log: {error})"

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
