# SPDX-License-Identifier: Apache-2.0
"""Brain extraction on real scanner data (vendored under tests/data; see tests/realdata.py).

The Philips 3 T head (2 echoes, 3 mm) shows the failure of a magnitude threshold: scalp,
skull marrow, face and neck are as bright as brain. The measures are general ones:

* share of the mask within 10 mm of the head surface (:func:`mask_qc`): scalp, face and
  neck lie there, brain does not;
* volume: a whole adult brain (cerebrum, cerebellum, brainstem, ventricles) is 0.9-1.8 L;
* neck: the mask volume more than 60 mm below the mask's centroid along the scanner's
  superior axis. The centroid of a brain mask lies near the thalami; 60 mm below are only
  the lower cerebellum and the medulla (tens of mL), whereas a mask that takes in the
  face or the neck puts hundreds of mL there.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm.brain_extraction import extract_brain, head_mask, mask_qc
from qsmflow.qsm.mask import brain_mask, quality_map
from tests import realdata

PHILIPS_TES_S = (0.0023, 0.0046)


def _philips():
    stem = realdata.PHILIPS_HEAD / '2001_WIP_fcMRI_Field_Mapping_cl_'
    mags = [nib.load(f'{stem}e{e}.nii.gz') for e in (1, 2)]
    mag = np.stack([np.asarray(m.dataobj, dtype=np.float32) for m in mags], -1)
    phase = np.stack([np.asarray(nib.load(f'{stem}e{e}_ph.nii.gz').dataobj, dtype=np.float32)
                      for e in (1, 2)], -1)
    affine = mags[0].affine
    vox = tuple(float(v) for v in mags[0].header.get_zooms()[:3])
    return mag, phase, affine, vox


def _ml_below_centroid(mask, affine, depth_mm=60.0) -> float:
    """Mask volume (mL) more than ``depth_mm`` below its centroid along world +z (superior)."""
    world = nib.affines.apply_affine(affine, np.argwhere(mask))
    low = world[:, 2] < world[:, 2].mean() - depth_mm
    return float(low.sum()) * abs(np.linalg.det(affine[:3, :3])) / 1000.0


@pytest.fixture(scope='module')
def philips():
    if not realdata.PHILIPS_HEAD.is_dir():
        pytest.skip('tests/data/philips_3t_head is not there')
    return _philips()


def test_philips_head_threshold_mask_is_a_head(philips):
    """The magnitude-threshold mask takes in the head; the QC flags it."""
    mag, _, affine, vox = philips
    old = brain_mask(mag[..., 0], vox)
    qc = mask_qc(old, mag[..., 0], vox)
    assert qc['LooksLikeHead'] and qc['Warning']
    assert qc['VolumeML'] > 2500 and qc['NearSurfaceShare'] > 0.1
    assert _ml_below_centroid(old, affine) > 150


@pytest.mark.parametrize('magnitude', ['rss', 'echo1'])
def test_philips_head_brain_extraction(philips, magnitude):
    mag, _, affine, vox = philips
    img = np.sqrt((mag ** 2).sum(-1)) if magnitude == 'rss' else mag[..., 0]
    m = extract_brain(img, vox)
    qc = mask_qc(m, mag[..., 0], vox)
    assert not qc['LooksLikeHead'], qc
    assert qc['NearSurfaceShare'] <= 0.05                   # no scalp, face or neck
    assert 900 <= qc['VolumeML'] <= 1800                     # one brain
    assert _ml_below_centroid(m, affine) <= 100              # no neck
    # the voxel deepest in the head (farthest from its surface) is brain
    depth = ndi.distance_transform_edt(head_mask(mag[..., 0], vox), sampling=vox)
    assert m.flat[np.argmax(depth)]


def test_philips_head_with_phase_quality(philips):
    """The phase-quality constraint (quality map over the head) agrees."""
    mag, phase, affine, vox = philips
    rss = np.sqrt((mag ** 2).sum(-1))
    quality = quality_map(phase, mag, head_mask(rss, vox), vox, echo_times_s=PHILIPS_TES_S)
    m = extract_brain(rss, vox, quality=quality)
    qc = mask_qc(m, mag[..., 0], vox)
    assert qc['NearSurfaceShare'] <= 0.05 and 900 <= qc['VolumeML'] <= 1800
    plain = extract_brain(rss, vox)
    assert 2 * (m & plain).sum() / (m.sum() + plain.sum()) > 0.95


def test_philips_head_deterministic_and_dtype(philips):
    mag, _, _, vox = philips
    rss = np.sqrt((mag ** 2).sum(-1))
    a = extract_brain(rss, vox)
    assert np.array_equal(a, extract_brain(rss.astype(np.float64), vox))
    assert np.array_equal(a, extract_brain(rss.copy(), vox))


def test_in_vivo_crop_is_kept():
    """The MriResearchTools crop lies inside the brain: the mask keeps nearly all of it."""
    if not realdata.MRIRESEARCHTOOLS_SMALL.is_dir():
        pytest.skip('tests/data/mriresearchtools_small is not there')
    mag, _, affine = realdata.mriresearchtools_small()
    vox = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    for img in (np.sqrt((mag ** 2).sum(-1)), mag[..., 0]):
        m = extract_brain(img, vox)
        assert m.mean() >= 0.95
        assert not mask_qc(m, img, vox)['LooksLikeHead']


@pytest.mark.parametrize('algorithm', ['adaptive', 'threshold'])
def test_brain_mask_interface_records_qc(philips, tmp_path, monkeypatch, algorithm, caplog):
    """The BrainMask step: algorithm and QC in the sidecar; a head-like mask is logged."""
    import json
    import logging

    from qsmflow.interfaces.masking import BrainMask

    mag, _, affine, vox = philips
    mag_file = tmp_path / 'mag.nii.gz'
    nib.Nifti1Image(mag, affine).to_filename(mag_file)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger='nipype.interface'):
        res = BrainMask(in_magnitude=str(mag_file), algorithm=algorithm).run()
    out = res.outputs.out_mask
    rec = json.loads(open(out.replace('.nii.gz', '.json')).read())['QSMProcessing'][-1]
    assert rec['Step'] == 'masking'
    qc = rec['QC']
    if algorithm == 'adaptive':
        assert rec['Algorithm'] == 'qsmflow.qsm.brain_extraction.extract_brain'
        assert rec['Parameters']['max_volume_ml'] == 2000.0
        assert not qc['LooksLikeHead'] and qc['NearSurfaceShare'] <= 0.05
        assert 'looks like a head' not in caplog.text
    else:
        assert rec['Algorithm'] == 'qsmflow.qsm.mask.brain_mask'
        assert qc['LooksLikeHead'] and qc['VolumeML'] > 2500
        assert 'looks like a head' in caplog.text
    mask = np.asarray(nib.load(out).dataobj) > 0
    assert abs(qc['VolumeML'] - mask.sum() * np.prod(vox) / 1000) < 0.1


@pytest.mark.slow
def test_philips_head_end_to_end(tmp_path, run_cli):
    """qsmflow on the Philips head: the published mask is a brain, its sidecar says so."""
    import json

    if not realdata.PHILIPS_HEAD.is_dir():
        pytest.skip('tests/data/philips_3t_head is not there')
    bids = realdata.philips_head_bids(tmp_path / 'bids')
    out = tmp_path / 'out'
    res = run_cli(bids, out, 'participant', '--skip-bids-validation', '--skip-registration',
                  '--nprocs', '1', '-w', tmp_path / 'work')
    assert res.returncode == 0, res.stderr
    anat = out / 'sub-philips' / 'anat'
    steps = json.loads((anat / 'sub-philips_desc-brain_mask.json').read_text())['QSMProcessing']
    masking = next(s for s in steps if s.get('Step') == 'masking')
    assert masking['Algorithm'] == 'qsmflow.qsm.brain_extraction.extract_brain'
    assert not masking['QC']['LooksLikeHead'] and masking['QC']['NearSurfaceShare'] <= 0.05
    img = nib.load(anat / 'sub-philips_desc-brain_mask.nii.gz')
    mask = np.asarray(img.dataobj) > 0
    assert 900 <= mask.sum() * 27 / 1000 <= 1800
    assert _ml_below_centroid(mask, img.affine) <= 100
