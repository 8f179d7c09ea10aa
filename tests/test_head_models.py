# SPDX-License-Identifier: Apache-2.0
"""The real-anatomy tables on a second kind of head (``thick-skull``: a skull 3 mm thicker,
a scalp and muscle darker than the brain; :data:`qsmflow.phantom.anatomy.HEAD_MODELS`),
another seed and one participant at 2 mm: the same defaults must find the brain (not the
scalp), tabulate every nucleus and stay near the level they reach on the template's own
head (tests/test_real_anatomy_tables.py). Held-out phantoms of the issue "Deep nuclei on
real anatomy" were built with such heads. The atlas template, the MNI T1w head, is given
without its brain mask (``--atlas-template`` alone): qsmflow derives the mask
(:mod:`qsmflow.atlases.template_masks`).
"""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.reports.qc_table import read_row
from tests.test_real_anatomy_tables import NUCLEI, measure, run_phantom

pytestmark = pytest.mark.slow

# Measured 2026-12-06 (2 mm, seed 3, one participant, defaults; 94 s with the dataset):
# brain mask 1995 mL against a 1783 mL brain (its 3 mm CSF rim included), 0.02 mL of brain
# missed, 15.6 mL of scalp or muscle and 3.8 mL of bone inside; the table's labels: mean
# Dice 0.866, least 0.57 (substantia nigra pars compacta R, 0.1-0.3 mL at 2 mm), mean
# |error| 0.0076 ppm, largest 22 % (the same SNc). The template's own head at 2 mm (seed 0,
# tests/test_real_anatomy_tables.py): 0.897 / 0.896, least 0.74 / 0.65, 0.0087 / 0.0034.
# At 1 mm (seed 0, two participants, README): 0.924 / 0.927, least 0.83 / 0.85, 0.0067 /
# 0.0074 ppm, largest 15 % / 12 %. Since 2026-12-06 the atlas template goes without its
# mask (qsmflow derives one): mean Dice 0.861, least 0.57, mean |error| 0.0073 ppm, largest
# 22 % (with the phantom's mask: 0.866, 0.57, 0.0076, 22 %; with none before the derived
# mask, at 2 mm seed 0: mean Dice 0.03). Held with a margin:
MAX_SOFT_ML = 60.0          # measured 15.6
MAX_BONE_ML = 20.0          # measured 3.8
MEAN_DICE = 0.82            # measured 0.866
LEAST_DICE = 0.45           # measured 0.57
MEAN_ABS_ERROR_PPM = 0.012  # measured 0.0076


@pytest.fixture(scope='module')
def thick(tmp_path_factory):
    # the atlas template (the MNI T1w head) without its brain mask: qsmflow derives one
    out = run_phantom(tmp_path_factory.mktemp('thick-skull'), n_subjects=1, seed=3,
                      head_model='thick-skull', template_mask=False)
    assert out['code'] == 0
    return out


def test_brain_mask_holds_the_brain_not_the_head(thick):
    for sub in thick['subjects']:
        anat, tanat = thick['out'] / sub / 'anat', thick['truth'] / sub / 'anat'
        mask = np.asarray(nb.load(anat / f'{sub}_desc-brain_mask.nii.gz').dataobj) > 0
        brain = np.asarray(nb.load(tanat / f'{sub}_desc-brain_mask.nii.gz').dataobj) > 0
        tissue_img = nb.load(tanat / f'{sub}_desc-tissue_dseg.nii.gz')
        tissue = np.asarray(tissue_img.dataobj)
        ml = float(np.prod(tissue_img.header.get_zooms()[:3])) / 1000  # mL per voxel
        print(sub, 'mask', mask.sum() * ml, 'brain', brain.sum() * ml, 'missed',
              (brain & ~mask).sum() * ml, 'scalp/muscle', (mask & (tissue == 6)).sum() * ml,
              'bone', (mask & (tissue == 7)).sum() * ml)
        assert (brain & ~mask).sum() < 0.01 * brain.sum()
        assert (mask & (tissue == 6)).sum() * ml < MAX_SOFT_ML
        assert (mask & (tissue == 7)).sum() * ml < MAX_BONE_ML


def test_every_nucleus_tabulated_near_the_truth(thick):
    for sub in thick['subjects']:
        res = measure(thick['out'], thick['truth'], sub)
        assert len(res) == 2 * len(NUCLEI)
        dice = [v[0] for v in res.values()]
        errors = [v[1] for v in res.values()]
        for (region, side), (d, e, t) in res.items():
            print(f'{sub} {region:34s} {side:5s} Dice {d:.2f} error {e:+.4f} ppm '
                  f'({100 * e / t:+.0f} %)')
        print(sub, 'mean Dice', np.mean(dice), 'least', min(dice), 'mean |error|',
              np.mean(np.abs(errors)), 'largest', max(abs(e / t) for _, e, t in res.values()))
        assert np.mean(dice) >= MEAN_DICE and min(dice) >= LEAST_DICE
        assert np.mean(np.abs(errors)) <= MEAN_ABS_ERROR_PPM
        meta = json.loads(next((thick['out'] / sub / 'anat').glob(
            f'{sub}*_atlas-custom_stats.json')).read_text())
        assert meta['LabelRefinement']['Applied'] is True
        # registered inside the brain mask qsmflow derived from the template head
        assert 'derived by qsmflow' in meta['Atlas']['TemplateMask']
        volumes = meta['QC']['LabelVolumes']
        assert volumes['Warning'] is None and 0.8 < volumes['LabelVolumeRatioMedian'] < 1.25
        qc = read_row(thick['out'] / sub / 'anat' / f'{sub}_desc-qc_metrics.tsv')
        assert 0.8 < qc['atlas_custom_volume_ratio_scaled'] < 1.25
        assert qc['atlas_custom_volume_warning'] == 0
