# SPDX-License-Identifier: Apache-2.0
"""User-supplied brain masks (--brain-masks): lookup, pre-flight check, resampling, and
their use instead of the automatic mask (with and without two-pass)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.bids.derivatives import (
    DerivativeLookupError, check_brain_mask, expected_pattern, find_brain_mask,
    find_derivative)
from qsmflow.errors import InputError
from qsmflow.bids.inputs import Acquisition
from qsmflow.interfaces.masking import user_mask


def _touch(folder: Path, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b'')


# --- lookup ---------------------------------------------------------------------------------
def test_lookup_matches_session_acq_and_run(tmp_path):
    _touch(tmp_path / 'sub-01' / 'ses-a' / 'anat',
           'sub-01_ses-a_desc-brain_mask.nii.gz',
           'sub-01_ses-a_acq-fast_run-02_desc-brain_mask.nii',
           'sub-01_ses-a_acq-slow_desc-brain_mask.nii.gz',
           'sub-01_ses-a_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz',
           'sub-01_ses-a_desc-csf_mask.nii.gz', 'sub-01_ses-a_dseg.nii.gz')
    _touch(tmp_path / 'sub-01' / 'ses-b' / 'anat', 'sub-01_ses-b_desc-brain_mask.nii.gz')

    def name(**ents):
        return find_brain_mask(tmp_path, {'subject': '01', **ents}).name

    assert name(session='a') == 'sub-01_ses-a_desc-brain_mask.nii.gz'
    assert name(session='a', acquisition='fast', run=2) == \
        'sub-01_ses-a_acq-fast_run-02_desc-brain_mask.nii'
    # a mask with fewer entities serves every run; contradicting entities never match
    assert name(session='a', acquisition='fast', run=1) == 'sub-01_ses-a_desc-brain_mask.nii.gz'
    assert name(session='a', acquisition='slow', run=1) == \
        'sub-01_ses-a_acq-slow_desc-brain_mask.nii.gz'
    assert name(session='b', acquisition='fast') == 'sub-01_ses-b_desc-brain_mask.nii.gz'
    seg = find_derivative(tmp_path, {'subject': '01', 'session': 'a'}, suffix='dseg')
    assert seg.name == 'sub-01_ses-a_dseg.nii.gz'


def test_missing_or_ambiguous_mask_is_one_line_naming_the_pattern(tmp_path):
    _touch(tmp_path / 'sub-01' / 'anat', 'sub-01_acq-x_desc-brain_mask.nii.gz',
           'sub-01_run-1_desc-brain_mask.nii.gz')
    with pytest.raises(DerivativeLookupError) as err:
        find_brain_mask(tmp_path, {'subject': '02', 'run': 1})
    msg = str(err.value)
    assert '\n' not in msg and 'sub-02' in msg
    assert msg.endswith(str(tmp_path / 'sub-02/anat/sub-02[_run-1]_desc-brain_mask.nii[.gz]'))
    with pytest.raises(DerivativeLookupError, match='equally well'):
        find_brain_mask(tmp_path, {'subject': '01', 'acquisition': 'x', 'run': 1})
    assert expected_pattern(tmp_path, {'subject': '01'}, suffix='dseg', desc=None).endswith(
        'sub-01/anat/sub-01[_desc-<label>]_dseg.nii[.gz]')


# --- resampling and pre-flight ----------------------------------------------------------
def _grid(shape=(20, 22, 18), zoom=2.0):
    aff = np.diag([zoom, zoom, zoom, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 3.0)
    return nb.Nifti1Image(np.zeros(shape, np.float32), aff)


def test_user_mask_is_resampled_by_nearest_neighbour_through_the_affines(tmp_path):
    ref = _grid()
    coarse = np.zeros(ref.shape, bool)
    coarse[5:15, 6:16, 4:12] = True
    # the same mask on a grid twice as fine, shifted so that voxel centres nest
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    aff = ref.affine.copy()
    aff[:3, :3] /= 2
    aff[:3, 3] -= ref.affine[:3, :3] @ np.full(3, 0.25)
    path = tmp_path / 'fine.nii.gz'
    nb.Nifti1Image(fine.astype(np.uint8), aff).to_filename(path)
    mask, rec = user_mask(path, ref)
    assert np.array_equal(mask, coarse)
    assert rec['Algorithm'] == 'user-supplied' and rec['Resampled'] and rec['Voxels'] == coarse.sum()
    same = tmp_path / 'same.nii'
    nb.Nifti1Image(coarse.astype(np.float32) * 3, ref.affine).to_filename(same)
    mask, rec = user_mask(same, ref)
    assert np.array_equal(mask, coarse) and rec['Resampled'] is None


def test_preflight_check_reports_missing_and_misplaced_masks(tmp_path):
    ref = _grid()
    mag = tmp_path / 'mag.nii.gz'
    ref.to_filename(mag)
    acq = Acquisition({'subject': '01'}, [str(mag)], [str(mag)], [0.01], 3.0)
    with pytest.raises(InputError, match=r'no brain mask for sub-01 in --brain-masks: expected'):
        check_brain_mask(tmp_path / 'masks', acq)
    anat = tmp_path / 'masks' / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    far = ref.affine.copy()
    far[:3, 3] += 500.0  # another place in scanner space: no overlap with the GRE grid
    m = np.ones(ref.shape, np.uint8)
    nb.Nifti1Image(m, far).to_filename(anat / 'sub-01_desc-brain_mask.nii.gz')
    with pytest.raises(InputError, match='no brain voxel on the GRE grid'):
        check_brain_mask(tmp_path / 'masks', acq)
    nb.Nifti1Image(m, ref.affine).to_filename(anat / 'sub-01_desc-brain_mask.nii.gz')
    assert check_brain_mask(tmp_path / 'masks', acq).name == 'sub-01_desc-brain_mask.nii.gz'
    nb.Nifti1Image(np.ones(ref.shape + (2,), np.uint8), ref.affine).to_filename(
        anat / 'sub-01_desc-brain_mask.nii.gz')
    with pytest.raises(InputError, match='2 volumes'):
        check_brain_mask(tmp_path / 'masks', acq)


# --- through the CLI on the phantom -------------------------------------------------------
def _img(path):
    return np.asarray(nb.load(path).dataobj)


@pytest.fixture(scope='module')
def mask_runs(tiny_phantom, tmp_path_factory):
    """The phantom's true brain mask eroded by a voxel, stored on a grid twice as fine,
    used by a one-pass and a two-pass run."""
    from qsmflow.cli import main

    bids_dir, _ = tiny_phantom
    root = tmp_path_factory.mktemp('usermask')
    truth = nb.load(bids_dir.parent / 'truth' / 'sub-01' / 'anat' /
                    'sub-01_desc-brain_mask.nii.gz')
    mask = ndi.binary_erosion(np.asarray(truth.dataobj) > 0)
    fine = np.repeat(np.repeat(np.repeat(mask, 2, 0), 2, 1), 2, 2).astype(np.uint8)
    aff = truth.affine.copy()
    aff[:3, :3] /= 2
    aff[:3, 3] -= truth.affine[:3, :3] @ np.full(3, 0.25)
    anat = root / 'masks' / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    nb.Nifti1Image(fine, aff).to_filename(anat / 'sub-01_desc-brain_mask.nii.gz')
    out = {'mask': mask}
    for name, two_pass in (('one', False), ('two', True)):
        preset = {'description': 'test',
                  'masking': {'method': 'quality', 'params': {}, 'two_pass': two_pass,
                              'brain_masks': str(root / 'masks'),
                              'strict_params': {'threshold': 0.9}},
                  'unwrapping': {'method': 'romeo'}, 'echo_combination': {'method': 'wls'},
                  'bf_removal': {'method': 'pdf', 'params': {}},
                  'inversion': {'method': 'tv', 'params': {}}, 'reference': {'method': 'mean'}}
        (root / f'{name}.json').write_text(json.dumps(preset))
        code = main([str(bids_dir), str(root / name), 'participant', '--nprocs', '1',
                     '--skip-registration', '--skip-bids-validation',
                     '--preset', str(root / f'{name}.json'), '-w', str(root / f'work_{name}')])
        out[name] = (code, root / name / 'sub-01' / 'anat')
    return out


@pytest.mark.slow
def test_user_mask_replaces_the_automatic_mask_as_it_is(mask_runs):
    code, anat = mask_runs['one']
    assert code == 0
    mask = _img(anat / 'sub-01_desc-brain_mask.nii.gz') > 0
    assert np.array_equal(mask, mask_runs['mask'])  # PDF keeps the mask; no quality trimming
    # the field fit ran on the user's mask too
    noise = _img(anat / 'sub-01_desc-noise_fieldmap.nii.gz')
    assert np.array_equal(noise > 0, mask_runs['mask'])
    chi = _img(anat / 'sub-01_Chimap.nii.gz')
    assert not chi[~mask].any()
    steps = json.loads((anat / 'sub-01_Chimap.json').read_text())['QSMProcessing']
    names = [s['Step'] for s in steps]
    assert 'phase-quality-masking' not in names
    rec = steps[names.index('masking')]
    assert rec['Algorithm'] == 'user-supplied' and rec['Source'].endswith(
        'sub-01/anat/sub-01_desc-brain_mask.nii.gz')
    assert rec['Resampled'].startswith('nearest neighbour')


@pytest.mark.slow
def test_user_mask_with_two_pass_keeps_the_user_mask_as_output(mask_runs):
    code, anat = mask_runs['two']
    assert code == 0
    mask = _img(anat / 'sub-01_desc-brain_mask.nii.gz') > 0
    assert np.array_equal(mask, mask_runs['mask'])
    names = [s['Step'] for s in
             json.loads((anat / 'sub-01_Chimap.json').read_text())['QSMProcessing']]
    assert names[1] == 'masking' and 'strict-masking' in names
    assert 'two-pass-combination' in names and 'phase-quality-masking' not in names


def test_cli_missing_user_mask_skips_the_participant_in_preflight(tiny_phantom, tmp_path,
                                                                  run_cli):
    bids_dir, _ = tiny_phantom
    masks = tmp_path / 'masks'
    masks.mkdir()
    proc = run_cli(bids_dir, tmp_path / 'out', 'participant',  # in-process (conftest.py)
                   '--skip-bids-validation', '--skip-registration', '--brain-masks', masks,
                   '-w', tmp_path / 'work')
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' not in proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if 'FAILED sub-01' in ln]
    assert len(failed) == 1 and 'desc-brain_mask' in failed[0], proc.stderr
    assert not list((tmp_path / 'out').glob('sub-01/anat/*_Chimap.nii.gz'))
