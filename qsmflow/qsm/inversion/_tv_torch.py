# SPDX-License-Identifier: Apache-2.0
"""The ADMM loops of :func:`~qsmflow.qsm.inversion.tv` and
:func:`~qsmflow.qsm.inversion.rts` in torch (private; for ``device='gpu'``/``'torch-cpu'``,
:mod:`qsmflow.qsm.device`).

:func:`tv_masked_core` is the iteration of
:func:`~qsmflow.qsm.inversion.total_variation._tv_masked_core`, :func:`admm_tv` that of
:func:`~qsmflow.qsm.inversion._admm._admm_tv`:
the k-space χ update, the weighted data (y) step and the isotropic shrinkage (z) step of
:mod:`~qsmflow.qsm.inversion._admm` written as tensor expressions, with the stopping norms
summed in float64. The set-up (weights, shell, kernels) is the numpy code's.
"""

from __future__ import annotations

import numpy as np
import torch

from qsmflow.qsm._torch_ops import gradient, gradient_adjoint, irfft, rfft
from qsmflow.qsm.device import numpy32, tensor


def tv_masked_core(prob, lam, rho, rho_data, max_iter, tol, code, weights, grad_gain,
                   data_gain, alpha, dev, grad_weights=None):
    """ADMM of :func:`tv` on torch device ``dev``: ``code`` (uint8 grid: 0 outside, 1 mask,
    2 shell) and ``weights`` (float32, per code) the data weights, ``grad_gain``/
    ``data_gain`` the k-space gains of the χ update (half spectra), ``alpha`` the
    over-relaxation, ``grad_weights`` (optional float32 grid) per-voxel factors of the TV
    weight. Returns χ on the padded grid (numpy float32)."""
    shape = prob.shape
    ih = 1.0 / np.asarray(prob.vsz, np.float64)
    D = tensor(prob.D, dev)
    g_gain, d_gain = tensor(grad_gain, dev), tensor(data_gain, dev)
    wf = tensor(prob.field, dev)
    code_t = tensor(code, dev).long()
    in_mask = code_t == 1
    w2 = tensor(weights, dev)[code_t]
    v = torch.zeros((3,) + tuple(shape), dtype=torch.float32, device=dev)
    u = torch.zeros_like(v)
    q = wf.clone()
    uy = torch.zeros_like(wf)
    prev = torch.zeros_like(wf)  # χ of the last step (only its mask voxels are read)
    thr = float(lam / rho)
    if grad_weights is not None:  # a weighted TV: one threshold per voxel
        thr = tensor(grad_weights, dev) * thr
    a, rd = float(alpha), float(rho_data)
    for it in range(max_iter):
        X = rfft(gradient_adjoint(v, ih))
        Y = rfft(q)
        X = X * g_gain + Y * d_gain  # F χ
        Y = X * D  # F Dχ
        chi = irfft(X, shape)
        if it == max_iter - 1:
            break
        # y step: p = α Dχ + (1 − α) y_old + u, y = (W²f + ρp) / (W² + ρ)
        p = a * irfft(Y, shape) + (1.0 - a) * (q + uy) + uy
        y = (wf + rd * p) / (w2 + rd)
        uy = p - y
        q = y - uy
        diff = (chi - prev)[in_mask].double()
        inside = chi[in_mask].double()
        dnorm = float(torch.sqrt(torch.sum(diff * diff)))
        cnorm = float(torch.sqrt(torch.sum(inside * inside)))
        prev = chi
        # z step: p = α∇χ + (1 − α) z_old + u, z = max(1 − thr/|p|, 0) p
        pz = a * gradient(chi, ih) + (1.0 - a) * (v + u) + u
        nrm = torch.sqrt(torch.sum(pz * pz, dim=0))
        if torch.is_tensor(thr):
            s = torch.where(nrm > thr, 1.0 - thr / torch.maximum(nrm, thr), 0.0)
        else:
            s = torch.where(nrm > thr, 1.0 - thr / torch.clamp(nrm, min=thr), 0.0)
        z = s * pz
        u = pz - z
        v = z - u
        if it > 0 and dnorm <= tol * cnorm:
            break
    return numpy32(chi)


def _filter(numerator, precision, L, rho):
    """``numerator / (precision + ρL)`` and ``ρ / (precision + ρL)`` (0 where undefined)."""
    den = precision + rho * L
    iden = torch.where(den > 0, 1.0 / torch.where(den > 0, den, 1.0), 0.0)
    return numerator * iden, iden * rho


def admm_tv(numerator, precision, L, rho, weight, v, vsz, max_iter, tol, *, relaxation=1.0,
            tau=None, gamma=None, dev='cpu'):
    """:func:`~qsmflow.qsm.inversion._admm._admm_tv` on torch device ``dev`` (numpy in, the
    same arguments; χ out as numpy float32): the ADMM loop of :func:`rts`."""
    ih = 1.0 / np.asarray(vsz, np.float64)
    shape = v.shape[1:]
    numerator, precision, L = (tensor(a, dev) for a in (numerator, precision, L))
    v = tensor(v, dev)
    u = torch.zeros_like(v)
    Q, rho_iden = _filter(numerator, precision, L, float(rho))
    thr, a = float(weight / rho), float(relaxation)
    chi_prev, res_prev = None, np.inf
    for it in range(max_iter):
        chi = irfft(rfft(gradient_adjoint(v, ih)) * rho_iden + Q, shape)
        if it == max_iter - 1:
            break
        g = gradient(chi, ih)
        p = a * g + (1.0 - a) * (v + u) + u
        nrm = torch.sqrt(torch.sum(p * p, dim=0))
        z = torch.where(nrm > thr, 1.0 - thr / torch.clamp(nrm, min=thr), 0.0) * p
        u = p - z
        v = z - u
        res = float(torch.sqrt(torch.sum((g - z).double() ** 2)))
        if chi_prev is not None:
            diff = (chi - chi_prev).double()
            if float(torch.sqrt(torch.sum(diff * diff))) <= tol * float(
                    torch.sqrt(torch.sum(chi.double() ** 2))):
                break
        chi_prev = chi
        if tau is not None:
            if res > tau * res_prev:
                v = v + (1 - 1 / gamma) * u  # ρ ← γρ, the scaled dual rescaled
                u = u * (1 / gamma)
                rho *= gamma
                Q, rho_iden = _filter(numerator, precision, L, float(rho))
                thr = float(weight / rho)
            res_prev = res
    return numpy32(chi)
