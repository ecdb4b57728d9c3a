"""Frame code: every test picture carries its own frame number.

Layout (for the default 320x240 picture; everything scales with the size):

* The top ``BLOCK_H`` = 16 rows hold ``BITS`` = 16 blocks, each ``width/16``
  (= 20) px wide and 16 px high, left to right.
* Block ``i`` (0 = leftmost) carries bit ``15 - i`` of the frame number, i.e.
  the number is written MSB first.  White (Y=255) = 1, black (Y=0) = 0,
  chroma neutral (128).
* Below the strip the picture is whatever the source filter produced
  (``testsrc2`` for the live sources), so the encoder has real work to do.

The number is ``N + offset`` where ``N`` is ffmpeg's frame counter of the
filter (0 for the first frame) and ``offset`` is given when building the
filter, so a restarted source can continue the numbering.  Numbers wrap at
2**16 (about 43 minutes at 25 fps).

``read_frame_number`` decodes a (decoded) ``av.VideoFrame`` of any size and
pixel format: it averages the luma of the inner part of each block (2 px
margin, to be immune to ringing at block edges) and thresholds at 128.
"""

BITS = 16
#: Reference geometry: the strip is 16 rows of a 240 row picture.
REF_HEIGHT = 240
BLOCK_H = 16


def FILTER(width=320, height=240, offset=0):
    """Return an ffmpeg filter (string) painting the frame code.

    Insert it in a filter chain after a video source of size
    ``width``x``height`` in a YUV 4:2:0/4:2:2/4:4:4 format, e.g.::

        testsrc2=size=320x240:rate=25,format=yuv420p,<FILTER()>

    ``offset`` is added to the filter's own frame counter ``N``.
    """
    if width % BITS:
        raise ValueError("width must be a multiple of %d" % BITS)
    bw = width // BITS
    bh = max(2, (BLOCK_H * height) // REF_HEIGHT)
    bh -= bh % 2  # keep chroma rows aligned for 4:2:0
    num = "(N+%d)" % int(offset)
    bit = "mod(floor(%s/pow(2,%d-floor(X/%d))),2)" % (num, BITS - 1, bw)
    lum = "if(lt(Y,%d),255*%s,p(X,Y))" % (bh, bit)
    # chroma planes: X/Y are plane coordinates; H is the plane height
    chroma = "if(lt(Y*%d,%d*H),128,p(X,Y))" % (height, bh)
    return "geq=lum='%s':cb='%s':cr='%s'" % (lum, chroma, chroma)


def source_filter(width=320, height=240, rate=25, offset=0):
    """A complete lavfi source graph: testsrc2 with the frame code on top."""
    return "testsrc2=size=%dx%d:rate=%d,format=yuv420p,%s" % (
        width,
        height,
        rate,
        FILTER(width, height, offset),
    )


def _luma(frame):
    """2-D numpy array (uint8) of the luma of an av.VideoFrame."""
    fmt = frame.format.name
    if fmt in (
        "gray",
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "nv12",
        "nv21",
    ):
        import numpy

        plane = frame.planes[0]
        buf = numpy.frombuffer(plane, dtype=numpy.uint8)
        buf = buf.reshape(-1, plane.line_size)
        return buf[: frame.height, : frame.width]
    return frame.reformat(format="gray").to_ndarray()


def read_bits(frame):
    """Return the list of 16 block mean luma values (floats), MSB first."""
    y = _luma(frame)
    h, w = y.shape
    bw = w / BITS
    bh = max(2, (BLOCK_H * h) // REF_HEIGHT)
    m = 2 if bw >= 8 else 0
    means = []
    for i in range(BITS):
        x0 = int(round(i * bw)) + m
        x1 = int(round((i + 1) * bw)) - m
        block = y[m : max(m + 1, bh - m), x0 : max(x0 + 1, x1)]
        means.append(float(block.mean()))
    return means


def number_from_means(means):
    """The frame number from the blocks' mean luma, leftmost block first (MSB)."""
    n = 0
    for v in means:
        n = (n << 1) | (1 if v > 128 else 0)
    return n


def read_frame_number(frame):
    """Decode the frame number painted by ``FILTER`` from an av.VideoFrame."""
    return number_from_means(read_bits(frame))


def code_margin(frame):
    """Smallest distance of any block mean from the 128 threshold.

    Useful in tests to assert the code is read with a healthy margin."""
    return min(abs(v - 128) for v in read_bits(frame))


#: The same reading in a browser: ``readCode(source, w, h)`` draws a <video> or
#: an <img> into a fresh canvas and gives the mean luma (BT.601 on the RGB the
#: browser gives) of the 16 code blocks, left to right, over the inner part of
#: each, and whether anything was painted (a frame not decoded yet draws
#: transparent pixels). :func:`number_from_means` turns ``means`` into the number.
READ_CODE_JS = """
function readCode(source, w, h) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(source, 0, 0, w, h);
  const bw = w / 16, bh = Math.round(16 * h / 240), m = 2;
  const px = ctx.getImageData(0, 0, w, bh).data;
  let painted = false;
  for (let i = 3; i < px.length && !painted; i += 4) painted = px[i] !== 0;
  const means = [];
  for (let k = 0; k < 16; k++) {
    let sum = 0, n = 0;
    for (let y = m; y < bh - m; y++) {
      for (let x = Math.round(k * bw) + m; x < Math.round((k + 1) * bw) - m; x++) {
        const i = 4 * (y * w + x);
        sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
        n++;
      }
    }
    means.push(sum / n);
  }
  return {means: means, painted: painted, width: w, height: h};
}
"""
