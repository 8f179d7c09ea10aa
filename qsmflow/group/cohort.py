# SPDX-License-Identifier: Apache-2.0
"""Cohort tables: every participant's ``_stats.tsv`` plus ``participants.tsv``.

The long table has one row per participant, session, acquisition, run, atlas, region and
hemisphere with the statistics (χ in ppm; mean R2* in 1/s and mean χ⁺, χ⁻ in ppm where a
participant table has them) and the covariates of ``participants.tsv``; the wide table has
one row per participant-run and one column per atlas, region, hemisphere and statistic.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from qsmflow.qsm.regions import COLUMNS, MAP_COLUMNS

#: Identifier columns of a participant-run, in order.
KEYS = ('participant_id', 'session', 'acquisition', 'run')

_ENTITY = {'ses': 'session', 'acq': 'acquisition', 'run': 'run', 'atlas': 'atlas'}


def parse_name(name: str) -> dict:
    """Entities of a ``_stats.tsv`` file name.

    Examples
    --------
    >>> parse_name('sub-01_ses-a_run-2_atlas-MASSP20_stats.tsv')
    {'participant_id': 'sub-01', 'session': 'a', 'acquisition': '', 'run': '2', \
'atlas': 'MASSP20'}
    """
    out = {'participant_id': '', 'session': '', 'acquisition': '', 'run': '', 'atlas': ''}
    for part in Path(name).name.split('_'):
        key, _, value = part.partition('-')
        if key == 'sub':
            out['participant_id'] = f'sub-{value}'
        elif key in _ENTITY and value:
            out[_ENTITY[key]] = value
    return out


def find_tables(out_dir) -> list[Path]:
    """Every participant's regional table under a qsmflow derivatives folder."""
    root = Path(out_dir)
    return sorted(p for p in root.glob('sub-*/**/*_stats.tsv') if p.is_file())


def read_participants(bids_dir) -> pd.DataFrame:
    """``participants.tsv`` of the raw dataset (``n/a`` → missing; age as float)."""
    path = Path(bids_dir) / 'participants.tsv'
    if not path.exists():
        return pd.DataFrame({'participant_id': []})
    table = pd.read_csv(path, sep='\t', dtype=str, na_values=['n/a', 'N/A', ''],
                        keep_default_na=False)
    table['participant_id'] = [p if str(p).startswith('sub-') else f'sub-{p}'
                               for p in table['participant_id']]
    if 'age' in table:
        table['age'] = pd.to_numeric(table['age'], errors='coerce')
    return table


def long_table(tables: list[Path], participants: pd.DataFrame) -> pd.DataFrame:
    """Stack participant tables into the long cohort table with covariates.

    Parameters
    ----------
    tables : list of Path
        ``_stats.tsv`` files (see :func:`find_tables`).
    participants : DataFrame
        ``participants.tsv`` content (:func:`read_participants`).

    Returns
    -------
    DataFrame
        Columns :data:`KEYS`, ``atlas``, the table columns, the map columns
        (:data:`qsmflow.qsm.regions.MAP_COLUMNS`) that at least one table has (empty for
        the runs whose table lacks them: single echo, χ-separation off, older qsmflow) and
        the covariates.
    """
    frames = []
    for path in tables:
        frame = pd.read_csv(path, sep='\t', na_values=['n/a'], keep_default_na=False)
        for key, value in parse_name(path.name).items():
            frame.insert(0, key, value)
        frames.append(frame)
    present = {c for frame in frames for c in frame.columns}
    cols = [*KEYS, 'atlas', *COLUMNS, *(c for c in MAP_COLUMNS if c in present)]
    # reindex: tables of earlier qsmflow versions lack the newer columns, and tables of
    # runs without R2* or χ-separation the map columns (left empty)
    data = (pd.concat(frames, ignore_index=True).reindex(columns=cols) if frames
            else pd.DataFrame(columns=cols))
    if len(participants.columns) > 1:
        data = data.merge(participants, on='participant_id', how='left')
    if 'age' not in data:
        data['age'] = np.nan
    return data


def wide_table(long: pd.DataFrame,
               values=('mean', 'z', 'percentile', *MAP_COLUMNS)) -> pd.DataFrame:
    """One row per participant-run; columns ``<atlas>_<region>_<hemisphere>_<value>``.

    Covariates of the long table (age, sex...) are kept as leading columns; ``values``
    the long table lacks (map columns of a cohort without those maps) are skipped.
    """
    values = [v for v in values if v in long]
    covars = [c for c in long.columns
              if c not in (*KEYS, 'atlas', *COLUMNS, *MAP_COLUMNS, 'expected', 'z',
                           'percentile', 'z_note')]
    long = long.assign(_col=long['atlas'] + '_' + long['region'] + '_' + long['hemisphere'])
    pieces = []
    for value in values:
        piece = long.pivot_table(index=list(KEYS), columns='_col', values=value,
                                 aggfunc='first', dropna=False)
        piece.columns = [f'{c}_{value}' for c in piece.columns]
        pieces.append(piece)
    wide = pd.concat(pieces, axis=1).reset_index() if pieces else long[list(KEYS)]
    first = long.drop_duplicates(list(KEYS))[list(KEYS) + covars]
    wide = first.merge(wide, on=list(KEYS), how='left')
    return wide[list(KEYS) + covars + sorted(c for c in wide.columns
                                              if c not in (*KEYS, *covars))]


def label_of(participant_id: str) -> str:
    """Participant label without ``sub-``.

    >>> label_of('sub-01')
    '01'
    """
    return re.sub(r'^sub-', '', participant_id)
