"""``twistd streamrec``: options, the config file, and failing to start."""

from __future__ import annotations

import os
import socket
import sys

from twisted.internet import utils
from twisted.python import usage
from twisted.trial import unittest

from streamrec.config import plugin_config
from streamrec.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


class OptionsTests(unittest.SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        config = self.parse().config
        self.assertEqual(
            (config.listen, config.data_dir, config.storage, config.encoder),
            ("tcp:8080", "./data", "local", "copy"),
        )
        self.assertEqual(config.min_free, 1 << 30)

    def test_units(self):
        config = self.parse("--max-age", "30d", "--max-bytes", "1.5G", "--min-free", "500M").config
        self.assertEqual(config.max_age, 30 * 86400)
        self.assertEqual(config.max_bytes, int(1.5 * (1 << 30)))
        self.assertEqual(config.min_free, 500 << 20)
        self.assertRaises(usage.UsageError, self.parse, "--max-bytes", "lots")

    def test_config_file_and_plugin_sections(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                "[streamrec]\nlisten = tcp:9001\nsegment-seconds = 4\nclip-ttl = 2d\n"
                "[s3]\nbucket = clips\n"
            )
        config = self.parse("--config", path, "--listen", "tcp:9002").config
        self.assertEqual(config.listen, "tcp:9002", "the command line wins")
        self.assertEqual((config.segment_seconds, config.clip_ttl), (4.0, 2 * 86400))
        self.assertEqual(plugin_config(config)["s3"], {"bucket": "clips"})
        self.assertEqual(plugin_config(config)["listen"], "tcp:9002")

    def test_bad_config_file(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("[streamrec]\nlisten-port = 80\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn("unknown option 'listen-port'", str(error))
        self.assertRaises(usage.UsageError, self.parse, "--config", path + ".missing")


class TwistdTests(unittest.TestCase):
    def test_exits_with_an_error_when_it_cannot_listen(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        data_dir = os.path.abspath(self.mktemp())
        env = dict(os.environ, PYTHONPATH=ROOT)
        args = ["-c", TWISTD, "-n", "--pidfile=", "streamrec"]
        args += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=env, path=ROOT)

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual(code, 1, out + err)
            self.assertIn(b"streamrec could not start", out + err)
            self.assertIn(b"Address already in use", out + err)

        return d.addCallback(check)
