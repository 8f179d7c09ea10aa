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

# Measured on 2026-12-04 18:25 (2 mm, seed 0, 2 participants; the default chain of that
# day: brain extraction (2.23 / 2.62 L against the true 1.91 / 2.22 L; Dice 0.92 with the
# true mask), PDF, TV with the data-chosen weight (it chose the floor, 5e-4), whole-brain
# mean reference). Dice / table mean minus truth (ppm) / error in % of the true value:
#
#   nucleus                 side   sub-01                    sub-02
#   putamen                 L      0.97  -0.0107  -19 %      0.92  -0.0081  -17 %
#                           R      0.94  -0.0090  -18 %      0.90  -0.0104  -20 %
#   caudate                 L      0.95  -0.0069  -15 %      0.90  -0.0080  -15 %
#                           R      0.89  -0.0063  -11 %      0.90  -0.0079  -16 %
#   globus pallidus ext.    L      0.85  -0.0141  -12 %      0.89  -0.0130  -11 %
#                           R      0.91  -0.0141  -11 %      0.78  -0.0219  -16 %
#   globus pallidus int.    L      0.91  -0.0192  -14 %      0.94  -0.0068   -6 %
#                           R      0.80  -0.0002   +0 %      0.79  -0.0161  -14 %
#   substantia nigra (pc)   L      0.88  -0.0090   -9 %      0.63  -0.0200  -19 %
#                           R      0.89  -0.0064   -6 %      0.82  -0.0071   -7 %
#   red nucleus             L      0.97  -0.0078   -9 %      0.80  -0.0199  -20 %
#                           R      0.93  -0.0078   -9 %      0.93  -0.0025   -3 %
#   substantia nigra (pr)   L      0.77  -0.0230  -22 %      0.75  -0.0083   -9 %
#                           R      0.87  -0.0141  -14 %      0.81  -0.0140  -14 %
#   subthalamic nucleus     L      1.00  -0.0207  -23 %      0.69  -0.0064   -9 %
#                           R      0.92  -0.0117  -15 %      0.67  -0.0052   -7 %
#   dentate (approx.)       L      0.92  -0.0102  -13 %      0.74  -0.0214  -28 %
#                           R      0.90  -0.0072  -10 %      0.69  -0.0210  -30 %
#   mean |error|                   0.0110 ppm                0.0121 ppm
#   least Dice                     0.77 (SNr L)              0.63 (SNc L)
#   largest error                  23 % (STN L)              30 % (dentate R)
#
# Registration is not the main gap: the nuclei are found (Dice 0.63-1.00; this phantom's
# anatomy is the template's own, deformed); the least Dice are the 0.1-0.3 mL midbrain
# nuclei at 2 mm. Every nucleus comes out 0-30 % low (median 14 %; table against truth over
# the 36 values: slope 0.93, offset -0.005 ppm, i.e. contrast loss plus an offset), also
# with the true brain masks (``--brain-masks``: mean |error| 0.0103 / 0.0100 ppm, largest
# 24 % / 27 %). An earlier run that day with the threshold mask (3.0 / 3.7 L, scalp
# included) gave mean |error| 0.0149 / 0.0124 ppm, the midbrain nuclei 20-40 % low.

#: Today's level with a margin (the measurements above).
LEAST_DICE = 0.5                 # measured 0.63
LEAST_DICE_LARGE = 0.70          # putamen, caudate, GPe, GPi: measured 0.78
MEAN_ABS_ERROR_PPM = 0.02        # measured 0.0110 / 0.0121 (0.0149 with the threshold mask)
MAX_ABS_ERROR_PPM = 0.045        # measured 0.0230 (0.0413 with the threshold mask)
MAX_ABS_ERROR_LARGE_PPM = 0.03   # putamen, caudate, GPe, GPi: measured 0.0219
LARGE = ('putamen', 'caudate', 'globus_pallidus_externa', 'globus_pallidus_interna')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    from qsmflow.cli import main
    from qsmflow.phantom.anatomy_bids import write_anatomy_dataset

    root = tmp_path_factory.mktemp('real-anatomy')
    data = write_anatomy_dataset(
        root / 'rawdata', root / 'truth', template_t1w=TEMPLATE,
        cit168_dseg=CIT168 / 'atlas-CIT168_desc-th50_dseg.nii.gz',
        cit168_tsv=CIT168 / 'atlas-CIT168_dseg.tsv', n_subjects=2, voxel_size_mm=2.0,
        seed=0, snr=100.0)
    atlas = data['atlas']
    tf_home = root / 'templateflow'
    shutil.copytree(TEMPLATEFLOW_HOME, tf_home)
    saved = {k: os.environ.get(k) for k in ('TEMPLATEFLOW_HOME', 'TEMPLATEFLOW_AUTOUPDATE')}
    os.environ.update(TEMPLATEFLOW_HOME=str(tf_home), TEMPLATEFLOW_AUTOUPDATE='0')
    try:
        code = main([str(root / 'rawdata'), str(root / 'out'), 'participant', '--nprocs', '1',
                     '-w', str(root / 'work'), '--skip-bids-validation',
                     '--atlas', str(atlas['atlas']), '--atlas-labels', str(atlas['labels']),
                     '--atlas-template', str(atlas['template']),
                     '--atlas-template-mask', str(atlas['template_mask'])])
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
    est = np.asarray(nb.load(next(anat.glob(f'{sub}*_atlas-custom_dseg.nii.gz'))).dataobj)
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
        assert min(dice[k] for k in dice if k[0] in LARGE) >= LEAST_DICE_LARGE, (sub, dice)
        assert np.mean(np.abs(list(errors.values()))) <= MEAN_ABS_ERROR_PPM, (sub, errors)
        assert max(np.abs(list(errors.values()))) <= MAX_ABS_ERROR_PPM, (sub, errors)
        assert max(abs(errors[k]) for k in errors if k[0] in LARGE) <= MAX_ABS_ERROR_LARGE_PPM


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
