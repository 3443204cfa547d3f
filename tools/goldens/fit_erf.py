"""Fits the rational erf of trainer/src/host.rs: erf(x) ~ x P(x^2) / Q(x^2) on [0, 3.92].

Linearised weighted least squares (Sanathanan-Koerner), then Lawson reweighting towards the
minimax fit, against Python's math.erf; prints the largest error of the fit in float64 and of
its float32 evaluation (Horner, as the Rust code does), and the coefficients. Needs numpy.
Beyond 3.92, erf rounds to +-1 in float32, so the kernel clamps there.
"""
import math

import numpy as np

C = 3.92
NP, NQ = 7, 5  # P: 7 coefficients in x^2 (numerator up to x^13); Q: up to x^8, q0 = 1

x = np.linspace(0, C, 20001)
f = np.array([math.erf(v) for v in x])
z = x * x
w = np.ones_like(x)
qprev = np.ones_like(x)
for it in range(60):
    A = np.hstack([x[:, None] * z[:, None] ** np.arange(NP), -(f[:, None] * z[:, None] ** np.arange(1, NQ))])
    W = (w / qprev)[:, None]
    c, *_ = np.linalg.lstsq(A * W, f * W[:, 0], rcond=None)
    p, q = c[:NP], np.concatenate([[1.0], c[NP:]])
    qprev = np.polyval(q[::-1], z)
    err = np.abs(x * np.polyval(p[::-1], z) / qprev - f)
    if it > 10:
        w = w * (err / err.max()) ** 0.3 + 1e-12
        w /= w.max()
print("largest error, float64:", err.max())

p32, q32 = p.astype(np.float32), q.astype(np.float32)
xs = np.linspace(-6, 6, 1200001).astype(np.float32)
xc = np.clip(xs, -C, C).astype(np.float32)
zz = xc * xc
P = np.zeros_like(zz)
for co in p32[::-1]:
    P = P * zz + co
Q = np.zeros_like(zz)
for co in q32[::-1]:
    Q = Q * zz + co
ref = np.array([math.erf(float(v)) for v in xs])
print("largest error, float32 evaluation:", np.abs(xc * P / Q - ref).max())
print("P:", ", ".join(repr(float(v)) for v in p32))
print("Q:", ", ".join(repr(float(v)) for v in q32))
