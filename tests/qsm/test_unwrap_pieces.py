# SPDX-License-Identifier: Apache-2.0
"""Unwrapping on masks in several pieces: every mask voxel defined, finite and exact.

A brain mask of a real head can fall apart (a quality mask, a user mask, blobs of
scalp left by a threshold, single voxels). Every piece is grown from its own best seed;
smaller pieces are then shifted by the 2π·k that best continues the largest piece across
the gap (:func:`qsmflow.qsm.unwrap.unwrap_romeo`). These tests check that each voxel
ends finite and congruent with the input, that the offsets are right where a smooth
phase makes them determinable, and that a one-piece mask gives the same bits as before.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm.echoes import estimate_field, unwrap_echoes
from qsmflow.qsm.unwrap import unwrap_laplacian, unwrap_romeo, wrap_phase

TWO_PI = 2 * np.pi
TES_S = np.array([0.004, 0.012, 0.020, 0.028])


def _grid(shape):
    return np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing='ij')


def _ball(shape, centre, radius):
    idx = np.indices(shape)
    return sum((i - c) ** 2 for i, c in zip(idx, centre)) <= radius**2


def _pieces(shape=(40, 48, 36)):
    """Three blobs (gaps of 2 to 6 voxels), a 2-voxel piece and four isolated voxels."""
    mask = _ball(shape, (20, 14, 18), 11) | _ball(shape, (20, 34, 18), 6)
    mask |= _ball(shape, (31, 28, 18), 3)
    mask[20, 44, 18] = mask[20, 44, 19] = True  # 4 voxels beyond the second blob
    for v in ((12, 27, 18), (7, 14, 18), (20, 14, 31), (33, 20, 18)):
        mask[v] = True
    return mask


def _smooth_phase(shape, amplitude):
    x, y, z = _grid(shape)
    return amplitude * (0.3 * x**2 - 0.5 * y + 0.2 * x * z + 0.1 * z)


def _offsets(unwrapped, truth, mask):
    """Integer 2π multiples ``(unwrapped − truth) / 2π`` per voxel of the mask."""
    k = (unwrapped[mask].astype(np.float64) - truth[mask]) / TWO_PI
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)
    return np.round(k).astype(int)


def _assert_congruent(unwrapped, wrapped, mask):
    _offsets(unwrapped, wrapped, mask)


def test_pieces_fixture():
    mask = _pieces()
    _, n = ndi.label(mask)
    assert n == 8


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('with_magnitude', [False, True])
def test_romeo_every_piece_defined_and_congruent(dtype, with_magnitude):
    mask = _pieces()
    truth = _smooth_phase(mask.shape, 40.0)
    wrapped = wrap_phase(truth).astype(dtype)
    mag = None
    if with_magnitude:
        mag = (1.0 + 0.5 * _grid(mask.shape)[0]).astype(dtype)
    u = unwrap_romeo(wrapped, mask, (1.0, 1.0, 1.0), magnitude=mag)
    assert u.dtype == np.float32
    assert np.all(np.isfinite(u)) and np.all(u[~mask] == 0)
    _assert_congruent(u, wrapped, mask)
    # the smooth phase makes every offset determinable: one global 2π·k
    k = _offsets(u, truth, mask)
    assert np.all(k == k[0])


def test_romeo_pieces_without_alignment_are_each_exact():
    mask = _pieces()
    truth = _smooth_phase(mask.shape, 40.0)
    wrapped = wrap_phase(truth)
    u = unwrap_romeo(wrapped, mask, (1, 1, 1), align_components=False)
    assert np.all(np.isfinite(u[mask]))
    labels, n = ndi.label(mask)
    for i in range(1, n + 1):
        k = _offsets(u, truth, labels == i)
        assert np.all(k == k[0])
    # isolated voxels keep their wrapped value (their own seed)
    assert u[12, 27, 18] == np.float32(wrapped[12, 27, 18])


def test_romeo_isolated_voxels_only():
    shape = (12, 12, 12)
    mask = np.zeros(shape, bool)
    mask[2, 2, 2] = mask[9, 9, 9] = mask[2, 9, 5] = True
    phase = np.random.default_rng(0).uniform(-np.pi, np.pi, shape).astype(np.float32)
    u = unwrap_romeo(phase, mask, (1, 1, 1))
    assert np.all(np.isfinite(u))
    _assert_congruent(u, phase, mask)
    assert np.all(u[~mask] == 0)


def test_romeo_anisotropic_pieces():
    """Gaps are measured in mm: the nearest voxel of the main piece follows the voxel size."""
    mask = _pieces()
    truth = _smooth_phase(mask.shape, 30.0)
    u = unwrap_romeo(wrap_phase(truth), mask, (1.0, 1.0, 2.5))
    k = _offsets(u, truth, mask)
    assert np.all(k == k[0])


def test_romeo_seed_in_a_small_piece():
    """A seed in a small piece: that piece keeps its value, the rest still lands right."""
    mask = _pieces()
    truth = _smooth_phase(mask.shape, 40.0)
    wrapped = wrap_phase(truth)
    u = unwrap_romeo(wrapped, mask, (1, 1, 1), seed=(31, 28, 18))
    assert np.all(np.isfinite(u[mask]))
    k = _offsets(u, truth, mask)
    assert np.all(k == k[0])


def test_romeo_noise_outside_mask_does_not_matter():
    """NaN/inf outside the mask (scanner zeros, masked voxels) change nothing inside it."""
    mask = _pieces()
    truth = _smooth_phase(mask.shape, 40.0)
    wrapped = wrap_phase(truth).astype(np.float32)
    mag = (1.0 + 0.5 * _grid(mask.shape)[0]).astype(np.float32)
    ref = unwrap_romeo(wrapped, mask, (1, 1, 1), magnitude=mag, phase2=wrapped, te_ratio=1.0)
    bad_phase, bad_mag = wrapped.copy(), mag.copy()
    bad_phase[~mask] = np.nan
    bad_mag[~mask] = np.inf
    with np.errstate(all='raise'):
        got = unwrap_romeo(bad_phase, mask, (1, 1, 1), magnitude=bad_mag, phase2=bad_phase,
                           te_ratio=1.0)
    np.testing.assert_array_equal(got, ref)
    ref_l = unwrap_laplacian(wrapped, mask, (1, 1, 1))
    np.testing.assert_array_equal(unwrap_laplacian(bad_phase, mask, (1, 1, 1)), ref_l)


def test_laplacian_pieces_finite():
    mask = _pieces()
    truth = _smooth_phase(mask.shape, 40.0)
    u = unwrap_laplacian(wrap_phase(truth), mask, (1, 1, 1))
    assert np.all(np.isfinite(u)) and np.all(u[~mask] == 0)


# --- multi-echo: spatial + temporal unwrapping on a mask in pieces --------------------------


def _echo_data(mask, field_scale_hz=120.0, noise=0.0, seed=0):
    x, y, z = _grid(mask.shape)
    field_hz = field_scale_hz * (0.3 * x**2 - 0.5 * y + 0.2 * x * z) + 15.0
    offset = 0.8 + 0.6 * x - 0.4 * z
    truth = offset[..., None] + TWO_PI * field_hz[..., None] * TES_S
    rng = np.random.default_rng(seed)
    noisy = truth + noise * rng.standard_normal(truth.shape)
    mag = np.exp(-TES_S * 25.0) * (1.0 + 0.3 * x[..., None])
    return field_hz, truth, wrap_phase(noisy).astype(np.float32), mag.astype(np.float32)


@pytest.mark.parametrize('method', ['romeo', 'laplacian'])
def test_unwrap_echoes_pieces_finite_and_congruent(method):
    mask = _pieces()
    field_hz, truth, wrapped, mag = _echo_data(mask)
    u = unwrap_echoes(wrapped, mask, (1, 1, 1), echo_times_s=TES_S, magnitude=mag,
                      method=method)
    assert np.all(np.isfinite(u)) and np.all(u[~mask] == 0)
    if method == 'romeo':
        for n in range(TES_S.size):
            _assert_congruent(u[..., n], wrapped[..., n], mask)
        # every echo of every piece lands on the truth (one global 2π·k per echo at most,
        # and here none: the median field lies within ±1/(2ΔTE) of 0)
        for n in range(TES_S.size):
            k = _offsets(u[..., n], truth[..., n], mask)
            assert np.all(k == 0), n
    r = estimate_field(wrapped, mask, (1, 1, 1), mag, echo_times_s=TES_S, b0_tesla=3.0,
                       unwrapping=method)
    for key in ('field_hz', 'phase_offset_rad', 'noise_hz'):
        assert np.all(np.isfinite(r[key][mask])), key
    if method == 'romeo':
        np.testing.assert_allclose(r['field_hz'][mask], field_hz[mask], atol=1e-2)


def test_unwrap_echoes_pieces_with_noise():
    mask = _pieces()
    _, truth, wrapped, mag = _echo_data(mask, noise=0.15, seed=3)
    u = unwrap_echoes(wrapped, mask, (1, 1, 1), echo_times_s=TES_S, magnitude=mag)
    assert np.all(np.isfinite(u[mask]))
    for n in range(TES_S.size):
        _assert_congruent(u[..., n], wrapped[..., n], mask)
    # the blobs (not the single voxels, whose offset noise may flip) land on the truth
    big = ndi.binary_opening(mask)
    for n in range(TES_S.size):
        k = np.round((u[..., n][big] - truth[..., n][big]) / TWO_PI)
        assert np.mean(k == 0) > 0.999, n


def test_unwrap_echoes_single_echo_pieces():
    mask = _pieces()
    _, truth, wrapped, mag = _echo_data(mask)
    u = unwrap_echoes(wrapped[..., 0], mask, (1, 1, 1), echo_times_s=TES_S[:1],
                      magnitude=mag[..., 0])
    assert u.shape == mask.shape + (1,) and np.all(np.isfinite(u))
    k = _offsets(u[..., 0], truth[..., 0], mask)
    assert np.all(k == k[0])


def test_unwrap_echoes_dominant_weight_stays_finite():
    """A voxel nearly void at echo 1 but bright at echo 2 (noise, flow, fat): the weighted
    line through echoes 1-2 that predicts echo 3 is ill-conditioned in float32."""
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    _, _, wrapped, mag = _echo_data(mask)
    mag = mag.copy()
    mag[3, 3, 3, 0] = 0.0  # weight 1e-12 next to ≈ 1: s·stt == st² in float32
    u = unwrap_echoes(wrapped, mask, (1, 1, 1), echo_times_s=TES_S, magnitude=mag)
    assert np.all(np.isfinite(u[mask]))


# --- a mask in one piece: the same bits as before the pieces work -----------------------------


def _regression_inputs():
    shape = (40, 44, 36)
    x, y, z = _grid(shape)
    mask = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2 <= 1
    rng = np.random.default_rng(7)
    bump = np.exp(-((x - 0.2) ** 2 + y**2 + z**2) / 0.1)
    field = 150 * (0.3 * x**2 - 0.5 * y + 0.2 * x * z) + 40 * bump
    truth = 0.7 + 0.9 * x[..., None] + TWO_PI * field[..., None] * TES_S
    phase = wrap_phase(truth + 0.2 * rng.standard_normal(truth.shape)).astype(np.float32)
    mag = np.exp(-TES_S * 30) * (1 + 0.3 * x[..., None]) + 0.02 * rng.random(truth.shape)
    return phase, mag.astype(np.float32), mask


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def test_one_piece_bitwise_unchanged():
    """Digests taken with qsmflow at 70c970c (before the pieces work) on this machine."""
    phase, mag, mask = _regression_inputs()
    assert ndi.label(mask)[1] == 1
    got = {
        'romeo': _digest(unwrap_romeo(phase[..., 0], mask, (1, 1, 1))),
        'romeo_mag_ph2': _digest(unwrap_romeo(phase[..., 0], mask, (1, 1, 1.5),
                                              magnitude=mag[..., 0], phase2=phase[..., 1],
                                              te_ratio=3.0)),
        'echoes_romeo': _digest(unwrap_echoes(phase, mask, (1, 1, 1), echo_times_s=TES_S,
                                              magnitude=mag)),
        'echoes_laplacian': _digest(unwrap_echoes(phase, mask, (1, 1, 1), echo_times_s=TES_S,
                                                  magnitude=mag, method='laplacian')),
        'laplacian': _digest(unwrap_laplacian(phase[..., 0], mask, (1, 1, 1))),
    }
    assert {k: got[k] for k in ('romeo', 'romeo_mag_ph2', 'echoes_romeo')} == {
        'romeo': 'e69f5cd3e56636f4',
        'romeo_mag_ph2': 'e69f5cd3e56636f4',
        'echoes_romeo': 'ea3490c36dac789f',
    }
    # The FFT-based Laplacian unwrapping gives other bits on other CPUs with the same
    # numpy/scipy/numba (2026-12-05: qsmflow at fd0a86e on an AMD EPYC with AVX-512 gave the
    # second digests, the machine of the first record the first): either machine's bits.
    assert got['echoes_laplacian'] in {'a191ffadb0ac5499', 'd2bac9eb3829f2d2'}
    assert got['laplacian'] in {'4c632ba24a1318b0', 'b2881534feb77edf'}


def test_alignment_with_the_precomputed_nearest_voxels_gives_the_same_bits(monkeypatch):
    """_align_components with the mask's _nearest_reference (what unwrap_echoes computes
    once for both growings) shifts the pieces exactly as when it computes the transform itself;
    a mask in one piece needs none."""
    from qsmflow.qsm._unwrap_components import _align_components, _nearest_reference

    mask = _pieces()
    label, n = ndi.label(mask)
    wrapped = wrap_phase(_smooth_phase(mask.shape, 40.0)).astype(np.float32)
    vox = (1.0, 1.0, 1.5)
    known = _nearest_reference(mask, vox)
    assert known is not None and known[0].sum() == np.bincount(label.ravel())[1:].max()
    plain, reused = wrapped.copy(), wrapped.copy()
    _align_components(plain, label, n, vox)
    with monkeypatch.context() as m:  # the transform is not computed again
        m.setattr('qsmflow.qsm._unwrap_components.nearest_outside', None)
        _align_components(reused, label, n, vox, known)
    assert not np.array_equal(plain, wrapped)
    assert plain.tobytes() == reused.tobytes()
    assert _nearest_reference(_ball(mask.shape, (20, 20, 18), 8), vox) is None


def test_growing_start_by_slabs_is_the_whole_grid_state_and_first_best_voxel():
    """_growing_start: −1 in the mask, 0 elsewhere, and the first voxel of the best quality
    in the mask (ties across and within slabs of planes), for 1 and 3 threads."""
    from qsmflow.qsm import threads
    from qsmflow.qsm._unwrap_components import _growing_start

    mask = _pieces()
    rng = np.random.default_rng(4)
    quality = np.round(rng.random(mask.size) * 8).astype(np.float32)  # many ties
    quality[~mask.ravel()] = 99.0  # outside the mask: never the start
    for n_threads in (1, 3):
        with threads.limit(n_threads):
            state, first = _growing_start(mask, quality)
        assert state.dtype == np.int32 and np.array_equal(state, -mask.ravel().astype(np.int32))
        assert first == int(np.argmax(np.where(mask.ravel(), quality, -1)))
        assert np.argwhere(mask.ravel() & (quality == 8)).min() == first


def _grow_by_lists(phase, state, bins, s0, s1, seeds, out, n_comp):
    """The region growing as one linked list of edges per priority level (the former
    :func:`~qsmflow.qsm._unwrap_components._grow`), in plain Python."""
    offs = (s0, -s0, s1, -s1, 1, -1)
    for seed in seeds:
        if state[seed] >= 0:
            continue
        n_comp += 1
        out[seed], state[seed] = phase[seed], n_comp
        levels = [[] for _ in range(256)]
        v = seed
        while v >= 0:
            for d in range(6):
                w = v + offs[d]
                if state[w] < 0:
                    levels[bins[d // 2, v] if d % 2 == 0 else bins[d // 2, w]].append((w, v))
            v = -1
            for level in levels:
                while level:
                    w, src = level.pop()
                    if state[w] < 0:
                        k = np.floor((np.float64(out[src]) - phase[w]) / TWO_PI + 0.5)
                        out[w] = np.float32(phase[w] + TWO_PI * k)
                        state[w], v = n_comp, w
                        break
                if v >= 0:
                    break
    return n_comp


@pytest.mark.parametrize('block', [2, 5, 1024])
def test_growing_by_block_stacks_visits_as_the_linked_lists(monkeypatch, block):
    """_grow (stacks of blocks per priority level, blocks reused) reaches the voxels in the
    same order from the same neighbours as one linked list per level: the same phase bits,
    labels and component count, with many ties, 20 components and seeds already reached,
    for blocks of 2, 5 and 1024 edges."""
    from qsmflow.qsm import _unwrap_components
    from qsmflow.qsm._unwrap_components import _grow

    monkeypatch.setattr(_unwrap_components, 'GROW_BLOCK', block)
    rng = np.random.default_rng(7)
    mask = np.zeros((14, 15, 13), bool)  # blobs and single voxels, none on the border
    mask[1:-1, 1:-1, 1:-1] = ndi.uniform_filter(rng.random((12, 13, 11)), 3) > 0.55
    # noise: the unwrapped values depend on the path each voxel is reached by
    phase = rng.uniform(-np.pi, np.pi, mask.size).astype(np.float32)
    bins = rng.integers(0, 4, (3, mask.size)).astype(np.uint8)  # few levels: many ties
    bins[:, rng.random(mask.size) < 0.05] = 255
    s0, s1 = mask.shape[1] * mask.shape[2], mask.shape[2]
    seeds = rng.permutation(np.flatnonzero(mask.ravel())).astype(np.int64)
    runs = []
    for grow in (_grow, _grow_by_lists):
        state = -mask.ravel().astype(np.int32)
        out = np.zeros(mask.size, np.float32)
        n = grow(phase, state, bins, s0, s1, seeds[:1], out, 0)  # as unwrap_romeo: one
        n = grow(phase, state, bins, s0, s1, seeds, out, n)  # seed, then the rest in order
        runs.append((n, state, out))
    (n, state, out), (n_ref, state_ref, out_ref) = runs
    assert n == n_ref == ndi.label(mask)[1] > 10 and np.array_equal(state, state_ref)
    assert out.tobytes() == out_ref.tobytes()
    assert np.array_equal(state > 0, mask.ravel())
    _assert_congruent(out.reshape(mask.shape), phase.reshape(mask.shape), mask)
