# SPDX-License-Identifier: Apache-2.0
"""Accuracy targets of the default reconstruction on the full-size 1 mm head phantom.

The default algorithm chain (the ``default`` preset: magnitude brain mask minus unreliable
phase, ROMEO-like unwrapping + weighted echo fit, PDF, TV, whole-brain mean) runs directly
on simulated multi-echo GRE arrays (5 echoes, SNR 100) of the full 144×176×144 phantom, once
with a 15° oblique B0 (the direction a tilted affine gives) and once axial. The Nipype
workflow calls exactly these functions; running it end to end at 1 mm would take minutes.
"""
from __future__ import annotations

import numpy as np
import pytest

from qsmflow.phantom.bids import DEFAULT_B0_TESLA, DEFAULT_ECHO_TIMES_S, oblique_affine
from qsmflow.phantom.forward import simulate_megre
from qsmflow.phantom.head import DEEP_GM, make_head
from qsmflow.qsm import bgremove, echoes, inversion, kernels, metrics, reference
from qsmflow.qsm import mask as qmask

pytestmark = pytest.mark.slow

TES = list(DEFAULT_ECHO_TIMES_S)


@pytest.fixture(scope='module')
def head():
    return make_head(size='full')


def _reconstruct(head, angle_deg):
    vox = head.voxel_size_mm
    b0_dir = kernels.b0_dir_from_affine(oblique_affine(head.shape, vox, angle_deg))
    mag, phase, _ = simulate_megre(head, TES, DEFAULT_B0_TESLA, b0_dir, snr=100.0,
                                   rng=np.random.default_rng(1))
    brain = qmask.brain_mask(mag[..., 0], vox)
    fit = echoes.estimate_field(phase, brain, vox, magnitude=mag, echo_times_s=TES,
                                b0_tesla=DEFAULT_B0_TESLA)
    quality = qmask.quality_map(phase, mag, brain, vox, echo_times_s=TES)
    brain = qmask.quality_mask(quality, brain)
    local, used = bgremove.pdf(fit['field_ppm'], brain, vox, b0_dir)
    chi, _ = reference.reference(inversion.invert(local, used, vox, b0_dir), used)
    tkd, _ = reference.reference(inversion.tkd(local, used, vox, b0_dir), used)
    return {'chi': chi, 'tkd': tkd, 'mask': used}


@pytest.fixture(scope='module')
def recons(head):
    return {angle: _reconstruct(head, angle) for angle in (15.0, 0.0)}


def _deep_gm_ids(head):
    return [i for i, n in head.label_names.items() if n.rsplit('_', 1)[0] in DEEP_GM]


def test_default_inversion_is_tv():
    assert inversion.DEFAULT_METHOD == 'tv'


@pytest.mark.parametrize('angle', [15.0, 0.0])
def test_deep_gm_contrast_error_at_most_13_ppb(head, recons, angle):
    """Measured 2026-12-06: 0.0105 ppm oblique, 0.0103 axial (0.0067 / 0.0065 before TV's
    reweighted pass). Nearly all of it is the background removal's: on this head PDF makes
    the deep grey matter read about +0.009 ppm high, which TV's own loss of contrast (−0.003
    ppm, gone with the second pass: ``test_tv_reweighting.py``) used to hide in part."""
    rec = recons[angle]
    err = metrics.deep_gm_error(rec['chi'], head.brain_chi_ppm, head.labels, _deep_gm_ids(head),
                                rec['mask'])
    assert err <= 0.013, err


@pytest.mark.parametrize('angle', [15.0, 0.0])
def test_default_inversion_beats_tkd_on_rmse(head, recons, angle):
    rec = recons[angle]
    truth = np.where(rec['mask'], head.brain_chi_ppm, 0)
    rmse_default = metrics.rmse(rec['chi'], truth, rec['mask'])
    rmse_tkd = metrics.rmse(rec['tkd'], truth, rec['mask'])
    assert rmse_default < rmse_tkd, (rmse_default, rmse_tkd)


def test_oblique_and_axial_roi_values_within_10_ppb(head, recons):
    ids = _deep_gm_ids(head)
    roi = {a: metrics.roi_means(r['chi'], head.labels, ids) for a, r in recons.items()}
    assert np.max(np.abs(roi[15.0] - roi[0.0])) <= 0.01, roi[15.0] - roi[0.0]
