# SPDX-License-Identifier: Apache-2.0
"""Group figures (PNG): per-region χ distributions and χ versus age with the age model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qsmflow.group import normative


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def informative(data):
    """``data`` without the regions whose mean χ is 0 for everyone (the whole-brain row
    under whole-brain referencing, the reference row: 0 by construction).

    >>> import pandas as pd
    >>> d = pd.DataFrame({'region': ['a', 'a', 'whole_brain', 'whole_brain'],
    ...                   'mean': [0.1, 0.2, 1e-12, -1e-12]})
    >>> sorted(set(informative(d)['region']))
    ['a']
    """
    zero = data.groupby('region')['mean'].transform(lambda v: bool((v.abs() < 1e-6).all()))
    return data[~zero.astype(bool)]


def plot_distributions(long, atlas: str, out_file) -> str:
    """Box and points of regional mean χ (ppm) per bilateral region of ``atlas`` (regions
    that are 0 by construction left out: :func:`informative`)."""
    plt = _pyplot()
    data = informative(long[(long['atlas'] == atlas) & (long['hemisphere'] == 'bilateral')])
    regions = list(dict.fromkeys(data['region']))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(regions) + 2), 4.0), dpi=100)
    values = [data.loc[data['region'] == r, 'mean'].dropna().to_numpy() for r in regions]
    ax.boxplot(values, showfliers=False)
    for i, vals in enumerate(values, start=1):
        ax.plot(np.full(vals.size, i) + np.linspace(-0.1, 0.1, vals.size), vals, 'o',
                ms=4, alpha=0.7, color='tab:blue')
    ax.set_xticks(range(1, len(regions) + 1), regions, rotation=45, ha='right')
    ax.axhline(0.0, color='0.7', lw=0.8)
    ax.set_ylabel('mean χ (ppm)')
    ax.set_title(f'Regional susceptibility, atlas {atlas} '
                 f'(n = {data["participant_id"].nunique()})')
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)
    return str(out_file)


def plot_age(long, models: dict, atlas: str, out_file) -> str:
    """χ (ppm) versus age (years) per bilateral region, with the fitted age model (regions
    that are 0 by construction left out)."""
    plt = _pyplot()
    data = informative(long[(long['atlas'] == atlas) & (long['hemisphere'] == 'bilateral')])
    regions = list(dict.fromkeys(data['region']))
    ncol = min(4, max(1, len(regions)))
    nrow = math.ceil(len(regions) / ncol) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), dpi=100,
                             squeeze=False)
    ages = data['age'].to_numpy(dtype=float)
    grid = np.linspace(0.0, np.nanmax(ages) * 1.1 if np.isfinite(ages).any() else 90.0, 100)
    for ax, region in zip(axes.ravel(), regions):
        sel = data[data['region'] == region]
        ax.plot(sel['age'], sel['mean'], 'o', ms=4)
        fit = models.get((atlas, region, 'bilateral'))
        if fit and fit['model'] in ('saturating_exponential', 'linear', 'mean'):
            curve = normative.predict(fit, grid)
            ax.plot(grid, curve, '-', color='tab:red', lw=1.2)
            if np.isfinite(fit['sd_ppm']):
                ax.fill_between(grid, curve - fit['sd_ppm'], curve + fit['sd_ppm'],
                                color='tab:red', alpha=0.15, lw=0)
        ax.set_title(f'{region} ({fit["model"] if fit else "no model"})', fontsize=8)
        ax.set_xlabel('age (years)', fontsize=8)
        ax.set_ylabel('χ (ppm)', fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(regions):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)
    return str(out_file)


def plot_map(mean_img, sd_img, out_file) -> str:
    """Middle axial, coronal and sagittal slices of the template-space mean and SD χ maps."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(9, 6), dpi=100)
    for row, (img, label, lim) in enumerate(((mean_img, 'mean χ (ppm)', 0.15),
                                             (sd_img, 'SD χ (ppm)', 0.05))):
        data = np.asarray(img.dataobj, dtype=float)
        centre = [n // 2 for n in data.shape[:3]]
        slices = (data[:, :, centre[2]].T, data[:, centre[1], :].T, data[centre[0], :, :].T)
        for ax, sl in zip(axes[row], slices):
            shown = ax.imshow(sl, origin='lower', cmap='gray', vmin=-lim if row == 0 else 0,
                              vmax=lim)
            ax.axis('off')
        fig.colorbar(shown, ax=axes[row].tolist(), shrink=0.8, label=label)
    fig.savefig(out_file)
    plt.close(fig)
    return str(Path(out_file))
