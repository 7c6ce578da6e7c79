#!/usr/bin/env python3
"""Design the x3 anti-aliasing / anti-imaging FIR used by `resample.rs` and print its Rust tables.

Reproduce (numpy + scipy):
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install numpy scipy
    target/bench-venv/bin/python src/media/design_fir.py > /tmp/taps.rs

Why not a plain linear-phase filter: the spec is passband flat to 3.4 kHz, >= 60 dB at and above
4 kHz, group delay <= 2 ms. A linear-phase FIR with delay <= 2 ms has at most 97 taps at 24 kHz;
the best equiripple (Parks-McClellan) design of that length reaches 60 dB only with +/-0.35 dB of
passband ripple, and a Kaiser window needs ~146 taps (3 ms). Instead this is a *low-delay* FIR:
144 taps whose response is fitted to exp(-j w tau) with tau = 45 samples (1.875 ms = 15 samples at
8 kHz) over the passband and to 0 over the stopband, minimax in the complex error (Lawson's
iteratively reweighted least squares). Phase is linear to within a group-delay ripple of
1.867..1.922 ms over 0..3.4 kHz; the extra taps past 2*tau carry only the decaying post-ringing.

Prototype at fs = 24 kHz: passband 0..3400 Hz, stopband 4000..12000 Hz, stopband weight 10.
Quantisation: DECIM_TAPS = round(h * 32768); INTERP_TAPS = round(3 h * 32768) (3 polyphase
branches of 48: branch p holds taps p, p+3, p+6, ...). The script prints the measured response of
the quantised tables; `tests/media_resample.rs` re-measures them through the Rust code.
"""
import numpy as np
from scipy import signal

FS = 24000
N = 144          # taps (multiple of 3: 48 per polyphase branch)
TAU = 45         # nominal delay in samples at 24 kHz
F_PASS = 3400.0
F_STOP = 4000.0
W_STOP = 10.0
ITERS = 60


def design():
    fp = np.linspace(0, F_PASS, 700)
    fs_ = np.linspace(F_STOP, FS / 2, 1400)
    f = np.concatenate([fp, fs_])
    om = 2 * np.pi * f / FS
    d = np.concatenate([np.exp(-1j * 2 * np.pi * fp / FS * TAU), np.zeros(len(fs_))])
    a = np.exp(-1j * np.outer(om, np.arange(N)))
    wt = np.concatenate([np.ones(len(fp)), W_STOP * np.ones(len(fs_))])
    lw = np.ones(len(f))
    for _ in range(ITERS):
        ww = np.sqrt(wt * lw)
        m = np.vstack([a.real * ww[:, None], a.imag * ww[:, None]])
        b = np.concatenate([d.real * ww, d.imag * ww])
        h = np.linalg.lstsq(m, b, rcond=None)[0]
        lw = lw * np.abs(a @ h - d) * wt
        lw /= lw.sum()
    return h


def stats(h):
    w, hh = signal.freqz(h, worN=1 << 15, fs=FS)
    g = 20 * np.log10(np.abs(hh) + 1e-300)
    pb = w <= F_PASS
    _, gd = signal.group_delay((h, [1]), w=w[pb], fs=FS)
    return g[pb].min(), g[pb].max(), g[w >= F_STOP].max(), gd.min() / FS * 1e3, gd.max() / FS * 1e3


def rust_array(name, vals, doc):
    body = ",\n".join(
        "    " + ", ".join(f"{int(v)}" for v in vals[i:i + 12]) for i in range(0, len(vals), 12)
    )
    return f"{doc}\nconst {name}: [i16; {len(vals)}] = [\n{body},\n];\n"


def main():
    h = design()
    dec = np.round(h * 32768).astype(np.int64)
    interp = np.round(3 * h * 32768).astype(np.int64)
    assert np.abs(interp).max() < 32768
    for label, taps, scale in (("float", h, 1.0), ("DECIM Q15", dec / 32768, 1.0),
                               ("INTERP Q15", interp / 32768, 3.0)):
        s = stats(taps / scale)
        print(f"// {label:10}: passband {s[0]:+.4f}..{s[1]:+.4f} dB, stopband max {s[2]:.2f} dB, "
              f"group delay {s[3]:.3f}..{s[4]:.3f} ms")
    print(rust_array("DECIM_TAPS", dec, "/// Decimator taps `h[k]`, Q15 (`round(h * 32768)`)."))
    print(rust_array("INTERP_TAPS", interp, "/// Interpolator taps `3 h[k]`, Q15 (`round(3 h * 32768)`)."))


if __name__ == "__main__":
    main()
