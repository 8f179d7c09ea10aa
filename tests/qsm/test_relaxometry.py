# SPDX-License-Identifier: Apache-2.0
"""R2*/T2* (qsmflow.qsm.relaxometry): accuracy on the forward-simulated head phantoms,
the two-echo and unequal-spacing cases, the noise floor and the reliability flag."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

from qsmflow.phantom.bids import DEFAULT_ECHO_TIMES_S as TES
from qsmflow.qsm import relaxometry
from qsmflow.qsm.relaxometry import estimate_noise_sigma, r2star

#: Regions of the acceptance test and the labels that make them.
REGIONS = {'white_matter': ('white_matter',),
           'putamen': ('putamen_left', 'putamen_right'),
           'globus_pallidus': ('globus_pallidus_left', 'globus_pallidus_right')}


@pytest.fixture(scope='module')
def phantom_2mm():
    """The 2 mm demo head (truth R2* per voxel) and its magnitude at SNR 100 and 30."""
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head

    head = make_head(size='small')
    sims = {snr: simulate_megre(head, TES, snr=snr, rng=7) for snr in (100, 30)}
    return head, {snr: (mag, truth['noise_sigma']) for snr, (mag, _, truth) in sims.items()}


def _region_errors(fit, head) -> dict:
    """Relative error (%) of the ROI-mean R2* against the phantom's truth."""
    from qsmflow.phantom.tissues import LABEL_INDEX

    out = {}
    for region, labels in REGIONS.items():
        roi = np.isin(head.labels, [LABEL_INDEX[n] for n in labels])
        truth = float(head.r2star_hz[roi].mean())
        out[region] = 100.0 * (float(fit['r2star_hz'][roi].mean()) / truth - 1.0)
    return out


@pytest.mark.parametrize('method', relaxometry.METHODS)
@pytest.mark.parametrize('snr, tolerance_pct', [(100, 5.0), (30, 10.0)])
def test_r2star_matches_phantom_truth(phantom_2mm, method, snr, tolerance_pct):
    """Issue 16: within 5 % of the truth in WM, putamen and GP at SNR 100, 10 % at SNR 30.
    Measured (ARLO, seed 7): |error| ≤ 0.3 % at SNR 100, ≤ 1.5 % at SNR 30."""
    head, sims = phantom_2mm
    mag, _ = sims[snr]
    fit = r2star(mag, head.brain_mask, echo_times_s=TES, method=method)
    errors = _region_errors(fit, head)
    assert max(abs(e) for e in errors.values()) <= tolerance_pct, errors
    # the margins hold with room: the fit is far better than the acceptance bound
    assert max(abs(e) for e in errors.values()) <= tolerance_pct / 3, errors
    assert fit['r2star_hz'].dtype == np.float32 and fit['t2star_s'].dtype == np.float32
    inside = head.brain_mask
    assert fit['reliable'][inside].mean() > 0.99
    assert not fit['reliable'][~inside].any() and not fit['r2star_hz'][~inside].any()
    np.testing.assert_allclose(fit['t2star_s'][inside] * fit['r2star_hz'][inside], 1.0,
                               rtol=1e-6)


def test_r2star_on_the_realistic_head():
    """The harder phantom (fat, skull, veins next to bone; SNR 35): deep-GM and WM within
    5 %; the bone partial-volume voxels inside the brain mask are flagged, not hidden."""
    from qsmflow.phantom.realistic import realistic_head, simulate_realistic_megre
    from qsmflow.phantom.tissues import LABEL_INDEX

    head = realistic_head(size='small')
    mag, _, truth = simulate_realistic_megre(head, TES, snr=35, rng=3)
    fit = r2star(mag, head.brain_mask, echo_times_s=TES)
    errors = _region_errors(fit, head)
    assert max(abs(e) for e in errors.values()) <= 5.0, errors
    assert abs(fit['noise_sigma'] / truth['noise_sigma'] - 1) < 0.03
    flagged = head.brain_mask & ~fit['reliable']
    assert 0 < flagged.sum() < 0.02 * head.brain_mask.sum()
    # what is flagged decays fast: CSF or vein pressed against bone, not deep grey matter
    deep = np.isin(head.labels, [LABEL_INDEX[n] for labels in REGIONS.values() for n in labels])
    assert not (flagged & deep).any()
    assert np.median(head.r2star_hz[flagged]) > 3 * np.median(head.r2star_hz[head.brain_mask])


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_two_echoes_give_the_log_ratio(dtype):
    rng = np.random.default_rng(0)
    r2 = rng.uniform(5, 80, (6, 6, 6))
    te = np.array([0.005, 0.017])
    mag = (200 * np.exp(-r2[..., None] * te)).astype(dtype)
    mask = np.ones(r2.shape, bool)
    for method in relaxometry.METHODS:  # ARLO degenerates to the log-ratio with 2 echoes
        fit = r2star(mag, mask, echo_times_s=te, method=method, noise_sigma=0)
        rtol = 1e-4 if dtype == np.float32 else 1e-6
        np.testing.assert_allclose(fit['r2star_hz'], r2, rtol=rtol)
        assert (fit['n_echoes'] == 2).all() and fit['reliable'].all()


def test_arlo_needs_equal_spacing_the_others_do_not():
    te = [0.004, 0.010, 0.022]
    mag = 100 * np.exp(-30.0 * np.asarray(te)) * np.ones((4, 4, 4, 3))
    mask = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError, match='ARLO needs equally spaced echoes'):
        r2star(mag, mask, echo_times_s=te)
    for method in ('loglinear', 'nonlinear'):
        fit = r2star(mag, mask, echo_times_s=te, method=method, noise_sigma=0)
        np.testing.assert_allclose(fit['r2star_hz'], 30.0, rtol=1e-5)


@pytest.fixture(scope='module')
def decay_into_noise():
    """R2* 40 1/s over 8 echoes to 60 ms at a first-echo SNR of 10 (σ = 1): the last
    echoes lie on the Rician floor. A cube of tissue in pure noise."""
    rng = np.random.default_rng(1)
    shape, n = (30, 30, 30), 8
    te = 0.004 + 0.008 * np.arange(n)
    amplitude = 10.0 * np.exp(0.004 * 40.0) * np.exp(-40.0 * te)
    mask = np.zeros(shape, bool)
    mask[5:25, 5:25, 5:25] = True
    signal = amplitude * mask[..., None]
    noisy = np.abs(signal + rng.standard_normal(signal.shape)
                   + 1j * rng.standard_normal(signal.shape))
    return noisy, mask, te


@pytest.mark.parametrize('method', relaxometry.METHODS)
def test_noise_floor_handling_removes_the_rician_bias(decay_into_noise, method):
    """Measured: with the floor handled |error| ≤ 1.1 %; without it (noise_sigma=0) the
    floor flattens the decay: 2.9 % (log-linear) to 7 % (nonlinear) low."""
    noisy, mask, te = decay_into_noise
    handled = r2star(noisy, mask, echo_times_s=te, method=method)
    naive = r2star(noisy, mask, echo_times_s=te, method=method, noise_sigma=0)
    assert abs(handled['noise_sigma'] - 1.0) < 0.03
    error_handled = handled['r2star_hz'][mask].mean() / 40.0 - 1
    error_naive = naive['r2star_hz'][mask].mean() / 40.0 - 1
    assert abs(error_handled) < 0.02, error_handled
    assert error_naive < -0.025, error_naive
    assert np.median(handled['n_echoes'][mask]) < 8  # the floor echoes were left out


def test_noise_sigma_from_a_background_shared_with_tissue():
    rng = np.random.default_rng(2)
    shape = (40, 40, 40)
    noise = np.abs(rng.normal(0, 3.0, shape) + 1j * rng.normal(0, 3.0, shape))
    brain = np.zeros(shape, bool)
    brain[10:30, 10:30, 10:30] = True
    scalp = np.zeros(shape, bool)
    scalp[5:35, 5:35, 5:35] = True
    scalp &= ~brain  # 40 % of the background is bright tissue
    image = noise + 200 * brain + 150 * scalp
    assert abs(estimate_noise_sigma(image, brain) / 3.0 - 1) < 0.03
    quantile_only = np.quantile(image[~brain], 0.25) / np.sqrt(-2 * np.log(0.75))
    assert quantile_only > 1.1 * 3.0  # what the refinement corrects
    assert estimate_noise_sigma(np.where(brain, image, 0), brain) == 0.0  # zero-filled
    tissue_only = np.where(brain, image, 150.0) + rng.uniform(0, 1, shape)  # no air
    assert estimate_noise_sigma(tissue_only, brain) == 0.0


def test_unreliable_voxels_are_clipped_and_flagged():
    te = [0.004, 0.012, 0.020]
    mag = 100 * np.exp(-20.0 * np.asarray(te)) * np.ones((5, 5, 5, 3))
    mag[1, 1, 1] = 0.0  # no signal
    mag[2, 2, 2] = 100 * np.exp(-2000.0 * np.asarray(te))  # bone: beyond the plausible range
    mag[3, 3, 3] = 100.0  # no decay at all
    fit = r2star(mag, np.ones((5, 5, 5), bool), echo_times_s=te, noise_sigma=0.5)
    low, high = relaxometry.DEFAULT_R2STAR_RANGE_HZ
    assert not fit['reliable'][1, 1, 1] and not fit['reliable'][2, 2, 2]
    assert not fit['reliable'][3, 3, 3] and fit['r2star_hz'][3, 3, 3] == low
    assert fit['reliable'].sum() == 125 - 3
    assert fit['r2star_hz'].min() >= low and fit['r2star_hz'].max() <= high
    assert np.isfinite(fit['t2star_s']).all() and np.isfinite(fit['s0']).all()


def test_s0_is_the_signal_at_te_zero():
    te = [0.004, 0.012, 0.020, 0.028]
    mag = 321.0 * np.exp(-33.0 * np.asarray(te)) * np.ones((3, 3, 3, 4))
    fit = r2star(mag, np.ones((3, 3, 3), bool), echo_times_s=te, noise_sigma=0)
    np.testing.assert_allclose(fit['s0'], 321.0, rtol=1e-3)


@pytest.mark.parametrize('kwargs, message', [
    ({'method': 'fast'}, 'unknown R2\\* method'),
    ({'r2star_range_hz': (10, 5)}, 'r2star_range_hz'),
    ({'min_snr': -1}, 'min_snr'),
    ({'noise_sigma': -2.0}, 'noise_sigma'),
    ({'max_iter': 0}, 'max_iter'),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    mag = np.ones((3, 3, 3, 3))
    with pytest.raises(ValueError, match=message):
        r2star(mag, np.ones((3, 3, 3), bool), echo_times_s=[0.01, 0.02, 0.03], **kwargs)


def test_one_echo_is_refused():
    with pytest.raises(ValueError, match='at least 2 echoes'):
        r2star(np.ones((3, 3, 3, 1)), np.ones((3, 3, 3), bool), echo_times_s=[0.01])


def test_doctests():
    assert doctest.testmod(relaxometry, optionflags=doctest.ELLIPSIS).failed == 0
