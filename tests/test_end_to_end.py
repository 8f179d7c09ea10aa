# SPDX-License-Identifier: Apache-2.0
"""End to end: phantom BIDS dataset → qsmflow participant level → checked derivatives."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.phantom.head import DEEP_GM
from qsmflow.bids.validator import find_validator, run_validator, validator_errors

pytestmark = pytest.mark.slow

OUTPUTS = ('Chimap', 'desc-brain_mask', 'desc-total_fieldmap', 'desc-local_fieldmap',
           'desc-noise_fieldmap', 'R2starmap', 'T2starmap', 'desc-swi_swi', 'desc-minip_swi')


def _anat(e2e, sub):
    return e2e['out'] / f'sub-{sub}' / 'anat'


def test_run_succeeds_and_writes_every_output(e2e_run):
    assert e2e_run['code'] == 0
    for sub in ('01', '02'):
        for kind in OUTPUTS:
            img = _anat(e2e_run, sub) / f'sub-{sub}_{kind}.nii.gz'
            assert img.exists(), img
            assert img.with_name(img.name.replace('.nii.gz', '.json')).exists()
    desc = json.loads((e2e_run['out'] / 'dataset_description.json').read_text())
    assert desc['DatasetType'] == 'derivative'
    assert desc['GeneratedBy'][0]['Name'] == 'qsmflow'
    assert '_fieldmap' in (e2e_run['out'] / '.bidsignore').read_text()
    assert '*_swi.nii.gz' in (e2e_run['out'] / '.bidsignore').read_text()
    assert not list(e2e_run['out'].rglob('*.tmp*')), 'temporary files left behind'


def test_chimap_grid_dtype_and_sidecar(e2e_run):
    raw = nb.load(e2e_run['root'] / 'rawdata/sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz')
    chi = nb.load(_anat(e2e_run, '01') / 'sub-01_Chimap.nii.gz')
    assert chi.shape == raw.shape
    assert np.allclose(chi.affine, raw.affine)
    assert chi.get_data_dtype() == np.float32
    meta = json.loads((_anat(e2e_run, '01') / 'sub-01_Chimap.json').read_text())
    assert meta['Units'] == 'ppm' and meta['SkullStripped'] is True
    assert meta['QSMFlowVersion']
    steps = [s['Step'] for s in meta['QSMProcessing']]
    assert steps == ['input', 'masking', 'unwrapping+echo-fit', 'phase-quality-masking',
                     'background-removal', 'dipole-inversion', 'reference']
    inv = meta['QSMProcessing'][5]
    assert inv['Algorithm'].startswith('qsmflow.qsm.inversion.')
    assert inv['Parameters'], 'every parameter must be recorded'
    assert meta['QSMReference'] == 'mean'
    assert all(s.startswith('bids:raw:sub-01/anat/') for s in meta['Sources'])


def _deep_gm_errors(e2e, sub):
    anat, truth_anat = _anat(e2e, sub), e2e['truth'] / f'sub-{sub}' / 'anat'
    chi = np.asarray(nb.load(anat / f'sub-{sub}_Chimap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / f'sub-{sub}_desc-brain_mask.nii.gz').dataobj) > 0
    truth = np.asarray(nb.load(truth_anat / f'sub-{sub}_Chimap.nii.gz').dataobj, dtype=float)
    labels = np.asarray(nb.load(truth_anat / f'sub-{sub}_desc-phantom_dseg.nii.gz').dataobj)
    lut = {}
    for line in (truth_anat / f'sub-{sub}_desc-phantom_dseg.tsv').read_text().splitlines()[1:]:
        idx, name = line.split('\t')[:2]
        lut[name] = int(idx)
    errors = {}
    for region in DEEP_GM:
        for side in ('left', 'right'):
            roi = (labels == lut[f'{region}_{side}']) & mask
            assert roi.sum() >= 4, f'{region}_{side} almost absent from the mask'
            est = chi[roi].mean() - chi[mask].mean()
            ref = truth[roi].mean() - truth[mask].mean()
            errors[f'{region}_{side}'] = est - ref
    return errors


@pytest.mark.parametrize('sub', ['01', '02'])
def test_deep_gm_contrasts_match_truth(e2e_run, sub):
    errors = _deep_gm_errors(e2e_run, sub)
    mean_abs = float(np.mean(np.abs(list(errors.values()))))
    assert mean_abs <= 0.016, errors  # measured 0.0123 (sub-01), 0.0136 (sub-02)


def test_iron_rises_with_age(e2e_run):
    """The 71-year-old phantom has more putamen iron than the 34-year-old, and qsmflow sees it."""
    def putamen(sub):
        anat = _anat(e2e_run, sub)
        chi = np.asarray(nb.load(anat / f'sub-{sub}_Chimap.nii.gz').dataobj)
        truth_anat = e2e_run['truth'] / f'sub-{sub}' / 'anat'
        labels = np.asarray(nb.load(truth_anat / f'sub-{sub}_desc-phantom_dseg.nii.gz').dataobj)
        lut = dict(ln.split('\t')[1::-1] for ln in
                   (truth_anat / f'sub-{sub}_desc-phantom_dseg.tsv').read_text().splitlines()[1:])
        return chi[np.isin(labels, [int(lut['putamen_left']), int(lut['putamen_right'])])].mean()
    assert putamen('02') > putamen('01') + 0.01


def test_input_dataset_untouched(e2e_run):
    raw = e2e_run['root'] / 'rawdata'
    names = sorted(p.name for p in raw.rglob('*') if p.is_file())
    assert not [n for n in names if 'Chimap' in n or 'mask' in n or n.endswith('.tmp')]


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_outputs_pass_bids_validator(e2e_run):
    report = run_validator(e2e_run['out'])
    assert validator_errors(report) == []


def _labels(e2e, sub):
    truth_anat = e2e['truth'] / f'sub-{sub}' / 'anat'
    labels = np.asarray(nb.load(truth_anat / f'sub-{sub}_desc-phantom_dseg.nii.gz').dataobj)
    lut = {}
    for line in (truth_anat / f'sub-{sub}_desc-phantom_dseg.tsv').read_text().splitlines()[1:]:
        idx, name = line.split('\t')[:2]
        lut[name] = int(idx)
    return labels, lut


@pytest.mark.parametrize('sub', ['01', '02'])
def test_r2star_matches_truth_end_to_end(e2e_run, sub):
    """Issue 16 on the pipeline's own mask (2 mm, SNR 100): ROI-mean R2* within 5 % of the
    truth in WM, putamen and GP; T2* = 1/R2*; units in the sidecars."""
    anat = _anat(e2e_run, sub)
    r2 = np.asarray(nb.load(anat / f'sub-{sub}_R2starmap.nii.gz').dataobj, dtype=float)
    t2 = np.asarray(nb.load(anat / f'sub-{sub}_T2starmap.nii.gz').dataobj, dtype=float)
    truth = np.asarray(nb.load(e2e_run['truth'] / f'sub-{sub}' / 'anat'
                               / f'sub-{sub}_R2starmap.nii.gz').dataobj, dtype=float)
    labels, lut = _labels(e2e_run, sub)
    for region in ('white_matter', 'putamen', 'globus_pallidus'):
        names = [region] if region in lut else [f'{region}_left', f'{region}_right']
        roi = np.isin(labels, [lut[n] for n in names]) & (r2 > 0)
        error = r2[roi].mean() / truth[roi].mean() - 1
        assert abs(error) <= 0.05, (region, error)
    inside = r2 > 0
    np.testing.assert_allclose(t2[inside] * r2[inside], 1.0, rtol=1e-5)
    for name, unit in (('R2starmap', '1/s'), ('T2starmap', 's')):
        meta = json.loads((anat / f'sub-{sub}_{name}.json').read_text())
        assert meta['Units'] == unit and meta['SkullStripped'] is True
        assert meta['QSMProcessing'][-1]['Algorithm'] == 'qsmflow.qsm.relaxometry.r2star'


def test_swi_and_minip_geometry_and_venous_contrast(e2e_run):
    """SWI and minIP on the input's grid (shape, affine); the veins darker than the tissue
    around them in the SWI by at least a third, and darker again in the minIP."""
    from scipy import ndimage as ndi

    raw = nb.load(e2e_run['root'] / 'rawdata/sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz')
    anat = _anat(e2e_run, '01')
    swi = nb.load(anat / 'sub-01_desc-swi_swi.nii.gz')
    mip = nb.load(anat / 'sub-01_desc-minip_swi.nii.gz')
    for img in (swi, mip):
        assert img.shape == raw.shape and np.allclose(img.affine, raw.affine)
        assert img.get_data_dtype() == np.float32
    labels, lut = _labels(e2e_run, '01')
    mask = np.asarray(nb.load(anat / 'sub-01_desc-brain_mask.nii.gz').dataobj) > 0
    vein = (labels == lut['vein']) & mask
    shell = ndi.binary_dilation(vein, iterations=3) & ~ndi.binary_dilation(vein) & mask
    data, mdata = swi.get_fdata(), mip.get_fdata()
    assert data[vein].mean() <= 0.67 * data[shell].mean()
    assert np.all(mdata <= data + 1e-6)
    meta = json.loads((anat / 'sub-01_desc-minip_swi.json').read_text())
    assert meta['QSMProcessing'][-1]['Parameters']['slab_mm'] == 8.0
    assert [s['Step'] for s in meta['QSMProcessing']][-3:] == [
        'r2star-fit', 'swi', 'minimum-intensity-projection']
