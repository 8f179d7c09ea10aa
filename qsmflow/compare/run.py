# SPDX-License-Identifier: Apache-2.0
"""``qsmflow compare``: find and check the inputs, run the workflow, write the outputs.

Native-space labels come from the user's ``--segmentations`` (scanner space, resampled by
nearest neighbour onto the χ grid, as the participant level does) and/or from a finished
participant-level output folder (``--labels-from``: its ``_atlas-<name>[_desc-refined]_dseg``
images, already on the χ grid of each acquisition, from the participant level's
registration; the χ-refined labels where it made them, as its tables do).
The comparison does not register: that is the participant level's job, and the labels it
made serve every pipeline (the grid of χ does not depend on the pipeline).

Outputs in ``OUT_DIR/compare/``: ``table.tsv``, ``spread.tsv``, ``icc.tsv`` with JSON
sidecars, ``figures/*.png``, ``index.html``, with ``--keep-maps`` ``maps/`` (every
pipeline's χ map and sidecar); each written atomically. pydra's cache is ``-w WORK_DIR``
(default ``OUT_DIR/compare/work``); rerunning with the same one reuses every finished task.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from qsmflow import __version__, bids_specs
from qsmflow.bids.atomic import copy_file, replace_into, write_json
from qsmflow.errors import InputError


def label_sets(acq, segmentations=None, labels_from=None, atlases=None,
               erode: bool = False) -> list[dict]:
    """The label sets of one acquisition (see :func:`qsmflow.compare.steps.
    regional_tables`).

    Raises
    ------
    InputError
        When ``labels_from`` lacks a requested atlas's labels, or the acquisition has no
        labels at all (one line naming what was looked for).
    """
    sets = []
    if segmentations and acq.segmentation:
        sets.append({'atlas': 'segmentations', 'dseg': acq.segmentation,
                     'lut': acq.segmentation_lut, 'resample': True, 'erode': erode,
                     'source': {'Source': 'user segmentation (--segmentations)',
                                'Segmentation': acq.segmentation,
                                'LookupTable': acq.segmentation_lut}})
    if labels_from:
        pattern = bids_specs.output_path(labels_from, 'dseg', acq.entities, atlas='*')
        found = sorted({re.search(r'_atlas-([0-9A-Za-z]+)_', p.name).group(1)
                        for p in pattern.parent.glob(pattern.name)})
        wanted = [re.sub(r'[^0-9A-Za-z]', '', a) for a in atlases] if atlases else found
        for atlas in wanted:
            # the labels the participant level's table used: refined on chi where it
            # refined them (``desc-refined``), else those of the registration
            for kind in ('dseg_refined', 'dseg'):
                dseg = bids_specs.output_path(labels_from, kind, acq.entities, atlas=atlas)
                if dseg.exists():
                    break
            else:
                raise InputError(f'sub-{acq.subject}: no {dseg.name} in {dseg.parent}; run '
                                 f'the participant level with --atlases {atlas} into '
                                 f'{labels_from} first')
            lut = bids_specs.output_path(labels_from, f'{kind}_lut', acq.entities,
                                         atlas=atlas)
            sets.append({'atlas': atlas, 'dseg': str(dseg), 'lut': str(lut),
                         'resample': False, 'erode': erode,
                         'source': {'Source': 'participant-level labels (--labels-from)',
                                    'Labels': str(dseg)}})
    if not sets:
        looked = ' or '.join(str(p) for p in (segmentations, labels_from) if p)
        raise InputError(f'sub-{acq.subject}: no native-space labels found in {looked}')
    return sets


def run_compare(bids_dir, out_dir, pipelines: dict, *, selection, segmentations=None,
                labels_from=None, atlases=None, erode=False, work_dir=None, plugin='cf',
                nprocs=1, plugin_args=None, keep_maps=False, log=print) -> int:
    """Run a comparison; return the exit code (0 done, 1 some participant failed).

    ``pipelines``: ``{name: steps}`` (:func:`qsmflow.compare.pipelines.resolve_pipelines`);
    ``selection``: a :class:`qsmflow.config.SelectionConfig`.
    """
    from filelock import FileLock, Timeout

    from qsmflow.bids.inputs import check_dirs, find_acquisitions
    from qsmflow.bids.preflight import preflight
    from qsmflow.bids.validator import validate_input
    from qsmflow.compare import engine
    from qsmflow.compare.pipelines import task_configs

    t0 = time.time()
    if not (segmentations or labels_from):
        raise InputError('qsmflow compare needs native-space labels: give --segmentations '
                         'DERIV_DIR and/or --labels-from QSMFLOW_OUT_DIR (a participant-level '
                         'output with atlas labels)')
    for flag, folder in (('--segmentations', segmentations), ('--labels-from', labels_from)):
        if folder and not Path(folder).is_dir():
            raise InputError(f'{flag} {folder} is not a folder')
    bids_dir, out_dir = check_dirs(bids_dir, out_dir)
    if not selection.skip_bids_validation:
        validate_input(bids_dir)
    acquisitions, failures = find_acquisitions(
        bids_dir, list(selection.participant_labels), list(selection.session_labels),
        selection.field_strength, selection.bids_filters)
    preflight(acquisitions, failures, log=log, segmentations=segmentations)
    runs_acq, entities = [], {}
    for subject, acqs in acquisitions.items():
        try:
            for acq in acqs:
                if acq.coil_files:  # compare starts at LoadMEGRE: no coil combination
                    raise InputError(f'{acq.mag_files[0]}: uncombined coils (coil-<n>) are not '
                                     'supported by compare; run participant, or give the '
                                     'scanner-combined echoes')
            runs = [{'acq_name': acq.name, 'mag_files': list(acq.mag_files),
                     'phase_files': list(acq.phase_files),
                     'echo_times': list(acq.echo_times_s), 'b0_tesla': float(acq.b0_tesla),
                     'phase_units': acq.phase_units,
                     'label_sets': label_sets(acq, segmentations, labels_from, atlases, erode)}
                    for acq in acqs]
        except InputError as exc:
            failures[subject] = str(exc)
            continue
        runs_acq.extend(runs)
        entities.update({acq.name: dict(acq.entities) for acq in acqs})
    for subject, reason in sorted(failures.items()):
        print(f'qsmflow: skipping sub-{subject}: {reason}', file=sys.stderr)
    if not runs_acq:
        raise InputError('no acquisition to compare (see the lines above)')

    runs_pipeline = [{'pipeline': name, **task_configs(steps)}
                     for name, steps in pipelines.items()]
    folder = out_dir / 'compare'
    cache = Path(work_dir).absolute() if work_dir else folder / 'work'
    cache.mkdir(parents=True, exist_ok=True)
    log(f'qsmflow compare: {len(pipelines)} pipeline(s) × {len(runs_acq)} acquisition(s) '
        f'on pydra ({plugin}); cache {cache}')
    lock = FileLock(str(folder / '.compare.lock'))  # an OS lock: gone with its process
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(f'another qsmflow compare is writing {folder}; wait for it to '
                         'finish') from None
    try:
        for stale in engine.stale_locks(cache):  # left by a killed run: no run holds them
            stale.unlink(missing_ok=True)
        try:
            runs = engine.run_workflow(runs_acq, runs_pipeline, cache, plugin=plugin,
                                       nprocs=nprocs, plugin_args=plugin_args)
        except engine.TaskFailure as exc:
            print(f'qsmflow: error: compare: {exc}; fix the pipeline and rerun (finished '
                  'steps are reused)', file=sys.stderr)
            return 1
        written = write_outputs(folder, runs, pipelines, entities, keep_maps=keep_maps,
                                engine_desc={'Engine': f'pydra {plugin}', 'Processes': nprocs,
                                             'PluginArgs': plugin_args or {}},
                                labels={'Segmentations': segmentations,
                                        'LabelsFrom': labels_from})
    finally:
        lock.release()
    log(f'qsmflow compare: finished in {time.time() - t0:.0f} s; page {written}')
    return 1 if failures else 0


def write_outputs(folder: Path, runs: list, pipelines: dict, entities: dict, *,
                  keep_maps: bool, engine_desc: dict, labels: dict) -> Path:
    """Write the tables, sidecars, figures, page (and maps) of finished runs; return the
    page's path."""
    import pydra

    from qsmflow.compare import report, tables

    table = tables.tidy_table(runs, pipelines, entities)
    spread, icc = tables.spread(table), tables.pairwise_icc(table)
    provenance = {'QSMFlowVersion': __version__, 'PydraVersion': pydra.__version__,
                  **engine_desc,
                  'Pipelines': {name: steps for name, steps in pipelines.items()},
                  'Acquisitions': entities,
                  'Labels': {k: str(v) for k, v in labels.items() if v}}
    for name, frame, desc in (
            ('table', table, 'Regional chi (ppm) of every acquisition x pipeline: the '
                             "participant level's table values (mean, median, n_voxels) of "
                             'each run, with the steps and their options; run_time_s is the '
                             "seconds of computation of the run's steps"),
            ('spread', spread, 'Between-pipeline spread of the regional mean chi (ppm): per '
                               'acquisition the SD (ddof 1) and range over the pipelines, '
                               'averaged (_mean) and worst (_max) over the acquisitions'),
            ('icc', icc, 'ICC(A,1) (two-way, absolute agreement, single measurement; McGraw '
                         '& Wong 1996) of the regional mean chi across acquisitions for each '
                         'pipeline pair; mean_difference = b - a in ppm')):
        path = folder / f'{name}.tsv'
        replace_into(path, lambda tmp, f=frame: f.to_csv(tmp, sep='\t', index=False,
                                                          na_rep='n/a', float_format='%.6g'
                                                          if name != 'table' else '%.6f'))
        write_json(folder / f'{name}.json', {'Description': desc, 'Units': 'ppm',
                                             **provenance})
    figures = report.plot_regions(table, folder / 'figures')
    if keep_maps:
        _keep_maps(folder / 'maps', runs, pipelines, entities)
    return report.write_page(folder / 'index.html', pipelines=pipelines, table=table,
                             spread=spread, icc=icc, figures=figures, provenance=provenance)


def _keep_maps(folder: Path, runs: list, pipelines: dict, entities: dict) -> None:
    """Every run's χ map and sidecar as ``sub-<l>…_desc-pipeline<k>_Chimap.nii.gz``
    (``k``: the pipeline's number in the page; the sidecar names the pipeline)."""
    import json

    from qsmflow.interfaces.base import sidecar_of

    folder.mkdir(parents=True, exist_ok=True)
    number = {name: i + 1 for i, name in enumerate(pipelines)}
    for run in runs:
        name = bids_specs.output_name('chimap', entities[run['acq_name']],
                                      desc=f'pipeline{number[run["pipeline"]]}')
        copy_file(run['chimap'], folder / name)
        side = json.loads(Path(sidecar_of(run['chimap'])).read_text())
        write_json(folder / sidecar_of(name), {**side, 'Pipeline': run['pipeline']})
