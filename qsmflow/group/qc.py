# SPDX-License-Identifier: Apache-2.0
"""Group QC: every acquisition's QC metrics in one table with robust outlier flags, and a
page linking each participant's report (``OUT_DIR/group/qc_metrics.tsv``, ``qc.html``)."""
from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

#: Outliers lie more than this many scaled MADs from the cohort median.
N_MAD = 3.0
#: MAD → standard deviation of a normal distribution.
MAD_SCALE = 1.4826
#: Fewest finite values of a metric for a robust flag.
MIN_N = 3
#: Columns flagged on their own value, whatever the cohort: ``column: (test, reason)``.
ABSOLUTE_FLAGS = {
    'mask_looks_like_head': (lambda v: v >= 1, 'brain mask looks like a head'),
    'n_warnings': (lambda v: v > 0, 'QC warnings in the chi sidecar'),
    'phase_polarity_inverted': (lambda v: v >= 1, 'phase polarity looks inverted (pre-flight)'),
}
#: Columns never flagged themselves (another column carries their verdict).
UNFLAGGED = ('phase_polarity_score',)
_ENTITIES = ('sub', 'ses', 'acq', 'run')


def find_qc_tables(out_dir) -> list[Path]:
    """Every acquisition's ``…_desc-qc_metrics.tsv`` under a qsmflow derivatives folder."""
    return sorted(p for p in Path(out_dir).glob('sub-*/**/anat/*_desc-qc_metrics.tsv'))


def collect(paths) -> pd.DataFrame:
    """One row per acquisition: its entities, then its metrics (NaN where absent)."""
    from qsmflow.reports.qc_table import read_row

    rows = []
    for path in paths:
        ents = dict(re.findall(r'(sub|ses|acq|run)-([0-9A-Za-z]+)', path.name))
        rows.append({'participant_id': f'sub-{ents["sub"]}', 'session': ents.get('ses', ''),
                     'acquisition': ents.get('acq', ''), 'run': ents.get('run', ''),
                     **read_row(path)})
    return pd.DataFrame(rows)


def robust_flags(values: np.ndarray, n_mad: float = N_MAD) -> np.ndarray:
    """Values more than ``n_mad`` scaled MADs from the median (False where NaN, and for
    every value when fewer than :data:`MIN_N` are finite). With MAD 0 (most values equal)
    every value that differs from the median is flagged.

    >>> robust_flags(np.array([1.0, 1.1, 0.9, 1.05, 5.0])).tolist()
    [False, False, False, False, True]
    >>> robust_flags(np.array([0.0, 0.0, 1.0])).tolist()
    [False, False, True]
    >>> robust_flags(np.array([1.0, 9.0])).tolist()
    [False, False]
    """
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    if finite.sum() < MIN_N:
        return np.zeros(values.shape, bool)
    med = np.median(values[finite])
    mad = MAD_SCALE * np.median(np.abs(values[finite] - med))
    tol = n_mad * mad if mad > 0 else 1e-9 * max(1.0, abs(med))
    return finite & (np.abs(values - med) > tol)


def flag_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``n_flags`` and ``flags`` (``metric: why; …``) columns."""
    metrics = [c for c in table.columns if c not in ('participant_id', 'session',
                                                     'acquisition', 'run', *UNFLAGGED)]
    reasons = [[] for _ in range(len(table))]
    for col in metrics:
        values = table[col].to_numpy(dtype=float)
        if col in ABSOLUTE_FLAGS:
            test, why = ABSOLUTE_FLAGS[col]
            hits = np.array([math.isfinite(v) and bool(test(v)) for v in values])
        else:
            hits = robust_flags(values)
            finite = values[np.isfinite(values)]
            med = float(np.median(finite)) if finite.size else math.nan
            why = f'outside median {med:.4g} ± {N_MAD:g} MAD'
        for i in np.flatnonzero(hits):
            reasons[i].append(f'{col} {values[i]:.4g}: {why}')
    out = table.copy()
    out['n_flags'] = [len(r) for r in reasons]
    out['flags'] = ['; '.join(r) for r in reasons]
    return out


def sidecar() -> dict:
    from qsmflow import __version__
    from qsmflow.reports.qc_table import COLUMNS

    return {'Description': 'QC metrics of every acquisition (one row each, columns as in '
                           'each participant\'s _desc-qc_metrics.json) with outlier flags.',
            'n_flags': {'Description': 'Number of flagged metrics of the row'},
            'flags': {'Description': f'Flagged metrics: more than {N_MAD:g} MADs (scaled by '
                                     f'{MAD_SCALE} to a normal SD) from the cohort median, '
                                     f'computed when at least {MIN_N} acquisitions have the '
                                     'metric; ' + '; '.join(
                                         f'{k}: {why}' for k, (_, why) in
                                         ABSOLUTE_FLAGS.items()) + ' (flagged on their own)'},
            **{k: {'Description': d, 'Units': u} for k, (d, u) in COLUMNS.items()},
            'GeneratedBy': {'Name': 'qsmflow', 'Version': __version__}}


def write_group_qc(out_dir, group_dir) -> list[Path]:
    """Write ``qc_metrics.tsv`` (+ ``.json``) and ``qc.html`` into ``group_dir``; return
    them (nothing when no acquisition has QC metrics)."""
    from qsmflow.bids.atomic import replace_into, write_json, write_text

    paths = find_qc_tables(out_dir)
    if not paths:
        return []
    table = flag_table(collect(paths))
    Path(group_dir).mkdir(parents=True, exist_ok=True)
    tsv = Path(group_dir) / 'qc_metrics.tsv'
    replace_into(tsv, lambda tmp: table.to_csv(tmp, sep='\t', index=False, na_rep='n/a',
                                               float_format='%.6g'))
    write_json(tsv.with_suffix('.json'), sidecar())
    page = Path(group_dir) / 'qc.html'
    write_text(page, _page(table, Path(out_dir), page))
    return [tsv, tsv.with_suffix('.json'), page]


def _page(table: pd.DataFrame, out_dir: Path, page: Path) -> str:
    metrics = [c for c in table.columns if c not in ('participant_id', 'session',
                                                     'acquisition', 'run', 'n_flags',
                                                     'flags')]
    head = ''.join(f'<th>{html.escape(c)}</th>' for c in
                   ['report', 'session', 'acq', 'run', 'flags', *metrics])
    body = []
    for _, row in table.iterrows():
        report = out_dir / f'{row["participant_id"]}.html'
        rel = os.path.relpath(report, page.parent)
        flagged = {f.split(' ', 1)[0] for f in row['flags'].split('; ') if f}
        cells = [f'<td><a href="{html.escape(rel)}">{html.escape(row["participant_id"])}</a>'
                 '</td>'] + [f'<td>{html.escape(str(row[c]))}</td>' for c in (
                     'session', 'acquisition', 'run')]
        cells.append(f'<td class="{"bad" if row["n_flags"] else ""}">'
                     f'{html.escape(row["flags"]) or "none"}</td>')
        for col in metrics:
            v = row[col]
            text = 'n/a' if not np.isfinite(v) else f'{v:.4g}'
            cells.append(f'<td class="{"bad" if col in flagged else ""}">{text}</td>')
        body.append('<tr>' + ''.join(cells) + '</tr>')
    n_bad = int((table['n_flags'] > 0).sum())
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>qsmflow group '
            'QC</title><style>body{font-family:sans-serif;margin:1em}table{border-collapse:'
            'collapse;font-size:11px}td,th{border:1px solid #ccc;padding:2px 4px}'
            '.bad{background:#fcc}</style></head><body><h1>qsmflow group QC</h1>'
            f'<p>{len(table)} acquisition(s), {n_bad} with flags. A metric is flagged more '
            f'than {N_MAD:g} MADs (scaled to a normal SD) from the cohort median (with at '
            f'least {MIN_N} acquisitions), or on its own value for: '
            + html.escape('; '.join(f'{k} ({why})' for k, (_, why) in ABSOLUTE_FLAGS.items()))
            + '. Columns are described in <a href="qc_metrics.json">qc_metrics.json</a>; '
            'each participant name links to its report.</p>'
            f'<table><tr>{head}</tr>{"".join(body)}</table></body></html>\n')
