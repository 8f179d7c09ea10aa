# SPDX-License-Identifier: Apache-2.0
"""The ADMM loop of :func:`~qsmflow.qsm.inversion.tv` in torch (private; for
``device='gpu'``/``'torch-cpu'``, :mod:`qsmflow.qsm.device`).

The same iteration as :func:`~qsmflow.qsm.inversion.total_variation._tv_masked_core`:
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
                   data_gain, alpha, dev):
    """ADMM of :func:`tv` on torch device ``dev``: ``code`` (uint8 grid: 0 outside, 1 mask,
    2 shell) and ``weights`` (float32, per code) the data weights, ``grad_gain``/
    ``data_gain`` the k-space gains of the χ update (half spectra), ``alpha`` the
    over-relaxation. Returns χ on the padded grid (numpy float32)."""
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
        s = torch.where(nrm > thr, 1.0 - thr / torch.clamp(nrm, min=thr), 0.0)
        z = s * pz
        u = pz - z
        v = z - u
        if it > 0 and dnorm <= tol * cnorm:
            break
    return numpy32(chi)
