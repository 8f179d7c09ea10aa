# SPDX-License-Identifier: Apache-2.0
"""``qsmflow BIDS_DIR OUT_DIR group``: cohort tables, age norms, plots, report, group maps.

Everything is written under ``OUT_DIR/group/`` (listed in ``.bidsignore``):
``cohort_long.tsv``, ``cohort_wide.tsv``, ``normative_models.tsv`` (+ JSON sidecars),
``figures/*.png``, ``tpl-<template>_desc-{mean,sd}_Chimap.nii.gz`` and ``report.html``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from qsmflow import __version__
from qsmflow.group import cohort, normative
from qsmflow.errors import InputError
from qsmflow.bids.atomic import replace_into, write_json, write_nifti, write_text


def add_zscores(long: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Fit the age model per atlas, region and hemisphere; add expected χ, z and percentile.

    Returns the long table with ``expected``, ``z``, ``percentile`` and ``z_note`` columns
    and the models keyed by ``(atlas, region, hemisphere)``.
    """
    long = long.copy()
    for col in ('expected', 'z', 'percentile'):
        long[col] = np.nan
    long['z_note'] = ''
    models = {}
    for key, idx in long.groupby(['atlas', 'region', 'hemisphere'], sort=False).groups.items():
        sel = long.loc[idx]
        age = sel['age'].to_numpy(dtype=float)
        chi = sel['mean'].to_numpy(dtype=float)
        fit = normative.fit_normative(age, chi)
        models[key] = fit
        z, pct = normative.zscores(fit, age, chi)
        long.loc[idx, 'expected'] = normative.predict(fit, age)
        long.loc[idx, 'z'] = z
        long.loc[idx, 'percentile'] = pct
        notes = np.where(np.isfinite(age), '' if fit['model'] != 'mean' else fit['note'],
                         'age missing in participants.tsv: no age-adjusted z-score'
                         if fit['model'] != 'mean' else fit['note'])
        long.loc[idx, 'z_note'] = notes
    return long, models


def models_table(models: dict) -> pd.DataFrame:
    """The fitted age models as a table (one row per atlas, region, hemisphere)."""
    rows = []
    for (atlas, region, hemi), fit in models.items():
        rows.append({'atlas': atlas, 'region': region, 'hemisphere': hemi,
                     'model': fit['model'], 'n': fit['n'],
                     **{k: fit['params'].get(k, np.nan) for k in (
                         'a_ppm', 'tau_years', 'c_ppm', 'slope_ppm_per_year', 'intercept_ppm',
                         'mean_ppm')},
                     'sd_ppm': fit['sd_ppm'], 'note': fit['note']})
    return pd.DataFrame(rows)


def group_maps(out_dir: Path, group_dir: Path) -> list[Path]:
    """Template-space mean and SD χ maps (ppm) of the cohort, one pair per template."""
    import nibabel as nb

    written = []
    by_space: dict = {}
    for path in sorted(out_dir.glob('sub-*/**/*_space-*_Chimap.nii.gz')):
        space = next(p.split('-', 1)[1] for p in path.name.split('_') if p.startswith('space-'))
        by_space.setdefault(space, []).append(path)
    for space, paths in by_space.items():
        imgs = [nb.load(p) for p in paths]
        stack = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs], axis=-1)
        sd = stack.std(axis=-1, ddof=1) if stack.shape[-1] > 1 else np.zeros(stack.shape[:3])
        for desc, data in (('mean', stack.mean(axis=-1)), ('sd', sd)):
            dest = group_dir / f'tpl-{space}_desc-{desc}_Chimap.nii.gz'
            write_nifti(nb.Nifti1Image(data.astype(np.float32), imgs[0].affine), dest)
            write_json(str(dest).replace('.nii.gz', '.json'), {
                'Units': 'ppm', 'Description': f'Cohort {desc} of space-{space} chi maps',
                'Sources': [str(p.relative_to(out_dir)) for p in paths]})
            written.append(dest)
    return written


def run_group(config) -> int:
    """Run the group level on a qsmflow derivatives folder; return the exit code.

    Reads the paths of the :class:`qsmflow.config.RunConfig` (``OUT_DIR`` with the
    participant tables, ``BIDS_DIR`` with ``participants.tsv``) and writes the
    configuration into ``OUT_DIR/logs/``.
    """
    from qsmflow.execution.progress import write_config
    from qsmflow.group import plots
    from qsmflow.group.report import write_report

    from qsmflow.group.qc import write_group_qc

    t0 = time.time()
    out_dir, bids_dir = config.paths.output_dir, config.paths.bids_dir
    tables = cohort.find_tables(out_dir)
    qc_files = write_group_qc(out_dir, out_dir / 'group') if tables or any(
        out_dir.glob('sub-*/**/anat/*_desc-qc_metrics.tsv')) else []
    if not tables:
        if qc_files:
            _ensure_bidsignore(out_dir, '/group')
            print(f'qsmflow group: no regional tables (*_stats.tsv) under {out_dir}: only the '
                  f'QC table was written; QC page: {qc_files[-1]}')
            return 0
        raise InputError(f'no participant tables (*_stats.tsv) under {out_dir}: run the '
                         'participant level first')
    participants = cohort.read_participants(bids_dir)
    long, models = add_zscores(cohort.long_table(tables, participants))
    group_dir = out_dir / 'group'
    (group_dir / 'figures').mkdir(parents=True, exist_ok=True)
    write_config(config, out_dir)
    _ensure_bidsignore(out_dir, '/group')
    wide = cohort.wide_table(long)
    mtab = models_table(models)
    paths = {'long': group_dir / 'cohort_long.tsv', 'wide': group_dir / 'cohort_wide.tsv',
             'models': group_dir / 'normative_models.tsv'}
    for key, frame in (('long', long), ('wide', wide), ('models', mtab)):
        _write_tsv(frame, paths[key])
    notes = _notes(long, models)
    write_json(group_dir / 'cohort_long.json', _long_sidecar(notes, long.columns))
    figures = []
    for atlas in dict.fromkeys(long['atlas']):
        figures.append(plots.plot_distributions(
            long, atlas, group_dir / 'figures' / f'atlas-{atlas}_distributions.png'))
        figures.append(plots.plot_age(long, models, atlas,
                                      group_dir / 'figures' / f'atlas-{atlas}_age.png'))
    maps = group_maps(out_dir, group_dir)
    if maps:
        import nibabel as nb

        figures.append(plots.plot_map(nb.load(maps[0]), nb.load(maps[1]),
                                      group_dir / 'figures' / 'group_Chimap.png'))
    write_report(group_dir / 'report.html',
                 n_participants=int(long['participant_id'].nunique()),
                 atlases=list(dict.fromkeys(long['atlas'])), figures=figures, notes=notes,
                 tables=[*paths.values(), *maps, *qc_files[:1]], models_table=mtab,
                 qc_page=qc_files[-1] if qc_files else None)
    from qsmflow.reports.participant import write_participant_reports

    # the participant reports again, now with each region's z against the cohort
    write_participant_reports(out_dir, sorted({str(p).removeprefix('sub-') for p in
                                               long['participant_id']}), {}, bids_dir=bids_dir)
    print(f'qsmflow group: {len(tables)} table(s) of {long["participant_id"].nunique()} '
          f'participant(s) in {time.time() - t0:.1f} s; report: {group_dir / "report.html"}')
    for note in notes:
        print(f'qsmflow group: note: {note}')
    return 0


def _notes(long: pd.DataFrame, models: dict) -> list[str]:
    notes = []
    missing = sorted(long.loc[~np.isfinite(long['age'].to_numpy(dtype=float)),
                              'participant_id'].unique())
    if missing:
        notes.append(f'age missing for {", ".join(missing)}: their z-scores and percentiles '
                     'are empty (z_note says so); they are left out of the age fits')
    kinds = sorted({fit['model'] for fit in models.values()})
    if kinds != ['saturating_exponential']:
        notes.append(f'age models used: {", ".join(kinds)}; the saturating exponential needs '
                     f'at least {normative.MIN_N_EXPONENTIAL} participants with age, a linear '
                     f'fit at least {normative.MIN_N_LINEAR}, otherwise the cohort mean and SD '
                     '(not age-adjusted) are used')
    return notes


def _long_sidecar(notes: list[str], columns=()) -> dict:
    """Sidecar of ``cohort_long.tsv``; the map columns are described when in ``columns``."""
    from qsmflow.qsm.regions import MAP_COLUMNS

    meta = {
        'Description': 'Long cohort table: one row per participant, session, acquisition, '
                       'run, atlas, region and hemisphere, with covariates from '
                       'participants.tsv and age-normative z-scores.',
        'mean': {'Units': 'ppm'}, 'median': {'Units': 'ppm'}, 'std': {'Units': 'ppm'},
        'p05': {'Units': 'ppm'}, 'p95': {'Units': 'ppm'}, 'volume_mm3': {'Units': 'mm^3'},
        'trimmed_mean': {'Units': 'ppm'},
        'r2star_mean': {'Description': 'Mean R2* over the voxels of the chi statistics (empty '
                                       'for runs without an R2* map: one echo)',
                        'Units': '1/s'},
        'chi_para_mean': {'Description': 'Mean paramagnetic chi+ over the voxels of the chi '
                                         'statistics, chi before referencing (empty for runs '
                                         'without chi-separation)', 'Units': 'ppm'},
        'chi_dia_mean': {'Description': 'Mean diamagnetic chi- over the voxels of the chi '
                                        'statistics, chi before referencing (empty for runs '
                                        'without chi-separation)', 'Units': 'ppm'},
        'expected': {'Description': 'Mean chi expected at this age by the region model',
                     'Units': 'ppm'},
        'z': {'Description': '(mean - expected) / robust residual SD of the region model'},
        'percentile': {'Description': '100 * normal CDF of z', 'Units': '%'},
        'z_note': {'Description': 'Why z is empty or not age-adjusted (blank otherwise)'},
        'AgeModel': 'chi(age) = a * (1 - exp(-age / tau)) + c, soft-L1 robust fit; fallbacks '
                    'in normative_models.tsv (column model)',
        'Notes': notes,
        'GeneratedBy': {'Name': 'qsmflow', 'Version': __version__},
    }
    return {k: v for k, v in meta.items() if k not in MAP_COLUMNS or k in set(columns)}


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    replace_into(path, lambda tmp: frame.to_csv(tmp, sep='\t', index=False, na_rep='n/a',
                                                float_format='%.6g'))


def _ensure_bidsignore(out_dir: Path, pattern: str) -> None:
    """Add ``pattern`` to the derivatives' ``.bidsignore`` (group outputs are not BIDS)."""
    path = out_dir / '.bidsignore'
    lines = path.read_text().splitlines() if path.exists() else []
    if pattern not in lines:
        write_text(path, '\n'.join([*lines, pattern]) + '\n')
