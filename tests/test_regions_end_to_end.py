# SPDX-License-Identifier: Apache-2.0
"""End to end: registration to the phantom's templateflow-layout template, native-space
atlas labels, regional tables (atlas and --segmentations) and the group level.

The phantom participants are turned (10° about B0) and shifted in the scanner relative to
the template, so registration has real work to do.
"""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from qsmflow.cli.demo import DEMO_POSE, atlas_dice, table_errors
from qsmflow.phantom.head import DEEP_GM
from qsmflow.bids.validator import find_validator, run_validator, validator_errors

pytestmark = pytest.mark.slow

PARTICIPANTS = ({'participant_id': '01', 'age': 34, 'sex': 'F'},
                {'participant_id': '02', 'age': 71, 'sex': 'M'})


@pytest.fixture(scope='module')
def atlas_run(tmp_path_factory):
    """Small phantom (2 participants), phantom template, atlas + segmentation tables, group."""
    import os
    import subprocess
    import sys

    from qsmflow.cli import main
    from qsmflow.phantom.bids import write_dataset
    from qsmflow.phantom.template import write_template

    root = tmp_path_factory.mktemp('atlas')
    write_dataset(root / 'rawdata', root / 'truth', [dict(p) for p in PARTICIPANTS],
                  size='small', **DEMO_POSE)
    write_template(root / 'templateflow', size='small')
    out = root / 'out'
    # A fresh interpreter: MultiProc forks, and this test process has OpenMP/numba threads.
    env = {**os.environ, 'TEMPLATEFLOW_HOME': str(root / 'templateflow')}
    code = subprocess.run([
        sys.executable, '-m', 'qsmflow', str(root / 'rawdata'), str(out), 'participant',
        '--nprocs', '2', '-w', str(root / 'work'), '--skip-bids-validation',
        '--template', 'QSMPhantom', '--template-resolution', '2', '--atlases', 'Phantom',
        '--segmentations', str(root / 'truth')], env=env, timeout=900).returncode
    group_code = main([str(root / 'rawdata'), str(out), 'group'])  # in this process
    return {'root': root, 'out': out, 'truth': root / 'truth', 'code': code,
            'group_code': group_code}


def _anat(run, sub):
    return run['out'] / f'sub-{sub}' / 'anat'


def test_outputs_written(atlas_run):
    assert atlas_run['code'] == 0 and atlas_run['group_code'] == 0
    anat = _anat(atlas_run, '01')
    for name in ('sub-01_atlas-Phantom_dseg.nii.gz', 'sub-01_atlas-Phantom_dseg.tsv',
                 'sub-01_atlas-Phantom_stats.tsv', 'sub-01_atlas-Phantom_stats.json',
                 'sub-01_atlas-segmentations_stats.tsv', 'sub-01_space-QSMPhantom_Chimap.nii.gz',
                 'sub-01_from-MEGRE_to-QSMPhantom_mode-image_desc-affine_xfm.mat',
                 'sub-01_from-MEGRE_to-QSMPhantom_mode-image_desc-warp_xfm.nii.gz',
                 'sub-01_from-QSMPhantom_to-MEGRE_mode-image_desc-warp_xfm.nii.gz'):
        assert (anat / name).exists(), name
    chi = nb.load(anat / 'sub-01_Chimap.nii.gz')
    dseg = nb.load(anat / 'sub-01_atlas-Phantom_dseg.nii.gz')
    assert dseg.shape == chi.shape and np.allclose(dseg.affine, chi.affine)
    std = nb.load(anat / 'sub-01_space-QSMPhantom_Chimap.nii.gz')
    tpl = nb.load(atlas_run['root'] / 'templateflow/tpl-QSMPhantom/'
                  'tpl-QSMPhantom_res-02_T1w.nii.gz')
    assert std.shape == tpl.shape and np.allclose(std.affine, tpl.affine)
    assert '*_stats.tsv' in (atlas_run['out'] / '.bidsignore').read_text()


def test_table_columns_and_sidecar(atlas_run):
    table = pd.read_csv(_anat(atlas_run, '01') / 'sub-01_atlas-Phantom_stats.tsv', sep='\t')
    for col in ('region', 'hemisphere', 'n_voxels', 'volume_mm3', 'mean', 'median', 'std',
                'p05', 'p95', 'trimmed_mean', 'boundary_share', 'n_labelled', 'mask_coverage'):
        assert col in table
    assert set(table['hemisphere']) == {'left', 'right', 'bilateral'}
    assert {'whole_brain', 'reference'} <= set(table['region'])
    assert set(DEEP_GM) <= set(table['region'])
    meta = json.loads((_anat(atlas_run, '01') / 'sub-01_atlas-Phantom_stats.json').read_text())
    assert meta['mean']['Units'] == 'ppm' and meta['QSMReference'] == 'mean'
    assert meta['Atlas']['Citation'] and meta['Atlas']['License'] == 'CC0'
    assert meta['Atlas']['Template'] == 'QSMPhantom' and meta['ErodedByOneVoxel'] is False
    dseg = json.loads((_anat(atlas_run, '01') / 'sub-01_atlas-Phantom_dseg.json').read_text())
    assert dseg['Atlas']['Name'] == 'Phantom' and dseg['Atlas']['License'] == 'CC0'
    assert dseg['Atlas']['Citation'] == meta['Atlas']['Citation']
    assert meta['QSMProcessing'][-1]['Step'] == 'reference'
    # guard rails: every nucleus inside the brain mask, nothing to warn about
    assert meta['QC']['Warning'] is None and meta['QC']['DeepNucleiInMask'] == 2 * len(DEEP_GM)
    assert meta['boundary_share']['Units'] == 'fraction (0-1)'
    seg = json.loads((_anat(atlas_run, '01') / 'sub-01_atlas-segmentations_stats.json')
                     .read_text())
    assert seg['QC']['Warning'] is None  # deep nuclei only: skull and scalp are not flagged
    deep = table[table['region'].isin(DEEP_GM)]
    assert (deep['mask_coverage'] == 1.0).all() and (deep['n_labelled'] == deep['n_voxels']).all()


@pytest.mark.parametrize('sub', ['01', '02'])
def test_registered_labels_match_truth(atlas_run, sub):
    """Dice of the native-space atlas labels with the phantom's true labels ≥ 0.7."""
    dice = atlas_dice(atlas_run['out'], atlas_run['truth'], f'sub-{sub}')
    print(f'sub-{sub} Dice:', {k: round(v, 3) for k, v in dice.items()})
    assert len(dice) == 2 * len(DEEP_GM)
    assert min(dice.values()) >= 0.7, dice


@pytest.mark.parametrize('sub', ['01', '02'])
def test_atlas_table_means_match_truth(atlas_run, sub):
    """Deep-nuclei table means vs the truth referenced the same way (whole-brain mean)."""
    errors = table_errors(atlas_run['out'], atlas_run['truth'], f'sub-{sub}')
    print(f'sub-{sub} atlas table − truth (ppm):', {k: round(v, 4) for k, v in errors.items()})
    assert np.mean(np.abs(list(errors.values()))) <= 0.02, errors


@pytest.mark.parametrize('sub', ['01', '02'])
def test_segmentation_table_means_match_truth(atlas_run, sub):
    """--segmentations with the true labels: table means vs the truth referenced the same
    way. Only reconstruction error is left (labels are exact): 0.01 ppm mean absolute error
    over the deep nuclei, and no nucleus off by more than 0.03 ppm."""
    errors = table_errors(atlas_run['out'], atlas_run['truth'], f'sub-{sub}',
                          atlas='segmentations')
    assert len(errors) == 2 * len(DEEP_GM)
    print(f'sub-{sub} segmentation table − truth (ppm):',
          {k: round(v, 4) for k, v in errors.items()})
    assert np.mean(np.abs(list(errors.values()))) <= 0.01, errors
    assert np.max(np.abs(list(errors.values()))) <= 0.03, errors


@pytest.mark.parametrize('sub', ['01', '02'])
def test_segmentation_table_is_exact_and_agrees_with_atlas(atlas_run, sub):
    """--segmentations with the true labels: the table equals χ averaged over the true
    labels (1e-5 ppm), and the registered-atlas table agrees with it: 0.005 ppm mean absolute
    difference over the deep nuclei, 0.015 ppm at most for any one (a few boundary voxels of
    a registered 2 mm label move a small nucleus's mean by ~0.01 ppm)."""
    anat = _anat(atlas_run, sub)
    seg = pd.read_csv(anat / f'sub-{sub}_atlas-segmentations_stats.tsv', sep='\t')
    atl = pd.read_csv(anat / f'sub-{sub}_atlas-Phantom_stats.tsv', sep='\t')
    chi = np.asarray(nb.load(anat / f'sub-{sub}_Chimap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / f'sub-{sub}_desc-brain_mask.nii.gz').dataobj) > 0
    truth = atlas_run['truth'] / f'sub-{sub}' / 'anat'
    labels = np.asarray(nb.load(truth / f'sub-{sub}_desc-phantom_dseg.nii.gz').dataobj)
    lut = pd.read_csv(truth / f'sub-{sub}_desc-phantom_dseg.tsv', sep='\t')
    index = dict(zip(lut['name'], lut['index']))
    diffs = {}
    for region in DEEP_GM:
        for side in ('left', 'right'):
            direct = chi[(labels == index[f'{region}_{side}']) & mask].mean()
            pick = (seg['region'] == region) & (seg['hemisphere'] == side)
            assert seg.loc[pick, 'mean'].item() == pytest.approx(direct, abs=1e-5)
            pick_a = (atl['region'] == region) & (atl['hemisphere'] == side)
            diffs[f'{region}_{side}'] = atl.loc[pick_a, 'mean'].item() - direct
    absdiff = np.abs(list(diffs.values()))
    assert absdiff.mean() <= 0.005 and absdiff.max() <= 0.015, diffs


@pytest.mark.parametrize('sub', ['01', '02'])
def test_tables_carry_r2star_and_chi_separation(atlas_run, sub):
    """Issue 16: the tables end with r2star_mean, chi_para_mean, chi_dia_mean. With the
    true labels r2star_mean is R2* averaged over the voxels of the χ statistics (1e-4 1/s)
    and within 5 % of the true R2* there for every deep nucleus; χ⁺ ≥ 0 ≥ χ⁻ and
    χ⁺ + χ⁻ − mean is the Chimap's reference value on every row (χ⁺ + χ⁻ = χ before
    referencing)."""
    from qsmflow.qsm.regions import COLUMNS, MAP_COLUMNS

    anat = _anat(atlas_run, sub)
    truth = atlas_run['truth'] / f'sub-{sub}' / 'anat'
    r2 = np.asarray(nb.load(anat / f'sub-{sub}_R2starmap.nii.gz').dataobj, dtype=float)
    r2_true = np.asarray(nb.load(truth / f'sub-{sub}_R2starmap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / f'sub-{sub}_desc-brain_mask.nii.gz').dataobj) > 0
    labels = np.asarray(nb.load(truth / f'sub-{sub}_desc-phantom_dseg.nii.gz').dataobj)
    lut = pd.read_csv(truth / f'sub-{sub}_desc-phantom_dseg.tsv', sep='\t')
    index = dict(zip(lut['name'], lut['index']))
    ref_value = json.loads((anat / f'sub-{sub}_Chimap.json').read_text())['QSMReferenceValue']
    errors = {}
    for atlas in ('segmentations', 'Phantom'):
        table = pd.read_csv(anat / f'sub-{sub}_atlas-{atlas}_stats.tsv', sep='\t',
                            na_values=['n/a'], keep_default_na=False)
        assert list(table.columns) == [*COLUMNS, *MAP_COLUMNS]
        rows = table[table['n_voxels'] > 0]
        assert (rows['chi_para_mean'] >= 0).all() and (rows['chi_dia_mean'] <= 0).all()
        np.testing.assert_allclose(rows['chi_para_mean'] + rows['chi_dia_mean'] - rows['mean'],
                                   ref_value, atol=1e-4)
        meta = json.loads((anat / f'sub-{sub}_atlas-{atlas}_stats.json').read_text())
        assert meta['r2star_mean']['Units'] == '1/s' and meta['AbsentColumns'] == {}
        if atlas != 'segmentations':
            continue
        for region in DEEP_GM:
            for side in ('left', 'right'):
                roi = (labels == index[f'{region}_{side}']) & mask
                row = table[(table['region'] == region) & (table['hemisphere'] == side)]
                assert row['r2star_mean'].item() == pytest.approx(r2[roi].mean(), abs=1e-4)
                errors[f'{region}_{side}'] = row['r2star_mean'].item() / r2_true[roi].mean() - 1
    print(f'sub-{sub} table R2* / truth - 1:', {k: round(v, 4) for k, v in errors.items()})
    assert max(abs(e) for e in errors.values()) <= 0.05, errors


def test_group_outputs(atlas_run):
    group = atlas_run['out'] / 'group'
    long = pd.read_csv(group / 'cohort_long.tsv', sep='\t')
    wide = pd.read_csv(group / 'cohort_wide.tsv', sep='\t')
    assert set(long['participant_id']) == {'sub-01', 'sub-02'}
    assert {'age', 'sex', 'z', 'percentile', 'atlas'} <= set(long.columns)
    assert len(wide) == 2 and 'Phantom_putamen_bilateral_mean' in wide
    # issue 16: the map columns reach both cohort tables
    assert {'r2star_mean', 'chi_para_mean', 'chi_dia_mean'} <= set(long.columns)
    deep = long[long['region'].isin(DEEP_GM)]
    assert deep[['r2star_mean', 'chi_para_mean', 'chi_dia_mean']].notna().all().all()
    assert {'Phantom_putamen_bilateral_r2star_mean', 'segmentations_putamen_left_chi_para_mean',
            'Phantom_putamen_bilateral_chi_dia_mean'} <= set(wide.columns)
    meta = json.loads((group / 'cohort_long.json').read_text())
    assert meta['r2star_mean']['Units'] == '1/s' and meta['chi_para_mean']['Units'] == 'ppm'
    for name in ('atlas-Phantom_distributions.png', 'atlas-Phantom_age.png',
                 'group_Chimap.png'):
        assert (group / 'figures' / name).stat().st_size > 1000
    report = (group / 'report.html').read_text()
    assert 'figures/atlas-Phantom_age.png' in report
    mean_map = nb.load(group / 'tpl-QSMPhantom_desc-mean_Chimap.nii.gz')
    assert mean_map.shape == (72, 88, 72)


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_outputs_pass_bids_validator(atlas_run):
    assert validator_errors(run_validator(atlas_run['out'])) == []


def _statistic_errors(run, sub, erode):
    """Each deep nucleus's table statistics minus the truth, both referenced to the brain
    mean: ``{stat: [error vs the voxel truth]}`` and ``{stat: [error vs the tissue χ]}``.
    The voxel truth is the simulated χ (partial volume included) averaged over the true
    label; the tissue truth is the nucleus's own χ (:func:`tissue_chi_ppm`), what a study
    wants to read."""
    from qsmflow.cli.demo import _read_lut, _truth
    from qsmflow.phantom.tissues import tissue_chi_ppm
    from qsmflow.qsm import regions

    anat = _anat(run, sub)
    chi = np.asarray(nb.load(anat / f'sub-{sub}_Chimap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / f'sub-{sub}_desc-brain_mask.nii.gz').dataobj) > 0
    dseg = anat / f'sub-{sub}_atlas-Phantom_dseg.nii.gz'
    labels = np.asarray(nb.load(dseg).dataobj).astype(int)
    lut = _read_lut(str(dseg).replace('.nii.gz', '.tsv'))
    rows = regions.region_table(chi, labels, mask, (2.0, 2.0, 2.0),
                                regions.regions_from_lut(lut), erode=erode)
    true_labels, true_chi, names = _truth(run['truth'], f'sub-{sub}')
    tissue = tissue_chi_ppm(next(p['age'] for p in PARTICIPANTS if p['participant_id'] == sub))
    voxel_err, tissue_err = {}, {}
    for row in rows:
        if row['region'] not in DEEP_GM or row['hemisphere'] == 'bilateral':
            continue
        name = f'{row["region"]}_{row["hemisphere"]}'
        brain = true_chi[mask].mean()
        voxel = true_chi[(true_labels == names[name]) & mask].mean() - brain
        for stat in ('mean', 'median', 'trimmed_mean'):
            voxel_err.setdefault(stat, []).append(row[stat] - voxel)
            tissue_err.setdefault(stat, []).append(row[stat] - (tissue[name] - brain))
        voxel_err.setdefault('boundary_share', []).append(row['boundary_share'])
    return voxel_err, tissue_err


def test_partial_volume_statistics_on_the_phantom(atlas_run):
    """Mean, median, 10 %-trimmed mean and --erode-rois against the truth, over the 16
    nuclei of both participants (registered atlas labels, 2 mm, SNR 100; README numbers).

    Against the nucleus's tissue χ every statistic reads low: partial volume with the
    white matter around (3 of 4 voxels of a nucleus touch another tissue at 2 mm). Erosion
    halves that bias (-0.019 → -0.010 ppm) at no cost in spread; the trimmed mean has the
    smallest error against the voxel truth (what the reconstruction is asked to return)."""
    from qsmflow.qsm import regions

    table = pd.read_csv(_anat(atlas_run, '01') / 'sub-01_atlas-Phantom_stats.tsv', sep='\t')
    anat = _anat(atlas_run, '01')
    chi = np.asarray(nb.load(anat / 'sub-01_Chimap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / 'sub-01_desc-brain_mask.nii.gz').dataobj) > 0
    # the labels the table reads: the χ-refined ones (the refinement is on by default)
    labels = np.asarray(nb.load(anat / 'sub-01_atlas-Phantom_desc-refined_dseg.nii.gz').dataobj)
    lut = pd.read_csv(anat / 'sub-01_atlas-Phantom_dseg.tsv', sep='\t')
    roi = (labels == lut.loc[lut['name'] == 'putamen_left', 'index'].item()) & mask
    row = table[(table['region'] == 'putamen') & (table['hemisphere'] == 'left')]
    assert row['trimmed_mean'].item() == pytest.approx(regions.trimmed_mean(chi[roi]), abs=2e-6)
    assert row['boundary_share'].item() == pytest.approx(regions.boundary_share(roi), abs=2e-6)
    summary = {}
    for erode in (False, True):
        voxel, tissue = {}, {}
        for sub in ('01', '02'):
            v, t = _statistic_errors(atlas_run, sub, erode)
            for k in v:
                voxel.setdefault(k, []).extend(v[k])
            for k in t:
                tissue.setdefault(k, []).extend(t[k])
        for stat in ('mean', 'median', 'trimmed_mean'):
            tv, vv = np.asarray(tissue[stat]), np.asarray(voxel[stat])
            summary[(stat, erode)] = {
                'tissue_bias': tv.mean(), 'tissue_sd': tv.std(ddof=1),
                'voxel_bias': vv.mean(), 'voxel_sd': vv.std(ddof=1),
                'voxel_mae': np.abs(vv).mean(), 'voxel_max': np.abs(vv).max()}
        summary[('boundary_share', erode)] = float(np.mean(voxel['boundary_share']))
        if not erode:  # per nucleus: how far the trimmed mean moves from the mean
            trim_shift = np.abs(np.subtract(voxel['trimmed_mean'], voxel['mean']))
    for key, value in summary.items():
        print(key, value if isinstance(value, float)
              else {k: round(float(x), 4) for k, x in value.items()})
    plain, eroded = summary[('mean', False)], summary[('mean', True)]
    assert -0.03 < plain['tissue_bias'] < -0.01  # measured -0.016 (-0.019 at TV floor 5e-4)
    assert abs(eroded['tissue_bias']) < 0.7 * abs(plain['tissue_bias'])  # measured -0.007
    assert eroded['tissue_sd'] < 1.2 * plain['tissue_sd']  # 0.0152 vs 0.0152
    # the trimmed mean: a lower worst case than the mean (0.0205 vs 0.0264 ppm; 0.0181 vs
    # 0.0212 on 2026-12-05 22:35 UTC, Xeon with AVX512-FP16) for a small cost on average
    # (mean abs. 0.0082 vs 0.0075; 0.0080 vs 0.0070). It must move off the mean where a
    # nucleus's values have outliers (|trimmed - mean| per nucleus: median 0.0025 ppm, up
    # to 0.0056, > 0.001 in 22 of 32 nuclei) and bring the worst case strictly down: the
    # plain mean in its place fails both, the median (worst 0.0223) the second and the next
    trimmed = summary[('trimmed_mean', False)]
    assert np.median(trim_shift) > 0.001
    assert trimmed['voxel_max'] < plain['voxel_max'] - 0.0015
    assert trimmed['voxel_mae'] <= plain['voxel_mae'] + 0.0015
    assert abs(plain['voxel_bias']) < 0.005  # the table's mean is unbiased for the voxels
    assert 0.6 < summary[('boundary_share', False)] < 0.9  # measured 0.77
