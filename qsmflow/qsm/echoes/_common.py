# SPDX-License-Identifier: Apache-2.0
"""Argument checks and weighted line sums shared by echo unwrapping and the field fit
(private)."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._validation import as_echo_times, as_image, as_mask, check_finite_in_mask


def _as_echo_stack(arr, name, shape=None):
    """``arr`` as a 4D ``(X, Y, Z, N)`` float array (3D input: one echo)."""
    a = as_image(arr, name, (3, 4))
    if a.ndim == 3:
        a = a[..., None]
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f'{name} has shape {a.shape}, expected {tuple(shape)}')
    return a


def _check_inputs(phase, mask, echo_times_s, magnitude):
    ph = _as_echo_stack(phase, 'phase')
    msk = as_mask(mask, ph.shape[:3])
    te = as_echo_times(echo_times_s, ph.shape[3])
    check_finite_in_mask(ph, msk, 'phase')
    mag = None
    if magnitude is not None:
        mag = _as_echo_stack(magnitude, 'magnitude', ph.shape)
        check_finite_in_mask(mag, msk, 'magnitude')
        if mag.min() < 0 and mag[msk].min() < 0:
            raise ValueError('magnitude has negative values inside the mask')
    return ph, msk, te, mag


class _LineSums:
    """Running weighted sums for per-voxel line fits ``y = a + b·(t − t_c)``.

    Vectorised over voxels, float32. Sums are well conditioned without float64: TE is
    centred on a fixed ``t_c`` (s) and each voxel's phase on its first added value, so
    the summed phases stay within the phase range covered by the echoes (≲ 10² rad).
    """

    #: Smallest ``det / (s·stt)`` (the weighted variance of TE over its mean square) that
    #: float32 resolves well; below it (one echo's weight dominating the others, e.g. a
    #: void first echo) ``s·stt − st²`` cancels to noise or to 0 and the voxel is refitted
    #: from the stored echoes, centred on its weighted mean TE, in float64.
    COND_MIN = np.float32(1e-5)

    def __init__(self, t_c):
        self.t_c = float(t_c)
        self.y_ref = None
        self.s = self.st = self.stt = self.sy = self.sty = np.float32(0)
        self.terms = []

    def add(self, y, w, t):
        """Add one echo: phase ``y`` (V,) rad, weight ``w`` (V,) or 1.0, TE ``t`` (s)."""
        if self.y_ref is None:
            self.y_ref = y.astype(np.float32, copy=True)
        self.terms.append((y, w, float(t) - self.t_c))  # callers do not modify y
        dt = np.float32(float(t) - self.t_c)
        wy = y - self.y_ref
        if not (isinstance(w, float) and w == 1.0):
            wy *= w
        self.s = self.s + w
        self.st = self.st + w * dt
        self.stt = self.stt + w * (dt * dt)
        self.sy = self.sy + wy
        self.sty = self.sty + wy * dt

    def fit(self):
        """Intercept at ``t_c`` (rad) and slope (rad/s) of the weighted lines, (V,) each."""
        det = self.s * self.stt - self.st * self.st
        with np.errstate(divide='ignore', invalid='ignore'):
            slope = (self.s * self.sty - self.st * self.sy) / det
            intercept = (self.sy - slope * self.st) / self.s
        intercept += self.y_ref
        bad = self._ill_conditioned(det)
        if bad is not None:
            a, b, _ = self._refit(bad)
            intercept[bad], slope[bad] = a, b
        return intercept, slope

    def centred_stt(self):
        """``Σ w (t − t̄)²`` (s²) with ``t̄`` the weighted mean TE, (V,) float32."""
        out = self.stt - self.st * self.st / self.s
        bad = self._ill_conditioned(self.s * self.stt - self.st * self.st)
        if bad is not None:
            out[bad] = self._refit(bad)[2]
        return out

    def _ill_conditioned(self, det):
        """Boolean (V,) of the voxels to refit, or None when there are none."""
        if np.ndim(det) == 0:
            return None  # uniform weights: well conditioned
        bad = ~(det > self.COND_MIN * self.s * self.stt)  # also NaN
        return bad if bad.any() else None

    def _refit(self, bad):
        """Two-pass float64 weighted line fit of the voxels ``bad``: intercept at ``t_c``
        (rad), slope (rad/s) and ``Σ w (t − t̄)²`` (s²), as float32."""
        ys = [np.asarray(y, np.float64)[bad] for y, _, _ in self.terms]
        ws = [np.broadcast_to(np.asarray(w, np.float64), bad.shape)[bad]
              for _, w, _ in self.terms]
        ts = [dt for _, _, dt in self.terms]
        s = sum(ws)
        t_bar = sum(w * t for w, t in zip(ws, ts)) / s
        y_bar = sum(w * y for w, y in zip(ws, ys)) / s
        stt = sum(w * (t - t_bar) ** 2 for w, t in zip(ws, ts))
        sty = sum(w * (t - t_bar) * (y - y_bar) for w, t, y in zip(ws, ts, ys))
        slope = sty / stt
        return ((y_bar - slope * t_bar).astype(np.float32), slope.astype(np.float32),
                stt.astype(np.float32))

    def predict(self, t):
        """Value of the fitted lines at TE ``t`` (s), (V,) float32 (rad)."""
        a, b = self.fit()
        a += b * np.float32(float(t) - self.t_c)
        return a


def _echo_weight(mag_n, ref):
    """Fit weight ``(m/ref)²`` of one echo (dimensionless), or 1.0 without magnitude."""
    if mag_n is None:
        return 1.0
    w = mag_n * np.float32(1 / ref)
    w *= w
    w += np.float32(1e-12)  # never a zero total weight
    return w


def _magnitude_ref(mag0):
    """Median first-echo magnitude used to normalise weights (arbitrary units)."""
    ref = float(np.median(mag0))
    return ref if ref > 0 else 1.0
