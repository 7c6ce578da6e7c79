#!/usr/bin/env python3
"""The seed design's per-frame transcoding pipeline in numpy/scipy, timed for comparison with
`benches/transcode.rs` (see docs/performance.md).

Run (venv under target/, never committed):
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install numpy scipy
    target/bench-venv/bin/python benches/baseline_numpy.py

Per 20 ms frame:
  inbound  (Twilio -> OpenAI): base64 decode -> mu-law decode (256-entry numpy table, ITU G.711)
           -> scipy.signal.resample_poly(x, 3, 1) -> int16 LE bytes -> base64 encode
  outbound (OpenAI -> Twilio): base64 decode -> int16 -> scipy.signal.resample_poly(x, 1, 3)
           -> mu-law encode (vectorised ITU G.191 ulaw_compress) -> base64 encode
resample_poly is stateless, so each frame is filtered on its own (zero-padded edges: a
discontinuity every 20 ms). That is a flaw of the seed design, not something this script fixes.
The Rust core carries filter state across frames.
"""
import base64
import os
import sys
import time

import numpy as np
import scipy
from scipy.signal import resample_poly

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def ulaw_decode_table():
    codes = np.arange(256)
    inv = (~codes) & 0xFF
    exponent = (inv >> 4) & 7
    mantissa = inv & 0xF
    step = 4 << (exponent + 1)
    mag = (0x80 << exponent) + step * mantissa + step // 2 - 132
    return np.where(codes < 0x80, -mag, mag).astype(np.int16)


DECODE = ulaw_decode_table()


def ulaw_encode(x):
    """Vectorised ITU-T G.191 ulaw_compress on an int16 array."""
    x = x.astype(np.int32)
    absno = np.where(x < 0, ((~x) >> 2) + 33, (x >> 2) + 33)
    absno = np.minimum(absno, 0x1FFF)
    segno = np.zeros_like(absno) + 1
    i = absno >> 6
    while i.any():
        segno += i > 0
        i >>= 1
    out = ((8 - segno) << 4) | (0xF - ((absno >> segno) & 0xF))
    return np.where(x >= 0, out | 0x80, out).astype(np.uint8)


def inbound(payload_b64):
    ulaw = np.frombuffer(base64.b64decode(payload_b64), dtype=np.uint8)
    pcm8 = DECODE[ulaw].astype(np.float64)
    pcm24 = np.clip(np.round(resample_poly(pcm8, 3, 1)), -32768, 32767).astype("<i2")
    return base64.b64encode(pcm24.tobytes()).decode("ascii")


def outbound(delta_b64):
    pcm24 = np.frombuffer(base64.b64decode(delta_b64), dtype="<i2").astype(np.float64)
    pcm8 = np.clip(np.round(resample_poly(pcm24, 1, 3)), -32768, 32767).astype(np.int16)
    return base64.b64encode(ulaw_encode(pcm8).tobytes()).decode("ascii")


def main():
    with open(os.path.join(FIXTURES, "speech_8k.itu.ulaw"), "rb") as f:
        ulaw = f.read()
    with open(os.path.join(FIXTURES, "itu_g711_ulaw_all_int16.bin"), "rb") as f:
        table = np.frombuffer(f.read(), dtype=np.uint8)
    # Sanity: the numpy codec is the ITU one.
    assert (ulaw_encode(np.arange(-32768, 32768, dtype=np.int32)) == table).all()

    twilio = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw), 160)]
    openai = [inbound(p) for p in twilio]  # 480-sample pcm16 deltas
    assert len(base64.b64decode(openai[0])) == 960 and len(base64.b64decode(outbound(openai[0]))) == 160

    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    results = {}
    for name, fn, frames in (("inbound", inbound, twilio), ("outbound", outbound, openai)):
        for p in frames[:20]:  # warm-up
            fn(p)
        best = float("inf")
        for _ in range(5):  # best of 5 runs of reps x 150 frames
            t0 = time.perf_counter()
            for _ in range(reps):
                for p in frames:
                    fn(p)
            best = min(best, (time.perf_counter() - t0) / (reps * len(frames)))
        results[name] = best * 1e9
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, python {sys.version.split()[0]}")
    print(f"inbound  {results['inbound']:.0f} ns/frame")
    print(f"outbound {results['outbound']:.0f} ns/frame")
    total = results["inbound"] + results["outbound"]
    print(f"total    {total:.0f} ns/frame -> {20e6 / total:.0f} real-time calls per core")


if __name__ == "__main__":
    main()
