# SPDX-License-Identifier: Apache-2.0
"""Foci, venography and QSM-OEF on the clinical phantom, reconstructed by TV inversion.

One phantom (1 mm, partial volume from 3× oversampling, field noise 0.005 ppm) is
simulated and inverted once per module (~15 s); the three readings are checked against
its truth as the issue asks: every focus found with the right label and its volume within
30 % (foci of ≥ 3 mm), no vein labelled as a focus, vein Dice ≥ 0.7, OEF within 5
percentage points of the veins' known saturation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.phantom.clinical import (
    CLINICAL_FOCI, DEFAULT_HEMATOCRIT, DEFAULT_SATURATION, make_clinical_head)
from qsmflow.phantom.forward import field_from_chi
from qsmflow.phantom.head import AC_MM, FOV_MM
from qsmflow.phantom.tissues import LABEL_INDEX
from qsmflow.qsm import foci, oef, veins
from qsmflow.qsm.inversion import invert

VOX = (1.0, 1.0, 1.0)


@pytest.fixture(scope='module')
def recon():
    head = make_clinical_head(size='full', oversample=3)
    field = field_from_chi(head.brain_chi_ppm, VOX)
    rng = np.random.default_rng(0)
    field = (field + rng.normal(0, 0.005, field.shape).astype(np.float32)) * head.brain_mask
    chi = invert(field, head.brain_mask, VOX, method='tv')
    seg = veins.segment_veins(chi, head.brain_mask, VOX)
    labels, rows = foci.detect_foci(chi, head.brain_mask, VOX, vein_mask=seg['veins'])
    return {'head': head, 'chi': chi, 'veins': seg['veins'], 'foci': labels, 'rows': rows}


def _vox(centre_mm):
    """Voxel index of a phantom coordinate (mm): the grid is centred on the head."""
    return tuple(int(round(c + f / 2 - 0.5)) for c, f in zip(centre_mm, FOV_MM))


def _truth_foci():
    """(kind, centre mm, radius mm) of every focus: the default anatomy's two and the six
    clinical ones."""
    default = [('calcification', (28.0, 28.0, 20.0), 3.0),
               ('haemorrhage', (-26.0, -30.0, 22.0), 4.0)]
    return default + [(kind, c, r) for _, kind, c, r in CLINICAL_FOCI]


def test_every_focus_found_with_its_label_and_volume(recon):
    head, labels, rows = recon['head'], recon['foci'], recon['rows']
    names = {'haemorrhage': 'haemorrhage-like', 'calcification': 'calcification-like'}
    found = set()
    for kind, centre, radius in _truth_foci():
        index = labels[_vox(centre)]
        assert index > 0, f'{kind} of r {radius} mm at {centre} not found'
        row = rows[index - 1]
        assert row['label'] == names[kind]
        truth = 4 / 3 * math.pi * radius**3
        if radius >= 1.5:  # 2-mm foci: 1-2 voxels, their volume is not measurable
            assert abs(row['volume_mm3'] - truth) <= 0.3 * truth, (kind, radius, row)
        found.add(index)
    # No other focus: every row is one of the phantom's (no vein labelled as a focus).
    assert found == {r['index'] for r in rows}
    vein = head.roi('vein')
    for row in rows:  # a focus beside a vein may take a rim voxel of it, not more
        assert vein[labels == row['index']].mean() <= 0.2, row
    assert AC_MM == (0.0, 10.0, -4.0)


def test_veins_dice(recon):
    truth = recon['head'].roi('vein') & recon['head'].brain_mask
    seg = recon['veins']
    dice = 2 * (seg & truth).sum() / (seg.sum() + truth.sum())
    assert dice >= 0.7
    # Each vein (≥ 2 mm diameter) is found along most of its length.
    comps, n = ndi.label(truth, structure=np.ones((3, 3, 3)))
    for lab in range(1, n + 1):
        assert (seg & (comps == lab)).sum() >= 0.8 * (comps == lab).sum()


def test_oef_matches_the_veins_saturation(recon):
    head = recon['head']
    segments, summary = oef.vein_oef(recon['chi'], recon['veins'], head.brain_mask, VOX,
                                     hematocrit=DEFAULT_HEMATOCRIT,
                                     exclude=recon['foci'] > 0)
    true_oef = 1 - DEFAULT_SATURATION
    measured = [s for s in segments if np.isfinite(s['oef'])]
    assert len(measured) >= 3
    for s in measured:
        assert abs(s['oef'] - true_oef) <= 0.05, s
    assert abs(summary['oef'] - true_oef) <= 0.05
    assert LABEL_INDEX['vein'] > 0


def test_mip_slab_geometry():
    img = np.zeros((8, 8, 20), np.float32)
    img[3, 3, 10] = 1.0
    mip = veins.maximum_intensity_projection(img, (1.0, 1.0, 2.0), slab_mm=10.0)
    assert mip.shape == img.shape
    assert np.flatnonzero(mip[3, 3] > 0).tolist() == [8, 9, 10, 11, 12]  # 5 slices of 2 mm


def test_clinical_variant_of_the_bids_writer(tmp_path):
    """``write_dataset(variant='clinical')``: the clinical head, its foci in the truth."""
    import nibabel as nb

    from qsmflow.phantom.bids import write_dataset

    out = write_dataset(tmp_path / 'raw', tmp_path / 'truth',
                        [{'participant_id': '01', 'age': 40, 'sex': 'F'}], size='tiny',
                        variant='clinical', echo_times_s=(0.004, 0.012, 0.020))
    labels = np.asarray(nb.load(out['participants']['01']['dseg']).dataobj)
    default = np.asarray(nb.load(write_dataset(
        tmp_path / 'raw0', tmp_path / 'truth0', [{'participant_id': '01', 'age': 40,
                                                  'sex': 'F'}], size='tiny',
        echo_times_s=(0.004,))['participants']['01']['dseg']).dataobj)
    haem = LABEL_INDEX['haemorrhage']
    assert (labels == haem).sum() > (default == haem).sum()
