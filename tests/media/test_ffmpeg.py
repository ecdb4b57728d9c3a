"""Finding ffmpeg: PATH first, else the binary imageio-ffmpeg ships."""

import os
import subprocess

import imageio_ffmpeg
from twisted.trial import unittest

from streamrec.media.ffmpeg import FfmpegNotFound, find_ffmpeg


class FindFfmpegTests(unittest.SynchronousTestCase):
    def test_falls_back_to_imageio_ffmpeg(self):
        empty = self.mktemp()
        os.makedirs(empty)
        self.patch(os, "environ", dict(os.environ, PATH=empty))
        found = find_ffmpeg()
        self.assertEqual(found, imageio_ffmpeg.get_ffmpeg_exe())
        version = subprocess.run([found, "-version"], capture_output=True, text=True, timeout=30)
        self.assertIn("ffmpeg version", version.stdout)

    def test_explicit_binary(self):
        self.assertRaises(FfmpegNotFound, find_ffmpeg, "/nonexistent/ffmpeg")
