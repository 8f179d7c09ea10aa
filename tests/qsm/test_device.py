# SPDX-License-Identifier: Apache-2.0
"""The optional torch device of the FFT-bound steps (qsmflow.qsm.device): the torch code on
torch's CPU device (and on CUDA when there is one) agrees with the numpy code within
1e-4 ppm on small grids (PDF, V-SHARP, RESHARP, TKD, Tikhonov, TV, RTS); the device names resolve as documented."""

from __future__ import annotations

import numpy as np
import pytest

from qsmflow.qsm import device as device_mod
from qsmflow.qsm.bgremove import pdf, resharp, vsharp
from qsmflow.qsm.inversion import rts, tikhonov, tkd, tv
from qsmflow.qsm.kernels import dipole_kernel, irfft, rfft

TOL_PPM = 1e-4  # the bar between the CPU and the GPU path

CUDA = device_mod.cuda_available()
TORCH_DEVICES = ['torch-cpu'] + (['gpu'] if CUDA else [])


def _scene(n=36, seed=0):
    """A small head-like scene: two susceptibility blocks inside a box mask and one strong
    source outside it (background), the total field with a little noise."""
    chi = np.zeros((n,) * 3, np.float32)
    chi[14:20, 12:22, 11:21] = 0.1
    chi[20:25, 16:22, 16:24] = -0.05
    chi[1:5, 12:24, 10:22] = 1.0  # outside the mask: the background's source
    field = irfft(rfft(chi) * dipole_kernel(chi.shape, (1, 1, 1)), chi.shape)
    rng = np.random.default_rng(seed)
    field = (field + 0.002 * rng.standard_normal(field.shape)).astype(np.float32)
    mask = np.zeros(field.shape, bool)
    mask[9:30, 7:29, 7:29] = True
    return field, mask


STEPS = {
    'pdf': lambda f, m, d: pdf(f, m, (1, 1, 1), device=d)[0],
    # B0 20° off the grid axis: the faded kernel's cross terms (PDF_CROSS_TAPER)
    'pdf-oblique': lambda f, m, d: pdf(f, m, (1, 1, 1), (0.0, 0.342, 0.940), device=d)[0],
    'vsharp': lambda f, m, d: vsharp(f, m, (1, 1, 1), radii_mm=(4, 2), device=d)[0],
    'resharp': lambda f, m, d: resharp(f, m, (1, 1, 1), radius_mm=3, device=d)[0],
    'tkd': lambda f, m, d: tkd(f, m, (1, 1, 1), device=d),
    'tikhonov': lambda f, m, d: tikhonov(f, m, (1, 1, 1), device=d),
    'rts': lambda f, m, d: rts(f, m, (1, 1, 1), device=d),
    'tv': lambda f, m, d: tv(f, m, (1, 1, 1), device=d),  # weights chosen, shell on
    'tv-fixed': lambda f, m, d: tv(f, m, (1, 1, 1), lam=1e-3, max_iter=15, tol=0, device=d),
    'tv-reweighted': lambda f, m, d: tv(f, m, (1, 1, 1), lam=3e-4, reweight=0.5, max_iter=15,
                                        tol=0, device=d),
}


@pytest.mark.parametrize('dev', TORCH_DEVICES)
@pytest.mark.parametrize('step', sorted(STEPS))
def test_torch_path_matches_numpy(step, dev):
    pytest.importorskip('torch')
    field, mask = _scene()
    ref = STEPS[step](field, mask, 'cpu')
    got = STEPS[step](field, mask, dev)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(ref).max() > 0.01  # a real signal, not two zero maps
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL_PPM)


@pytest.mark.parametrize('func, kw', [(vsharp, {'radii_mm': (4, 2)}),
                                      (resharp, {'radius_mm': 3})])
def test_sharp_torch_mask_is_the_numpy_mask(func, kw):
    pytest.importorskip('torch')
    field, mask = _scene()
    used = func(field, mask, (1, 1, 1), **kw)[1]
    assert used.any() and not used.all()
    assert np.array_equal(func(field, mask, (1, 1, 1), device='torch-cpu', **kw)[1], used)


def test_cpu_is_numpy_and_auto_follows_cuda():
    assert device_mod.resolve('cpu') is None
    assert device_mod.used('cpu') == 'cpu'
    assert device_mod.resolve('auto') == ('cuda' if CUDA else None)
    assert device_mod.used('auto') == ('gpu' if CUDA else 'cpu')


@pytest.mark.skipif(CUDA, reason='a CUDA device is present')
def test_gpu_without_cuda_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        device_mod.resolve('gpu')
    assert '\n' not in str(err.value) and '--device' in str(err.value)
    field, mask = _scene(16)
    with pytest.raises(ValueError, match='--device gpu'):
        tv(field, mask, (1, 1, 1), device='gpu')


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match='cpu, gpu, auto'):
        device_mod.resolve('tpu')


def test_torch_cpu_without_torch_is_refused(monkeypatch):
    monkeypatch.setattr(device_mod, '_torch', lambda: None)
    with pytest.raises(ValueError, match='needs torch'):
        device_mod.resolve('torch-cpu')
    assert device_mod.resolve('auto') is None
