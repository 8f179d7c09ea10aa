# SPDX-License-Identifier: Apache-2.0
"""torch twins of the numpy building blocks in :mod:`qsmflow.qsm.kernels` (private; only
imported when a step runs on a torch device, :mod:`qsmflow.qsm.device`): 3D real FFTs,
periodic forward differences and their adjoint, conjugate gradients and the one-filter
convolution. Tensors are float32/complex64; inner products are summed in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from qsmflow.qsm.device import numpy32, tensor

_DIMS = (-3, -2, -1)


def rfft(x):
    """Real-to-complex 3D FFT over the last three axes (as :func:`kernels.rfft`)."""
    return torch.fft.rfftn(x, dim=_DIMS)


def irfft(X, shape):
    """Inverse of :func:`rfft` onto a real grid of ``shape``."""
    return torch.fft.irfftn(X, s=tuple(shape), dim=_DIMS)


def gradient(x, ih):
    """Periodic forward differences ``(x[i + 1] − x[i]) / h`` stacked on a new first axis
    (``ih`` = 1/voxel size, mm⁻¹)."""
    return torch.stack([(torch.roll(x, -1, a) - x) * float(ih[a]) for a in range(3)])


def gradient_adjoint(g, ih):
    """Adjoint of :func:`gradient`: ``Σ_a (g_a[i − 1] − g_a[i]) / h_a``."""
    out = (torch.roll(g[0], 1, 0) - g[0]) * float(ih[0])
    for a in (1, 2):
        out += (torch.roll(g[a], 1, a) - g[a]) * float(ih[a])
    return out


def dot(a, b) -> float:
    """``Σ a·b`` in float64."""
    return float(torch.sum(a.double() * b.double()))


def conjugate_gradient(op, rhs, *, tol=0.0, max_iter=100):
    """Conjugate gradients from zero for a symmetric positive semi-definite ``op``, with
    the stopping rule of :func:`qsmflow.qsm.kernels.conjugate_gradient`
    (``‖r‖ ≤ tol·‖rhs‖``)."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = dot(r, r)
    stop = tol**2 * rr
    for _ in range(max_iter):
        if rr <= stop or rr == 0:
            break
        q = op(p)
        alpha = rr / dot(p, q)
        x += alpha * p
        r -= alpha * q
        rr_new = dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fft_filter(x: np.ndarray, kernel: np.ndarray, shape, dev) -> np.ndarray:
    """``F⁻¹[F(x) · kernel]`` (half-spectrum ``kernel``) on torch device ``dev``; numpy
    float32 out."""
    X = rfft(tensor(x, dev))
    X *= tensor(kernel, dev)
    return numpy32(irfft(X, shape))
