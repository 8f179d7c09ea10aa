# SPDX-License-Identifier: Apache-2.0
"""Cohort tables from participant tables with and without the map columns (R2*, χ⁺, χ⁻)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qsmflow.group import cohort
from qsmflow.group.run import _long_sidecar
from qsmflow.qsm.regions import COLUMNS, MAP_COLUMNS


def _table(path, maps: dict):
    """A two-row participant table; ``maps``: map column → (putamen, whole brain) values."""
    rows = []
    for i, region in enumerate(('putamen', 'whole_brain')):
        row = {c: 1.0 + i for c in COLUMNS}
        row.update(region=region, hemisphere='bilateral', mean=0.05 * (i + 1))
        row.update({k: v[i] for k, v in maps.items()})
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=[*COLUMNS, *maps]).to_csv(path, sep='\t', index=False)
    return path


def test_tables_with_and_without_the_maps_stack(tmp_path):
    """A multi-echo run (all three), a run without χ-separation (R2* only) and a single-echo
    run (none) stack: the map columns follow the χ columns, empty where a table lacks
    them; the wide table carries them and does not take them for covariates."""
    full = {'r2star_mean': (30.5, 20.0), 'chi_para_mean': (0.12, 0.03),
            'chi_dia_mean': (-0.04, -0.02)}
    tables = [_table(tmp_path / 'sub-01/anat/sub-01_atlas-X_stats.tsv', full),
              _table(tmp_path / 'sub-02/anat/sub-02_atlas-X_stats.tsv',
                     {'r2star_mean': (28.0, 19.0)}),
              _table(tmp_path / 'sub-03/anat/sub-03_atlas-X_stats.tsv', {})]
    participants = pd.DataFrame({'participant_id': ['sub-01', 'sub-02', 'sub-03'],
                                 'age': [30.0, 40.0, 50.0]})
    long = cohort.long_table(cohort.find_tables(tmp_path), participants)
    assert list(long.columns[:4 + 1 + len(COLUMNS) + 3]) == [
        *cohort.KEYS, 'atlas', *COLUMNS, *MAP_COLUMNS]
    put = long[long['region'] == 'putamen'].set_index('participant_id')
    assert put.loc['sub-01', list(MAP_COLUMNS)].tolist() == [30.5, 0.12, -0.04]
    assert put.loc['sub-02', 'r2star_mean'] == 28.0
    assert put.loc['sub-02', ['chi_para_mean', 'chi_dia_mean']].isna().all()
    assert put.loc['sub-03', list(MAP_COLUMNS)].isna().all()
    wide = cohort.wide_table(long).set_index('participant_id')
    assert wide.loc['sub-01', 'X_putamen_bilateral_r2star_mean'] == 30.5
    assert wide.loc['sub-01', 'X_whole_brain_bilateral_chi_dia_mean'] == -0.02
    assert np.isnan(wide.loc['sub-03', 'X_putamen_bilateral_chi_para_mean'])
    assert 'age' in wide and not set(MAP_COLUMNS) & set(wide.columns)
    meta = _long_sidecar([], long.columns)
    assert meta['r2star_mean']['Units'] == '1/s' and meta['chi_dia_mean']['Units'] == 'ppm'
    assert len(tables) == 3


@pytest.mark.parametrize('maps', [{}, {'r2star_mean': (25.0, 18.0)}])
def test_cohort_without_a_map_has_no_column_for_it(tmp_path, maps):
    _table(tmp_path / 'sub-01/anat/sub-01_atlas-X_stats.tsv', maps)
    long = cohort.long_table(cohort.find_tables(tmp_path), pd.DataFrame(
        {'participant_id': ['sub-01'], 'age': [30.0]}))
    assert [c for c in long.columns if c in MAP_COLUMNS] == list(maps)
    wide = cohort.wide_table(long)
    assert [c for c in wide.columns if c.endswith(MAP_COLUMNS)] == [
        f'X_{r}_bilateral_{k}' for k in maps for r in ('putamen', 'whole_brain')]
    assert set(_long_sidecar([], long.columns)) & set(MAP_COLUMNS) == set(maps)
