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

    def __init__(self, t_c):
        self.t_c = float(t_c)
        self.y_ref = None
        self.s = self.st = self.stt = self.sy = self.sty = np.float32(0)

    def add(self, y, w, t):
        """Add one echo: phase ``y`` (V,) rad, weight ``w`` (V,) or 1.0, TE ``t`` (s)."""
        if self.y_ref is None:
            self.y_ref = y.astype(np.float32, copy=True)
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
        slope = (self.s * self.sty - self.st * self.sy) / det
        intercept = (self.sy - slope * self.st) / self.s
        intercept += self.y_ref
        return intercept, slope

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
