# SPDX-License-Identifier: Apache-2.0
"""Nonlinear dipole inversion (NDI)."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm.inversion._common import _iterations, _positive, _Problem, _validate
from qsmflow.qsm.kernels import irfft, rfft


#: Default ppm → radian factor of :func:`ndi`: the phase accrued by 1 ppm of field at 3 T
#: and TE = 20 ms, ``2π · γ̄ · B0 · TE · 1e-6`` ≈ 16.05 rad/ppm.
NDI_DEFAULT_PHASE_SCALE = 2 * np.pi * 42.577478e6 * 3.0 * 0.020 * 1e-6


def ndi(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    magnitude: np.ndarray | None = None,
    phase_scale: float = NDI_DEFAULT_PHASE_SCALE,
    lam: float = 1e-6,
    step: float = 2.0,
    max_iter: int = 200,
    tol: float = 1e-3,
) -> np.ndarray:
    """Nonlinear dipole inversion (NDI) by gradient descent.

    Minimises ``‖W (exp(i s d ∗ χ) − exp(i s f))‖² + lam s² ‖χ‖²`` [1]_, where ``s``
    (``phase_scale``, rad/ppm) converts the field in ppm to a phase in radians, ``W`` is the
    mask (times the magnitude normalised to mean 1 in the mask, if given). With
    ``|e^{ia} − e^{ib}|² = 2 − 2 cos(a − b)`` the gradient (divided by ``2 s²``) is
    ``d ∗ [W² sin(s (d ∗ χ − f)) / s] + lam χ``; χ takes steps of ``step`` along it from
    χ = 0. As in [1]_ the iteration count is the main regulariser (the small Tikhonov term
    only bounds the magic-angle cone): iterations stop after ``max_iter`` or when
    ``‖χₖ − χₖ₋₁‖ ≤ tol ‖χₖ‖``. The nonlinear data term is robust to large local phases
    (veins, calcifications) where the linear model breaks down.

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0; values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Region where ``local_field`` is valid (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless).
    magnitude : (nx, ny, nz) ndarray, optional
        Magnitude image (arbitrary units) for the weight ``W``.
    phase_scale : float, optional
        Radians per ppm of field, ``2π γ̄ B0 TE · 1e-6`` (default
        :data:`NDI_DEFAULT_PHASE_SCALE`, 3 T and TE = 20 ms).
    lam : float, optional
        Tikhonov weight (dimensionless, default 1e-6).
    step : float, optional
        Gradient-descent step (dimensionless, in (0, 4); default 2 [1]_).
    max_iter : int, optional
        Maximum iterations (default 200).
    tol : float, optional
        Relative-update stopping tolerance (default 1e-3).

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Susceptibility in ppm (unreferenced), 0 outside ``mask``; float dtype of the input.

    Raises
    ------
    ValueError
        For invalid inputs or parameters out of range.

    References
    ----------
    .. [1] Polak D, Chatnuntawech I, Yoon J, et al. Nonlinear dipole inversion (NDI) enables
       robust quantitative susceptibility mapping (QSM). NMR Biomed 2020;33:e4271.
       doi:10.1002/nbm.4271

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = ndi(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1))
    >>> bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    phase_scale = _positive('phase_scale', phase_scale)
    if not (np.isscalar(lam) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f'lam must be a non-negative number, got {lam!r}')
    if not (np.isscalar(step) and 0 < step < 4):
        raise ValueError(f'step must be in (0, 4), got {step!r}')
    max_iter, tol = _iterations(max_iter, tol)
    prob = _Problem(field, mask, vsz, b0)
    w2 = prob.mask.astype(np.float32)
    if magnitude is not None:
        magnitude = np.asarray(magnitude)
        if magnitude.shape != field.shape:
            raise ValueError(f'magnitude shape {magnitude.shape} does not match local_field '
                             f'shape {field.shape}')
        if not np.all(np.isfinite(magnitude[mask])) or np.any(magnitude[mask] < 0):
            raise ValueError('magnitude must be finite and non-negative in the mask')
        w = prob.grid.to_grid(magnitude, np.float32) * prob.mask
        mean = w[prob.mask].mean()
        if mean <= 0:
            raise ValueError('magnitude is zero throughout the mask')
        w2 = (w / mean) ** 2
    chi = _ndi_core(prob, w2, phase_scale, float(lam), float(step), max_iter, tol)
    return prob.finish(chi, field.dtype)


def _ndi_core(prob, w2, s, lam, step, max_iter, tol):
    D, shape = prob.D, prob.shape
    s32 = np.float32(s)
    phase = prob.field * s32
    chi = np.zeros(shape, np.float32)
    for _ in range(max_iter):
        dchi = irfft(rfft(chi) * D, shape).astype(np.float32, copy=False)
        res = np.sin(dchi * s32 - phase)
        res *= w2
        res /= s32
        grad = irfft(rfft(res) * D, shape).astype(np.float32, copy=False)
        if lam:
            grad += np.float32(lam) * chi
        update = np.float32(step) * grad
        chi -= update
        if np.linalg.norm(update) <= tol * np.linalg.norm(chi):
            break
    return chi
