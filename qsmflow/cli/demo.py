# SPDX-License-Identifier: Apache-2.0
"""``qsmflow demo``: build the phantom dataset, process it, compare with the truth."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

#: The demo cohort: labels, ages (years) and sexes of the phantom participants.
DEMO_PARTICIPANTS = (
    {'participant_id': '01', 'age': 34, 'sex': 'F'},
    {'participant_id': '02', 'age': 71, 'sex': 'M'},
)

#: Head pose of the demo participants in the scanner, unlike the template's: a turn about
#: the B0 axis (degrees) and a shift (mm), so that registration has work to do.
DEMO_POSE = {'yaw_deg': 10.0, 'shift_mm': (6.0, -9.0, 5.0)}


def run_demo(directory, *, size='small', nprocs=1, oblique_deg=0.0) -> int:
    """Write the phantom dataset under ``directory``, run qsmflow on it, print a summary.

    The phantom's template (image, brain mask, atlas) is written in templateflow layout
    into ``directory/templateflow``, which the run configuration names as its templateflow
    folder, so registration and atlas tables go through the same templateflow code path
    as with the real templates; the group level follows.
    """
    from qsmflow.cli.participant import run_participants
    from qsmflow.group.run import run_group
    from qsmflow.phantom.bids import write_dataset
    from qsmflow.phantom.template import write_template

    root = Path(directory).expanduser().absolute()
    bids_dir, truth_dir, out_dir = root / 'rawdata', root / 'truth', root / 'qsmflow'
    t0 = time.time()
    write_dataset(bids_dir, truth_dir, [dict(p) for p in DEMO_PARTICIPANTS], size=size,
                  oblique_deg=oblique_deg, **DEMO_POSE)
    write_template(root / 'templateflow', size=size)
    print(f'qsmflow demo: phantom dataset ({size}) written to {bids_dir} '
          f'(ground truth: {truth_dir}; template: {root / "templateflow"}) '
          f'in {time.time() - t0:.1f} s')
    config = demo_config(bids_dir, out_dir, size=size, nprocs=nprocs,
                         templateflow_home=root / 'templateflow')
    code = run_participants(config)
    code = max(code, run_group(dataclasses.replace(config, analysis_level='group')))
    print(summarize(out_dir, truth_dir))
    return code


def demo_config(bids_dir, out_dir, *, size='small', nprocs=1, templateflow_home,
                work_dir=None, skip_bids_validation=False):
    """The run configuration of the demo (and of ``qsmflow bench --cohort``): the default
    preset, registration to the phantom template (``templateflow_home``, written by
    :func:`qsmflow.phantom.template.write_template`) at the phantom's resolution and its
    atlas's tables; ``nprocs`` processes and as many threads per process (the defaults
    of ``--omp-nthreads`` and ``--plugin``).
    """
    from qsmflow.bids.inputs import check_dirs
    from qsmflow.config import (
        EngineConfig, MasksConfig, PathsConfig, PipelineConfig, RegionsConfig, RunConfig,
        SelectionConfig)
    from qsmflow.config.presets import load_preset
    from qsmflow.phantom.head import SIZES
    from qsmflow.phantom.template import ATLAS, TEMPLATE

    bids_dir, out_dir = check_dirs(bids_dir, out_dir)
    steps = load_preset('default')
    return RunConfig(
        paths=PathsConfig(bids_dir, out_dir,
                          Path(work_dir or out_dir.parent / 'work').expanduser().absolute()),
        selection=SelectionConfig(skip_bids_validation=skip_bids_validation),
        pipeline=PipelineConfig(preset='default', steps=steps),
        masks=MasksConfig(two_pass=bool(steps['masking'].get('two_pass', False))),
        regions=RegionsConfig(template=TEMPLATE, template_resolution=int(SIZES[size]),
                              atlases=(ATLAS,), templateflow_home=Path(templateflow_home)),
        engine=EngineConfig(nprocs=nprocs, omp_nthreads=nprocs,
                            plugin='linear' if nprocs == 1 else 'multiproc'))


def summarize(out_dir, truth_dir) -> str:
    """Deep-GM contrasts (ROI mean − brain mean, ppm) of each Chimap next to the truth."""
    import nibabel as nb

    from qsmflow.phantom.head import DEEP_GM

    lines = ['', 'Deep grey matter, susceptibility contrast to the brain mean (ppm):',
             f'  {"participant":<12}{"region":<22}{"qsmflow":>9}{"truth":>9}{"error":>9}']
    errors = []
    for chimap in sorted(Path(out_dir).glob('sub-*/anat/*_Chimap.nii.gz')):
        if '_space-' in chimap.name or '_desc-' in chimap.name:  # the native χ map only
            continue
        sub = chimap.name.split('_')[0]
        truth_anat = Path(truth_dir) / sub / 'anat'
        chi = np.asarray(nb.load(chimap).dataobj, dtype=np.float64)
        mask = np.asarray(nb.load(str(chimap).replace('_Chimap', '_desc-brain_mask')).dataobj) > 0
        truth = np.asarray(nb.load(truth_anat / f'{sub}_Chimap.nii.gz').dataobj, dtype=np.float64)
        labels = np.asarray(nb.load(truth_anat / f'{sub}_desc-phantom_dseg.nii.gz').dataobj)
        names = _read_lut(truth_anat / f'{sub}_desc-phantom_dseg.tsv')
        for region in DEEP_GM:
            ids = [i for i, n in names.items() if n.startswith(region)]
            roi = np.isin(labels, ids) & mask
            if roi.sum() == 0:
                continue
            est = chi[roi].mean() - chi[mask].mean()
            ref = truth[roi].mean() - truth[mask].mean()
            errors.append(abs(est - ref))
            lines.append(f'  {sub:<12}{region:<22}{est:9.3f}{ref:9.3f}{est - ref:9.3f}')
    if errors:
        lines.append(f'Mean absolute deep-GM contrast error: {np.mean(errors):.4f} ppm')
    for sub_dir in sorted(Path(out_dir).glob('sub-*')):
        sub = sub_dir.name
        dice = atlas_dice(out_dir, truth_dir, sub)
        if dice:
            lines.append(f'{sub}: Dice of the registered atlas labels with the true labels: '
                         + ', '.join(f'{k} {v:.2f}' for k, v in dice.items()))
        errs = table_errors(out_dir, truth_dir, sub)
        if errs:
            lines.append(f'{sub}: atlas table means minus truth (same reference), ppm: max '
                         f'|error| {max(abs(v) for v in errs.values()):.4f}, mean '
                         f'{np.mean(np.abs(list(errs.values()))):.4f}')
    lines.append(f'Susceptibility maps: {out_dir}/sub-*/anat/*_Chimap.nii.gz; regional tables: '
                 f'{out_dir}/sub-*/anat/*_stats.tsv; group report: {out_dir}/group/report.html')
    return '\n'.join(lines)


def _truth(truth_dir, sub):
    import nibabel as nb

    anat = Path(truth_dir) / sub / 'anat'
    labels = np.asarray(nb.load(anat / f'{sub}_desc-phantom_dseg.nii.gz').dataobj)
    chi = np.asarray(nb.load(anat / f'{sub}_Chimap.nii.gz').dataobj, dtype=np.float64)
    names = {n: i for i, n in _read_lut(anat / f'{sub}_desc-phantom_dseg.tsv').items()}
    return labels, chi, names


def atlas_dice(out_dir, truth_dir, sub, atlas: str = 'Phantom') -> dict:
    """Dice of each deep nucleus (left and right) between native atlas labels and the truth.

    Returns ``{'<nucleus>_<side>': dice}``; empty when the atlas labels are absent.
    """
    import nibabel as nb

    from qsmflow.phantom.head import DEEP_GM
    from qsmflow.qsm.regions import dice

    anat = Path(out_dir) / sub / 'anat'
    found = sorted(anat.glob(f'{sub}*_atlas-{atlas}_dseg.nii.gz'))
    if not found:
        return {}
    est = np.asarray(nb.load(found[0]).dataobj)
    est_names = {n: i for i, n in _read_lut(str(found[0]).replace('.nii.gz', '.tsv')).items()}
    labels, _, names = _truth(truth_dir, sub)
    return {f'{r}_{s}': dice(est == est_names[f'{r}_{s}'], labels == names[f'{r}_{s}'])
            for r in DEEP_GM for s in ('left', 'right')}


def table_errors(out_dir, truth_dir, sub, atlas: str = 'Phantom') -> dict:
    """Table mean of each deep nucleus minus the truth, both referenced to the brain mean.

    The truth value is the true χ over the true labels inside the χ mask, minus the true χ
    mean over that mask (the reference the table uses). Returns ``{'<nucleus>_<side>':
    error_ppm}``; empty when the table is absent.
    """
    import nibabel as nb
    import pandas as pd

    from qsmflow.phantom.head import DEEP_GM

    anat = Path(out_dir) / sub / 'anat'
    found = sorted(anat.glob(f'{sub}*_atlas-{atlas}_stats.tsv'))
    if not found:
        return {}
    table = pd.read_csv(found[0], sep='\t', na_values=['n/a'])
    mask = np.asarray(nb.load(anat / f'{sub}_desc-brain_mask.nii.gz').dataobj) > 0
    labels, chi, names = _truth(truth_dir, sub)
    out = {}
    for region in DEEP_GM:
        for side in ('left', 'right'):
            roi = (labels == names[f'{region}_{side}']) & mask
            truth = chi[roi].mean() - chi[mask].mean()
            row = table[(table['region'] == region) & (table['hemisphere'] == side)]
            out[f'{region}_{side}'] = float(row['mean'].iloc[0]) - float(truth)
    return out


def _read_lut(path) -> dict:
    rows = [ln.split('\t') for ln in Path(path).read_text().splitlines()[1:] if ln.strip()]
    return {int(r[0]): r[1] for r in rows}
