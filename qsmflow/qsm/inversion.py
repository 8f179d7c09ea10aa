# SPDX-License-Identifier: Apache-2.0
"""Dipole inversion: local field (ppm) → susceptibility χ (ppm).

The forward model is ``F(field) = D(k) · F(χ)`` with the unit dipole kernel ``D`` (see
:mod:`qsmflow.qsm.kernels`). ``D`` vanishes on the magic-angle cone, so the inversion needs
regularisation:

* :func:`tkd` — thresholded k-space division (fast preview).
* :func:`tikhonov` — closed-form L2 regularisation (gradient or identity).
* :func:`tv` — total-variation regularised inversion by ADMM with a closed-form k-space χ
  update (the linear FANSI / Bilgic 2014 scheme).
* :func:`rts` — rapid two-step (RTS): LSMR on the well-conditioned k-space region, then TV
  for the ill-conditioned cone.
* :func:`medi` — morphology-enabled dipole inversion: noise-weighted data term on the mask
  only, TV that spares magnitude edges (ADMM, CG χ update, started from :func:`tv`).
* :func:`combine_two_pass` — χ of a two-pass reconstruction (strict mask, then filled).
* :func:`invert` — dispatch by name; the default (:data:`DEFAULT_METHOD`) is an iterative
  sparsity-regularised method, as the 2024 consensus recommends.

All functions crop to the mask's bounding box, zero-pad by :data:`PAD_VOXELS` (then to fast
FFT lengths), solve with periodic boundaries on that grid in float32/complex64, and return χ
in ppm on the full grid, 0 outside the mask, with the input's float dtype. χ is unreferenced
(its mean is not recoverable, ``D(0) = 0``): see :mod:`qsmflow.qsm.reference`.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.sparse.linalg import LinearOperator, lsmr

from qsmflow.qsm.kernels import (
    conjugate_gradient,
    PaddedBox,
    check_field_mask,
    dipole_kernel,
    gradient,
    gradient_adjoint,
    irfft,
    laplacian_kernel,
    rfft,
)

#: Name of the method :func:`invert` uses when none is given. On forward simulations of a
#: 1 mm brain (total field → V-SHARP or PDF → inversion, field noise 0.002–0.01 ppm) TV at
#: its defaults had the lowest RMSE, best SSIM and least calcification streaking, and the
#: lowest deep-GM error in 3 of 4 settings; RTS is better only on noise-free local fields.
DEFAULT_METHOD = 'tv'

#: Zero padding (voxels, each side) around the mask's bounding box for the FFT grid.
PAD_VOXELS = 8

#: ADMM over-relaxation factor of :func:`tv` (Boyd et al. 2011, §3.4.3; 1 = plain ADMM).
#: 1.8 reaches the default tolerance in about a third fewer iterations, closer to the optimum.
TV_RELAXATION = 1.8

#: Inversion methods :func:`invert` dispatches to.
METHODS = ('tkd', 'tikhonov', 'tv', 'rts', 'medi', 'lsqr', 'ilsqr', 'ndi')


# --- common set-up ----------------------------------------------------------------------------


def _validate(local_field, mask, voxel_size, b0_dir):
    return check_field_mask(local_field, mask, voxel_size, b0_dir, name='local_field')


def _positive(name, value):
    if not (np.isscalar(value) and np.isfinite(value) and value > 0):
        raise ValueError(f'{name} must be a positive number, got {value!r}')
    return float(value)


def _iterations(max_iter, tol):
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f'max_iter must be a positive integer, got {max_iter!r}')
    if not (np.isscalar(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f'tol must be a non-negative number, got {tol!r}')
    return int(max_iter), float(tol)


class _Problem:
    """Cropped, padded float32 field and dipole kernel shared by all inversions."""

    def __init__(self, field, mask, vsz, b0):
        self.grid = PaddedBox(mask, margin_voxels=0, pad_voxels=PAD_VOXELS)
        self.shape = self.grid.shape
        self.mask = self.grid.to_grid(mask, bool)
        self.field = self.grid.to_grid(np.where(mask, field, 0), np.float32)
        self.vsz = vsz
        self.D = dipole_kernel(self.shape, vsz, b0)

    def finish(self, chi, dtype):
        chi = np.asarray(chi, dtype=np.float32)
        chi *= self.mask
        return self.grid.to_full(chi, dtype=dtype)


# --- direct methods ---------------------------------------------------------------------------


def tkd(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    threshold: float = 0.19,
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
    prob = _Problem(field, mask, vsz, b0)
    return prob.finish(_tkd_core(prob, float(threshold)), field.dtype)


def _tkd_core(prob, threshold):
    D = prob.D
    Dt = np.where(np.abs(D) > threshold, D, np.sign(D) * np.float32(threshold))
    inv = np.zeros_like(D)
    nz = Dt != 0
    inv[nz] = 1.0 / Dt[nz]
    return irfft(rfft(prob.field) * inv, prob.shape)


def tikhonov(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    lam: float = 1e-2,
    reg: str = 'gradient',
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
    prob = _Problem(field, mask, vsz, b0)
    return prob.finish(_tikhonov_core(prob, lam, reg), field.dtype)


def _tikhonov_core(prob, lam, reg):
    D = prob.D
    gamma2 = laplacian_kernel(prob.shape, prob.vsz) if reg == 'gradient' else np.float32(1)
    den = D * D + np.float32(lam) * gamma2
    filt = np.zeros_like(D)
    nz = den > 0
    filt[nz] = D[nz] / den[nz]
    return irfft(rfft(prob.field) * filt, prob.shape)


# --- ADMM with isotropic TV -------------------------------------------------------------------


@numba.njit(parallel=True, fastmath=True, cache=True)
def _shrink_update(chi, chi_prev, u, v, ih0, ih1, ih2, thr, alpha):  # pragma: no cover
    """One ADMM z/u step for ``z ≈ ∇χ`` with isotropic soft-thresholding, fused in one pass.

    With ``z_old = v + u``: ``p = α∇χ + (1 − α) z_old + u``; ``z = max(1 − thr/|p|, 0) p``;
    ``u ← p − z``; ``v ← z − u``.
    Returns ``(‖∇χ − z‖, ‖χ − χ_prev‖, ‖χ‖)`` (primal residual and convergence norms).
    """
    n0, n1, n2 = chi.shape
    # per-slab partial sums, added up in order afterwards: the norms (which steer the
    # stopping and ρ-update tests) then do not depend on the number of threads
    res_i = np.zeros(n0)
    dnorm_i = np.zeros(n0)
    cnorm_i = np.zeros(n0)
    for i in numba.prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        res = 0.0
        dnorm = 0.0
        cnorm = 0.0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                c = chi[i, j, k]
                dc = c - chi_prev[i, j, k]
                dnorm += dc * dc
                cnorm += c * c
                gx = (chi[ip, j, k] - c) * ih0
                gy = (chi[i, jp, k] - c) * ih1
                gz = (chi[i, j, kp] - c) * ih2
                u0 = u[0, i, j, k]
                u1 = u[1, i, j, k]
                u2 = u[2, i, j, k]
                # over-relaxation: α ∇χ + (1 − α) z_old, with z_old = v + u
                px = alpha * gx + (1.0 - alpha) * (v[0, i, j, k] + u0) + u0
                py = alpha * gy + (1.0 - alpha) * (v[1, i, j, k] + u1) + u1
                pz = alpha * gz + (1.0 - alpha) * (v[2, i, j, k] + u2) + u2
                nrm = np.sqrt(px * px + py * py + pz * pz)
                s = 1.0 - thr / nrm if nrm > thr else 0.0
                zx = s * px
                zy = s * py
                zz = s * pz
                ux = px - zx
                uy = py - zy
                uz = pz - zz
                u[0, i, j, k] = ux
                u[1, i, j, k] = uy
                u[2, i, j, k] = uz
                v[0, i, j, k] = zx - ux
                v[1, i, j, k] = zy - uy
                v[2, i, j, k] = zz - uz
                res += (gx - zx) ** 2 + (gy - zy) ** 2 + (gz - zz) ** 2
        res_i[i] = res
        dnorm_i[i] = dnorm
        cnorm_i[i] = cnorm
    res = 0.0
    dnorm = 0.0
    cnorm = 0.0
    for i in range(n0):  # a plain loop: with parallel=True, np.sum would be a parallel reduction
        res += res_i[i]
        dnorm += dnorm_i[i]
        cnorm += cnorm_i[i]
    return np.sqrt(res), np.sqrt(dnorm), np.sqrt(cnorm)


def _tv_filter(numerator, precision, L, rho):
    """``Q = numerator / (precision + ρL)`` and ``ρ / (precision + ρL)`` (0 where undefined)."""
    den = precision + np.float32(rho) * L
    iden = np.zeros_like(den)
    np.divide(1, den, out=iden, where=den > 0)
    return numerator * iden, iden * np.float32(rho)


def _admm_tv(numerator, precision, L, rho, weight, v, vsz, max_iter, tol, *, relaxation=1.0,
             tau=None, gamma=None):
    """ADMM for ``min_χ data(χ) + weight ‖∇χ‖₂,₁`` with a diagonal k-space χ update.

    ``data`` is the quadratic whose normal equations in k-space read
    ``precision · F χ = numerator``; the χ update is
    ``F χ = (numerator + ρ F(∇ᵀ v)) / (precision + ρ L)`` with ``v = z − u`` (scaled dual
    ``u``), and the z update is isotropic soft-thresholding with ``weight/ρ``. When ``tau``
    is given, ρ grows by ``gamma`` whenever the primal residual ``‖∇χ − z‖`` fails to shrink
    by the factor ``tau``. ``relaxation`` (α) replaces ``∇χ`` by ``α∇χ + (1 − α) z`` in the
    z and u updates (over-relaxed ADMM). Stops when ``‖χₖ − χₖ₋₁‖ ≤ tol ‖χₖ‖``. Returns χ
    (float32).
    """
    shape = v.shape[1:]
    ih = (1.0 / vsz).astype(np.float32)
    u = np.zeros_like(v)
    Q, rho_iden = _tv_filter(numerator, precision, L, rho)
    chi_prev = None
    res_prev = np.inf
    for it in range(max_iter):
        W = rfft(gradient_adjoint(v, vsz))
        W *= rho_iden
        W += Q
        chi = irfft(W, shape)
        if it == max_iter - 1:
            break
        res, dnorm, cnorm = _shrink_update(
            chi, chi if chi_prev is None else chi_prev, u, v, ih[0], ih[1], ih[2],
            np.float32(weight / rho), np.float32(relaxation),
        )
        if chi_prev is not None and dnorm <= tol * cnorm:
            break
        chi_prev = chi
        if tau is not None:
            if res > tau * res_prev:
                # ρ ← γρ: rescale the scaled dual (v = z − u keeps z) and the χ-update filter
                v += np.float32(1 - 1 / gamma) * u
                u *= np.float32(1 / gamma)
                rho *= gamma
                Q, rho_iden = _tv_filter(numerator, precision, L, rho)
            res_prev = res
    return chi


@numba.njit(parallel=True, fastmath=True, cache=True)
def _data_update(dchi, wf, w2, q, u, rho, alpha, chi, chi_prev):  # pragma: no cover
    """One ADMM y/u step for ``y ≈ Dχ`` under the weighted data term ``½‖W(y − f)‖²``.

    With ``y_old = q + u``: ``p = α Dχ + (1 − α) y_old + u``;
    ``y = (W²f + ρp) / (W² + ρ)``; ``u ← p − y``; ``q ← y − u``. Pointwise, in place.
    Returns ``(‖χ − χ_prev‖, ‖χ‖)`` over the voxels where ``W² > 0`` (per-slab partial sums
    added in order: independent of the number of threads).
    """
    n0, n1, n2 = dchi.shape
    dnorm_i = np.zeros(n0)
    cnorm_i = np.zeros(n0)
    for i in numba.prange(n0):
        dnorm = 0.0
        cnorm = 0.0
        for j in range(n1):
            for k in range(n2):
                uu = u[i, j, k]
                w = w2[i, j, k]
                p = alpha * dchi[i, j, k] + (1.0 - alpha) * (q[i, j, k] + uu) + uu
                y = (wf[i, j, k] + rho * p) / (w + rho)
                uu = p - y
                u[i, j, k] = uu
                q[i, j, k] = y - uu
                if w > 0:
                    c = chi[i, j, k]
                    dc = c - chi_prev[i, j, k]
                    dnorm += dc * dc
                    cnorm += c * c
        dnorm_i[i] = dnorm
        cnorm_i[i] = cnorm
    dnorm = 0.0
    cnorm = 0.0
    for i in range(n0):
        dnorm += dnorm_i[i]
        cnorm += cnorm_i[i]
    return np.sqrt(dnorm), np.sqrt(cnorm)


def tv(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    lam: float = 5e-4,
    rho: float | None = None,
    rho_data: float = 0.3,
    max_iter: int = 100,
    tol: float = 5e-3,
) -> np.ndarray:
    """Total-variation regularised dipole inversion with the data term inside the mask.

    Solves ``min_χ ½‖M (F⁻¹ D F χ − f)‖² + lam ‖∇χ‖₂,₁`` (isotropic TV on periodic
    forward differences) by ADMM with the splits ``z = ∇χ`` and ``y = F⁻¹ D F χ`` [1]_ [2]_
    (linear, weighted FANSI): the χ update is exact in k-space,
    ``F χ = (ρ Eᴴ F(z − u) + ρ_d D F(y − u_y)) / (ρ Σ|E_a|² + ρ_d D²)``, the z update is
    isotropic soft-thresholding with ``lam/ρ`` and the y update is pointwise. Both splits are
    over-relaxed with :data:`TV_RELAXATION` [3]_.

    The field is fitted only inside the mask ``M``, and χ is free on the whole padded grid
    (only its values inside the mask are returned). χ just outside the mask can then carry
    the part of the field that background removal attributed to outside sources although
    it came from inside (the smooth error PDF and SHARP leave in the local field), instead of
    forcing a smooth bias onto χ inside. Solving with the field taken as 0 outside the mask
    (the closed-form variant of [1]_) biased deep-grey-matter means by about 0.01 ppm on
    forward-simulated heads; this formulation cut that error by 40 % at 2 mm and by more
    than half at 1 mm.

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
        TV weight in ppm·mm (fields in ppm, ``∇χ`` in ppm/mm). Default 5e-4: on simulated
        heads it kept more deep-grey-matter contrast than 1e-3 (slope against the truth
        0.94–0.96 against 0.89–0.91 at 1 mm, 0.90 against 0.86 at 2 mm).
    rho : float, optional
        ADMM penalty of the gradient split in mm² (weights ``‖∇χ − z‖²``); default None
        means ``100 · lam``, the choice of [1]_ [2]_.
    rho_data : float, optional
        ADMM penalty of the data split (dimensionless, the data weight inside the mask is
        1). Default 0.3.
    max_iter : int, optional
        Maximum ADMM iterations (default 100; 30–50 are needed at the default ``tol``).
    tol : float, optional
        Stop when ``‖χₖ − χₖ₋₁‖ ≤ tol ‖χₖ‖`` inside the mask (default 5e-3: the mean
        deep-grey-matter error then differed by at most 0.0003 ppm from that at 1e-3,
        which took about twice as many iterations).

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Susceptibility in ppm (unreferenced), 0 outside ``mask``; float dtype of the input.

    Raises
    ------
    ValueError
        For invalid inputs or non-positive ``lam``/``rho``/``rho_data``/``max_iter``,
        negative ``tol``.

    References
    ----------
    .. [1] Bilgic B, Fan AP, Polimeni JR, Cauley SF, Bianciardi M, Adalsteinsson E, Wald LL,
       Setsompop K. Fast quantitative susceptibility mapping with L1-regularization and
       automatic parameter selection. Magn Reson Med 2014;72:1444-1459.
       doi:10.1002/mrm.25029
    .. [2] Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear
       susceptibility inversion with variational regularization. Magn Reson Med
       2018;80:814-821. doi:10.1002/mrm.27073
    .. [3] Boyd S, Parikh N, Chu E, Peleato B, Eckstein J. Distributed optimization and
       statistical learning via the alternating direction method of multipliers. Found
       Trends Mach Learn 2011;3:1-122. doi:10.1561/2200000016

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = tv(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1), max_iter=3)
    >>> chi.shape == m.shape and bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    lam = _positive('lam', lam)
    rho = 100.0 * lam if rho is None else _positive('rho', rho)
    rho_data = _positive('rho_data', rho_data)
    max_iter, tol = _iterations(max_iter, tol)
    prob = _Problem(field, mask, vsz, b0)
    return prob.finish(_tv_masked_core(prob, lam, rho, rho_data, max_iter, tol), field.dtype)


def _tv_masked_core(prob, lam, rho, rho_data, max_iter, tol):
    D, shape, vsz = prob.D, prob.shape, prob.vsz
    ih = (1.0 / vsz).astype(np.float32)
    w2 = prob.mask.astype(np.float32)
    wf = prob.field * w2
    den = np.float32(rho) * laplacian_kernel(shape, vsz) + np.float32(rho_data) * D * D
    iden = np.zeros_like(den)
    np.divide(1, den, out=iden, where=den > 0)
    grad_gain = iden * np.float32(rho)
    data_gain = iden * D * np.float32(rho_data)
    v = np.zeros((3,) + shape, np.float32)  # z − u of the gradient split
    u = np.zeros_like(v)
    q = wf.copy()  # y − u_y of the data split: start from the field inside the mask
    uy = np.zeros(shape, np.float32)
    thr = np.float32(lam / rho)
    alpha = np.float32(TV_RELAXATION)
    chi_prev = None
    for it in range(max_iter):
        X = rfft(gradient_adjoint(v, vsz))
        X *= grad_gain
        X += data_gain * rfft(q)
        chi = irfft(X, shape)
        if it == max_iter - 1:
            break
        X *= D
        # the stopping norms cover χ inside the mask, what is returned (χ outside, which
        # only carries field into the mask, settles much more slowly and does not matter)
        dnorm, cnorm = _data_update(irfft(X, shape), wf, w2, q, uy, np.float32(rho_data),
                                    alpha, chi, chi if chi_prev is None else chi_prev)
        _shrink_update(chi, chi, u, v, ih[0], ih[1], ih[2], thr, alpha)
        if chi_prev is not None and dnorm <= tol * cnorm:
            break
        chi_prev = chi
    return chi


def _tv_closed_form(prob, lam, rho, max_iter, tol):
    """TV-ADMM with the field taken as 0 outside the mask (closed-form χ update, [1]_ of
    :func:`tv`): the fast start of :func:`medi`."""
    D = prob.D
    L = laplacian_kernel(prob.shape, prob.vsz)
    numerator = rfft(prob.field)
    numerator *= D
    v = np.zeros((3,) + prob.shape, np.float32)
    return _admm_tv(numerator, D * D, L, rho, lam, v, prob.vsz, max_iter, tol,
                    relaxation=TV_RELAXATION)


def rts(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    delta: float = 0.15,
    mu: float = 1e5,
    rho: float = 10.0,
    max_iter: int = 20,
    tol: float = 1e-2,
    lsmr_iter: int = 15,
) -> np.ndarray:
    """Rapid two-step dipole inversion (RTS).

    Step 1 solves the well-conditioned problem ``D F χ = F f`` with a few LSMR iterations
    (early stopping regularises), masks the result and takes its spectrum ``X₁``. Step 2
    keeps the well-conditioned frequencies ``M = |D| > delta`` and fills the cone with
    isotropic TV: ``min_χ μ/2 ‖M (F χ − X₁)‖² + ‖∇χ‖₂,₁`` by ADMM (closed-form k-space χ
    update, ρ increased ×5 whenever the primal residual decreases by less than 30 %) [1]_.

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0; values outside ``mask`` are ignored (taken as 0).
    mask : (nx, ny, nz) ndarray of bool
        Region where ``local_field`` is valid (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless).
    delta : float, optional
        Threshold on ``|D|`` separating well- and ill-conditioned frequencies
        (dimensionless, default 0.15 [1]_).
    mu : float, optional
        Weight of the well-conditioned data term relative to the TV term, with χ in ppm and
        gradients per mm (default 1e5 [1]_: the well-conditioned frequencies are in effect
        fixed to step 1).
    rho : float, optional
        Initial ADMM penalty, same units (default 10 [1]_).
    max_iter : int, optional
        Maximum ADMM iterations (default 20 [1]_).
    tol : float, optional
        Stop when ``‖χₖ − χₖ₋₁‖ ≤ tol ‖χₖ‖`` (default 1e-2 [1]_).
    lsmr_iter : int, optional
        LSMR iterations of step 1 (default 15). The authors' reference implementation
        stops after 4; on forward simulations that leaves the band ``0.15 < |D| < 0.3``
        under-recovered by 20–60 % and biases deep-GM contrasts by ≈ 0.02 ppm, while 15
        iterations recover it to within 3 % (deep-GM error ≈ 0.003 ppm without noise).

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
    .. [1] Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for
       susceptibility mapping with sparsity priors. NeuroImage 2018;167:276-283.
       doi:10.1016/j.neuroimage.2017.11.018

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = rts(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1))
    >>> chi.shape == m.shape and bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    if not (np.isscalar(delta) and 0 < delta < 2 / 3):
        raise ValueError(f'delta must be in (0, 2/3), got {delta!r}')
    mu = _positive('mu', mu)
    rho = _positive('rho', rho)
    max_iter, tol = _iterations(max_iter, tol)
    if int(lsmr_iter) != lsmr_iter or lsmr_iter < 1:
        raise ValueError(f'lsmr_iter must be a positive integer, got {lsmr_iter!r}')
    prob = _Problem(field, mask, vsz, b0)
    chi = _rts_core(prob, float(delta), mu, rho, max_iter, tol, int(lsmr_iter))
    return prob.finish(chi, field.dtype)


#: Bins of D over [−2/3, 1/3] used to run LSMR on the spectral distribution of the data.
_LSMR_BINS = 1 << 16


def _lsmr_filter(D, B, n_iter):
    """k-space filter ``H`` such that ``H · B`` is LSMR's ``n_iter``-th iterate for ``D x = B``.

    ``D`` is diagonal (and real), so every Krylov vector is ``q(D) · B`` and all of LSMR's
    scalars are weighted sums ``Σ q(D_j)² |B_j|²``: the iterate is ``p(D) · B`` for a
    polynomial ``p`` that depends only on the distribution of ``|B|²`` over the values of
    ``D``. LSMR is therefore run on that distribution (``D`` binned finely, each bin at its
    weighted mean) and ``p`` is interpolated back onto the grid: the same result as LSMR on
    the full grid up to the binning, at the cost of a single pass over the data.
    """
    lo, hi = -2.0 / 3.0, 1.0 / 3.0
    idx = ((D - np.float32(lo)) * np.float32(_LSMR_BINS / (hi - lo))).astype(np.intp)
    np.clip(idx, 0, _LSMR_BINS - 1, out=idx)
    idx = idx.reshape(-1)
    w = (B.real * B.real + B.imag * B.imag).reshape(-1)
    wsum = np.bincount(idx, weights=w, minlength=_LSMR_BINS)
    keep = wsum > 0
    if not keep.any():
        return np.zeros_like(D)
    dsum = np.bincount(idx, weights=w * D.reshape(-1), minlength=_LSMR_BINS)
    dc = dsum[keep] / wsum[keep]
    rhs = np.sqrt(wsum[keep])
    op = LinearOperator((dc.size, dc.size), matvec=lambda x: dc * x.reshape(-1),
                        rmatvec=lambda x: dc * x.reshape(-1), dtype=np.float64)
    x = lsmr(op, rhs, atol=0, btol=0, conlim=0, maxiter=n_iter)[0]
    # the polynomial at every bin (interpolated where a bin holds no data), looked up per voxel
    centres = lo + (np.arange(_LSMR_BINS) + 0.5) * ((hi - lo) / _LSMR_BINS)
    table = np.interp(centres, dc, x / rhs).astype(np.float32)
    return table[idx].reshape(D.shape)


def _rts_core(prob, delta, mu, rho, max_iter, tol, lsmr_iter):
    D = prob.D
    # step 1: well-conditioned part
    X1 = rfft(prob.field)
    X1 *= _lsmr_filter(D, X1, lsmr_iter)
    chi1 = irfft(X1, prob.shape).astype(np.float32, copy=False)
    chi1 *= prob.mask
    # step 2: TV on the ill-conditioned cone, well-conditioned frequencies held at X₁
    L = laplacian_kernel(prob.shape, prob.vsz)
    precision = np.where(np.abs(D) > delta, np.float32(mu), np.float32(0))
    numerator = rfft(chi1)
    numerator *= precision
    v = gradient(chi1, prob.vsz)
    return _admm_tv(numerator, precision, L, rho, 1.0, v, prob.vsz, max_iter, tol,
                    tau=0.7, gamma=5.0)


#: Fraction of mask voxels :func:`medi` treats as non-edge (regularised) by default: the
#: voxels with the strongest magnitude gradient (the rest) are left unregularised (MEDI's
#: ``percentage`` 0.9).
DEFAULT_MEDI_EDGE_PERCENTAGE = 0.9


def medi(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    magnitude: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    lam: float = 1e-3,
    edge_percentage: float = DEFAULT_MEDI_EDGE_PERCENTAGE,
    rho: float | None = None,
    max_iter: int = 10,
    cg_iter: int = 8,
    tol: float = 1e-2,
) -> np.ndarray:
    """Morphology-enabled dipole inversion (MEDI), linear noise-weighted data term.

    Solves ``min_χ ½‖W (d ∗ χ − f)‖² + lam ‖M_G ∇χ‖₂,₁`` [1]_ [2]_ where

    * ``W = mask / noise`` normalised to mean 1 over the mask (``noise`` the standard error
      of the field, e.g. :func:`qsmflow.qsm.echoes.fit_field`'s ``noise_hz`` converted to
      ppm); without ``noise`` ``W`` is the mask. The data term covers the mask only, so the
      field is not assumed to be 0 outside it (unlike :func:`tv`).
    * ``M_G`` is 0 at the strongest magnitude edges (the ``1 − edge_percentage`` fraction of
      mask voxels with the largest ``|∇ magnitude|``) and 1 elsewhere: edges seen in the
      magnitude may be edges in χ, so they are not penalised. Without ``magnitude``,
      ``M_G = 1`` (plain weighted TV).

    The data term is the linearised one of MEDI (valid for the small phase of a field in
    ppm; no complex exponential). Solved by ADMM with the split ``z = M_G ∇χ``; the χ
    update (``Dᵀ W² D + ρ ∇ᵀ M_G² ∇``, not diagonal in k-space) by ``cg_iter`` warm-started
    conjugate-gradient steps, starting from the :func:`tv` solution (same ``lam``).

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
        Magnitude image (arbitrary units), e.g. the first echo, for the edge prior.
    noise : (nx, ny, nz) ndarray, optional
        Standard error of ``local_field`` in ppm (positive in the mask).
    lam : float, optional
        TV weight in ppm·mm (default 1e-3, as in the closed-form TV-ADMM that starts MEDI).
    edge_percentage : float, optional
        Fraction of mask voxels in (0, 1] that are regularised (default 0.9 [1]_).
    rho : float, optional
        ADMM penalty in mm² (default ``100 · lam``).
    max_iter : int, optional
        Maximum ADMM iterations after the TV start (default 10).
    cg_iter : int, optional
        Conjugate-gradient steps per χ update (default 8).
    tol : float, optional
        Stop when ``‖χₖ − χₖ₋₁‖ ≤ tol ‖χₖ‖`` (default 1e-2).

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
    .. [1] Liu T, Liu J, de Rochefort L, Spincemaille P, Khalidov I, Ledoux JR, Wang Y.
       Morphology enabled dipole inversion (MEDI) from a single-angle acquisition:
       comparison with COSMOS in human brain imaging. Magn Reson Med 2011;66:777-783.
       doi:10.1002/mrm.22816
    .. [2] Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for
       quantitative susceptibility mapping using structural consistency between the
       magnitude image and the susceptibility map. NeuroImage 2012;59:2560-2568.
       doi:10.1016/j.neuroimage.2011.08.082

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = medi(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1), max_iter=2)
    >>> chi.shape == m.shape and bool(np.all(chi == 0))
    True
    """
    field, mask, vsz, b0 = _validate(local_field, mask, voxel_size, b0_dir)
    lam = _positive('lam', lam)
    rho = 100.0 * lam if rho is None else _positive('rho', rho)
    max_iter, tol = _iterations(max_iter, tol)
    if int(cg_iter) != cg_iter or cg_iter < 1:
        raise ValueError(f'cg_iter must be a positive integer, got {cg_iter!r}')
    if not (np.isscalar(edge_percentage) and 0 < edge_percentage <= 1):
        raise ValueError(f'edge_percentage must be in (0, 1], got {edge_percentage!r}')
    extra = {}
    for name, arr in (('magnitude', magnitude), ('noise', noise)):
        if arr is not None:
            arr = np.asarray(arr)
            if arr.shape != field.shape:
                raise ValueError(f'{name} shape {arr.shape} does not match local_field shape '
                                 f'{field.shape}')
            if not np.all(np.isfinite(arr[mask])):
                raise ValueError(f'{name} has non-finite values in the mask')
            extra[name] = arr
    if 'noise' in extra and np.any(extra['noise'][mask] <= 0):
        raise ValueError('noise must be positive in the mask')
    prob = _Problem(field, mask, vsz, b0)
    weight = _medi_data_weight(prob, extra.get('noise'))
    edge = _medi_edge_weight(prob, extra.get('magnitude'), float(edge_percentage))
    chi = _medi_core(prob, weight, edge, lam, rho, max_iter, int(cg_iter), tol)
    return prob.finish(chi, field.dtype)


def _medi_data_weight(prob, noise):
    """``W²`` on the padded grid: (1/noise)² normalised to mean W = 1 over the mask."""
    if noise is None:
        return prob.mask.astype(np.float32)
    full_mask = prob.grid.to_full(prob.mask)
    inv = np.zeros(full_mask.shape, np.float32)
    inv[full_mask] = 1.0 / noise[full_mask]
    w = prob.grid.to_grid(inv, np.float32)
    w /= w[prob.mask].mean()
    return w * w


def _medi_edge_weight(prob, magnitude, percentage):
    """``M_G`` on the padded grid: 0 at the strongest magnitude edges, else 1."""
    if magnitude is None or percentage >= 1:
        return np.ones(prob.shape, np.float32)
    mag = prob.grid.to_grid(magnitude, np.float32) * prob.mask
    g = gradient(mag, prob.vsz)
    gnorm = np.sqrt((g * g).sum(0))
    thr = np.quantile(gnorm[prob.mask], percentage)
    return (gnorm <= thr).astype(np.float32)


def _medi_core(prob, w2, edge, lam, rho, max_iter, cg_iter, tol):
    D, shape, vsz = prob.D, prob.shape, prob.vsz
    e2 = edge * edge

    def dconv(x):
        return irfft(rfft(x) * D, shape).astype(np.float32, copy=False)

    def normal_op(x):
        y = dconv(w2 * dconv(x))
        y += np.float32(rho) * gradient_adjoint(e2 * gradient(x, vsz), vsz)
        return y

    rhs_data = dconv(w2 * prob.field)
    # start from the closed-form TV solution (the same TV weight): ADMM with the masked,
    # weighted data term then only corrects it, instead of building χ up from zero
    chi = _tv_closed_form(prob, lam, 100.0 * lam, 100, 1e-3).astype(np.float32, copy=False)
    chi *= prob.mask
    z = edge * gradient(chi, vsz)
    u = np.zeros_like(z)
    thr = np.float32(lam / rho)
    for _ in range(max_iter):
        rhs = rhs_data + np.float32(rho) * gradient_adjoint(edge * (z - u), vsz)
        chi_prev = chi.copy()
        # warm-started CG on the χ update (fixed step count)
        conjugate_gradient(normal_op, rhs, chi, tol=0.0, max_iter=cg_iter)
        eg = edge * gradient(chi, vsz)
        v = eg + u
        nrm = np.sqrt((v * v).sum(0))
        scale = np.maximum(1 - thr / np.maximum(nrm, np.float32(1e-12)), 0).astype(np.float32)
        z = v * scale
        u = v - z
        if np.linalg.norm(chi - chi_prev) <= tol * np.linalg.norm(chi):
            break
    return chi


# --- two-pass combination -------------------------------------------------------------------


def combine_two_pass(
    chi_strict: np.ndarray,
    chi_filled: np.ndarray,
    strict_mask: np.ndarray,
    filled_mask: np.ndarray,
    *,
    align: bool = True,
) -> tuple[np.ndarray, float]:
    """Combine the two reconstructions of a two-pass QSM into one map on the filled mask.

    The strict reconstruction (background removal and inversion on a mask without the
    unreliable voxels, see :func:`qsmflow.qsm.mask.strict_mask`) is free of the streaks
    that strong, unreliable sources spread into their surroundings; the filled
    reconstruction (on the generous, hole-free mask) gives χ where the strict mask has
    holes [1]_. The result is ``chi_strict`` in ``strict_mask ∧ filled_mask``,
    ``chi_filled + offset`` in the rest of ``filled_mask`` and 0 outside it. Each map's
    mean is arbitrary (``D(0) = 0``), so with ``align`` the offset is the median of
    ``chi_strict − chi_filled`` over the voxels both define (no step at the hole borders);
    otherwise it is 0.

    Parameters
    ----------
    chi_strict, chi_filled : (nx, ny, nz) ndarray
        Susceptibility (ppm, unreferenced) from the strict and the filled reconstruction.
    strict_mask, filled_mask : (nx, ny, nz) ndarray of bool
        Masks the two maps are defined on (after background removal). ``filled_mask`` is
        the mask of the result; voxels of ``strict_mask`` outside it are ignored.

    align : bool, optional
        Shift ``chi_filled`` to ``chi_strict`` before combining (default True).

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Combined susceptibility in ppm (unreferenced), 0 outside ``filled_mask``; float
        dtype of ``chi_filled`` (float32 for non-float input).
    offset : float
        Value added to ``chi_filled`` (ppm).

    Raises
    ------
    ValueError
        For mismatched shapes, an empty ``filled_mask`` or non-finite χ in the masks.

    References
    ----------
    .. [1] Stewart AW, Robinson SD, O'Brien K, et al. QSMxT: Robust masking and artifact
       reduction for quantitative susceptibility mapping. Magn Reson Med
       2022;87:1289-1300. doi:10.1002/mrm.29048

    Examples
    --------
    >>> filled = np.ones((4, 4, 4), bool); strict = filled.copy(); strict[0] = False
    >>> chi, off = combine_two_pass(np.full(filled.shape, 2.0), np.ones(filled.shape),
    ...                             strict, filled)
    >>> off, float(chi[0].mean()), float(chi[1:].mean())
    (1.0, 2.0, 2.0)
    >>> chi, off = combine_two_pass(np.full(filled.shape, 2.0), np.ones(filled.shape),
    ...                             strict, filled, align=False)
    >>> off, float(chi[0].mean()), float(chi[1:].mean())
    (0.0, 1.0, 2.0)
    """
    a = np.asarray(chi_strict)
    b = np.asarray(chi_filled)
    ms = np.asarray(strict_mask, dtype=bool)
    mf = np.asarray(filled_mask, dtype=bool)
    if not (a.shape == b.shape == ms.shape == mf.shape) or a.ndim != 3:
        raise ValueError(f'chi and mask shapes differ or are not 3D: {a.shape}, {b.shape}, '
                         f'{ms.shape}, {mf.shape}')
    if not mf.any():
        raise ValueError('filled_mask is empty')
    ms = ms & mf
    if not (np.all(np.isfinite(a[ms])) and np.all(np.isfinite(b[mf]))):
        raise ValueError('chi has non-finite values in its mask')
    dtype = b.dtype if np.issubdtype(b.dtype, np.floating) else np.dtype(np.float32)
    offset = float(np.median(a[ms].astype(np.float64) - b[ms])) if align and ms.any() else 0.0
    out = np.zeros(b.shape, dtype)
    out[mf] = b[mf] + offset
    out[ms] = a[ms]
    return out, offset


# --- dispatch ---------------------------------------------------------------------------------


def invert(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    method: str | None = None,
    **params,
) -> np.ndarray:
    """Dipole inversion by name: ``method`` in :data:`METHODS` (default :data:`DEFAULT_METHOD`).

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0.
    mask : (nx, ny, nz) ndarray of bool
        Region where ``local_field`` is valid.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless).
    method : str, optional
        ``'tkd'``, ``'tikhonov'``, ``'tv'``, ``'rts'`` or ``'medi'``; None selects
        :data:`DEFAULT_METHOD`.
    **params
        Keyword options of the chosen method.

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Susceptibility in ppm (unreferenced), 0 outside ``mask``.

    Raises
    ------
    ValueError
        For an unknown method or invalid options.

    References
    ----------
    .. [1] QSM Consensus Organization Committee. Recommended implementation of quantitative
       susceptibility mapping for clinical research in the brain: a consensus of the ISMRM
       electro-magnetic tissue properties study group. Magn Reson Med 2024;91:1834-1862.
       doi:10.1002/mrm.30006

    Examples
    --------
    >>> m = np.ones((16, 16, 16), bool)
    >>> chi = invert(np.zeros((16, 16, 16), np.float32), m, (1, 1, 1), method='tkd')
    >>> bool(np.all(chi == 0))
    True
    """
    name = DEFAULT_METHOD if method is None else method
    if name not in METHODS:
        raise ValueError(f'unknown inversion method {method!r}; choose one of {METHODS}')
    func = globals()[name]
    try:
        return func(local_field, mask, voxel_size, b0_dir, **params)
    except TypeError as exc:
        raise ValueError(f'invalid options for {name}: {exc}') from None


# --- iterative least squares (LSQR) and nonlinear dipole inversion -------------------------


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


# --- iLSQR: LSQR with streaking-artefact estimation and removal ---------------------------


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
    if int(streak_iter) != streak_iter or streak_iter < 1:
        raise ValueError(f'streak_iter must be a positive integer, got {streak_iter!r}')
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
