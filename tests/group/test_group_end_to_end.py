# SPDX-License-Identifier: Apache-2.0
"""Group level on a small phantom cohort of different ages (tiny grids, --segmentations),
one participant without age."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

AGES = (22, 35, 48, 60, 77, None)


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    import subprocess
    import sys

    from qsmflow.cli import main
    from qsmflow.phantom.bids import write_dataset

    root = tmp_path_factory.mktemp('cohort')
    rows = [{'participant_id': f'{i + 1:02d}', 'age': age if age is not None else 50,
             'sex': 'FM'[i % 2]} for i, age in enumerate(AGES)]
    write_dataset(root / 'rawdata', root / 'truth', rows, size='tiny')
    tsv = root / 'rawdata' / 'participants.tsv'
    lines = tsv.read_text().splitlines()
    lines[-1] = '\t'.join(['sub-06', 'n/a', *lines[-1].split('\t')[2:]])
    tsv.write_text('\n'.join(lines) + '\n')
    out = root / 'out'
    # A fresh interpreter: MultiProc forks, and this test process has OpenMP/numba threads.
    code = subprocess.run([
        sys.executable, '-m', 'qsmflow', str(root / 'rawdata'), str(out), 'participant',
        '--nprocs', '2', '-w', str(root / 'work'), '--skip-bids-validation', '--preset',
        'fast', '--skip-registration', '--segmentations', str(root / 'truth')],
        timeout=900).returncode
    group_code = main([str(root / 'rawdata'), str(out), 'group'])
    return {'out': out, 'code': code, 'group_code': group_code}


def test_group_tables_zscores_and_missing_age(cohort, capsys):
    assert cohort['code'] == 0 and cohort['group_code'] == 0
    group = cohort['out'] / 'group'
    long = pd.read_csv(group / 'cohort_long.tsv', sep='\t', na_values=['n/a'],
                       keep_default_na=False)
    assert long['participant_id'].nunique() == len(AGES)
    put = long[(long['region'] == 'putamen') & (long['hemisphere'] == 'bilateral')]
    with_age = put[put['participant_id'] != 'sub-06']
    assert np.isfinite(with_age['z']).all() and np.isfinite(with_age['percentile']).all()
    missing = put[put['participant_id'] == 'sub-06']
    assert missing['z'].isna().all() and missing['percentile'].isna().all()
    assert 'age missing' in missing['z_note'].item()
    # Iron rises with age in the phantom, and the linear fallback (5 ages) sees it.
    models = pd.read_csv(group / 'normative_models.tsv', sep='\t', na_values=['n/a'],
                         keep_default_na=False)
    row = models[(models['region'] == 'putamen') & (models['hemisphere'] == 'bilateral')]
    assert row['model'].item() == 'linear' and row['n'].item() == 5
    assert row['slope_ppm_per_year'].item() > 0
    wide = pd.read_csv(group / 'cohort_wide.tsv', sep='\t')
    assert len(wide) == len(AGES)
    assert 'segmentations_putamen_left_z' in wide
    report = (group / 'report.html').read_text()
    assert 'age missing for sub-06' in report
    for png in ('atlas-segmentations_distributions.png', 'atlas-segmentations_age.png'):
        assert (group / 'figures' / png).stat().st_size > 1000


def test_group_without_tables_fails_cleanly(tmp_path, capsys):
    from qsmflow.cli import main

    (tmp_path / 'raw').mkdir()
    assert main([str(tmp_path / 'raw'), str(tmp_path / 'out'), 'group']) == 2
    assert 'run the participant level first' in capsys.readouterr().err
