# SPDX-License-Identifier: Apache-2.0
"""χ-separation (qsmflow.qsm.chi_separation) on the 2 mm demo head with its para/dia truth
(``make_head(chi_separation=True)``): the split reproduces χ, puts no paramagnetic source in
iron-free white matter or the calcification and no diamagnetic one in the haemorrhage, and
recovers the nuclei's χ⁺ and χ⁻ within 0.02 ppm (true R2 map and default R2)."""
from __future__ import annotations

import numpy as np
import pytest

from qsmflow.phantom.bids import DEFAULT_ECHO_TIMES_S as TES
from qsmflow.qsm import chi_separation as cs
from qsmflow.qsm.inversion import tv

ROIS = ('white_matter', 'cortex', 'caudate', 'putamen', 'globus_pallidus', 'thalamus',
        'substantia_nigra', 'red_nucleus', 'subthalamic_nucleus', 'dentate_nucleus')


@pytest.fixture(scope='module')
def phantom():
    """2 mm head (SNR 100): true local field in the brain, fitted R2*, TV χ."""
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head
    from qsmflow.qsm.relaxometry import r2star

    head = make_head(size='small', chi_separation=True)
    mag, _, truth = simulate_megre(head, TES, snr=100, rng=5)
    brain = head.brain_mask
    local = np.where(brain, truth['local_field_ppm'], 0).astype(np.float32)
    r2s = r2star(mag, brain, echo_times_s=TES)['r2star_hz']
    chi = tv(local, brain, head.voxel_size_mm)
    return head, local, r2s, chi


@pytest.fixture(scope='module')
def separated(phantom):
    head, local, r2s, chi = phantom
    kw = dict(b0_tesla=3.0, chi_ppm=chi)
    return {'true': cs.chi_separation(local, r2s, head.brain_mask, head.voxel_size_mm,
                                      r2_hz=head.r2_hz, **kw),
            'default': cs.chi_separation(local, r2s, head.brain_mask, head.voxel_size_mm,
                                         **kw)}


def _mean(head, img, name):
    roi = head.roi(name) & head.brain_mask
    return float(img[roi].mean())


def test_phantom_truth_is_consistent_with_the_model():
    """χ⁺ + χ⁻ = χ and R2* = R2 + Dr (χ⁺ − χ⁻) in the brain (but where R2 is floored)."""
    from qsmflow.phantom.head import make_head
    from qsmflow.phantom.tissues import CHI_SEPARATION_DR_HZ_PER_PPM as DR
    from qsmflow.phantom.tissues import tissue_chi_separation

    plain, head = make_head(size='tiny'), make_head(size='tiny', chi_separation=True)
    assert plain.chi_para_ppm is None and np.array_equal(plain.chi_ppm, head.chi_ppm)
    assert np.array_equal(plain.r2star_hz, head.r2star_hz)
    np.testing.assert_allclose(head.chi_para_ppm + head.chi_dia_ppm, head.chi_ppm, atol=1e-6)
    assert head.chi_para_ppm.min() >= 0 >= head.chi_dia_ppm.max()
    from qsmflow.phantom.tissues import BRAIN_LABELS, tissue_r2star_hz

    r2star = tissue_r2star_hz(40.0)
    for name, (para, dia, r2) in tissue_chi_separation(40.0).items():
        if name in BRAIN_LABELS and name not in ('vein', 'haemorrhage'):
            assert r2 > 0 and r2 + DR * (para - dia) == pytest.approx(r2star[name]), name
        else:  # blood products: R2* below Dr χ, R2 floored
            assert r2 == 0 or name not in BRAIN_LABELS
    assert _mean(head, head.chi_para_ppm, 'globus_pallidus') > 0.15
    assert _mean(head, head.chi_dia_ppm, 'globus_pallidus') < -0.02


@pytest.mark.parametrize('r2', ['true', 'default'])
def test_sum_reproduces_chi_and_signs_hold(phantom, separated, r2):
    head, _, _, chi = phantom
    out = separated[r2]
    m = head.brain_mask
    assert out['chi_para_ppm'][m].min() >= 0 >= out['chi_dia_ppm'][m].max()
    for name in ROIS + ('calcification', 'haemorrhage', 'vein'):
        total = _mean(head, out['chi_para_ppm'] + out['chi_dia_ppm'], name)
        assert abs(total - _mean(head, chi, name)) <= 0.005, name
    assert not out['chi_para_ppm'][~m].any() and not out['chi_dia_ppm'][~m].any()


@pytest.mark.parametrize('r2', ['true', 'default'])
def test_pure_sources_stay_pure(phantom, separated, r2):
    """No χ⁺ in the calcification or iron-free white matter, no χ⁻ in the haemorrhage
    (measured with the true/default R2: 0.004/0.003, 0.002/0.012 and 0.000 ppm)."""
    head = phantom[0]
    out = separated[r2]
    assert _mean(head, out['chi_para_ppm'], 'calcification') <= 0.01  # of its −0.5 ppm
    assert _mean(head, out['chi_para_ppm'], 'white_matter') <= (0.005 if r2 == 'true' else 0.015)
    assert _mean(head, out['chi_dia_ppm'], 'haemorrhage') >= -0.005
    assert _mean(head, out['chi_dia_ppm'], 'calcification') <= -0.4
    assert _mean(head, out['chi_para_ppm'], 'haemorrhage') >= 0.6


@pytest.mark.parametrize('r2', ['true', 'default'])
def test_nuclei_para_and_dia_within_0_02_ppm(phantom, separated, r2):
    head = phantom[0]
    out = separated[r2]
    errors = {name: (_mean(head, out['chi_para_ppm'], name)
                     - _mean(head, head.chi_para_ppm, name),
                     _mean(head, out['chi_dia_ppm'], name)
                     - _mean(head, head.chi_dia_ppm, name)) for name in ROIS}
    worst = max(abs(e) for pair in errors.values() for e in pair)
    assert worst <= 0.02, errors


def test_default_r2_costs_accuracy(phantom, separated):
    """The assumed R2 (14.1 1/s at 3 T) against the true map (10.5–17 1/s): the mean
    error over the nuclei and white matter grows (measured 0.004 → 0.008 ppm)."""
    head = phantom[0]

    def mean_error(out):
        return np.mean([abs(_mean(head, out[k], n) - _mean(head, t, n)) for n in ROIS
                        for k, t in (('chi_para_ppm', head.chi_para_ppm),
                                     ('chi_dia_ppm', head.chi_dia_ppm))])

    true, default = mean_error(separated['true']), mean_error(separated['default'])
    assert true < default <= 0.012, (true, default)


def test_joint_update_and_own_inversion_run(phantom):
    """Without ``chi_ppm`` the TV inversion runs inside; ``update_total`` moves χ a little."""
    head, local, r2s, chi = phantom
    out = cs.chi_separation(local, r2s, head.brain_mask, head.voxel_size_mm, b0_tesla=3.0,
                            r2_hz=head.r2_hz, update_total=True, max_iter=5)
    m = head.brain_mask
    assert out['chi_para_ppm'][m].min() >= 0 >= out['chi_dia_ppm'][m].max()
    assert out['info']['chi_source'] == 'TV dipole inversion' and out['info']['inversion']['lam']
    for name in ('globus_pallidus', 'putamen', 'white_matter'):
        assert abs(_mean(head, out['chi_ppm'], name) - _mean(head, chi, name)) <= 0.015


def test_defaults_and_units():
    assert cs.relaxometric_constant(3.0) == 137.0
    assert cs.relaxometric_constant(1.5) == pytest.approx(68.5)
    assert cs.default_r2_hz(3.0) == pytest.approx(1 / 0.071, abs=0.01)
    assert cs.default_r2_hz(1.5) == pytest.approx(1 / 0.080)
    assert cs.default_r2_hz(7.0) == pytest.approx(1 / 0.047, abs=0.01)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dtype_kept_and_r2prime_reported(dtype):
    m = np.zeros((20, 20, 20), bool)
    m[4:16, 4:16, 4:16] = True
    out = cs.chi_separation(np.zeros(m.shape, dtype), np.full(m.shape, 40.0, dtype), m,
                            (1, 1, 1), b0_tesla=3.0, r2_hz=np.full(m.shape, 12.6),
                            max_iter=3)
    assert out['chi_para_ppm'].dtype == dtype and out['chi_dia_ppm'].dtype == dtype
    assert out['info']['r2_hz'] == 'map' and out['info']['dr_hz_per_ppm'] == 137.0
    np.testing.assert_allclose(out['r2prime_hz'][m], 27.4, rtol=1e-6)
    # χ = 0: the split is ±R2′/(2 Dr) = ±0.1 ppm
    np.testing.assert_allclose(out['chi_para_ppm'][m], 0.1, atol=2e-3)
    np.testing.assert_allclose(out['chi_dia_ppm'][m], -0.1, atol=2e-3)


@pytest.mark.parametrize('kwargs, match', [
    ({'b0_tesla': 0}, 'b0_tesla'),
    ({'b0_tesla': 3.0, 'r2_hz': -1.0}, 'r2_hz'),
    ({'b0_tesla': 3.0, 'lam_sep': 0}, 'lam_sep'),
    ({'b0_tesla': 3.0, 'chi_ppm': np.zeros((8, 8, 8)), 'update_total': True},
     'update_total'),
    ({'b0_tesla': 3.0, 'chi_ppm': np.zeros((8, 8, 9))}, 'chi_ppm'),
])
def test_invalid_arguments(kwargs, match):
    m = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match=match):
        cs.chi_separation(np.zeros(m.shape), np.full(m.shape, 20.0), m, (1, 1, 1), **kwargs)
