# SPDX-License-Identifier: Apache-2.0
"""Memory of :func:`estimate_field`: without ``return_unwrapped`` the (X, Y, Z, N) grid of
unwrapped echoes is never made, and the other results keep their bits."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from qsmflow.qsm import threads
from qsmflow.qsm.echoes import estimate_field
from qsmflow.qsm.unwrap import wrap_phase

SHAPE = (48, 40, 36)
N_ECHO = 5


def _data():
    rng = np.random.default_rng(3)
    g = np.indices(SHAPE, dtype=np.float64)
    te = 0.004 + 0.005 * np.arange(N_ECHO)
    field = 40.0 * np.sin(g[0] / 7.0) + 1.5 * g[1] - 7.0 + 3 * np.cos(g[2] / 5.0)
    ph = 0.7 + 2 * np.pi * field[..., None] * te + 0.2 * rng.standard_normal(SHAPE + (N_ECHO,))
    mag = ((rng.random(SHAPE + (N_ECHO,)) + 0.5) * np.exp(-te / 0.03)).astype(np.float32)
    # a small brain in a large field of view: the grids of the results, not the
    # unwrapping's box, hold the most memory
    mask = sum((i - s / 2) ** 2 for i, s in zip(g, SHAPE)) <= 7.0 ** 2
    return wrap_phase(ph.astype(np.float32)), mag, mask, te


@pytest.mark.parametrize('unwrapping', ['romeo', 'laplacian'])
def test_without_the_unwrapped_grid_same_bits_and_less_memory(unwrapping):
    phase, mag, mask, te = _data()
    kw = dict(echo_times_s=te, b0_tesla=3.0, unwrapping=unwrapping)
    peaks, results = {}, {}
    with threads.limit(1):
        estimate_field(phase, mask, (1, 1, 1), mag, **kw)  # compile, warm up
        for keep in (True, False):
            tracemalloc.start()
            results[keep] = estimate_field(phase, mask, (1, 1, 1), mag,
                                           return_unwrapped=keep, **kw)
            peaks[keep] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert 'unwrapped' in results[True] and 'unwrapped' not in results[False]
    assert results[True]['unwrapped'].shape == SHAPE + (N_ECHO,)
    for key in ('field_hz', 'field_ppm', 'phase_offset_rad', 'noise_hz'):
        assert results[False][key].tobytes() == results[True][key].tobytes(), key
    if unwrapping == 'romeo':
        # the ROMEO path never makes the grid (4 bytes per voxel and echo)
        grid = np.prod(SHAPE) * N_ECHO * 4
        assert peaks[True] - peaks[False] >= 0.75 * grid, (peaks, grid)
