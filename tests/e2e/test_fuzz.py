"""Fuzzing the running service against its own API document.

``twistd streamrec`` runs as a child process with a token file, one stream
records a real UDP source, and schemathesis (its CLI, as CI runs it) generates
requests from ``/openapi.json``, positive and negative, for every operation:
every answer must have a documented status code, the documented content type
and a body that fits the documented schema. Sources the fuzzer registers are
unreachable (or not URLs at all), so starting them answers the seed's 500s,
which the document declares. The service's log must show no unexpected error.

The test prints one ``FUZZ ...`` line with the figures of the run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import schemathesis  # noqa: F401  (the fuzzer must be installed: the test extra)
import treq
from openapi_schema_validator import OAS31Validator
from twisted.internet import defer, utils
from twisted.trial import unittest

from streamrec.api import ERRORS
from streamrec.openapi import document

from ..support.livesource import UdpTsSource
from ..support.service_process import ServiceProcess, kill_processes_under

ADMIN_TOKEN = "admin-fuzz-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-fuzz-token-0123456789abcdef"
#: What schemathesis checks on every answer.
CHECKS = "status_code_conformance,content_type_conformance,response_schema_conformance"
#: Test cases per operation and phase: about 1,000 cases in all, some seconds.
MAX_EXAMPLES = 25
#: Log lines that mean the service failed in a way nobody planned for.
UNEXPECTED = ("Unhandled Error", "Traceback", "unexpected error")

SCHEMATHESIS = [
    sys.executable,
    "-c",
    "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
]


class TokenService(ServiceProcess):
    """The service process, called with a bearer token."""

    token = ADMIN_TOKEN

    async def call(self, method: str, path: str, **params: Any) -> tuple[int, Any]:
        response = await treq.request(
            method,
            self.base + path,
            params=params or None,
            headers={b"Authorization": [f"Bearer {self.token}".encode()]},
            timeout=30,
            persistent=False,
        )
        return response.code, json.loads(await response.content())


def config(stream_id: int, first: float, last: float, clip_key: str) -> str:
    """A schemathesis configuration: the recording stream's id, moments inside
    its recording and a clip's key come up often among the generated values, so
    the fuzzer reaches real clip jobs and files besides 404s and 400s."""
    starts = [round(first + 0.5, 3), round(first + 1.25, 3), round(last - 1.0, 3)]
    stops = [round(first + 2.0, 3), round(last, 3), round(last + 30.0, 3)]
    lines = [
        "[dictionaries.streams]",
        f"values = [{stream_id}, {stream_id + 1}]",
        "[dictionaries.starts]",
        f"values = {json.dumps(starts)}",
        "[dictionaries.stops]",
        f"values = {json.dumps(stops)}",
        "[dictionaries.clips]",
        f"values = {json.dumps([clip_key])}",
        "[parameters]",
        '"path.stream_id" = { dictionary = "streams", probability = 0.5 }',
        '"path.key" = { dictionary = "clips", probability = 0.5 }',
    ]
    for where in ("query", "body"):
        lines += [
            f'"{where}.start" = {{ dictionary = "starts", probability = 0.5 }}',
            f'"{where}.stop" = {{ dictionary = "stops", probability = 0.5 }}',
        ]
    return "\n".join(lines) + "\n"


def shortened(output: str, lines: int = 120, width: int = 400) -> str:
    """The end of schemathesis's output, each line cut (a reproducing curl
    command can carry a shrunk request of many kilobytes)."""
    return "\n".join(
        line if len(line) <= width else line[:width] + " [...]"
        for line in output.splitlines()[-lines:]
    )


class FuzzTests(unittest.TestCase):
    timeout = 110

    @defer.inlineCallbacks
    def test_every_answer_conforms_to_the_document(self):
        yield defer.ensureDeferred(self._fuzz())

    async def _fuzz(self) -> None:
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        tokens = os.path.join(work, "tokens")
        with open(tokens, "w", encoding="utf-8") as handle:
            handle.write(f"admin {ADMIN_TOKEN}\noperator {OPERATOR_TOKEN}\n")
        os.chmod(tokens, 0o600)
        data_dir = os.path.join(work, "data")
        self.addCleanup(kill_processes_under, data_dir)
        source = UdpTsSource.running(self, audio=None)
        service = TokenService(self, data_dir, start_timeout=2, tokens=tokens)
        self.addCleanup(lambda: defer.ensureDeferred(service.stop()))
        await service.start()
        doc = document(ERRORS)

        # One stream records for real, and one clip of it is built.
        stream_id = (await service.ok("GET", "/streams/create", url=source.url))["stream_id"]
        await service.ok("GET", f"/streams/{stream_id}/start")
        await service.recorded_until(stream_id, time.time() + 4, timeout=30)
        status = await service.status(stream_id)
        first = status["recorded"]["first"]
        job = await service.clip(stream_id, start=first + 0.5, stop=first + 2.5)
        timeline = await service.ok("GET", f"/streams/{stream_id}/timeline")
        self.assertTrue(timeline["spans"], timeline)
        for name, answer in (("Status", status), ("Job", job), ("Timeline", timeline)):
            validator = OAS31Validator({**doc, "$ref": f"#/components/schemas/{name}"})
            self.assertEqual([e.message for e in validator.iter_errors(answer)], [], name)

        # The fuzzer, with the operator's token.
        config_path = os.path.join(work, "schemathesis.toml")
        with open(config_path, "w", encoding="utf-8") as handle:
            clip_key = job["clips"][0]["link"].rsplit("/", 1)[-1]
            handle.write(config(stream_id, first, status["recorded"]["last"], clip_key))
        report = os.path.join(work, "report.json")
        args = [
            "--config-file",
            config_path,
            "run",
            service.base + "/openapi.json",
            "--header",
            f"Authorization: Bearer {OPERATOR_TOKEN}",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--request-timeout",
            "15",
            "--generation-database",
            "none",
            "--no-shrink",  # a failure is reported as found: the run stays short
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            report,
        ]
        started = time.time()
        out, err, code = await utils.getProcessOutputAndValue(
            SCHEMATHESIS[0], SCHEMATHESIS[1:] + args, env=dict(os.environ), path=work
        )
        took = time.time() - started
        output = (out + err).decode("utf-8", "replace")
        self.assertTrue(
            os.path.exists(report), f"no report; schemathesis said:\n{shortened(output)}"
        )
        with open(report, encoding="utf-8") as handle:
            figures = json.load(handle)
        cases = figures["test_cases"]
        operations = figures["operations"]
        print(
            f"\nFUZZ schemathesis {figures['schemathesis_version']}: "
            f"{operations['tested']}/{operations['total']} operations, "
            f"{cases['generated']} cases, {cases['with_failures']} with failures "
            f"({cases['unique_failures']} unique), {cases['errored']} errored, "
            f"seed {figures['seed']}, {took:.1f} s"
        )
        summary = json.dumps({k: figures[k] for k in ("failures", "errors")}, indent=1)
        summary += "\n" + shortened(output)
        self.assertEqual(code, 0, f"schemathesis exited with {code}:\n{summary}")
        self.assertEqual(cases["with_failures"], 0, summary)
        self.assertEqual(cases["errored"], 0, summary)
        self.assertEqual(figures["errors"], [], summary)
        # schemathesis counts /streams and /streams/ as one path.
        documented = len(
            {(path.rstrip("/"), method) for path, item in doc["paths"].items() for method in item}
        )
        self.assertEqual((operations["total"], operations["tested"]), (documented, documented))
        self.assertGreater(cases["generated"], 10 * documented)

        await service.stop()
        log = service.log_text()
        found = [line for line in log.splitlines() if any(word in line for word in UNEXPECTED)]
        self.assertEqual(found, [], f"unexpected errors in the service log {service.log_path}")
