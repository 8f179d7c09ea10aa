# SPDX-License-Identifier: Apache-2.0
"""Run the participant-level workflow: engine, progress, staged publication, failures."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from qsmflow.bids.outputs import expected_outputs, remove_partial_outputs
from qsmflow.execution.crashes import crash_reason


def execute(todo, config, reports=None, config_file=None) -> dict:
    """Build and run the workflow; return ``{subject: reason}`` for failed acquisitions.

    Parameters
    ----------
    todo : list of :class:`qsmflow.bids.inputs.Acquisition`
        The acquisitions that passed pre-flight (their input files resolved).
    config : :class:`qsmflow.config.RunConfig`
        The run configuration; the workflow builders get plain arguments taken from it.
    reports : dict, optional
        ``{subject: [pre-flight line, ...]}``, copied into each participant's log.
    config_file : Path, optional
        Where the configuration was written (:func:`qsmflow.execution.progress.write_config`),
        named in each participant's log.

    Derivatives are written into the staging folder and each acquisition's set is moved
    into ``OUT_DIR`` as soon as all its steps have finished (:mod:`qsmflow.execution.staging`).
    """
    from nipype import config as nipype_config
    from nipype import logging

    from qsmflow.execution import staging
    from qsmflow.execution.console import quiet_engine_console
    from qsmflow.execution.engines import (
        GRAPH_PLUGINS, apply_resources, is_step, iter_nodes, multiproc_plugin, select_plugin,
        wait_for_graph_jobs)
    from qsmflow.execution.progress import RunMonitor, log_path
    from qsmflow.atlases.options import regions_options
    from qsmflow.workflows.base import init_qsmflow_wf

    out_dir, work_dir = config.paths.output_dir, config.paths.work_dir
    choice, plugin, plugin_args = select_plugin(config.engine)
    log_dir = work_dir / 'logs'
    log_dir.mkdir(parents=True, exist_ok=True)
    nipype_config.update_config({
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
    logging.update_logging(nipype_config)
    quiet_engine_console()  # the engine's records: pypeline.log and the participant log
    workflow = init_qsmflow_wf(acquisitions=todo, output_dir=str(staging.staging_root(out_dir)),
                               bids_dir=str(config.paths.bids_dir),
                               pipeline=config.pipeline.steps,
                               omp_nthreads=config.engine.omp_nthreads,
                               device=config.engine.device,
                               regions_opts=regions_options(config.regions))
    workflow.base_dir = str(work_dir)
    apply_resources(workflow, choice, plugin_args, config.engine.nprocs)
    steps = {acq.name: sum(1 for n in iter_nodes(workflow.get_node(f'{acq.name}_wf'))
                           if is_step(n)) for acq in todo}
    published = set()

    def complete(acq):
        if all(p.exists() for p in expected_outputs(
                acq, staging.staging_root(out_dir), config.pipeline.steps)):
            staging.publish(acq, out_dir)
            published.add(acq.name)

    monitor = RunMonitor(todo, steps, out_dir, complete)
    for subject in {acq.subject for acq in todo}:
        if config_file is not None:
            monitor.log(subject, f'configuration: {config_file}')
        for line in (reports or {}).get(subject, []):
            monitor.log(subject, f'pre-flight {line}')
    if choice not in GRAPH_PLUGINS:
        plugin_args = {**plugin_args, 'status_callback': monitor}
    crashes_before = set(log_dir.glob('crash-*'))
    started = time.time() - 1.0  # sinks always rerun: older files are from an earlier run
    if plugin == 'MultiProc':
        plugin = multiproc_plugin(plugin_args)  # its workers' console: the steps' warnings
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
    recap = False
    for acq in todo:
        crash = crash_reason(acq, new_crashes)
        staged = staging.staging_root(out_dir)
        missing = [k for k in expected_outputs(acq, staged, config.pipeline.steps)
                   if not k.exists() or k.stat().st_mtime < started]
        if acq.name not in published and not crash and not missing \
                and acq.name not in monitor.failed:
            complete(acq)  # graph plugins report nothing while running
        if acq.name in published and not crash:
            name = staging.name_prefix(acq)
            for line in qc_warnings(acq, out_dir):
                if not recap:  # the steps printed them as they ran, far up the console
                    print('qsmflow: the QC warnings recorded in the outputs (sidecars, QC '
                          'metrics, reports):', file=sys.stderr)
                    recap = True
                print(f'qsmflow: warning: {name}: {line}', file=sys.stderr)
                monitor.log(acq.subject, f'{name}: WARNING: {line}')
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


def qc_warnings(acq, out_dir) -> list[str]:
    """The QC warnings of ``acq``'s published outputs: ``QC.Warning`` of any step in the χ
    sidecar (a brain mask that looks like a head, χ implausible for tissue), then the
    ``QC.Warning`` of each regional table's sidecar (regions the brain mask empties) and
    those of its other guard rails (``QC.LabelVolumes``: labels far smaller or larger than
    the atlas's; ``QC.IronRich``: iron-rich nuclei that do not read paramagnetic)."""
    import json
    import re

    from qsmflow import bids_specs
    from qsmflow.interfaces.base import sidecar_of

    lines = []
    path = Path(sidecar_of(bids_specs.output_path(out_dir, 'chimap', acq.entities)))
    if path.exists():
        steps = json.loads(path.read_text()).get('QSMProcessing', [])
        lines += [f'{s.get("Step", "step")}: {s["QC"]["Warning"]}' for s in steps
                  if isinstance(s.get('QC'), dict) and s['QC'].get('Warning')]
    table = bids_specs.output_path(out_dir, 'stats_json', {**acq.entities, 'atlas': 'ATLAS'})
    pattern = re.compile(re.escape(table.name).replace('ATLAS', '([0-9A-Za-z]+)'))
    found = sorted(table.parent.glob('*_stats.json')) if table.parent.is_dir() else []
    for item in found:
        match = pattern.fullmatch(item.name)
        qc = json.loads(item.read_text()).get('QC') if match else None
        if not isinstance(qc, dict):
            continue
        if qc.get('Warning'):
            lines.append(f'atlas {match.group(1)} table: {qc["Warning"]}')
        for key, check in qc.items():  # the other guard rails (LabelVolumes, IronRich)
            if isinstance(check, dict) and check.get('Warning'):
                what = 'labels' if key == 'LabelVolumes' else 'table'
                lines.append(f'atlas {match.group(1)} {what}: {check["Warning"]}')
    return lines
