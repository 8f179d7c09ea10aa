# SPDX-License-Identifier: Apache-2.0
"""Figures and the HTML page of a comparison (``OUT_DIR/compare/``)."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from qsmflow.bids.atomic import replace_into, write_text


def figure_name(atlas: str, region: str) -> str:
    """File name of a region's figure.

    >>> figure_name('segmentations', 'globus pallidus')
    'atlas-segmentations_region-globuspallidus.png'
    """
    clean = lambda s: re.sub(r'[^0-9A-Za-z]', '', s)  # noqa: E731
    return f'atlas-{clean(atlas)}_region-{clean(region)}.png'


def plot_regions(table: pd.DataFrame, folder: Path) -> list[Path]:
    """One small PNG per atlas region: its mean χ (ppm) per pipeline (x) for every
    acquisition (one line each); the bilateral row where the region has one."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    pipelines = list(dict.fromkeys(table['pipeline']))
    written = []
    for (atlas, region), group in table.groupby(['atlas', 'region'], sort=False):
        hemis = list(dict.fromkeys(group['hemisphere']))
        hemi = 'bilateral' if 'bilateral' in hemis else hemis[0]
        data = group[group['hemisphere'] == hemi]
        fig, ax = plt.subplots(figsize=(max(3.2, 0.45 * len(pipelines) + 1.6), 2.6), dpi=80)
        for acq, rows in data.groupby('acquisition', sort=False):
            y = rows.set_index('pipeline')['mean'].reindex(pipelines)
            ax.plot(range(len(pipelines)), y.to_numpy(), 'o-', ms=3, lw=0.8, label=acq)
        if data['acquisition'].nunique() <= 8:
            ax.legend(fontsize=6, frameon=False)
        ax.set_xticks(range(len(pipelines)), [str(i + 1) for i in range(len(pipelines))])
        ax.set_xlabel('pipeline')
        ax.set_ylabel('mean χ (ppm)')
        ax.set_title(f'{region} ({hemi})', fontsize=9)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        path = folder / figure_name(atlas, region)
        replace_into(path, lambda tmp: fig.savefig(tmp, format='png'))
        plt.close(fig)
        written.append(path)
    return written


def _html_table(frame: pd.DataFrame, floats: str = '{:.4f}') -> str:
    return frame.to_html(index=False, na_rep='n/a', border=0, classes='t',
                         float_format=lambda v: floats.format(v))


def write_page(path: Path, *, pipelines: dict, table: pd.DataFrame, spread: pd.DataFrame,
               icc: pd.DataFrame, figures: list[Path], provenance: dict) -> Path:
    """The HTML page: the pipelines (numbered as in the figures), the spread per region
    (largest first), the pairwise ICCs, the figures and links to the tables."""
    from qsmflow.compare.pipelines import describe_steps
    from qsmflow.config.presets import STEPS

    rows = pd.DataFrame([{'#': i + 1, 'pipeline': name,
                          **{s: describe_steps(steps)[s] for s in STEPS}}
                         for i, (name, steps) in enumerate(pipelines.items())])
    times = (table.drop_duplicates(['acquisition', 'pipeline'])
             .groupby('pipeline', sort=False)['run_time_s'].mean().rename('mean run time (s)'))
    rows = rows.merge(times, left_on='pipeline', right_index=True, how='left')
    spread_sorted = spread.sort_values('sd_mean', ascending=False)
    figs = '\n'.join(f'<img src="figures/{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                     for p in figures)
    esc = html.escape
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qsmflow compare</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:75em}}
table.t{{border-collapse:collapse;font-size:0.85em}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}}
img{{margin:4px;border:1px solid #eee}}</style></head><body>
<h1>Pipeline comparison</h1>
<p>{len(pipelines)} pipelines × {table['acquisition'].nunique()} acquisition(s)
({', '.join(esc(a) for a in dict.fromkeys(table['acquisition']))}); qsmflow
{esc(provenance['QSMFlowVersion'])}, pydra {esc(provenance['PydraVersion'])}, engine
{esc(provenance['Engine'])}. Tables: <a href="table.tsv">table.tsv</a> (tidy, every run),
<a href="spread.tsv">spread.tsv</a>, <a href="icc.tsv">icc.tsv</a>; provenance in their
JSON sidecars.</p>
<h2>Pipelines</h2>
{_html_table(rows, '{:.2f}')}
<h2>Between-pipeline spread of the regional mean χ (ppm), largest first</h2>
<p>Per acquisition the SD and range of the mean over the pipelines, then averaged
(<code>sd_mean</code>, <code>range_mean</code>) and the worst (<code>_max</code>) over the
acquisitions.</p>
{_html_table(spread_sorted)}
<h2>Agreement between pipelines: ICC(A,1) across acquisitions</h2>
<p>Absolute agreement of the regional mean χ between two pipelines over the acquisitions
(needs at least two; n/a otherwise); <code>mean_difference</code> is b − a in ppm.</p>
{_html_table(icc, '{:.4f}')}
<h2>Regional mean χ per pipeline (x: pipeline number above; one line per acquisition)</h2>
{figs}
</body></html>
"""
    return write_text(path, text)
