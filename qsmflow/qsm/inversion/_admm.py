# SPDX-License-Identifier: Apache-2.0
"""ADMM machinery of the TV-regularised inversions (private), shared by
:func:`~qsmflow.qsm.inversion.tv`, :func:`~qsmflow.qsm.inversion.rts` and
:func:`~qsmflow.qsm.inversion.medi`: the fused shrinkage/dual update (numba, parallel over
slabs, norms summed in a fixed order so results do not depend on the thread count), the
closed-form k-space χ update and the ADMM loop.
"""

from __future__ import annotations

import numba
import numpy as np

from qsmflow.qsm import _vector
from qsmflow.qsm.kernels import gradient_adjoint, irfft, rfft


def _shrink_update(chi, chi_prev, u, v, ih0, ih1, ih2, thr, alpha, weights=None):
    """One ADMM z/u step for ``z ≈ ∇χ`` with isotropic soft-thresholding, fused in one pass.

    With ``z_old = v + u``: ``p = α∇χ + (1 − α) z_old + u``; ``z = max(1 − t/|p|, 0) p``
    with ``t = thr``, or ``t = thr · weights`` per voxel when ``weights`` (float32 grid of
    χ's shape: a weighted TV) is given; ``u ← p − z``; ``v ← z − u``.
    Returns ``(‖∇χ − z‖, ‖χ − χ_prev‖, ‖χ‖)`` (primal residual and convergence norms).
    """
    if weights is None:
        weights = _NO_WEIGHTS
    elif weights.shape != chi.shape:
        raise ValueError(f'gradient weights of shape {weights.shape} for χ of {chi.shape}')
    return _shrink_update_nb(chi, chi_prev, u, v, ih0, ih1, ih2, thr, alpha, weights)


#: The "no per-voxel weights" value of :func:`_shrink_update_nb` (an empty grid).
_NO_WEIGHTS = np.zeros((0, 0, 0), np.float32)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _shrink_update_nb(chi, chi_prev, u, v, ih0, ih1, ih2, thr, alpha, weights):  # pragma: no cover
    """:func:`_shrink_update`, compiled; ``weights`` empty: one threshold everywhere."""
    n0, n1, n2 = chi.shape
    weighted = weights.shape[0] > 0
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
                t = thr * weights[i, j, k] if weighted else thr
                s = 1.0 - t / nrm if nrm > t else 0.0
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

        def filter_slab(s, W=W, Q=Q, rho_iden=rho_iden):
            W[s] *= rho_iden[s]
            W[s] += Q[s]

        _vector.slabwise(filter_slab, W.shape[0])  # W = W·ρ/(precision + ρL) + Q
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
def _data_update(dchi, wf, code, weights, q, u, rho, alpha, chi, prev, offsets):  # pragma: no cover
    """One ADMM y/u step for ``y ≈ Dχ`` under the weighted data term ``½‖W(y − f)‖²``.

    With ``y_old = q + u``: ``p = α Dχ + (1 − α) y_old + u``;
    ``y = (W²f + ρp) / (W² + ρ)`` (``wf`` holds ``W²f``, ``W² = weights[code]``: ``code``
    is 1 in the mask, whose voxels the norms cover); ``u ← p − y``; ``q ← y − u``.
    Pointwise, in place. ``prev`` holds χ of the mask's voxels in C order (slab ``i``'s from
    ``offsets[i]``) and is overwritten with this χ. Returns ``(‖χ − χ_prev‖, ‖χ‖)`` over the
    mask (per-slab partial sums added in order: independent of the number of threads).
    """
    n0, n1, n2 = dchi.shape
    dnorm_i = np.zeros(n0)
    cnorm_i = np.zeros(n0)
    for i in numba.prange(n0):
        dnorm = 0.0
        cnorm = 0.0
        n = offsets[i]
        for j in range(n1):
            for k in range(n2):
                uu = u[i, j, k]
                p = alpha * dchi[i, j, k] + (1.0 - alpha) * (q[i, j, k] + uu) + uu
                y = (wf[i, j, k] + rho * p) / (weights[code[i, j, k]] + rho)
                uu = p - y
                u[i, j, k] = uu
                q[i, j, k] = y - uu
            for k in range(n2):  # apart: the running index n would keep the loop above scalar
                if code[i, j, k] == 1:
                    x = chi[i, j, k]
                    dc = x - prev[n]
                    prev[n] = x
                    n += 1
                    dnorm += dc * dc
                    cnorm += x * x
        dnorm_i[i] = dnorm
        cnorm_i[i] = cnorm
    dnorm = 0.0
    cnorm = 0.0
    for i in range(n0):
        dnorm += dnorm_i[i]
        cnorm += cnorm_i[i]
    return np.sqrt(dnorm), np.sqrt(cnorm)


@numba.njit(parallel=True, cache=True)
def _kspace_update(X, Y, grad_gain, data_gain, D):  # pragma: no cover
    """The χ update of :func:`~qsmflow.qsm.inversion.tv` in k-space, in place and pointwise
    (no fastmath: each product and sum rounded as numpy's ``X *= g; Y *= d; X += Y``):
    ``X ← X·grad_gain + Y·data_gain`` (F χ) and ``Y ← X·D`` (F Dχ)."""
    n0, n1, n2 = X.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                a = X[i, j, k]
                b = Y[i, j, k]
                g = grad_gain[i, j, k]
                h = data_gain[i, j, k]
                re = a.real * g + b.real * h
                im = a.imag * g + b.imag * h
                d = D[i, j, k]
                X[i, j, k] = complex(re, im)
                Y[i, j, k] = complex(re * d, im * d)
