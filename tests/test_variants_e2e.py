# SPDX-License-Identifier: Apache-2.0
"""End to end over many input variants in ONE run (tiny phantom, several participants,
sessions, runs and acq- labels): every good acquisition is reconstructed under its own
entities, variants of the same data give the same χ, bad participants are reported and
skipped, and nothing is written outside the output and work directories."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from qsmflow.cli.parser import build_parser
from qsmflow.phantom.head import DEEP_GM
from qsmflow.bids.validator import find_validator, run_validator, validator_errors
from tests.variants import export, init_dataset, read_phantom, snapshot

pytestmark = pytest.mark.slow

#: Acquisition -> output stem, for every acquisition that must succeed.
GOOD = {
    'base': 'sub-01/ses-1/anat/sub-01_ses-1',
    '4d': 'sub-01/ses-2/anat/sub-01_ses-2_acq-4d',
    'ri': 'sub-01/ses-2/anat/sub-01_ses-2_acq-ri_run-1',
    'u12': 'sub-01/ses-2/anat/sub-01_ses-2_acq-ri_run-2',
    'single': 'sub-02/anat/sub-02',
    'aniso': 'sub-03/anat/sub-03',
    'obl': 'sub-obl/anat/sub-obl',
    'oblax': 'sub-oblax/anat/sub-oblax',
}


@pytest.fixture(scope='module')
def variants_run(tmp_path_factory, tiny_phantom):
    """Build the multi-variant dataset and run ``qsmflow`` on it once."""
    from qsmflow.phantom.bids import write_dataset

    raw, ph = tiny_phantom
    root = tmp_path_factory.mktemp('variants')
    obl_root = tmp_path_factory.mktemp('oblique')
    write_dataset(obl_root / 'raw', obl_root / 'truth',
                  [{'participant_id': '01', 'age': 50, 'sex': 'F'}], size='tiny',
                  oblique_deg=30.0)
    obl = read_phantom(obl_root / 'raw')
    bids = init_dataset(root / 'rawdata', raw)
    export(ph, bids, '01', session='1')
    export(ph, bids, '01', session='2', acq='4d', layout='4d', scaling='int13', ext='.nii')
    export(ph, bids, '01', session='2', acq='ri', run=1, parts='real/imag',
           annex=root / 'annex')
    export(ph, bids, '01', session='2', acq='ri', run=2, scaling='uint12', units=None,
           ext='.nii')
    export(ph, bids, '02', echoes=[2], drop=('MagneticFieldStrength',))
    paths = export(ph, bids, '03', crop=((1, 48), (2, 55), (2, 45)), zavg=True)
    mag1 = [p for p in paths if 'echo-1_part-mag' in p.name][0]
    img = nb.load(mag1)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[20, 25, 10:13] = np.nan
    nb.Nifti1Image(data, img.affine).to_filename(mag1)
    export(obl, bids, 'obl')
    export((obl[0], obl[1], ph[2], obl[3]), bids, 'oblax')  # oblique data, axial affine
    bad = export(ph, bids, '04', echoes=[0, 1])
    bad[-1].write_bytes(bad[-1].read_bytes()[:5000])
    export(ph, bids, '05', echoes=[0, 1], drop=('EchoTime',))

    before = snapshot(root)
    out, work = root / 'out', root / 'work'
    extra = ['--skip-registration'] if '--skip-registration' in \
        build_parser().format_help() else []  # inputs are under test, not registration
    proc = subprocess.run(
        [sys.executable, '-m', 'qsmflow', str(bids), str(out), 'participant', '-w', str(work),
         '--nprocs', '2', '--field-strength', '3', '--skip-bids-validation', *extra],
        capture_output=True, text=True, timeout=1200)
    return {'root': root, 'bids': bids, 'out': out, 'proc': proc, 'before': before,
            'truth': raw.parent / 'truth'}


def _img(run, key, suffix='Chimap'):
    return np.asarray(nb.load(run['out'] / f'{GOOD[key]}_{suffix}.nii.gz').dataobj, float)


def _regions(run, key):
    """Deep-GM χ means relative to the mask mean (ppm), with the phantom's labels."""
    truth = run['truth'] / 'sub-01' / 'anat'
    labels = np.asarray(nb.load(truth / 'sub-01_desc-phantom_dseg.nii.gz').dataobj)
    lut = {ln.split('\t')[1]: int(ln.split('\t')[0])
           for ln in (truth / 'sub-01_desc-phantom_dseg.tsv').read_text().splitlines()[1:]}
    chi, mask = _img(run, key), _img(run, key, 'desc-brain_mask') > 0
    return {f'{r}_{s}': chi[(labels == lut[f'{r}_{s}']) & mask].mean() - chi[mask].mean()
            for r in DEEP_GM for s in ('left', 'right')}


def _diffs(run, key, ref='base'):
    a, b = _regions(run, key), _regions(run, ref)
    return {k: float(a[k] - b[k]) for k in a}


def test_exit_code_and_failure_summary(variants_run):
    proc = variants_run['proc']
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    # MultiProc's workers print the steps' warnings only, not every node set up and run
    assert 'nipype.workflow' not in proc.stdout + proc.stderr, proc.stdout[:2000]
    failed = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith('FAILED')]
    assert len(failed) == 2, proc.stderr
    assert 'sub-04' in failed[0] and 'sub-04_echo-2_part-phase_MEGRE.nii.gz' in failed[0]
    assert 'truncated or corrupt' in failed[0] and 're-export' in failed[0]
    assert 'sub-05' in failed[1] and 'missing EchoTime' in failed[1]
    assert '5 participant(s) done, 2 failed' in proc.stdout


def test_every_good_acquisition_has_outputs_under_its_entities(variants_run):
    out = variants_run['out']
    for stem in GOOD.values():
        for kind in ('Chimap', 'desc-brain_mask', 'desc-total_fieldmap', 'desc-local_fieldmap'):
            assert (out / f'{stem}_{kind}.nii.gz').is_file(), stem
            assert (out / f'{stem}_{kind}.json').is_file(), stem
    assert not (out / 'sub-04').exists() and not (out / 'sub-05').exists()
    assert not [p for p in out.rglob('*') if '.tmp' in p.name]


def test_preflight_report_lists_each_acquisition(variants_run):
    text = variants_run['proc'].stdout
    assert 'pre-flight sub-01_ses-2_acq-4d: 5 echoes (4, 12, 20, 28, 36 ms), 3 T' in text
    assert 'mag/phase (arbitrary -> rad), one 4D file per part' in text
    assert 'pre-flight sub-01_ses-2_acq-ri_run-1: 5 echoes' in text and 'real/imag' in text
    assert 'pre-flight sub-02: single echo (20 ms), 3 T' in text
    assert 'pre-flight sub-03: 5 echoes' in text and '47x53x21 voxels of 3x3x6 mm' in text
    assert 'WARNING: 3 NaN/Inf voxel(s)' in text


@pytest.mark.parametrize('key, tol_ppm', [('ri', 0.005), ('4d', 0.005), ('u12', 0.005)])
def test_variants_of_the_same_data_give_the_same_chi(variants_run, key, tol_ppm):
    diffs = _diffs(variants_run, key)
    assert max(abs(d) for d in diffs.values()) <= tol_ppm, diffs


def test_real_imaginary_parts_give_the_same_total_field(variants_run):
    """Real/imaginary parts converted to magnitude/phase give the field of the mag/phase
    export to float rounding (measured: 5e-7 ppm at most). χ is compared at the looser
    bound above: PDF's conjugate gradients stop at a relative tolerance, and a rounding-
    level change of the field can move that stop by one iteration (measured: up to 0.007 ppm
    in the local field, 0.0016 ppm in a deep-GM contrast)."""
    a = _img(variants_run, 'ri', 'desc-total_fieldmap')
    b = _img(variants_run, 'base', 'desc-total_fieldmap')
    mask = (_img(variants_run, 'ri', 'desc-brain_mask') > 0) & (
        _img(variants_run, 'base', 'desc-brain_mask') > 0)
    assert np.array_equal(_img(variants_run, 'ri', 'desc-brain_mask'),
                          _img(variants_run, 'base', 'desc-brain_mask'))
    assert np.max(np.abs(a - b)[mask]) <= 1e-5


def test_single_echo_sidecar_and_field_strength_override(variants_run):
    meta = json.loads((variants_run['out'] / f'{GOOD["single"]}_Chimap.json').read_text())
    step = meta['QSMProcessing'][0]
    assert step['SingleEcho'] is True and step['NumberOfEchoes'] == 1
    assert step['EchoTime'] == [0.02] and step['MagneticFieldStrength'] == 3.0
    assert np.isfinite(_img(variants_run, 'single')).all()


def test_anisotropic_prime_grid_kept(variants_run):
    img = nb.load(variants_run['out'] / f'{GOOD["aniso"]}_Chimap.nii.gz')
    raw = nb.load(variants_run['bids'] / 'sub-03/anat/sub-03_echo-1_part-mag_MEGRE.nii.gz')
    assert img.shape == raw.shape == (47, 53, 21)
    assert np.allclose(img.header.get_zooms(), (3, 3, 6)) and np.allclose(img.affine, raw.affine)
    meta = json.loads((variants_run['out'] / f'{GOOD["aniso"]}_Chimap.json').read_text())
    assert meta['QSMProcessing'][0]['NonFiniteVoxelsZeroed'] == 3


def test_b0_direction_from_the_oblique_affine_matters(variants_run):
    """Oblique (30 deg) data read with its true affine is much closer to the axial result
    than the same data read as if it were axial (measured: mean 0.019 vs 0.051 ppm)."""
    right = np.abs(list(_diffs(variants_run, 'obl').values()))
    wrong = np.abs(list(_diffs(variants_run, 'oblax').values()))
    assert right.mean() < 0.5 * wrong.mean(), (right, wrong)


@pytest.mark.xfail(strict=True, reason='known limit: on the 3 mm tiny phantom tilted 30 deg, '
                   'oblique and axial deep-GM means still differ by more than 0.01 ppm (coarse '
                   'voxels, few per nucleus); the 1 mm, 15 deg case meets 0.01 ppm in '
                   'tests/qsm/test_accuracy_full.py')
def test_oblique_and_axial_within_001_ppm_at_3mm_30deg(variants_run):
    diffs = _diffs(variants_run, 'obl')
    assert max(abs(d) for d in diffs.values()) <= 0.01, diffs


def test_nothing_written_into_bids_dir_or_outside_out_and_work(variants_run):
    root = variants_run['root']
    after = snapshot(root)
    inputs = {k: v for k, v in variants_run['before'].items()}
    assert {k: after[k] for k in inputs} == inputs, 'input files changed'
    new = {k.split(os.sep)[0] for k in set(after) - set(inputs)}
    assert new <= {'out', 'work'}, new


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_derivatives_pass_bids_validator(variants_run):
    assert validator_errors(run_validator(variants_run['out'])) == []


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_input_validation_errors_are_summarised(variants_run, tmp_path, run_cli):
    proc = run_cli(variants_run['bids'], tmp_path / 'o', 'participant')  # in-process
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'fails BIDS validation with' in lines[0], proc.stderr
    assert '--skip-bids-validation' in lines[0]
    assert not (tmp_path / 'o').exists()
