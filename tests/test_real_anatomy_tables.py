# SPDX-License-Identifier: Apache-2.0
"""Regional tables on real anatomy: qsmflow end to end on the MNI152NLin2009cAsym/CIT168
anatomy phantom (:mod:`qsmflow.phantom.anatomy`), against its known truth.

Two participants, each the template head moved by its own seeded smooth deformation
(rigid pose ±6°/±5 mm, scale ±4 %, a non-linear displacement of up to 3 mm), simulated at
2 mm (to keep the test short), 3 T, 5 echoes, SNR 100. qsmflow registers each to the
template with the custom atlas triple the phantom writes (CIT168 + an approximate
dentate; ``--atlas-template-mask``: the template brain mask) and tabulates χ. Measured per
nucleus and side: Dice of the native atlas labels against the true labels, and the table
mean minus the true mean (true χ over the true labels inside qsmflow's χ mask, minus the
true χ mean over that mask: the whole-brain reference the table uses, as
``qsmflow demo``'s ``table_errors``).

The issue "Deep nuclei on real anatomy" asks for Dice ≥ 0.80 for every nucleus, a table
mean absolute error ≤ 0.012 ppm and no nucleus more than 15 % off. Those targets are
``test_issue_targets`` (strict xfail: it flips when they are met); the other tests hold
today's level with a margin.
"""
from __future__ import annotations

import os
import shutil

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from tests.realdata import CIT168, TEMPLATEFLOW_HOME

pytestmark = pytest.mark.slow

TEMPLATE = (TEMPLATEFLOW_HOME / 'tpl-MNI152NLin2009cAsym'
            / 'tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz')

#: Nuclei evaluated: table region name -> (left, right) label indices of the truth.
NUCLEI = {
    'putamen': (1, 2), 'caudate': (3, 4), 'globus_pallidus_externa': (9, 10),
    'globus_pallidus_interna': (11, 12), 'substantia_nigra_pars_compacta': (13, 14),
    'red_nucleus': (15, 16), 'substantia_nigra_pars_reticulata': (17, 18),
    'subthalamic_nucleus': (31, 32), 'dentate': (33, 34),
}

# Measured on 2026-12-04 23:40 (2 mm, seed 0, 2 participants; the default chain of that
# day, with the χ-driven refinement of the atlas labels (--refine-nuclei, on by default):
# brain extraction, PDF, TV with the data-chosen weight (the floor, 5e-4), whole-brain mean
# reference). Dice of the table's labels (``_desc-refined_dseg``) / table mean minus truth
# (ppm) / error in % of the true value:
#
#   nucleus                 side   sub-01                    sub-02
#   putamen                 L      0.96  -0.0086  -16 %      0.95  -0.0060  -12 %
#                           R      0.95  -0.0061  -12 %      0.96  -0.0049   -9 %
#   caudate                 L      0.91  -0.0069  -14 %      0.90  -0.0054  -10 %
#                           R      0.89  -0.0069  -13 %      0.90  -0.0048  -10 %
#   globus pallidus ext.    L      0.87  -0.0108   -9 %      0.91  -0.0050   -4 %
#                           R      0.90  -0.0097   -7 %      0.96  -0.0049   -4 %
#   globus pallidus int.    L      0.99  -0.0056   -4 %      0.94  -0.0003   -0 %
#                           R      0.85  +0.0027   +2 %      0.94  -0.0039   -3 %
#   substantia nigra (pc)   L      0.81  -0.0106  -11 %      0.65  -0.0151  -15 %
#                           R      0.74  -0.0192  -18 %      0.84  -0.0029   -3 %
#   red nucleus             L      0.99  -0.0103  -12 %      0.97  -0.0085   -8 %
#                           R      0.92  -0.0090  -11 %      0.93  -0.0035   -4 %
#   substantia nigra (pr)   L      0.85  -0.0189  -18 %      0.81  -0.0044   -5 %
#                           R      0.81  -0.0075   -7 %      0.92  -0.0070   -7 %
#   subthalamic nucleus     L      0.92  -0.0173  -19 %      0.80  -0.0042   -6 %
#                           R      0.92  -0.0134  -17 %      0.95  -0.0065   -9 %
#   dentate (approx.)       L      0.94  -0.0070   -9 %      0.89  -0.0089  -12 %
#                           R      0.92  -0.0051   -7 %      0.92  -0.0058   -8 %
#   mean Dice                      0.897                     0.896
#   mean |error|                   0.0098 ppm                0.0057 ppm
#   least Dice                     0.74 (SNc R)              0.65 (SNc L)
#   largest error                  19 % (STN L)              15 % (SNc L)
#
# Without the refinement (``_atlas-custom_dseg``, the magnitude registration alone, the
# state before): mean Dice 0.904 / 0.809, least 0.77 / 0.63, mean |error| 0.0106 /
# 0.0101 ppm, largest 23 % / 24 %. The refinement moved sub-02's misplaced midbrain and
# cerebellar nuclei onto χ (STN 0.69 → 0.80 / 0.67 → 0.95, dentate 0.74 → 0.89 / 0.69 →
# 0.92) and halved its table error; sub-01, already well registered, kept its level.
# What is left is the reconstruction: on the true labels the table is off by 0.0106 /
# 0.0073 ppm (mostly an offset against the whole-brain mean: TV at λ = 5e-4 on this field;
# λ = 1.2e-4 would give 0.0035, but the in-vivo field needs the larger weight), and the
# 0.1-0.3 mL substantia nigra compacta at 2 mm (least Dice).

# TV's weight floor was lowered to 3e-4 on 2026-12-05 (session 12): re-run then, sub-01's
# mean |error| 0.0087 ppm (was 0.0098), least Dice 0.74 / 0.65 as before; the thresholds
# below hold. The 1 mm numbers are in the README.
# The magnitude registration's SyN total field smoothed at σ² 2 instead of 3 (step 0.1
# instead of 0.05; 2026-12-06, session 20, for larger deformations): mean Dice 0.889 / 0.889,
# least 0.69 / 0.63, mean |error| 0.0085 / 0.0035 ppm, largest 18 / 13 %.

#: Today's level with a margin (the measurements above).
LEAST_DICE = 0.55                # measured 0.69 / 0.63
MEAN_DICE = 0.85                 # measured 0.889 / 0.889 (0.895 / 0.891 without the refinement)
LEAST_DICE_LARGE = 0.75          # putamen, caudate, GPe, GPi: measured 0.86
MEAN_ABS_ERROR_PPM = 0.015       # measured 0.0085 / 0.0035
MAX_ABS_ERROR_PPM = 0.03         # measured 0.0191
MAX_ABS_ERROR_LARGE_PPM = 0.02   # putamen, caudate, GPe, GPi: measured 0.0101
LARGE = ('putamen', 'caudate', 'globus_pallidus_externa', 'globus_pallidus_interna')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    return run_phantom(tmp_path_factory.mktemp('real-anatomy'), n_subjects=2, seed=0)


def run_phantom(root, *, template_mask: bool = True, **dataset) -> dict:
    """Write a 2 mm real-anatomy dataset (``dataset``: keyword arguments of
    :func:`~qsmflow.phantom.anatomy_bids.write_anatomy_dataset`, SNR 100) under ``root`` and
    run the participant level on it with its atlas as a custom atlas (defaults otherwise;
    ``template_mask=False``: the atlas template, a T1w head, without its brain mask)."""
    from qsmflow.cli import main
    from qsmflow.phantom.anatomy_bids import write_anatomy_dataset

    data = write_anatomy_dataset(
        root / 'rawdata', root / 'truth', template_t1w=TEMPLATE,
        cit168_dseg=CIT168 / 'atlas-CIT168_desc-th50_dseg.nii.gz',
        cit168_tsv=CIT168 / 'atlas-CIT168_dseg.tsv', voxel_size_mm=2.0, snr=100.0,
        **dataset)
    atlas = data['atlas']
    tf_home = root / 'templateflow'
    shutil.copytree(TEMPLATEFLOW_HOME, tf_home)
    saved = {k: os.environ.get(k) for k in ('TEMPLATEFLOW_HOME', 'TEMPLATEFLOW_AUTOUPDATE')}
    os.environ.update(TEMPLATEFLOW_HOME=str(tf_home), TEMPLATEFLOW_AUTOUPDATE='0')
    try:
        code = main([str(root / 'rawdata'), str(root / 'out'), 'participant', '--nprocs', '1',
                     '-w', str(root / 'work'), '--skip-bids-validation',
                     '--atlas', str(atlas['atlas']), '--atlas-labels', str(atlas['labels']),
                     '--atlas-template', str(atlas['template'])]
                    + (['--atlas-template-mask', str(atlas['template_mask'])]
                       if template_mask else []))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {'code': code, 'out': root / 'out', 'truth': root / 'truth',
            'subjects': sorted(data['participants'])}


def measure(out_dir, truth_dir, sub) -> dict:
    """``{(region, side): (dice, error_ppm, true_ppm)}`` for one participant."""
    anat, tanat = out_dir / sub / 'anat', truth_dir / sub / 'anat'
    # the table's labels: refined on χ (--refine-nuclei, the default)
    est = np.asarray(nb.load(next(anat.glob(
        f'{sub}*_atlas-custom_desc-refined_dseg.nii.gz'))).dataobj)
    labels = np.asarray(nb.load(tanat / f'{sub}_desc-phantom_dseg.nii.gz').dataobj)
    chi = np.asarray(nb.load(tanat / f'{sub}_Chimap.nii.gz').dataobj, dtype=np.float64)
    mask = np.asarray(nb.load(anat / f'{sub}_desc-brain_mask.nii.gz').dataobj) > 0
    table = pd.read_csv(next(anat.glob(f'{sub}*_atlas-custom_stats.tsv')), sep='\t',
                        na_values=['n/a'])
    out = {}
    for region, pair in NUCLEI.items():
        for side, index in zip(('left', 'right'), pair):
            true, found = labels == index, est == index
            dice = 2 * (true & found).sum() / max(true.sum() + found.sum(), 1)
            truth = chi[true & mask].mean() - chi[mask].mean()
            row = table[(table['region'] == region) & (table['hemisphere'] == side)]
            out[region, side] = (float(dice), float(row['mean'].iloc[0]) - truth, truth)
    return out


@pytest.fixture(scope='module')
def results(run):
    assert run['code'] == 0
    return {sub: measure(run['out'], run['truth'], sub) for sub in run['subjects']}


def _report(results):
    for sub, res in results.items():
        for (region, side), (dice, err, truth) in res.items():
            print(f'{sub} {region:34s} {side:5s} Dice {dice:.2f} error {err:+.4f} ppm '
                  f'(truth {truth:+.4f}, {100 * err / truth:+.0f} %)')


def test_tables_today(results):
    _report(results)
    for sub, res in results.items():
        dice = {k: v[0] for k, v in res.items()}
        errors = {k: v[1] for k, v in res.items()}
        assert min(dice.values()) >= LEAST_DICE, (sub, dice)
        assert np.mean(list(dice.values())) >= MEAN_DICE, (sub, dice)
        assert min(dice[k] for k in dice if k[0] in LARGE) >= LEAST_DICE_LARGE, (sub, dice)
        assert np.mean(np.abs(list(errors.values()))) <= MEAN_ABS_ERROR_PPM, (sub, errors)
        assert max(np.abs(list(errors.values()))) <= MAX_ABS_ERROR_PPM, (sub, errors)
        assert max(abs(errors[k]) for k in errors if k[0] in LARGE) <= MAX_ABS_ERROR_LARGE_PPM


def test_refinement_recorded_and_better_than_the_magnitude_registration(run, results):
    """The table says its labels were refined; over both participants the refined labels
    overlap the truth better than the magnitude registration's where a T1w template shows
    the nuclei least, the pallidum and the dentate (measured 2026-12-06: mean Dice 0.925
    against 0.885), and about as well over all 18 (0.889 against 0.893). At 2 mm the
    midbrain's 2-voxel pars compacta loses by it (sub-01 / sub-02's left one 0.77 / 0.72 →
    0.69 / 0.63); at 1 mm the refinement is what takes it past 0.80 (README)."""
    import json

    plain_all, refined_all, plain_low, refined_low = [], [], [], []
    for sub in run['subjects']:
        anat, tanat = run['out'] / sub / 'anat', run['truth'] / sub / 'anat'
        meta = json.loads(next(anat.glob(f'{sub}*_atlas-custom_stats.json')).read_text())
        assert meta['LabelRefinement']['Applied'] is True
        rec = json.loads(next(anat.glob(
            f'{sub}*_atlas-custom_desc-refined_dseg.json')).read_text())['RegistrationRefinement']
        assert rec['CorrelationAfter'] > rec['CorrelationBefore']
        plain = np.asarray(nb.load(next(anat.glob(f'{sub}*_atlas-custom_dseg.nii.gz'))).dataobj)
        truth = np.asarray(nb.load(tanat / f'{sub}_desc-phantom_dseg.nii.gz').dataobj)
        for region, pair in NUCLEI.items():
            for side, index in zip(('left', 'right'), pair):
                a, b = plain == index, truth == index
                dice = 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)
                plain_all.append(dice)
                refined_all.append(results[sub][region, side][0])
                if region.startswith('globus_pallidus') or region == 'dentate':
                    plain_low.append(dice)
                    refined_low.append(results[sub][region, side][0])
    assert np.mean(refined_low) >= np.mean(plain_low) + 0.03, (refined_low, plain_low)
    assert np.mean(refined_all) >= np.mean(plain_all) - 0.02, (refined_all, plain_all)


def test_segment_nuclei_on_the_refined_labels(run, results):
    """``--segment-nuclei`` (off by default), applied to each participant's χ, brain mask
    and refined labels as its pipeline node does. Measured 2026-12-05 at 2 mm: mean Dice
    0.851 / 0.852 (refined 0.897 / 0.896), least 0.71 / 0.53, table mean |error| 0.0114 /
    0.0070 ppm (refined 0.0098 / 0.0057): no gain after the χ-driven refinement, which is
    why it is off (README). 2026-12-06 (the registration's SyN of session 20): 0.841 /
    0.853, least 0.65 / 0.51, 0.0117 / 0.0049 ppm (refined 0.889 / 0.889, 0.0085 /
    0.0035). Held with a margin, so that a change is measured (0.7 s)."""
    from qsmflow.atlases.chi_prior import prior_values
    from qsmflow.interfaces.regions import read_lut
    from qsmflow.qsm.nuclei_segmentation import segment_nuclei

    for sub in run['subjects']:
        anat, tanat = run['out'] / sub / 'anat', run['truth'] / sub / 'anat'
        img = nb.load(next(anat.glob(f'{sub}*_Chimap.nii.gz')))
        chi = np.asarray(img.dataobj, dtype=np.float64)
        refined = next(anat.glob(f'{sub}*_atlas-custom_desc-refined_dseg.nii.gz'))
        groups = prior_values(read_lut(str(refined).replace('.nii.gz', '.tsv')))
        mask = np.asarray(nb.load(anat / f'{sub}_desc-brain_mask.nii.gz').dataobj) > 0
        est, _ = segment_nuclei(chi, np.asarray(nb.load(refined).dataobj), mask,
                                img.header.get_zooms()[:3], nuclei=sorted(groups),
                                groups=groups)
        labels = np.asarray(nb.load(tanat / f'{sub}_desc-phantom_dseg.nii.gz').dataobj)
        dice, errors = [], []
        for (region, side), (_, _, truth) in results[sub].items():
            index = NUCLEI[region][side == 'right']
            true, found = labels == index, est == index
            dice.append(2 * (true & found).sum() / max(true.sum() + found.sum(), 1))
            errors.append(chi[found & mask].mean() - truth)
        print(sub, 'segmented: mean Dice', np.mean(dice), 'least', min(dice),
              'mean |error|', np.mean(np.abs(errors)))
        assert np.mean(dice) >= 0.80 and min(dice) >= 0.40, (sub, dice)
        assert np.mean(np.abs(errors)) <= 0.014, (sub, errors)


def test_contrast_order(results):
    """Iron-rich pallidum above putamen and caudate, every nucleus above the brain mean."""
    for sub, res in results.items():
        table = {k: v[1] + v[2] for k, v in res.items()}
        for side in ('left', 'right'):
            assert table['globus_pallidus_externa', side] > table['putamen', side] + 0.03
            assert table['globus_pallidus_interna', side] > table['caudate', side] + 0.03
        assert min(table.values()) > 0.02, sub


@pytest.mark.xfail(strict=True, reason='issue "Deep nuclei on real anatomy": Dice >= 0.80 for '
                   'every nucleus, mean |table error| <= 0.012 ppm, none > 15 % off; not met '
                   'at 2 mm yet (see the numbers measured above)')
def test_issue_targets(results):
    for sub, res in results.items():
        assert min(v[0] for v in res.values()) >= 0.80, sub
        assert np.mean([abs(v[1]) for v in res.values()]) <= 0.012, sub
        assert max(abs(v[1] / v[2]) for v in res.values()) <= 0.15, sub
