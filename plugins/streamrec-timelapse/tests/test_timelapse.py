"""streamrec-timelapse through a real service that loads installed plugins.

Needs ``pip install ./plugins/streamrec-timelapse`` first, and runs from the
streamrec repository root (it uses streamrec's test harness and live
sources)::

    python -m twisted.trial plugins/streamrec-timelapse/tests/test_timelapse.py
"""

from __future__ import annotations

from typing import Any

from streamrec_timelapse import TimelapseEncoder, parse_speed, timelapse_filters
from twisted.internet import defer
from twisted.trial import unittest

from streamrec.clips.reencode import OptionError
from streamrec.plugins import collect, get_plugin_manager

try:
    from tests.support.harness import ServiceTestCase, decode, until
    from tests.support.livesource import FPS, UdpTsSource
except ImportError as missing:  # not run from the streamrec repository root
    raise ImportError(
        "run these tests from the streamrec repository root: "
        "python -m twisted.trial plugins/streamrec-timelapse/tests/test_timelapse.py"
    ) from missing


class RegistrationTests(unittest.SynchronousTestCase):
    def test_entry_point_is_found(self):
        pm = get_plugin_manager(load_entrypoints=True)
        encoders = collect(pm.hook.register_clip_encoders)
        self.assertIs(encoders.get("timelapse"), TimelapseEncoder)

    def test_not_loaded_without_entry_points(self):
        pm = get_plugin_manager(load_entrypoints=False)
        self.assertNotIn("timelapse", collect(pm.hook.register_clip_encoders))


class OptionTests(unittest.SynchronousTestCase):
    def test_speed(self):
        self.assertEqual(parse_speed({}), 10.0)
        self.assertEqual(parse_speed({"speed": "2.5"}), 2.5)
        for bad, words in [
            ("fast", "speed must be a number"),
            ("1", "between 2 and 1000"),
            ("5000", "between 2 and 1000"),
            ("nan", "between 2 and 1000"),
        ]:
            with self.assertRaises(OptionError) as caught:
                parse_speed({"speed": bad})
            self.assertIn(words, str(caught.exception))

    def test_filters(self):
        encoder = TimelapseEncoder.__new__(TimelapseEncoder)
        speed, choice = encoder.validate({"speed": "8", "fps": "10", "width": "160"})
        self.assertEqual(
            timelapse_filters(speed, choice),
            ["setpts=(PTS-STARTPTS)/8", "fps=10:round=up", "scale=160:-2"],
        )
        self.assertIn("speed", TimelapseEncoder.options)


class TimelapseEndToEndTests(ServiceTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_speed_8_over_8_seconds(self):
        yield defer.ensureDeferred(self._speed_8())

    async def _speed_8(self) -> None:
        source = UdpTsSource.running(self, audio="aac")
        service = await self.service(load_plugins=True)
        plugins = await service.ok("GET", "/plugins")
        self.assertIn("timelapse", plugins["clip_encoders"])
        stream_id = (await service.ok("POST", "/streams/create", url=source.url))["stream_id"]
        await service.ok("POST", f"/streams/{stream_id}/start")

        async def first() -> Any:
            return (await service.status(stream_id))["recorded"]["first"]

        begin = await until(first, 20, "the first segment")
        # Between keyframes, and past the run's first frame: a run's first
        # segment starts with audio alone until the first keyframe arrives, and
        # that keyframe is shown for the whole of it.
        start = begin + 2.53
        stop = start + 8
        await service.recorded_until(stream_id, stop + 0.5, timeout=40)
        params = {"start": start, "stop": stop}
        seen: list[float] = []

        job = await service.clip(
            stream_id,
            timeout=60,
            seen=seen,
            encoder="timelapse",
            speed="8",
            preset="ultrafast",
            **params,
        )
        self.assertEqual(job["progress"], 1.0)
        self.assertEqual(seen, sorted(seen))
        [clip] = job["clips"]
        shown = decode(await service.download(clip["link"], self.mktemp()))
        copy_job = await service.clip(stream_id, encoder="copy", **params)
        reference = decode(await service.download(copy_job["clips"][0]["link"], self.mktemp()))
        numbers, ref = shown["numbers"], reference["numbers"]
        steps = [b - a for a, b in zip(numbers, numbers[1:])]
        print(
            f"\ntimelapse x8: {len(numbers)} frames, {shown['duration']:.2f} s,"
            f" numbers {numbers[:4]}...{numbers[-1]}, steps {sorted(set(steps))};"
            f" copy {ref[0]}..{ref[-1]}; progress seen {sorted(set(seen))}"
        )
        self.assertEqual((shown["video"], shown["audio"]), ("h264", None))
        self.assertNear(shown["duration"], 8 / 8, 2 / FPS, "duration")
        self.assertNear(len(numbers), 8 * FPS / 8, 1, "frame count")
        self.assertNear(numbers[0], ref[0], 1, "first frame")
        self.assertTrue(all(7 <= step <= 9 for step in steps), steps)
        self.assertNear((numbers[-1] - numbers[0]) / (len(numbers) - 1), 8, 0.25, "mean step")
