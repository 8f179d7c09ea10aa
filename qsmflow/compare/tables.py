# SPDX-License-Identifier: Apache-2.0
"""Tables of a comparison: the tidy table of every run and the between-pipeline spread.

The tidy table has one row per acquisition × pipeline × label set × region × hemisphere:
``participant``, ``session``, ``acquisition``, ``pipeline``, each step's method and
options (``<step>``, ``<step>_params``), ``atlas``, ``region``, ``hemisphere``, ``mean``,
``median`` (χ in ppm, the participant level's table values), ``n_voxels`` and
``run_time_s`` (seconds of computation of the run's steps, whether this run or an earlier
one, or another pipeline sharing the step, computed them).

The spread per region (:func:`spread`) and the agreement between pipeline pairs
(:func:`pairwise_icc`) summarise how much the regional means move with the pipeline.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from qsmflow.compare.pipelines import describe_steps
from qsmflow.config.presets import STEPS

#: The statistics of the participant level's tables kept per row.
VALUE_COLUMNS = ('mean', 'median', 'n_voxels')
KEYS = ('atlas', 'region', 'hemisphere')


def tidy_table(runs: list[dict], pipelines: dict, acquisitions: dict) -> pd.DataFrame:
    """The tidy table of the finished runs (:func:`qsmflow.compare.engine.run_workflow`).

    ``pipelines``: ``{name: steps}``; ``acquisitions``: ``{acq_name: entities}``.
    """
    frames = []
    for run in runs:
        ents = acquisitions[run['acq_name']]
        seconds = sum(v for k, v in run.items() if k.endswith('_seconds'))
        head = {'participant': ents['subject'], 'session': ents.get('session') or 'n/a',
                'acquisition': run['acq_name'], 'pipeline': run['pipeline'],
                **describe_steps(pipelines[run['pipeline']])}
        for table in run['tables']:
            rows = pd.read_csv(table['tsv'], sep='\t', na_values=['n/a'],
                               keep_default_na=False)
            part = rows.loc[:, ['region', 'hemisphere', *VALUE_COLUMNS]].copy()
            for key, value in reversed(list({**head, 'atlas': table['atlas']}.items())):
                part.insert(0, key, value)
            part['run_time_s'] = round(seconds, 3)
            frames.append(part)
    table = pd.concat(frames, ignore_index=True)
    order = ['participant', 'session', 'acquisition', 'pipeline',
             *itertools.chain.from_iterable((s, f'{s}_params') for s in STEPS), *KEYS,
             *VALUE_COLUMNS, 'run_time_s']
    return table[order]


def spread(table: pd.DataFrame) -> pd.DataFrame:
    """Between-pipeline spread of the regional mean χ, per region and hemisphere.

    For each acquisition the SD (ddof 1) and the range (max − min) of ``mean`` over the
    pipelines; then their average and maximum over the acquisitions (``sd_mean``,
    ``sd_max``, ``range_mean``, ``range_max``, ppm), and the pipelines whose mean,
    averaged over the acquisitions, is lowest and highest.

    >>> t = pd.DataFrame({'acquisition': ['a', 'a', 'b', 'b'], 'pipeline': ['p', 'q'] * 2,
    ...                   'atlas': 'x', 'region': 'r', 'hemisphere': 'bilateral',
    ...                   'mean': [0.01, 0.03, 0.02, 0.02]})
    >>> spread(t)[['sd_max', 'range_mean', 'pipeline_max']].round(4).values.tolist()
    [[0.0141, 0.01, 'q']]
    """
    out = []
    for key, group in table.groupby(list(KEYS), sort=False):
        wide = group.pivot_table(index='acquisition', columns='pipeline', values='mean',
                                 aggfunc='first', dropna=False)
        sd = wide.std(axis=1, ddof=1)
        rng = wide.max(axis=1) - wide.min(axis=1)
        means = wide.mean(axis=0)
        out.append({**dict(zip(KEYS, key)), 'n_acquisitions': int(wide.shape[0]),
                    'n_pipelines': int(wide.shape[1]),
                    'sd_mean': sd.mean(), 'sd_max': sd.max(),
                    'range_mean': rng.mean(), 'range_max': rng.max(),
                    'pipeline_min': means.idxmin() if means.notna().any() else 'n/a',
                    'pipeline_max': means.idxmax() if means.notna().any() else 'n/a'})
    return pd.DataFrame(out)


def icc_a1(values: np.ndarray) -> float:
    """ICC(A,1): two-way, absolute agreement, single measurement (McGraw & Wong,
    Psychol Methods 1996;1:30, case A,1; Shrout & Fleiss ICC(2,1)) of an
    ``(n subjects, k raters)`` array; NaN with fewer than 2 subjects or no variance.

    >>> round(icc_a1(np.array([[1.0, 1.1], [2.0, 2.1], [3.0, 2.9]])), 3)
    0.994
    >>> icc_a1(np.array([[1.0, 2.0]]))
    nan
    """
    y = np.asarray(values, dtype=float)
    n, k = y.shape
    if n < 2 or k < 2:
        return float('nan')
    grand = y.mean()
    rows, cols = y.mean(axis=1), y.mean(axis=0)
    msr = k * np.sum((rows - grand) ** 2) / (n - 1)
    msc = n * np.sum((cols - grand) ** 2) / (k - 1)
    mse = np.sum((y - rows[:, None] - cols[None, :] + grand) ** 2) / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denom) if denom > 0 else float('nan')


def pairwise_icc(table: pd.DataFrame) -> pd.DataFrame:
    """ICC(A,1) of the regional mean χ across acquisitions for every pipeline pair, per
    region and hemisphere, with the mean difference (second − first, ppm)."""
    out = []
    pipelines = list(dict.fromkeys(table['pipeline']))
    for key, group in table.groupby(list(KEYS), sort=False):
        wide = group.pivot_table(index='acquisition', columns='pipeline', values='mean',
                                 aggfunc='first', dropna=False)
        for first, second in itertools.combinations(pipelines, 2):
            if first not in wide or second not in wide:
                continue
            pair = wide[[first, second]].dropna().to_numpy()
            out.append({**dict(zip(KEYS, key)), 'pipeline_a': first, 'pipeline_b': second,
                        'n_acquisitions': int(pair.shape[0]), 'icc_a1': icc_a1(pair),
                        'mean_difference': float(np.mean(pair[:, 1] - pair[:, 0]))
                        if pair.size else float('nan')})
    return pd.DataFrame(out)
