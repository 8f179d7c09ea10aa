# SPDX-License-Identifier: Apache-2.0
"""The phase-polarity plausibility check (qsmflow.qsm.polarity) on the vendored real data
and the phantom, in the correct polarity and negated, and its pre-flight warning.

Measured with the same function on every vendored dataset and phantom (README "Phase
polarity check"): correct polarity +0.09…+0.73, negated the exact opposite."""
from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from qsmflow.qsm.kernels import b0_dir_from_affine
from qsmflow.qsm.polarity import INVERTED_BELOW, polarity_score
from tests import realdata


def _philips():
    stem = realdata.PHILIPS_HEAD / '2001_WIP_fcMRI_Field_Mapping_cl_'
    imgs = [nb.load(f'{stem}e{e}.nii.gz') for e in (1, 2)]
    mag = np.stack([np.asarray(i.dataobj, np.float32) for i in imgs], -1)
    phase = np.stack([np.asarray(nb.load(f'{stem}e{e}_ph.nii.gz').dataobj, np.float32)
                      for e in (1, 2)], -1)
    return phase, mag, imgs[0].header.get_zooms()[:3], b0_dir_from_affine(imgs[0].affine)


def _small():
    mag, phase, affine = realdata.mriresearchtools_small()
    return phase, mag, np.linalg.norm(affine[:3, :3], axis=0), b0_dir_from_affine(affine)


def _tiny_phantom():
    from qsmflow.phantom.bids import DEFAULT_B0_TESLA, DEFAULT_ECHO_TIMES_S, oblique_affine
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head

    head = make_head(size='tiny')
    b0 = b0_dir_from_affine(oblique_affine(head.labels.shape, head.voxel_size_mm, 15.0))
    mag, phase, _ = simulate_megre(head, DEFAULT_ECHO_TIMES_S, DEFAULT_B0_TESLA, b0, snr=30,
                                   rng=np.random.default_rng(0))
    return phase, mag, head.voxel_size_mm, b0


@pytest.mark.parametrize('name, load, least', [
    ('philips_3t_head', _philips, 0.15),         # measured +0.18
    ('mriresearchtools_small', _small, 0.2),     # +0.29
    ('phantom tiny, SNR 30', _tiny_phantom, 0.5),  # +0.69
])
def test_correct_polarity_passes_negated_warns(name, load, least):
    phase, mag, vox, b0 = load()
    right = polarity_score(phase, mag, vox, b0_dir=b0)
    wrong = polarity_score(-phase, mag, vox, b0_dir=b0)
    print(name, right, wrong)
    assert right['score'] >= least and not right['inverted']
    assert wrong['inverted'] and wrong['score'] == pytest.approx(-right['score'], abs=0.02)
    assert wrong['score'] < INVERTED_BELOW


def test_preflight_warns_on_negated_phase_only(tmp_path):
    """The real Philips head through pre-flight: no warning as stored; with every phase
    file negated, one polarity warning in the report line (the run goes on)."""
    from qsmflow.bids.inputs import find_acquisitions
    from qsmflow.bids.preflight import preflight

    bids = realdata.philips_head_bids(tmp_path / 'bids')
    acqs, failures = find_acquisitions(bids)
    lines = preflight(acqs, failures, log=lambda _: None)
    assert not failures and 'WARNING' not in lines['philips'][0]
    for path in sorted(bids.rglob('*part-phase_MEGRE.nii.gz')):
        img = nb.load(path)
        nb.save(nb.Nifti1Image(-np.asarray(img.dataobj, np.float32), img.affine, img.header),
                path)
    acqs, failures = find_acquisitions(bids)
    lines = preflight(acqs, failures, log=lambda _: None)
    assert not failures and list(acqs) == ['philips']
    assert lines['philips'][0].count('WARNING') == 1
    assert 'WARNING: phase polarity looks inverted' in lines['philips'][0]


def test_tiny_images_get_no_score_instead_of_an_error():
    """A grid too small for a brain (found by the input battery: 2×2×2, one echo) is
    undetermined (score 0, not inverted), as pre-flight needs: it never fails a participant."""
    from qsmflow.qsm.polarity import polarity_score

    rng = np.random.default_rng(0)
    for shape, vox in (((2, 2, 2, 1), (1, 1, 0.5)), ((12, 3, 40, 3), (2, 2, 2))):
        result = polarity_score(rng.uniform(-3, 3, shape), rng.uniform(0, 1, shape), vox)
        assert result['score'] == 0.0 and not result['inverted'] and result['n_voxels'] == 0
