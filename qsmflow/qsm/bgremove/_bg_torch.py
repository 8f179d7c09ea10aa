# SPDX-License-Identifier: Apache-2.0
"""PDF, V-SHARP and RESHARP in torch (private; for ``device='gpu'``/``'torch-cpu'``,
:mod:`qsmflow.qsm.device`): the grids and kernels of the numpy cores
(:mod:`~qsmflow.qsm.bgremove.dipole_projection`, :mod:`~qsmflow.qsm.bgremove.sharp`), their
FFTs, CG and element-wise work as tensors. Full-size numpy arrays out, as the numpy cores.
"""

from __future__ import annotations

import numpy as np
import torch

from qsmflow.qsm._morphology import ball_count
from qsmflow.qsm._torch_ops import conjugate_gradient, irfft, rfft
from qsmflow.qsm.device import numpy32, tensor
from qsmflow.qsm.kernels import PaddedBox, dipole_kernel, sphere_kernel


def pdf_core(field, mask, vsz, b0, tol, max_iter, pad, dev, cross_taper=None):
    """PDF by CGNR on the padded box (as ``dipole_projection._pdf_core``)."""
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=pad)
    shape = grid.shape
    m = tensor(grid.to_grid(mask, np.float32), dev)
    out = 1.0 - m
    d = tensor(dipole_kernel(shape, vsz, b0, cross_taper=cross_taper), dev)
    f = tensor(grid.to_grid(np.where(mask, field, 0), np.float32), dev)

    def dipole_conv(x):
        return irfft(rfft(x) * d, shape)

    def normal_op(x):
        """``M̄ · d ∗ (M · d ∗ (M̄ x))``."""
        return dipole_conv(dipole_conv(x) * m) * out

    x = conjugate_gradient(normal_op, dipole_conv(f) * out, tol=tol, max_iter=max_iter)
    local = (f - dipole_conv(x)) * m
    return grid.to_full(numpy32(local))


def vsharp_core(field, mask, vsz, radii, threshold, pad, dev):
    """V-SHARP on the padded box (as ``sharp._vsharp_core``; ``radii`` decreasing, mm).
    Returns the local field and the mask where it is valid."""
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=pad)
    shape = grid.shape
    f = tensor(grid.to_grid(np.where(mask, field, 0), np.float32), dev)
    m = tensor(grid.to_grid(mask, np.float32), dev)
    spec = torch.fft.fftn(torch.complex(f, m))  # f + i·m: SMV of both in one transform
    inside_prev = torch.zeros(tuple(shape), dtype=torch.bool, device=dev)
    assembled = torch.zeros_like(f)
    for r in radii:
        smv = torch.fft.ifftn(spec * tensor(sphere_kernel(shape, vsz, r, full=True), dev))
        inside = smv.imag > 1.0 - 0.5 / ball_count(vsz, r)
        new = inside & ~inside_prev
        assembled = torch.where(new, f - smv.real, assembled)
        inside_prev |= inside
    h = 1.0 - sphere_kernel(shape, vsz, radii[0])
    inv = np.zeros_like(h)
    keep = np.abs(h) > threshold
    inv[keep] = 1.0 / h[keep]
    local = irfft(rfft(assembled) * tensor(inv, dev), shape) * inside_prev
    return grid.to_full(numpy32(local)), grid.to_full(inside_prev.cpu().numpy())


def resharp_core(field, mask, vsz, radius, lam, tol, max_iter, pad, dev):
    """RESHARP by CG on ``(C M_r C + lam) x = C M_r C f`` on the padded box (as
    ``sharp._resharp_core``). Returns the local field and the mask where it is valid."""
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=pad)
    shape = grid.shape
    s = sphere_kernel(shape, vsz, radius)
    c = tensor(1.0 - s, dev)
    m = tensor(grid.to_grid(mask, np.float32), dev)
    used = irfft(rfft(m) * tensor(s, dev), shape) > 1.0 - 0.5 / ball_count(vsz, radius)
    f = tensor(grid.to_grid(np.where(mask, field, 0), np.float32), dev)

    def conv_c(x):
        return irfft(rfft(x) * c, shape)

    def normal_op(x):
        return conv_c(conv_c(x) * used) + lam * x

    x = conjugate_gradient(normal_op, conv_c(conv_c(f) * used), tol=tol, max_iter=max_iter)
    return grid.to_full(numpy32(x * used)), grid.to_full(used.cpu().numpy())
