# SPDX-License-Identifier: Apache-2.0
"""Participant-level run: check inputs, build the Nipype workflow, run it, report."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from qsmflow import __version__, bids_specs
from qsmflow.inputs import (
    InputError, check_dirs, clean_labels, find_acquisitions, load_bids_filters)
from qsmflow.interfaces.base import write_json
from qsmflow.preflight import preflight


def run_participants(opts) -> int:
    """Run the participant level for parsed command-line ``opts``; return the exit code."""
    from qsmflow.pipeline import load_preset, with_overrides

    t0 = time.time()
    bids_dir, out_dir = check_dirs(opts.bids_dir, opts.output_dir)
    work_dir = (opts.work_dir or out_dir.parent / 'work').expanduser().absolute()
    labels = clean_labels(opts.participant_label, 'sub-')
    sessions = clean_labels(opts.session_label, 'ses-')
    try:
        pipeline = with_overrides(
            load_preset(opts.preset), unwrapping=opts.unwrapping, bf_removal=opts.bf_removal,
            inversion=opts.inversion, reference=opts.reference,
            masking=getattr(opts, 'masking', None),
            echo_combination=getattr(opts, 'echo_combination', None))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if getattr(opts, 'two_pass', None) is not None:
        pipeline['masking']['two_pass'] = bool(opts.two_pass)
    if getattr(opts, 'brain_masks', None) is not None:
        if not Path(opts.brain_masks).is_dir():
            raise InputError(f'--brain-masks {opts.brain_masks} is not a folder; give a BIDS '
                             'derivatives folder with sub-<label>/anat/*_desc-brain_mask.nii.gz')
        pipeline['masking']['brain_masks'] = str(Path(opts.brain_masks).absolute())
    if not opts.skip_bids_validation:
        validate_input(bids_dir)

    filters = getattr(opts, 'bids_filter_file', None)
    filters = load_bids_filters(filters) if filters else None
    acquisitions, failures = find_acquisitions(bids_dir, labels, sessions, opts.field_strength,
                                               filters)
    reports = preflight(acquisitions, failures,  # reads every image: before any heavy work
                        brain_masks=pipeline['masking'].get('brain_masks'))
    for subject, reason in failures.items():
        print(f'qsmflow: skipping sub-{subject}: {reason}', file=sys.stderr)
    todo = [a for acqs in acquisitions.values() for a in acqs]
    print(f'qsmflow {__version__}: {len(todo)} acquisition(s) of {len(acquisitions)} '
          f'participant(s) to process; work directory {work_dir}')

    if todo:
        init_output_dataset(out_dir, bids_dir)
        failures.update(_execute(todo, out_dir, bids_dir, work_dir, pipeline, opts,
                                 reports))

    done = sorted(set(acquisitions) - set(failures))
    print(f'qsmflow: finished in {time.time() - t0:.0f} s: {len(done)} participant(s) done, '
          f'{len(failures)} failed. Outputs in {out_dir}')
    for subject, reason in sorted(failures.items()):
        print(f'  FAILED sub-{subject}: {reason}', file=sys.stderr)
    return 1 if failures else 0


def _execute(todo, out_dir, bids_dir, work_dir, pipeline, opts, reports=None) -> dict:
    """Build and run the workflow; return ``{subject: reason}`` for failed acquisitions.

    Derivatives are written into the staging folder and each acquisition's set is moved
    into ``out_dir`` as soon as all its steps have finished (:mod:`qsmflow.staging`).
    """
    from nipype import config, logging

    from qsmflow import staging
    from qsmflow.engines import (
        GRAPH_PLUGINS, apply_resources, is_step, iter_nodes, select_plugin, wait_for_graph_jobs)
    from qsmflow.progress import RunMonitor, log_path
    from qsmflow.regions_config import regions_options
    from qsmflow.workflows.base import init_qsmflow_wf

    choice, plugin, plugin_args = select_plugin(opts)
    log_dir = work_dir / 'logs'
    log_dir.mkdir(parents=True, exist_ok=True)
    config.update_config({
        'execution': {'crashdump_dir': str(log_dir), 'crashfile_format': 'txt',
                      'hash_method': 'content', 'stop_on_first_crash': False,
                      'remove_unnecessary_outputs': False, 'check_version': False,
                      # Nipype sleeps this long between scheduling rounds (default 2 s per
                      # step); cluster plugins keep the default, not to flood the scheduler
                      'poll_sleep_duration': 0.2 if choice in ('linear', 'multiproc') else 2},
        'logging': {'log_directory': str(log_dir), 'log_to_file': True,
                    'workflow_level': 'WARNING', 'interface_level': 'WARNING',
                    'utils_level': 'WARNING'},
        'monitoring': {'enabled': False},
    })
    logging.update_logging(config)
    nthreads = opts.omp_nthreads or opts.nprocs
    workflow = init_qsmflow_wf(acquisitions=todo, output_dir=str(staging.staging_root(out_dir)),
                               bids_dir=str(bids_dir), pipeline=pipeline,
                               omp_nthreads=nthreads, regions_opts=regions_options(opts))
    workflow.base_dir = str(work_dir)
    apply_resources(workflow, choice, plugin_args, opts.nprocs)
    steps = {acq.name: sum(1 for n in iter_nodes(workflow.get_node(f'{acq.name}_wf'))
                           if is_step(n)) for acq in todo}
    published = set()

    def complete(acq):
        if all(p.exists() for p in expected_outputs(acq, staging.staging_root(out_dir))):
            staging.publish(acq, out_dir)
            published.add(acq.name)

    monitor = RunMonitor(todo, steps, out_dir, complete)
    for subject in {acq.subject for acq in todo}:
        for line in (reports or {}).get(subject, []):
            monitor.log(subject, f'pre-flight {line}')
    if choice not in GRAPH_PLUGINS:
        plugin_args = {**plugin_args, 'status_callback': monitor}
    crashes_before = set(log_dir.glob('crash-*'))
    started = time.time() - 1.0  # sinks always rerun: older files are from an earlier run
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError:
        pass  # failed nodes are attributed below from their crash files
    finally:
        monitor.close()
    if choice in GRAPH_PLUGINS:
        wait_for_graph_jobs(work_dir, started)
    new_crashes = sorted(set(log_dir.glob('crash-*')) - crashes_before)
    failures = {}
    for acq in todo:
        crash = _crash_reason(acq, new_crashes)
        staged = staging.staging_root(out_dir)
        missing = [k for k in expected_outputs(acq, staged)
                   if not k.exists() or k.stat().st_mtime < started]
        if acq.name not in published and not crash and not missing \
                and acq.name not in monitor.failed:
            complete(acq)  # graph plugins report nothing while running
        if acq.name in published and not crash:
            continue
        reason = crash or (f'step {monitor.failed[acq.name]} failed'
                           if acq.name in monitor.failed else None) \
            or f'{missing[0].name if missing else "an output"} was not produced'
        failures[acq.subject] = f'{reason}; log: {log_path(out_dir, acq.subject)}'
        monitor.log(acq.subject, f'{staging.name_prefix(acq)}: FAILED: {reason}')
        for crash_file in new_crashes:
            if f'{acq.name}_wf' in crash_file.read_text(errors='replace'):
                monitor.log(acq.subject, crash_file.read_text(errors='replace'))
        staging.discard(acq, out_dir)
        remove_partial_outputs(acq, out_dir)
    return failures


def expected_outputs(acq, out_dir) -> list[Path]:
    """Derivative paths one acquisition must produce."""
    from qsmflow.workflows.outputs import QSM_OUTPUTS

    return [bids_specs.output_path(out_dir, k, acq.entities) for k in QSM_OUTPUTS]


def remove_partial_outputs(acq, out_dir) -> list[Path]:
    """Delete the derivatives (and sidecars) of a failed acquisition: no half-written set."""
    from qsmflow.interfaces.base import sidecar_of

    removed = []
    for path in expected_outputs(acq, out_dir):
        for item in (path, Path(sidecar_of(path))):
            if item.exists():
                item.unlink()
                removed.append(item)
    return removed


def _crash_reason(acq, crash_files) -> str | None:
    """One-line reason from the first crash file of this acquisition's sub-workflow."""
    tag = f'{acq.name}_wf'
    for crash in crash_files:
        text = crash.read_text(errors='replace')
        if tag not in crash.name and tag not in text:
            continue
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.split(':')[0].endswith(('Error', 'Exception'))]
        node = next((ln.split(':', 1)[1].strip() for ln in lines if ln.startswith('Node:')), '?')
        reason = errors[-1] if errors else lines[-1]
        return f'{reason} (step {node.rsplit(".", 1)[-1]})'
    return None


def init_output_dataset(out_dir: Path, bids_dir: Path) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` of the derivatives dataset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = {
        'Name': 'qsmflow outputs',
        'BIDSVersion': '1.10.0',
        'DatasetType': 'derivative',
        'GeneratedBy': [{'Name': 'qsmflow', 'Version': __version__,
                         'CodeURL': 'https://pypi.org/project/qsmflow/'}],
        'DatasetLinks': {'raw': bids_dir.absolute().as_uri()},
    }
    write_json(out_dir / 'dataset_description.json', desc)
    ignore = out_dir / '.bidsignore'
    lines = bids_specs.load('outputs')['bidsignore']
    tmp = ignore.with_name('.bidsignore.tmp')
    tmp.write_text('\n'.join(lines) + '\n')
    tmp.replace(ignore)


def find_validator() -> str | None:
    """Path of the ``bids-validator-deno`` executable, if installed."""
    beside = Path(sys.executable).parent / 'bids-validator-deno'
    return str(beside) if beside.exists() else shutil.which('bids-validator-deno')


def run_validator(path) -> dict:
    """Run bids-validator-deno on ``path``; return its parsed JSON report."""
    exe = find_validator()
    if exe is None:
        raise FileNotFoundError('bids-validator-deno is not installed')
    proc = subprocess.run([exe, str(path), '--json'], capture_output=True, text=True,
                          timeout=600)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f'bids-validator-deno failed: {proc.stderr.strip()[:300]}') from None


def validator_errors(report: dict) -> list[dict]:
    """The error-level issues of a validator report."""
    return [i for i in report['issues']['issues'] if i.get('severity') == 'error']


def validate_input(bids_dir: Path) -> None:
    """Validate the input dataset; raise :class:`InputError` with a summary on errors."""
    if find_validator() is None:
        print('qsmflow: warning: bids-validator-deno not installed; input not validated '
              '(pip install bids-validator-deno)', file=sys.stderr)
        return
    errors = validator_errors(run_validator(bids_dir))
    if errors:
        codes = sorted({e['code'] for e in errors})
        first = errors[0]
        raise InputError(
            f'{bids_dir} fails BIDS validation with {len(errors)} error(s) '
            f'({", ".join(codes[:5])}; first: {first.get("location", "")}); '
            'fix them (run bids-validator-deno for details) or pass --skip-bids-validation')
