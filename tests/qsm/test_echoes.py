# SPDX-License-Identifier: Apache-2.0
"""Tests of qsmflow.qsm.echoes: multi-echo unwrapping, field fit, Hz ↔ ppm."""

from __future__ import annotations

import numpy as np
import pytest

from qsmflow.qsm.echoes import (
    estimate_field,
    fit_field,
    hz_to_ppm,
    ppm_to_hz,
    unwrap_echoes,
)
from qsmflow.qsm.kernels import GAMMA_HZ_PER_T

TWO_PI = 2 * np.pi
TE = np.array([0.004, 0.008, 0.012, 0.016, 0.020])  # s


def _multi_echo(
    shape=(40, 48, 36), te=TE, *, field_scale_hz=300.0, sigma=0.0, seed=0, dtype=np.float32
):
    """Multi-echo GRE of a smooth field over an ellipsoid, with φ₀ and R2* decay.

    Returns wrapped phase and magnitude (X, Y, Z, N), the mask, the field (Hz), φ₀ (rad)
    and the noise-free unwrapped phase (rad).
    """
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing='ij')
    mask = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 <= 1
    bump = np.exp(-((x + 0.3) ** 2 + (y - 0.4) ** 2 + z**2) / 0.08)
    field = field_scale_hz * (0.8 * x**2 - 0.6 * y + 0.5 * x * z + 1.2 * bump) - 20.0  # Hz
    phi0 = 2.0 * np.sin(1.5 * x + y) + 1.2 * z + 0.5  # rad, wraps at the edges
    r2s = 20.0 + 30.0 * (((x - 0.3) / 0.2) ** 2 + (y / 0.25) ** 2 + (z / 0.2) ** 2 <= 1)
    truth = phi0[..., None] + TWO_PI * field[..., None] * te  # unwrapped phase
    mag = np.exp(-r2s[..., None] * te) * np.ones_like(truth)
    signal = mag * np.exp(1j * truth)
    if sigma:
        rng = np.random.default_rng(seed)
        signal = signal + sigma * (
            rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)
        )
    return {
        'phase': np.angle(signal).astype(dtype),
        'magnitude': np.abs(signal).astype(dtype),
        'mask': mask,
        'field': field,
        'phi0': phi0,
        'truth': truth,
    }


@pytest.fixture(scope='module')
def clean():
    return _multi_echo()


@pytest.fixture(scope='module')
def noisy():
    return _multi_echo(sigma=0.02, seed=1)


def _assert_global_2pi_offset(unwrapped, truth, mask, atol=1e-3):
    """All echoes and voxels: ``unwrapped − truth`` is one and the same 2π·k."""
    k = (unwrapped[mask].astype(np.float64) - truth[mask]) / TWO_PI
    np.testing.assert_allclose(k, np.round(np.median(k)), atol=atol)


def _assert_congruent(unwrapped, wrapped, mask, atol=1e-4):
    k = (unwrapped[mask].astype(np.float64) - wrapped[mask]) / TWO_PI
    np.testing.assert_allclose(k, np.round(k), atol=atol)


# --------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------
def test_hz_to_ppm_reference_values():
    assert hz_to_ppm(127.7, 3.0) == pytest.approx(1.0, rel=1e-3)
    assert hz_to_ppm(GAMMA_HZ_PER_T * 3.0 * 1e-6, 3.0) == pytest.approx(1.0, rel=1e-12)
    assert ppm_to_hz(1.0, 7.0) == pytest.approx(298.042346, rel=1e-6)
    assert ppm_to_hz(hz_to_ppm(-42.0, 1.5), 1.5) == pytest.approx(-42.0, rel=1e-12)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_hz_to_ppm_keeps_array_dtype(dtype):
    f = np.full((2, 3), 127.732434, dtype)
    out = hz_to_ppm(f, 3.0)
    assert out.dtype == dtype and out.shape == f.shape
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
    assert ppm_to_hz(out, 3.0).dtype == dtype


@pytest.mark.parametrize('b0', [0.0, -3.0, np.nan, np.inf])
def test_hz_to_ppm_rejects_bad_field_strength(b0):
    with pytest.raises(ValueError, match='b0_tesla'):
        hz_to_ppm(1.0, b0)
    with pytest.raises(ValueError, match='b0_tesla'):
        ppm_to_hz(1.0, b0)


# --------------------------------------------------------------------------------------
# unwrapping over echoes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_unwrap_echoes_romeo_exact(dtype):
    d = _multi_echo(dtype=dtype)
    # the last echo wraps many times
    assert np.ptp(d['truth'][..., -1][d['mask']]) > 8 * TWO_PI
    u = unwrap_echoes(d['phase'], d['mask'], (1, 1, 1), echo_times_s=TE, magnitude=d['magnitude'])
    assert u.dtype == np.float32 and u.shape == d['phase'].shape
    _assert_global_2pi_offset(u, d['truth'], d['mask'])
    _assert_congruent(u, d['phase'], d['mask'])
    assert np.all(u[~d['mask']] == 0)


def test_unwrap_echoes_romeo_exact_with_noise(noisy):
    d = noisy
    u = unwrap_echoes(d['phase'], d['mask'], (1, 1, 1), echo_times_s=TE, magnitude=d['magnitude'])
    _assert_congruent(u, d['phase'], d['mask'])
    # noise (≲ 0.1 rad) but no 2π error anywhere
    k = (u[d['mask']] - d['truth'][d['mask']]) / TWO_PI
    assert np.abs(k - np.round(np.median(k))).max() < 0.25


def _max_step(phase, mask):
    """Largest neighbour step (rad) between mask voxels."""
    steps = []
    for a in range(3):
        n = mask.shape[a]
        both = np.take(mask, range(1, n), a) & np.take(mask, range(n - 1), a)
        steps.append(np.abs(np.diff(phase, axis=a))[both].max())
    return max(steps)


def test_unwrap_echoes_steep_late_echoes_use_time(clean):
    """Late echoes with neighbour steps above π are unwrapped through the echo template.

    Spatial unwrapping of the last echo alone cannot be exact here; unwrapping the
    first-echo difference and predicting each echo along TE is.
    """
    d = clean
    m = d['mask']
    assert _max_step(d['truth'][..., -1], m) > 2 * np.pi
    assert _max_step(d['truth'][..., 1] - d['truth'][..., 0], m) < 2.0
    u = unwrap_echoes(d['phase'], m, (1, 1, 1), echo_times_s=TE, magnitude=d['magnitude'])
    _assert_global_2pi_offset(u, d['truth'], m)


def test_unwrap_echoes_without_magnitude_and_two_echoes(clean):
    d = clean
    u = unwrap_echoes(d['phase'][..., :2], d['mask'], (1, 1, 1), echo_times_s=TE[:2])
    _assert_global_2pi_offset(u, d['truth'][..., :2], d['mask'])


def test_unwrap_echoes_single_echo(clean):
    d = clean
    u = unwrap_echoes(d['phase'][..., 0], d['mask'], (1, 1, 1), echo_times_s=TE[:1])
    assert u.shape == d['phase'].shape[:3] + (1,)
    _assert_global_2pi_offset(u, d['truth'][..., :1], d['mask'])
    # global 2π·k chosen so that the median lies in [−π, π)
    assert -np.pi <= np.median(u[d['mask']]) < np.pi


def test_unwrap_echoes_laplacian():
    d = _multi_echo(field_scale_hz=100.0)  # every echo has neighbour steps below π
    assert _max_step(d['truth'][..., -1], d['mask']) < 2.8
    u = unwrap_echoes(
        d['phase'],
        d['mask'],
        (1, 1, 1),
        echo_times_s=TE,
        magnitude=d['magnitude'],
        method='laplacian',
    )
    err = u[d['mask']] - d['truth'][d['mask']]  # (V, N)
    k = np.round(np.median(err) / TWO_PI)
    # not exact, but close, and without echo-to-echo 2π jumps
    assert np.abs(err - TWO_PI * k).max() < 0.2
    f, _, _ = fit_field(u, d['mask'], echo_times_s=TE, magnitude=d['magnitude'])
    assert np.abs(f - d['field'])[d['mask']].max() < 1.0


# --------------------------------------------------------------------------------------
# field fit
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fit_field_noise_free(clean, dtype):
    d = clean
    truth = d['truth'].astype(dtype)
    f, p0, sd = fit_field(
        truth, d['mask'], echo_times_s=TE, magnitude=d['magnitude'].astype(dtype)
    )
    assert f.dtype == p0.dtype == sd.dtype == np.float32
    m = d['mask']
    assert np.abs(f - d['field'])[m].max() < 2e-3  # Hz
    assert np.abs(p0 - d['phi0'])[m].max() < 1e-4  # rad
    assert np.all(sd[m] < 1e-2) and np.all(sd[m] >= 0)
    assert np.all(f[~m] == 0) and np.all(p0[~m] == 0) and np.all(sd[~m] == 0)


def test_unwrap_and_fit_recover_field_and_offset(clean):
    d = clean
    m = d['mask']
    r = estimate_field(d['phase'], m, (1, 1, 1), d['magnitude'], echo_times_s=TE,
                       b0_tesla=3.0)
    assert set(r) == {'field_hz', 'field_ppm', 'phase_offset_rad', 'noise_hz', 'unwrapped'}
    assert np.abs(r['field_hz'] - d['field'])[m].max() < 2e-3  # Hz
    np.testing.assert_allclose(r['field_ppm'], hz_to_ppm(r['field_hz'], 3.0), rtol=1e-6)
    # φ₀ is recovered up to one global 2π·k
    k = (r['phase_offset_rad'] - d['phi0'])[m] / TWO_PI
    np.testing.assert_allclose(k, np.round(np.median(k)), atol=1e-4)


def test_noise_hz_is_a_calibrated_standard_error(noisy):
    """Across voxels of equal SNR the field error's spread matches noise_hz."""
    d = noisy
    m = d['mask']
    r = estimate_field(d['phase'], m, (1, 1, 1), d['magnitude'], echo_times_s=TE,
                       b0_tesla=3.0)
    err = (r['field_hz'] - d['field'])[m]
    assert abs(np.mean(err)) < 0.05
    ratio = np.std(err) / np.median(r['noise_hz'][m])
    assert 0.7 < ratio < 1.4


def test_fit_field_weights_by_magnitude():
    """A corrupted low-magnitude echo barely moves the weighted fit."""
    te = TE
    shape = (4, 4, 4, te.size)
    phi = 0.4 + TWO_PI * 30.0 * te * np.ones(shape)
    mag = np.ones(shape)
    phi[..., -1] += 1.0  # last echo off by 1 rad ...
    mag[..., -1] = 0.01  # ... where the signal is gone
    m = np.ones(shape[:3], bool)
    f_w, _, _ = fit_field(phi, m, echo_times_s=te, magnitude=mag)
    f_u, _, _ = fit_field(phi, m, echo_times_s=te)
    assert np.abs(f_w - 30.0).max() < 0.01
    assert np.abs(f_u - 30.0).min() > 1.0


def test_fit_field_single_and_two_echoes():
    m = np.ones((3, 3, 3), bool)
    phi = np.full((3, 3, 3), 1.2)
    f, p0, sd = fit_field(phi, m, echo_times_s=[0.01])
    np.testing.assert_allclose(f, 1.2 / (TWO_PI * 0.01), rtol=1e-6)
    assert np.all(p0 == 0) and np.all(sd > 0)
    two = np.stack([0.3 + TWO_PI * 12.0 * t * np.ones((3, 3, 3)) for t in (0.005, 0.01)], -1)
    f, p0, sd = fit_field(two, m, echo_times_s=[0.005, 0.01])
    np.testing.assert_allclose(f, 12.0, atol=1e-3)
    np.testing.assert_allclose(p0, 0.3, atol=1e-4)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def test_validation(clean):
    d = clean
    ph, m = d['phase'], d['mask']
    with pytest.raises(ValueError, match='echo times'):
        unwrap_echoes(ph, m, (1, 1, 1), echo_times_s=TE[:3])
    with pytest.raises(ValueError, match='increasing'):
        unwrap_echoes(ph, m, (1, 1, 1), echo_times_s=TE[::-1])
    with pytest.raises(ValueError, match='ms'):
        fit_field(ph, m, echo_times_s=TE * 1000)
    with pytest.raises(ValueError, match='method'):
        unwrap_echoes(ph, m, (1, 1, 1), echo_times_s=TE, method='magic')
    with pytest.raises(ValueError, match='magnitude'):
        unwrap_echoes(ph, m, (1, 1, 1), echo_times_s=TE, magnitude=d['magnitude'][..., :2])
    with pytest.raises(ValueError, match='negative'):
        fit_field(ph, m, echo_times_s=TE, magnitude=-d['magnitude'])
    with pytest.raises(ValueError, match='mask'):
        fit_field(ph, m[1:], echo_times_s=TE)
    bad = ph.copy()
    bad[20, 24, 18, 2] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        fit_field(bad, m, echo_times_s=TE)
    with pytest.raises(ValueError, match='b0_tesla'):
        estimate_field(ph, m, (1, 1, 1), echo_times_s=TE, b0_tesla=0)


def test_complex_fit_recovers_field_and_ignores_a_wrong_wrap():
    from qsmflow.qsm.echoes import fit_field, fit_field_complex

    rng = np.random.default_rng(5)
    te = np.array([0.004, 0.012, 0.020, 0.028, 0.036])
    shape = (12, 10, 8)
    f_true = rng.uniform(-80, 80, shape).astype(np.float32)
    p_true = rng.uniform(-1, 1, shape).astype(np.float32)
    mag = np.exp(-25.0 * te) * np.ones(shape + (1,))
    unwrapped = p_true[..., None] + 2 * np.pi * f_true[..., None] * te
    unwrapped = unwrapped + rng.normal(0, 0.01, unwrapped.shape) / mag
    bad = unwrapped.copy()
    bad[:6, ..., -1] += 2 * np.pi  # a wrong temporal wrap in the last echo of half the voxels
    mask = np.ones(shape, bool)
    f_ls, p_ls, _ = fit_field(bad, mask, echo_times_s=te, magnitude=mag)
    assert np.abs(f_ls - f_true)[:6].min() > 5.0
    wrapped = np.angle(np.exp(1j * unwrapped))
    f_nl, p_nl, noise = fit_field_complex(wrapped, mask, echo_times_s=te, magnitude=mag,
                                          init_hz=f_ls, init_offset_rad=p_ls)
    assert f_nl.dtype == np.float32 and np.all(noise > 0)
    assert np.abs(f_nl - f_true).max() < 0.5
    assert np.abs(np.angle(np.exp(1j * (p_nl - p_true)))).max() < 0.05


def test_estimate_field_combination_option():
    from qsmflow.qsm.echoes import estimate_field

    te = np.array([0.004, 0.012, 0.020])
    phi = np.angle(np.exp(1j * (0.3 + 2 * np.pi * 42.0 * te))) * np.ones((8, 8, 8, 1))
    mask = np.ones((8, 8, 8), bool)
    res = estimate_field(phi, mask, (1, 1, 1), echo_times_s=te, b0_tesla=3.0,
                         combination='nlcomplex')
    assert np.allclose(res['field_hz'], 42.0, atol=1e-3)
    with pytest.raises(ValueError, match='echo combination'):
        estimate_field(phi, mask, (1, 1, 1), echo_times_s=te, b0_tesla=3.0,
                       combination='average')
