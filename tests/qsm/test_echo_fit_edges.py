# SPDX-License-Identifier: Apache-2.0
"""Edge cases of the ROMEO + WLS path of :func:`estimate_field` (session 12's restructure:
the fit continues from the unwrapping's masked voxels, weights and line sums).

Its answer must be the bits of :func:`fit_field` on :func:`unwrap_echoes`' grid (the plain
whole-mask fit) for 2 and more echoes, with and without magnitude, on masks of one voxel,
of isolated voxels and of many pieces, with float64 or integer magnitude, NaN outside the
mask, odd shapes and 1, 2 or 3 threads, with chunks small enough that the voxels span
several of them (and the bucket median runs on the threads).
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmflow.qsm import _vector, threads
from qsmflow.qsm.echoes import estimate_field, fit_field, unwrap_echoes
from qsmflow.qsm.unwrap import wrap_phase

SHAPE = (23, 17, 11)  # odd sizes, a last slab of 7 planes


def _data(n_echo, seed=0):
    rng = np.random.default_rng(seed)
    g = np.indices(SHAPE, dtype=np.float64)
    te = 0.004 + 0.005 * np.arange(n_echo)
    field = 40.0 * np.sin(g[0] / 5.0) + 1.5 * g[1] - 7.0 + 3 * np.cos(g[2] / 3.0)
    ph = 0.7 + 2 * np.pi * field[..., None] * te + 0.3 * rng.standard_normal(SHAPE + (n_echo,))
    mag = (rng.random(SHAPE + (n_echo,)) + 0.05) * np.exp(-te / 0.03)
    return wrap_phase(ph.astype(np.float32)), mag, te


def _masks():
    g = np.indices(SHAPE)
    ball = sum((i - s / 2) ** 2 for i, s in zip(g, SHAPE)) <= 5.0 ** 2
    single = np.zeros(SHAPE, bool)
    single[11, 8, 10] = True
    apart = np.zeros(SHAPE, bool)
    apart[3, 0, 5] = apart[21, 16, 1] = True
    many = np.random.default_rng(100).random(SHAPE) > 0.55  # hundreds of pieces
    return {'ball': ball, 'single': single, 'apart': apart, 'many': many,
            'full': np.ones(SHAPE, bool)}


MASKS = _masks()


def _check(phase, mask, mag, te, n_threads):
    args = (phase, mask, (1.0, 1.1, 1.3))
    with threads.limit(n_threads):
        got = estimate_field(*args, mag, echo_times_s=te, b0_tesla=3.0)
        unwrapped = unwrap_echoes(*args, echo_times_s=te, magnitude=mag)
        want = fit_field(unwrapped, mask, echo_times_s=te, magnitude=mag)
    assert got['unwrapped'].tobytes() == unwrapped.tobytes()
    for key, arr in zip(('field_hz', 'phase_offset_rad', 'noise_hz'), want):
        assert got[key].dtype == arr.dtype == np.float32
        assert got[key].tobytes() == arr.tobytes(), key
    return got


@pytest.mark.parametrize('n_threads', [1, 2])
def test_two_echoes_without_magnitude(n_threads):
    """2 echoes, no magnitude: the noise is one number for all voxels (s = 1 rad, uniform
    weights); estimate_field raised ValueError on it (the chunk's three results written
    as one (3, V) block) before 2026-12-05."""
    phase, _, te = _data(2)
    got = _check(phase, MASKS['ball'], None, te, n_threads)
    inside = got['noise_hz'][MASKS['ball']]
    assert np.all(inside == inside[0]) and inside[0] > 0
    assert np.all(got['noise_hz'][~MASKS['ball']] == 0)


@pytest.mark.parametrize('mask_name', sorted(MASKS))
@pytest.mark.parametrize('n_echo', [2, 3, 4])
@pytest.mark.parametrize('mag_kind', ['none', 'float32', 'float64', 'uint16'])
def test_estimate_field_is_fit_field_of_unwrap_echoes(monkeypatch, mask_name, n_echo,
                                                      mag_kind):
    """The continued fit gives the whole-mask fit's bits on every edge case, threads 1-3,
    chunks of 1024 voxels; float64 phase with NaN outside the mask gives the float32's."""
    monkeypatch.setattr(_vector, 'CHUNK', 1024)
    phase, mag, te = _data(n_echo)
    mag = {'none': None, 'float32': mag.astype(np.float32), 'float64': mag,
           'uint16': (1000 * mag).astype(np.uint16)}[mag_kind]
    mask = MASKS[mask_name]
    nan_outside = phase.astype(np.float64)
    nan_outside[~mask] = np.nan
    first = _check(phase, mask, mag, te, 1)
    for n_threads in (2, 3):
        for ph in (phase, nan_outside):
            got = _check(ph, mask, mag, te, n_threads)
            for key in ('field_hz', 'phase_offset_rad', 'noise_hz', 'unwrapped'):
                assert got[key].tobytes() == first[key].tobytes(), (n_threads, key)


@pytest.mark.parametrize('n_echo', [2, 3, 5])
def test_void_echoes_refit_in_chunks_as_in_one_pass(monkeypatch, n_echo):
    """Weights that make the float32 sums ill-conditioned (a void first echo, signal in the
    first echo only, a voxel without signal) are refitted per chunk from the stored echoes:
    the bits of the whole-mask fit. So with a magnitude that is zero in most voxels (median
    0: reference weight 1)."""
    from qsmflow.qsm.echoes._common import _LineSums

    monkeypatch.setattr(_vector, 'CHUNK', 1024)
    refits = []
    refit = _LineSums._refit
    monkeypatch.setattr(_LineSums, '_refit',
                        lambda self, bad: refits.append(int(bad.sum())) or refit(self, bad))
    phase, mag, te = _data(n_echo, seed=3)
    mag = mag.astype(np.float32)
    mag[::2, :, :, 0] = 1e-7
    mag[:, ::3, :, 1:] = 0.0  # only the first echo has signal there
    mag[5, 5, 5, :] = 0.0
    mask = np.ones(SHAPE, bool)
    mask[0] = False
    mostly_zero = np.where(np.random.default_rng(4).random(SHAPE)[..., None] < 0.6, 0, mag)
    for magnitude in (mag, mostly_zero.astype(np.float32)):
        for n_threads in (1, 2, 3):
            refits.clear()
            got = _check(phase, mask, magnitude, te, n_threads)
            assert refits and all(np.isfinite(got[k][mask]).all() for k in
                                  ('field_hz', 'phase_offset_rad', 'noise_hz'))
