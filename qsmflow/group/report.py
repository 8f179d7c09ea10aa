# SPDX-License-Identifier: Apache-2.0
"""The group summary page (HTML) that shows the cohort figures and notes."""
from __future__ import annotations

import html
import os
from pathlib import Path

from qsmflow.bids.atomic import write_text


def write_report(path, *, n_participants: int, atlases: list, figures: list, notes: list,
                 tables: list, models_table, qc_page=None) -> str:
    """Write ``path`` (HTML): cohort size, model summary, notes, every figure and a link to
    the group QC page (``qc_page``) with the participants' reports."""
    path = Path(path)
    rel = [os.path.relpath(f, path.parent) for f in figures]
    rows = ''.join(
        '<tr>' + ''.join(f'<td>{html.escape(_cell(v))}</td>' for v in row) + '</tr>'
        for row in models_table.itertuples(index=False))
    head = ''.join(f'<th>{html.escape(c)}</th>' for c in models_table.columns)
    body = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>qsmflow group report</title>',
        '<style>body{font-family:sans-serif;max-width:1100px;margin:auto}'
        'table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;'
        'padding:2px 6px}img{max-width:100%}</style></head><body>',
        '<h1>qsmflow group report</h1>',
        f'<p>{n_participants} participant(s); atlases/segmentations: '
        f'{html.escape(", ".join(atlases))}. Susceptibility in ppm, referenced as in each '
        'participant table. z-scores are age-adjusted with the model below.</p>',
        ('<p><b>Quality control</b>: <a href="' + html.escape(os.path.relpath(
            qc_page, path.parent)) + '">every acquisition\'s QC metrics with outlier flags '
         'and links to the participant reports</a>.</p>' if qc_page else ''),
        '<h2>Tables</h2><ul>' + ''.join(
            f'<li><a href="{html.escape(os.path.relpath(t, path.parent))}">'
            f'{html.escape(Path(t).name)}</a></li>' for t in tables) + '</ul>',
        '<h2>Notes</h2><ul>' + ''.join(f'<li>{html.escape(n)}</li>' for n in notes) + '</ul>',
        '<h2>Figures</h2>' + ''.join(f'<p><img src="{html.escape(r)}" alt="{html.escape(r)}">'
                                    '</p>' for r in rel),
        f'<h2>Age models</h2><table><tr>{head}</tr>{rows}</table>',
        '</body></html>',
    ]
    write_text(path, '\n'.join(body) + '\n')
    return str(path)


def _cell(value) -> str:
    if isinstance(value, float):
        return 'n/a' if value != value else f'{value:.4g}'
    return str(value)
