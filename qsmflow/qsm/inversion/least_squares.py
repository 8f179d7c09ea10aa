# SPDX-License-Identifier: Apache-2.0
"""Iterative least-squares dipole inversion (LSQR) and iLSQR (LSQR with streaking-artefact
estimation and removal)."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._validation import count
from qsmflow.qsm.inversion._common import _iterations, _Problem, _validate
from qsmflow.qsm.inversion.direct import _tkd_core
from qsmflow.qsm.kernels import conjugate_gradient, gradient, gradient_adjoint, irfft, rfft


def lsqr(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    max_iter: int = 15,
    tol: float = 1e-2,
) -> np.ndarray:
    """Early-stopped iterative least-squares inversion (LSQR / CGLS, no regulariser).

    Minimises ``‖M (d ∗ χ − f)‖²`` (``M`` the mask, ``d`` the unit dipole) with conjugate
    gradients on the normal equations (CGLS, mathematically equivalent to LSQR), starting
    from χ = 0. There is no explicit regulariser: as in the first step of iLSQR [1]_ the
    iteration count is the regulariser (semi-convergence): the well-conditioned frequencies
    converge within a few iterations, the magic-angle cone (where streaks come from) only
    slowly. This is the LSQR step of iLSQR *only*: the result keeps some streaking around
    strong sources (calcifications, veins) at realistic noise; :func:`ilsqr` adds the
    streak estimation and correction steps of [1]_.

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
    max_iter : int, optional
        Maximum CGLS iterations (default 15; the early stop regularises: on a simulated
        brain with 0.01 ppm field noise 15 gave a lower RMSE than 20 or 30).
    tol : float, optional
        Stop when the normal-equation residual ``‖Aᵀ(f − Aχ)‖`` falls below ``tol`` times its
        initial value (dimensionless, default 1e-2, as the LSQR tolerance of [1]_).

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
    .. [1] Li W, Wang N, Yu F, et al. A method for estimating and removing streaking
       artifacts in quantitative susceptibility mapping. NeuroImage 2015;108:111-122.
       doi:10.1016/j.neuroimage.2014.12.043
    .. [2] Paige CC, Saunders MA. LSQR: an algorithm for sparse linear equations and sparse
       least squares. ACM Trans Math Softw 1982;8:43-71. doi:10.1145/355984.355989

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = lsqr(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1))
    >>> bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    max_iter, tol = _iterations(max_iter, tol)
    prob = _Problem(field, mask, vsz, b0)
    return prob.finish(_lsqr_core(prob, max_iter, tol), field.dtype)


def _lsqr_core(prob, max_iter, tol):
    D, shape, m = prob.D, prob.shape, prob.mask

    def dconv(x):
        return irfft(rfft(x) * D, shape).astype(np.float32, copy=False)

    chi = np.zeros(shape, np.float32)
    r = prob.field * m  # data residual f − Aχ
    s = dconv(r)  # Aᵀ r (D real and even: Aᵀ = D M)
    p = s.copy()
    ss = float(np.vdot(s, s))
    stop = tol**2 * ss
    for _ in range(max_iter):
        if ss <= stop or ss == 0:
            break
        q = dconv(p)
        q *= m
        alpha = ss / float(np.vdot(q, q))
        chi += np.float32(alpha) * p
        r -= np.float32(alpha) * q
        s = dconv(r)
        ss_new = float(np.vdot(s, s))
        p *= np.float32(ss_new / ss)
        p += s
        ss = ss_new
    return chi


def ilsqr(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    tol: float = 1e-2,
    max_iter: int = 15,
    threshold: float = 0.1,
    edge_percentile: float = 70.0,
    streak_iter: int = 30,
) -> np.ndarray:
    """iLSQR: early-stopped LSQR, then estimation and removal of its streaking artefacts.

    A simplified implementation of the three steps of [1]_:

    1. ``χ_L`` = :func:`lsqr` (early-stopped least squares; the well-conditioned frequencies
       are accurate, the magic-angle cone carries the streaks).
    2. Streaks are modelled as a component ``χ_s = P x`` confined to the ill-conditioned
       cone, ``P = F⁻¹ M_ic F`` with ``M_ic = (|D| < threshold)``. They are estimated in the
       gradient domain, where streaks show as spurious gradients in otherwise smooth tissue:
       ``min_x ‖W (∇ P x − ∇ χ_L)‖²``, solved by conjugate gradients on the normal
       equations (``streak_iter`` iterations from 0). ``W`` (1 in the mask, 0 outside and at
       genuine structure edges) keeps real edges out of the streak estimate; as the edge
       map, instead of the LSQR-of-Laplacian "fast QSM" estimate of [1]_, this
       implementation uses the gradient magnitude of a thresholded k-space division (TKD,
       ``threshold``) estimate, which is nearly free of streaks: voxels above its
       ``edge_percentile``-th percentile within the mask are edges.
    3. ``χ = χ_L − χ_s``.

    The steps follow [1]_ (LSQR to tolerance 1e-2, streaks confined to the cone
    ``|D| < 0.1`` and fitted in the gradient domain away from structure edges); here the
    streak fit stops after ``streak_iter`` iterations rather than at a tolerance. Measured on the 1 mm
    head phantom (B0 tilted 15°, deep-GM error with whole-brain-mean reference): on the
    exact local field iLSQR is the most accurate inversion here (deep-GM error 0.0037 ppm,
    contrast slope 0.99, RMSE 26 %; LSQR 0.013 / 0.81 / 36 %, TV 0.018 / 0.93 / 36 %). On
    a PDF local field its deep-GM error rises to 0.015 ppm (LSQR 0.011, TV 0.008): not
    a streak-step fault but the background-removal error at the mask edge, which biases
    the whole-brain mean by ≈ +0.013 ppm and which the contrast under-estimation of LSQR
    and TV partly cancels. Referenced to ventricular CSF, iLSQR was again the most
    accurate on the 2 mm phantom chain (0.009 ppm against 0.015 for TV). The defaults sit
    in the middle of a flat optimum: ``streak_iter`` 10/100, ``edge_percentile`` 50/85
    and ``threshold`` 0.15/0.2 each moved the exact-field deep-GM error by ≤ 0.002 ppm,
    trading it against RMSE.

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
    tol : float, optional
        Relative tolerance of the step-1 LSQR (dimensionless, default 1e-2 as in [1]_).
    max_iter : int, optional
        Maximum step-1 LSQR iterations (default 15, as :func:`lsqr`).
    threshold : float, optional
        ``|D|`` below which k-space is ill-conditioned (dimensionless, in (0, 1/3];
        default 0.1 as in [1]_).
    edge_percentile : float, optional
        Percentile (in (0, 100]) of the edge-map gradient magnitude in the mask above which
        voxels count as structure edges and are excluded from the streak fit (default 70).
    streak_iter : int, optional
        CG iterations for the streak estimate (default 30).

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
    .. [1] Li W, Wang N, Yu F, et al. A method for estimating and removing streaking
       artifacts in quantitative susceptibility mapping. NeuroImage 2015;108:111-122.
       doi:10.1016/j.neuroimage.2014.12.043

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = ilsqr(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1))
    >>> bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    max_iter, tol = _iterations(max_iter, tol)
    if not (np.isscalar(threshold) and 0 < threshold <= 1 / 3):
        raise ValueError(f'threshold must be in (0, 1/3], got {threshold!r}')
    if not (np.isscalar(edge_percentile) and 0 < edge_percentile <= 100):
        raise ValueError(f'edge_percentile must be in (0, 100], got {edge_percentile!r}')
    count('streak_iter', streak_iter)
    prob = _Problem(field, mask, vsz, b0)
    chi_l = _lsqr_core(prob, max_iter, tol) * prob.mask
    streaks = _ilsqr_streaks(prob, chi_l, float(threshold), float(edge_percentile),
                             int(streak_iter))
    return prob.finish(chi_l - streaks, field.dtype)


def _ilsqr_streaks(prob, chi_l, threshold, edge_percentile, n_iter):
    """Cone-limited streak component ``P x`` fitting ``∇χ_L`` away from structure edges."""
    shape, vsz = prob.shape, prob.vsz
    cone = (np.abs(prob.D) < threshold).astype(np.float32)

    def proj(x):
        return irfft(rfft(x) * cone, shape).astype(np.float32, copy=False)

    edge_src = _tkd_core(prob, threshold).astype(np.float32, copy=False)
    g = gradient(edge_src, vsz)
    gnorm = np.sqrt((g * g).sum(0))
    if np.any(gnorm[prob.mask] > 0):
        thr = np.percentile(gnorm[prob.mask], edge_percentile)
        w2 = (prob.mask & (gnorm <= thr)).astype(np.float32)
    else:
        w2 = prob.mask.astype(np.float32)

    def normal_op(x):
        return proj(gradient_adjoint(w2 * gradient(proj(x), vsz), vsz))

    rhs = proj(gradient_adjoint(w2 * gradient(chi_l, vsz), vsz))
    x = conjugate_gradient(normal_op, rhs, tol=1e-6, max_iter=n_iter)
    return proj(x)
