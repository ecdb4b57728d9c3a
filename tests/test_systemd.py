"""contrib/streamrec.service and contrib/streamrec.ini, as systemd uses them.

The unit is read as systemd reads it (sections, ``Key=value`` lines, repeated
keys adding up, an empty value resetting a list); its hardening is checked,
and its ``ExecStart`` line is run with its options exactly as written, with
the unit's ``Environment=``, ``WorkingDirectory=``, ``UMask=`` and
``LimitNOFILE=``, in a session of its own, stopped as ``KillMode=mixed``
stops it: SIGTERM to the main process alone, for at most ``TimeoutStopSec=``.

Only the install locations are replaced: the unit's ``/opt/streamrec/bin`` by
this checkout's virtualenv (with the checkout first on ``PYTHONPATH``, as an
install of it would be), ``/etc/streamrec/streamrec.ini`` by a copy of the
example in which only ``listen`` (a free port on 127.0.0.1) and ``data-dir``
(the state directory, here a temporary one) are changed.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import resource
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from twisted.python import usage
from twisted.trial import unittest

from streamrec.media.ffmpeg import KILL_GRACE
from streamrec.recorder.supervisor import Recorder
from streamrec.tap import Options

from .support.livesource import UdpTsSource, free_port
from .support.service_process import ROOT, alive, children_of, processes_under

UNIT = os.path.join(ROOT, "contrib", "streamrec.service")
INI = os.path.join(ROOT, "contrib", "streamrec.ini")
README = os.path.join(ROOT, "README.md")
VENV_BIN = os.path.dirname(sys.executable)

#: The PATH systemd gives a system service.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What systemd counts as a clean end of a service's main process besides
#: exit status 0 (systemd.service(5), SuccessExitStatus=).
CLEAN_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)


# -- the unit, read as systemd reads it ---------------------------------------
def read_unit(path: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values, in order]}}; a value of "" resets a list."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    with open(path, encoding="utf-8") as handle:
        text = re.sub(r"\\\n", " ", handle.read())  # continuation lines
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path}:{number}: not a unit line: {raw!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


class Unit:
    def __init__(self, path: str) -> None:
        self.sections = read_unit(path)
        self.service = self.sections.get("Service", {})

    def values(self, key: str) -> list[str]:
        """Every word the key's lines add up to, after the last reset."""
        found: list[str] = []
        for value in self.service.get(key, []):
            found = [] if value == "" else found + value.split()
        return found

    def one(self, key: str) -> str:
        values = self.service.get(key, [])
        if len(values) != 1:
            raise AssertionError(f"[Service] has {len(values)} {key}= lines, not one")
        return values[0]

    def environment(self) -> dict[str, str]:
        env = {}
        for line in self.service.get("Environment", []):
            for assignment in shlex.split(line):
                name, value = assignment.split("=", 1)
                env[name] = value
        return env

    def exec_start(self) -> list[str]:
        line = self.one("ExecStart")
        # No $VARIABLE or %specifier: then systemd splits the line as a shell does.
        if "$" in line or "%" in line:
            raise AssertionError(f"ExecStart= uses expansions this test does not: {line}")
        return shlex.split(line)

    def state_directory(self) -> str:
        (name,) = self.values("StateDirectory")
        return "/var/lib/" + name

    def seconds(self, key: str) -> float:
        value = self.one(key)
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
        if not match:
            raise AssertionError(f"{key}={value}: not a time this test reads")
        return float(match[1]) * (60 if match[2] in ("min", "m") else 1)


def ini_lines(path: str = INI) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def shown_options(lines: list[str]) -> list[tuple[int, str, str, bool]]:
    """(line index, key, value, commented) of each ``key = value`` line of the
    [streamrec] section, commented or not (up to the next section, commented
    or not)."""
    shown = []
    inside = False
    for index, line in enumerate(lines):
        body = line.lstrip("#").strip()
        if re.fullmatch(r"\[[^\]]+\]", body):
            inside = body == "[streamrec]"
            continue
        match = re.fullmatch(r"([a-z][a-z0-9-]*)\s*=\s*(.*)", body)
        if inside and match:
            shown.append((index, match[1], match[2], line.startswith("#")))
    return shown


def parse_ini(testcase: unittest.SynchronousTestCase, lines: list[str]) -> Options:
    path = testcase.mktemp() + ".ini"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    options = Options()
    options.parseOptions(["--config", path])
    return options


# -- the checks ---------------------------------------------------------------------
class UnitTests(unittest.SynchronousTestCase):
    unit = Unit(UNIT)

    def test_hardening(self) -> None:
        """A dedicated user, a read-only system with the data dir writable, no
        privileges, a private /tmp, no /home, and a descriptor limit for load."""
        unit = self.unit
        self.assertEqual(unit.one("User"), "streamrec")
        self.assertNotIn(unit.service.get("DynamicUser", ["no"])[-1], ("yes", "true", "1"))
        self.assertEqual(unit.one("ProtectSystem"), "strict")
        self.assertIn(unit.one("ProtectHome"), ("yes", "read-only", "tmpfs"))
        self.assertEqual(unit.one("PrivateTmp"), "yes")
        self.assertEqual(unit.one("NoNewPrivileges"), "yes")
        self.assertEqual(unit.service["CapabilityBoundingSet"][-1:], [""])  # none at all
        self.assertEqual(unit.state_directory(), "/var/lib/streamrec")
        self.assertIn(unit.state_directory(), unit.values("ReadWritePaths"))
        self.assertGreaterEqual(int(unit.one("LimitNOFILE")), 65536)
        self.assertEqual(unit.one("Restart"), "on-failure")
        self.assertEqual(unit.one("UMask"), "0027")

    def test_exec_start_runs_in_the_foreground_and_logs_to_stdout(self) -> None:
        """twistd in the foreground, its log on stdout (the journal), no pid file,
        no log file, and the example config."""
        argv = self.unit.exec_start()
        self.assertEqual(argv[0], "/opt/streamrec/bin/twistd")
        twistd, rest = argv[1 : argv.index("streamrec")], argv[argv.index("streamrec") + 1 :]
        self.assertTrue({"-n", "--nodaemon"} & set(twistd), argv)
        self.assertIn("--pidfile=", twistd)
        self.assertIn("--logfile=-", twistd)
        self.assertFalse([arg for arg in twistd if arg.startswith(("--syslog", "--logger"))])
        self.assertEqual(rest, ["--config", "/etc/streamrec/streamrec.ini"])
        for key in ("StandardOutput", "StandardError"):
            for value in self.unit.service.get(key, []):
                self.assertFalse(value.startswith(("file:", "append:", "truncate:")), value)
        self.assertNotIn("LogsDirectory", self.unit.service)

    def test_stop_outlasts_the_graceful_stop(self) -> None:
        """SIGTERM to twistd alone, which interrupts each ffmpeg and kills it
        after the recorder's grace, then indexes; the rest of the cgroup is
        killed after it exits. The unit waits longer than that takes."""
        self.assertEqual(self.unit.one("KillMode"), "mixed")
        self.assertEqual(self.unit.service.get("KillSignal", ["SIGTERM"]), ["SIGTERM"])
        ffmpeg_grace = inspect.signature(Recorder).parameters["kill_timeout"].default
        # ffmpeg's grace and an encoder's, then 15 s to index the last
        # segments, hand the streams over and close the database.
        self.assertGreaterEqual(self.unit.seconds("TimeoutStopSec"), ffmpeg_grace + KILL_GRACE + 15)

    def test_systemd_analyze_verify(self) -> None:
        """systemd itself finds nothing wrong with the unit (prefix replaced by
        this checkout's virtualenv, which exists here)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        path = os.path.join(os.path.abspath(self.mktemp()), "streamrec.service")
        os.makedirs(os.path.dirname(path))
        with open(UNIT, encoding="utf-8") as source, open(path, "w", encoding="utf-8") as copy:
            copy.write(source.read().replace("/opt/streamrec/bin/", VENV_BIN + "/"))
        result = subprocess.run(
            [analyze, "verify", path], capture_output=True, text=True, timeout=60, check=False
        )
        output = result.stdout + result.stderr
        # Lines about other units of this host are not this unit's business.
        ours = [line for line in output.splitlines() if "streamrec" in line]
        self.assertEqual((result.returncode, ours), (0, []), output)


class ExampleConfigTests(unittest.SynchronousTestCase):
    def test_every_option_shown_is_one_streamrec_takes(self) -> None:
        """Each ``key = value`` of the example, commented or not, is accepted by
        ``twistd streamrec --config`` with the value shown, when made active
        alone (the other lines as shipped)."""
        lines = ini_lines()
        shown = shown_options(lines)
        keys = {key for _, key, _, _ in shown}
        self.assertTrue({"listen", "data-dir", "tokens", "database", "max-age"} <= keys, keys)
        for index, key, value, _commented in shown:
            changed = list(lines)
            changed[index] = f"{key} = {value}"
            try:
                options = parse_ini(self, changed)
            except usage.UsageError as error:
                self.fail(f"{INI}:{index + 1}: {key} = {value}: {error}")
            parameter = next(p for p in Options.optParameters if p[0] == key)
            coerce = parameter[4] if len(parameter) > 4 else str
            self.assertEqual(options[key], coerce(value), f"{INI}:{index + 1}")

    def test_as_shipped(self) -> None:
        """The active lines are the data dir the unit makes writable and an
        address on this box; tokens are shown, commented, in /etc/streamrec."""
        unit = Unit(UNIT)
        config = parse_ini(self, ini_lines()).config
        self.assertEqual(config.data_dir, unit.state_directory())
        self.assertEqual(config.listen, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.tokens, "")
        self.assertIn("# tokens = /etc/streamrec/tokens", ini_lines())

    def test_readme_installs_what_the_unit_runs(self) -> None:
        """The README's steps create the unit's user, install into the unit's
        prefix and put the config and unit where the unit and systemd look."""
        with open(README, encoding="utf-8") as handle:
            readme = handle.read()
        section = readme.split("## Run as a system service", 1)[1].split("\n## ", 1)[0]
        commands = " ".join(section.replace("\\\n", " ").split())
        unit = Unit(UNIT)
        argv = unit.exec_start()
        prefix = os.path.dirname(os.path.dirname(argv[0]))
        for expected in (
            f"useradd --system --user-group --home-dir {unit.state_directory()}",
            f"--shell /usr/sbin/nologin {unit.one('User')}",
            f"python3 -m venv {prefix}",
            f"{prefix}/bin/pip install .",
            f"contrib/streamrec.ini {argv[-1]}",
            "install -m 0644 contrib/streamrec.service /etc/systemd/system/streamrec.service",
            "systemctl daemon-reload",
            "systemctl enable --now streamrec",
            "hidepid=2",
        ):
            self.assertIn(expected, commands)


class ExecStartTests(unittest.SynchronousTestCase):
    """The unit's ExecStart, run as systemd runs it, records and stops cleanly."""

    def setUp(self) -> None:
        self.unit = Unit(UNIT)
        base = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(base, "var", "lib", "streamrec")
        # StateDirectory=, with its StateDirectoryMode=
        os.makedirs(self.data_dir)
        os.chmod(self.data_dir, int(self.unit.one("StateDirectoryMode"), 8))
        self.port = free_port("tcp")
        self.base = f"http://127.0.0.1:{self.port}"
        self.ini = os.path.join(base, "streamrec.ini")
        self.write_ini()
        self.out_path = os.path.join(base, "stdout")
        self.err_path = os.path.join(base, "stderr")
        self.process: subprocess.Popen[bytes] | None = None
        self.addCleanup(self.kill)

    def write_ini(self) -> None:
        changed = {"listen": f"tcp:{self.port}:interface=127.0.0.1", "data-dir": self.data_dir}
        lines = ini_lines()
        copy = list(lines)
        for index, key, _value, commented in shown_options(lines):
            if not commented and key in changed:
                copy[index] = f"{key} = {changed.pop(key)}"
        self.assertEqual(changed, {}, "the example has no active listen or data-dir line")
        self.assertEqual(sum(a != b for a, b in zip(lines, copy, strict=True)), 2)
        with open(self.ini, "w", encoding="utf-8") as handle:
            handle.write("\n".join(copy) + "\n")

    def command(self) -> list[str]:
        argv = self.unit.exec_start()
        prefix = os.path.dirname(argv[0])
        argv = [
            VENV_BIN + arg[len(prefix) :] if arg.startswith(prefix + "/") else arg for arg in argv
        ]
        config = argv.index("--config") + 1
        self.assertEqual(argv[config], "/etc/streamrec/streamrec.ini")
        argv[config] = self.ini
        return argv

    def environment(self) -> dict[str, str]:
        user = self.unit.one("User")
        return {
            "PATH": SYSTEMD_PATH,
            "HOME": self.data_dir,  # the user's home: useradd --home-dir
            "USER": user,
            "LOGNAME": user,
            "SHELL": "/usr/sbin/nologin",
            **self.unit.environment(),
            # Stands for this checkout installed into the prefix.
            "PYTHONPATH": ROOT,
        }

    def working_directory(self) -> str:
        directory = self.unit.one("WorkingDirectory").lstrip("-")
        self.assertEqual(directory, self.unit.state_directory())
        return self.data_dir

    def limits(self) -> None:
        """In the child, before exec: the unit's LimitNOFILE= (as far as this
        process may raise it)."""
        wanted = int(self.unit.one("LimitNOFILE"))
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def start(self) -> None:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.working_directory(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                umask=int(self.unit.one("UMask"), 8),
                preexec_fn=self.limits,
            )

    def kill(self) -> None:
        """What systemd does last: SIGKILL to all that is left of the service."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def log(self) -> str:
        with open(self.out_path, "rb") as out, open(self.err_path, "rb") as err:
            return (out.read() + b"\n--- stderr ---\n" + err.read()).decode("utf-8", "replace")

    def call(self, method: str, path: str, **params: str) -> tuple[int, Any]:
        data = urllib.parse.urlencode(params)
        request = urllib.request.Request(
            self.base + path, data=data.encode() if method == "POST" else None, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                self.fail(
                    f"streamrec exited ({self.process.returncode}) before {what}:\n{self.log()}"
                )
            try:
                result = check()
            except OSError:
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                self.fail(f"no {what} within {timeout:g} s:\n{self.log()}")
            time.sleep(0.2)

    def test_records_and_stops_cleanly(self) -> None:
        source = UdpTsSource.running(self, audio="aac")
        self.start()
        assert self.process is not None

        def listing() -> Any:
            code, body = self.call("GET", "/streams/")
            return body if code == 200 else None

        self.assertEqual(self.wait_for("answer on /streams/", listing, 60), {"result": []})

        code, created = self.call("POST", "/streams/create", url=source.url)
        self.assertEqual(code, 200, created)
        stream = created["stream_id"]
        self.assertEqual(self.call("POST", f"/streams/{stream}/start"), (200, {"result": "ok"}))

        def recorded() -> bool:
            code, status = self.call("GET", f"/streams/{stream}/status")
            return code == 200 and status["recorded"]["segments"] >= 2

        self.wait_for("recorded segments", recorded, 30)
        segmenters = children_of(self.process.pid)
        self.assertTrue(segmenters, "no ffmpeg child of the service")

        # KillMode=mixed: SIGTERM to the main process only; SIGKILL for all
        # that is left once it is gone or TimeoutStopSec has passed.
        os.kill(self.process.pid, signal.SIGTERM)
        stop_timeout = self.unit.seconds("TimeoutStopSec")
        try:
            status = self.process.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"still running {stop_timeout:g} s after SIGTERM:\n{self.log()}")
        self.assertTrue(
            status == 0 or -status in CLEAN_SIGNALS,
            f"exit status {status} is a failure to systemd:\n{self.log()}",
        )
        left = [pid for pid in segmenters if alive(pid)] + list(processes_under(self.data_dir))
        self.assertEqual(left, [], "processes left for systemd to kill")

        # Every segment written was closed and indexed before the exit.
        connection = sqlite3.connect(os.path.join(self.data_dir, "streamrec.sqlite"))
        try:
            indexed = {row[0] for row in connection.execute("SELECT path FROM segments")}
        finally:
            connection.close()
        on_disk = set()
        for parent, _dirs, names in os.walk(os.path.join(self.data_dir, "segments")):
            on_disk |= {os.path.join(parent, name) for name in names}
        self.assertGreaterEqual(len(on_disk), 2)
        self.assertEqual(on_disk, indexed)

        # The log went to stdout (the journal), in full, with nothing wrong in it.
        with open(self.out_path, encoding="utf-8", errors="replace") as handle:
            out = handle.read()
        self.assertIn("streamrec listening on", out)
        self.assertIn("Main loop terminated.", out)
        for bad in ("Traceback", "Unhandled"):
            self.assertNotIn(bad, self.log())

        # No pid file, no log file; nothing readable by other users (the
        # database holds the camera URLs).
        exposed, written = [], []
        for parent, dirs, names in os.walk(self.data_dir):
            for name in dirs + names:
                path = os.path.join(parent, name)
                written.append(name)
                if os.stat(path).st_mode & (stat.S_IROTH | stat.S_IWOTH):
                    exposed.append(path)
        self.assertEqual([n for n in written if n.startswith("twistd") or n.endswith(".log")], [])
        self.assertEqual(exposed, [])
