# SPDX-License-Identifier: Apache-2.0
"""Group QC: robust outlier flags, and a deliberately broken brain mask (the whole head,
given with --brain-masks) that shows in the participant's QC metrics and is flagged in the
group QC table."""
from __future__ import annotations

import math

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from qsmflow.group.qc import collect, find_qc_tables, flag_table, robust_flags
from qsmflow.reports.qc_table import read_row


def test_robust_flags_median_and_mad():
    values = np.array([780.0, 790.0, 785.0, 1600.0, np.nan])
    assert robust_flags(values).tolist() == [False, False, False, True, False]
    assert not robust_flags(np.array([1.0, 50.0])).any()  # too few values to judge


def test_flag_table_names_the_metric_and_absolute_flags():
    table = pd.DataFrame({'participant_id': ['sub-01', 'sub-02', 'sub-03'],
                          'session': '', 'acquisition': '', 'run': '',
                          'mask_volume_ml': [780.0, 790.0, 1600.0],
                          'mask_looks_like_head': [0.0, 1.0, 0.0],
                          'magnitude_snr': [math.nan, 40.0, 41.0]})
    flagged = flag_table(table)
    assert flagged['n_flags'].tolist() == [0, 1, 1]
    assert flagged.loc[1, 'flags'].startswith('mask_looks_like_head 1: brain mask looks like')
    assert flagged.loc[2, 'flags'].startswith('mask_volume_ml 1600: outside median 790')


def test_inverted_polarity_is_flagged_on_its_own_and_the_score_never():
    table = pd.DataFrame({'participant_id': ['sub-01', 'sub-02', 'sub-03'],
                          'session': '', 'acquisition': '', 'run': '',
                          'phase_polarity_score': [0.3, 0.31, -0.4],
                          'phase_polarity_inverted': [0.0, math.nan, 1.0]})
    flagged = flag_table(table)
    assert flagged['n_flags'].tolist() == [0, 0, 1]
    assert flagged.loc[2, 'flags'] == ('phase_polarity_inverted 1: phase polarity looks '
                                       'inverted (pre-flight)')


@pytest.fixture(scope='module')
def broken_mask_cohort(tmp_path_factory):
    """Three tiny participants, each with a given mask: the true brain for sub-01/02, the
    whole head (scalp, skull, face) for sub-03; participant and group level (fast preset,
    no registration, no SWI/chi-separation: the masks are what is tested)."""
    from qsmflow.cli import main
    from qsmflow.phantom.bids import write_dataset
    from qsmflow.qsm.brain_extraction import head_mask

    root = tmp_path_factory.mktemp('broken_mask')
    write_dataset(root / 'raw', root / 'truth', [
        {'participant_id': p, 'age': 30 + 10 * i, 'sex': 'F'}
        for i, p in enumerate(('01', '02', '03'))], size='tiny')
    for sub in ('01', '02', '03'):
        anat = root / 'masks' / f'sub-{sub}' / 'anat'
        anat.mkdir(parents=True)
        brain = nb.load(root / 'truth' / f'sub-{sub}' / 'anat' /
                        f'sub-{sub}_desc-brain_mask.nii.gz')
        mask = np.asarray(brain.dataobj) > 0
        if sub == '03':
            mag = nb.load(root / 'raw' / f'sub-{sub}' / 'anat' /
                          f'sub-{sub}_echo-1_part-mag_MEGRE.nii.gz')
            mask = head_mask(np.asarray(mag.dataobj, dtype=np.float32),
                             mag.header.get_zooms()[:3])
        nb.Nifti1Image(mask.astype(np.uint8), brain.affine).to_filename(
            anat / f'sub-{sub}_desc-brain_mask.nii.gz')
    out = root / 'out'
    code = main([str(root / 'raw'), str(out), 'participant', '--nprocs', '1',
                 '--skip-bids-validation', '--skip-registration', '--preset', 'fast',
                 '--no-swi', '--no-chi-separation', '--brain-masks', str(root / 'masks'),
                 '-w', str(root / 'work')])
    group = main([str(root / 'raw'), str(out), 'group'])
    return {'out': out, 'code': code, 'group': group}


@pytest.mark.slow
def test_broken_mask_shows_in_qc_metrics_and_is_flagged(broken_mask_cohort):
    out = broken_mask_cohort['out']
    assert broken_mask_cohort['code'] == 0 and broken_mask_cohort['group'] == 0
    rows = {p.name.split('_')[0]: read_row(p) for p in find_qc_tables(out)}
    assert sorted(rows) == ['sub-01', 'sub-02', 'sub-03']
    good, bad = rows['sub-01'], rows['sub-03']
    assert good['mask_looks_like_head'] == 0 and bad['mask_looks_like_head'] == 1
    assert bad['mask_volume_ml'] > 1.5 * good['mask_volume_ml']
    assert bad['mask_near_surface_share'] > 0.08 > good['mask_near_surface_share']
    table = pd.read_csv(out / 'group' / 'qc_metrics.tsv', sep='\t', na_values='n/a',
                        keep_default_na=False).set_index('participant_id')
    assert table.loc['sub-01', 'n_flags'] == 0 and table.loc['sub-02', 'n_flags'] == 0
    flags = table.loc['sub-03', 'flags']
    for metric in ('mask_looks_like_head', 'mask_volume_ml', 'mask_near_surface_share'):
        assert metric in flags, flags
    page = (out / 'group' / 'qc.html').read_text()
    for sub in ('01', '02', '03'):
        assert f'href="../sub-{sub}.html"' in page and (out / f'sub-{sub}.html').exists()
    assert 'class="bad"' in page
    assert collect(find_qc_tables(out)).shape[0] == 3
