# SPDX-License-Identifier: Apache-2.0
"""Closed-form dipole inversions: thresholded k-space division and Tikhonov (L2)."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm.device import resolve
from qsmflow.qsm.inversion._common import _positive, _Problem, _validate
from qsmflow.qsm.kernels import irfft, laplacian_kernel, rfft


def tkd(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    threshold: float = 0.19,
    device: str = 'cpu',
) -> np.ndarray:
    """Thresholded k-space division (TKD).

    ``χ = F⁻¹[F(f) / D_t]`` with ``D_t = D`` where ``|D| > threshold`` and
    ``sign(D) · threshold`` elsewhere [1]_ [2]_. Fast but streaky and biased low; use for a
    preview only.

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0 (background removed); values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Region where ``local_field`` is valid (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless, normalised here).
    threshold : float, optional
        Kernel truncation level in (0, 1/3] (dimensionless). Default 0.19, the value used
        with TKD in the 2016 QSM reconstruction challenge evaluations [2]_.
    device : str, optional
        Where the FFTs run (:func:`qsmflow.qsm.device.resolve`; default ``'cpu'``, numpy).

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Susceptibility in ppm (unreferenced), 0 outside ``mask``; float dtype of the input
        (float32 for non-float input).

    Raises
    ------
    ValueError
        For invalid shapes, an empty mask, non-finite field values in the mask or an
        invalid ``threshold``.

    References
    ----------
    .. [1] Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic
       susceptibility mapping of brain tissue in vivo using MRI phase data. Magn Reson Med
       2009;62:1510-1522. doi:10.1002/mrm.22135
    .. [2] Langkammer C, Schweser F, Shmueli K, et al. Quantitative susceptibility mapping:
       report from the 2016 reconstruction challenge. Magn Reson Med 2018;79:1661-1673.
       doi:10.1002/mrm.26830

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = tkd(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1))
    >>> chi.dtype == np.float32 and bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    if not (np.isscalar(threshold) and 0 < threshold <= 1 / 3):
        raise ValueError(f'threshold must be in (0, 1/3], got {threshold!r}')
    dev = resolve(device)
    prob = _Problem(field, mask, vsz, b0)
    return prob.finish(_tkd_core(prob, float(threshold), dev), field.dtype)


def _tkd_core(prob, threshold, dev=None):
    D = prob.D
    Dt = np.where(np.abs(D) > threshold, D, np.sign(D) * np.float32(threshold))
    inv = np.zeros_like(D)
    nz = Dt != 0
    inv[nz] = 1.0 / Dt[nz]
    return _filtered(prob, inv, dev)


def tikhonov(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    lam: float = 1e-2,
    reg: str = 'gradient',
    device: str = 'cpu',
) -> np.ndarray:
    """Closed-form Tikhonov (L2) regularised inversion.

    Minimises ``‖D F χ − F f‖² + lam · ‖Γ χ‖²`` exactly in k-space:
    ``F χ = D F f / (D² + lam |Γ|²)``, with ``|Γ|² = Σ_a |E_a(k)|²`` (periodic forward
    differences, ``reg='gradient'``) or 1 (``reg='identity'``) [1]_.

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
    lam : float, optional
        Regularisation weight (mm² for ``'gradient'``, dimensionless for ``'identity'``).
        Default 1e-2, a common toolbox default for fields in ppm; on simulations it gives
        about the lowest RMSE at realistic noise but biases contrasts low (choose by
        L-curve for quantitative work [1]_).
    reg : {'gradient', 'identity'}, optional
        Regulariser ``Γ``.
    device : str, optional
        Where the FFTs run (:func:`qsmflow.qsm.device.resolve`; default ``'cpu'``, numpy).

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Susceptibility in ppm (unreferenced), 0 outside ``mask``; float dtype of the input.

    Raises
    ------
    ValueError
        For invalid inputs, a non-positive ``lam`` or an unknown ``reg``.

    References
    ----------
    .. [1] Bilgic B, Chatnuntawech I, Fan AP, Setsompop K, Cauley SF, Wald LL,
       Adalsteinsson E. Fast image reconstruction with L2-regularization. J Magn Reson
       Imaging 2014;40:181-191. doi:10.1002/jmri.24365

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = tikhonov(np.zeros((16, 16, 16)), m, (1, 1, 1), reg='identity')
    >>> chi.dtype == np.float64 and bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    lam = _positive('lam', lam)
    if reg not in ('gradient', 'identity'):
        raise ValueError(f"reg must be 'gradient' or 'identity', got {reg!r}")
    dev = resolve(device)
    prob = _Problem(field, mask, vsz, b0)
    return prob.finish(_tikhonov_core(prob, lam, reg, dev), field.dtype)


def _tikhonov_core(prob, lam, reg, dev=None):
    D = prob.D
    gamma2 = laplacian_kernel(prob.shape, prob.vsz) if reg == 'gradient' else np.float32(1)
    den = D * D + np.float32(lam) * gamma2
    filt = np.zeros_like(D)
    nz = den > 0
    filt[nz] = D[nz] / den[nz]
    return _filtered(prob, filt, dev)


def _filtered(prob, kernel, dev):
    """``F⁻¹[F(field) · kernel]`` on the problem's grid, in numpy (``dev`` None) or torch."""
    if dev is None:
        return irfft(rfft(prob.field) * kernel, prob.shape)
    from qsmflow.qsm._torch_ops import fft_filter
    return fft_filter(prob.field, kernel, prob.shape, dev)
