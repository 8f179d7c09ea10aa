# SPDX-License-Identifier: Apache-2.0
"""Tests of qsmflow.qsm.unwrap: exact region growing and Laplacian unwrapping."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm.unwrap import unwrap_laplacian, unwrap_romeo, wrap_phase

TWO_PI = 2 * np.pi


def _ellipsoid_mask(shape, semi=(0.8, 0.85, 0.75)):
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing='ij')
    return (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2 <= 1


def _smooth_phase(shape, amplitude=80.0):
    """Smooth phase (rad) spanning ~0.8·``amplitude`` rad, i.e. wrapped many times."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing='ij')
    bump = np.exp(-((x - 0.2) ** 2 + y**2 + z**2) / 0.2)
    return amplitude * (0.3 * x**2 - 0.5 * y + 0.2 * x * z + 0.15 * bump)


def _max_step(phase, mask):
    steps = []
    for a in range(3):
        both = np.logical_and(
            np.take(mask, range(1, mask.shape[a]), a), np.take(mask, range(mask.shape[a] - 1), a)
        )
        steps.append(np.abs(np.diff(phase, axis=a))[both].max())
    return max(steps)


def _assert_global_2pi_offset(unwrapped, truth, mask, atol=1e-4):
    """``unwrapped − truth`` equals one constant 2π·k in the mask (k an integer)."""
    k = (unwrapped[mask].astype(np.float64) - truth[mask]) / TWO_PI
    k0 = np.round(np.median(k))
    np.testing.assert_allclose(k, k0, atol=atol)


def _assert_congruent(unwrapped, wrapped, mask, atol=1e-4):
    """``unwrapped − wrapped`` is an integer multiple of 2π in every mask voxel."""
    k = (unwrapped[mask].astype(np.float64) - wrapped[mask]) / TWO_PI
    np.testing.assert_allclose(k, np.round(k), atol=atol)


@pytest.fixture(scope='module')
def smooth():
    shape = (48, 56, 44)
    mask = _ellipsoid_mask(shape)
    truth = _smooth_phase(shape)
    assert np.ptp(truth[mask]) > 10 * TWO_PI  # wrapped many times
    assert _max_step(truth, mask) < 2.6  # but steps below π
    return truth, mask


def test_wrap_phase_range_and_dtype():
    x = np.linspace(-50, 50, 1001, dtype=np.float32)
    w = wrap_phase(x)
    assert w.dtype == np.float32
    assert np.all(w >= -np.pi - 1e-5) and np.all(w <= np.pi + 1e-5)
    k = (x - w) / TWO_PI
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_romeo_exact_noise_free(smooth, dtype):
    truth, mask = smooth
    wrapped = wrap_phase(truth).astype(dtype)
    u = unwrap_romeo(wrapped, mask, (1.0, 1.0, 1.0))
    assert u.dtype == np.float32 and u.shape == truth.shape
    _assert_global_2pi_offset(u, truth, mask)
    _assert_congruent(u, wrapped, mask)
    assert np.all(u[~mask] == 0)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_romeo_exact_with_noise(smooth, dtype):
    truth, mask = smooth
    rng = np.random.default_rng(1)
    noisy = truth + 0.3 * rng.standard_normal(truth.shape)
    mag = np.exp(-(((np.indices(truth.shape)[0] - 24) / 30.0) ** 2))
    u = unwrap_romeo(wrap_phase(noisy).astype(dtype), mask, (1, 1, 1), magnitude=mag.astype(dtype))
    # the correct unwrapping of noisy data is the noisy truth, up to one 2π·k
    _assert_global_2pi_offset(u, noisy, mask)


def test_romeo_second_echo_weights(smooth):
    truth, mask = smooth
    rng = np.random.default_rng(2)
    noisy = truth + 0.2 * rng.standard_normal(truth.shape)
    noisy2 = 1.5 * truth + 0.2 * rng.standard_normal(truth.shape)
    u = unwrap_romeo(
        wrap_phase(noisy),
        mask,
        (1, 1, 1),
        phase2=wrap_phase(noisy2),
        te_ratio=1.5,
        magnitude=np.ones(truth.shape),
    )
    _assert_global_2pi_offset(u, noisy, mask)


def test_romeo_quality_guidance_avoids_noise_region(smooth):
    """Growth must go around a blob of random phase, not through it.

    An unguided flood fill crossing the blob carries its random 2π errors into the
    reliable tissue behind it; quality guidance visits the blob last.
    """
    truth, mask = smooth
    rng = np.random.default_rng(3)
    idx = np.indices(truth.shape)
    blob = ((idx[0] - 24) ** 2 + (idx[1] - 20) ** 2 + (idx[2] - 22) ** 2) <= 8**2
    wrapped = wrap_phase(truth)
    wrapped[blob] = rng.uniform(-np.pi, np.pi, blob.sum())
    mag = np.where(blob, 0.2, 1.0)
    u = unwrap_romeo(wrapped, mask, (1, 1, 1), magnitude=mag, seed=(24, 44, 22))
    good = mask & ~ndi.binary_dilation(blob, iterations=2)
    _assert_global_2pi_offset(u, truth, good)
    _assert_congruent(u, wrapped, mask)


def test_romeo_seed_keeps_its_value(smooth):
    truth, mask = smooth
    wrapped = wrap_phase(truth)
    seed = (30, 20, 25)
    u = unwrap_romeo(wrapped, mask, (1, 1, 1), seed=seed)
    assert u[seed] == pytest.approx(float(wrapped[seed]), abs=1e-6)
    _assert_global_2pi_offset(u, truth, mask)


def test_romeo_aligns_disconnected_components():
    shape = (40, 64, 40)
    truth = _smooth_phase(shape, amplitude=50.0)
    mask = _ellipsoid_mask(shape, (0.8, 0.9, 0.8))
    mask[:, 30:33] = False  # two components, 3 voxels apart
    assert ndi.label(mask)[1] == 2
    wrapped = wrap_phase(truth)
    u = unwrap_romeo(wrapped, mask, (1, 1, 1))
    _assert_global_2pi_offset(u, truth, mask)
    # each component on its own is exact regardless of alignment
    u2 = unwrap_romeo(wrapped, mask, (1, 1, 1), align_components=False)
    _assert_congruent(u2, wrapped, mask)
    for part in (slice(0, 30), slice(33, None)):
        sub = np.zeros_like(mask)
        sub[:, part] = mask[:, part]
        _assert_global_2pi_offset(u2, truth, sub)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_laplacian_close_to_truth(smooth, dtype):
    truth, mask = smooth
    u = unwrap_laplacian(wrap_phase(truth).astype(dtype), mask, (1, 1, 1))
    assert u.dtype == np.float32
    err = (u - truth)[mask]
    assert np.std(err) < 0.02
    # the constant is chosen so that u ≈ input modulo 2π
    k = np.mean(err) / TWO_PI
    assert abs(k - round(k)) < 0.01
    assert np.all(u[~mask] == 0)


def test_laplacian_anisotropic_voxels():
    shape = (40, 48, 24)
    mask = _ellipsoid_mask(shape)
    truth = _smooth_phase(shape, amplitude=50.0)
    u = unwrap_laplacian(wrap_phase(truth), mask, (1.0, 1.0, 2.0))
    err = (u - truth)[mask]
    assert np.std(err) < 0.02


def test_laplacian_is_not_congruent_but_smooth_with_noise(smooth):
    truth, mask = smooth
    rng = np.random.default_rng(4)
    noise = 0.3 * rng.standard_normal(truth.shape)
    u = unwrap_laplacian(wrap_phase(truth + noise), mask, (1, 1, 1))
    err = (u - truth)[mask]
    err -= np.median(err)
    # follows the data (noise included) closely, without 2π jumps
    assert np.abs(err).max() < 2.0
    assert np.std(err) < 0.35


@pytest.mark.parametrize('func', [unwrap_romeo, unwrap_laplacian])
def test_validation(func):
    ph = np.zeros((8, 8, 8), np.float32)
    m = np.zeros((8, 8, 8), bool)
    m[2:6, 2:6, 2:6] = True
    with pytest.raises(ValueError, match='3-dimensional'):
        func(ph[0], m[0], (1, 1, 1))
    with pytest.raises(ValueError, match='shape'):
        func(ph, m[:7], (1, 1, 1))
    with pytest.raises(ValueError, match='empty'):
        func(ph, np.zeros_like(m), (1, 1, 1))
    with pytest.raises(ValueError, match='voxel_size_mm'):
        func(ph, m, (1, 1))
    bad = ph.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        func(bad, m, (1, 1, 1))
    bad[3, 3, 3] = 0
    bad[0, 0, 0] = np.nan  # outside the mask: ignored
    assert np.all(func(bad, m, (1, 1, 1))[m] == 0)


def test_romeo_validation_options():
    ph = np.zeros((8, 8, 8), np.float32)
    m = np.zeros((8, 8, 8), bool)
    m[2:6, 2:6, 2:6] = True
    with pytest.raises(ValueError, match='te_ratio'):
        unwrap_romeo(ph, m, (1, 1, 1), phase2=ph)
    with pytest.raises(ValueError, match='outside the mask'):
        unwrap_romeo(ph, m, (1, 1, 1), seed=(0, 0, 0))
    with pytest.raises(ValueError, match='seed'):
        unwrap_romeo(ph, m, (1, 1, 1), seed=(9, 0, 0))
    with pytest.raises(ValueError, match='magnitude'):
        unwrap_romeo(ph, m, (1, 1, 1), magnitude=np.ones((8, 8, 7)))
