# SPDX-License-Identifier: Apache-2.0
"""The comparison workflow on pydra: every line of qsmflow that knows pydra is here.

**Why pydra 0.25** (pinned ``pydra>=0.25,<0.26`` in ``setup.cfg``): it is pydra's last
stable release and what ``pip install pydra`` installs; 1.0a12 is a pre-release whose API
(``@python.define``, ``workflow.define``, new submitter) changed between each of its
thirteen alphas, so code written for it today would need changes with each release, and
pip only installs it on request (``--pre`` or an explicit pre-release pin). 0.25 has all
that the comparison needs: splitters and combiners, content-addressed caching (a task's
folder is named by the hash of its inputs, files hashed by content), and the
concurrent-futures and SLURM workers. Moving to 1.0 touches this module only: the task
definitions (one decorator each), :func:`build_workflow` and :func:`run_workflow`; the
steps (:mod:`qsmflow.compare.steps`) and everything around know no pydra.

One workflow, split over acquisitions × pipelines (outer product) and combined over both.
Each reconstruction step is a pydra task (:mod:`qsmflow.compare.steps`: the participant
level's Nipype interface, run in the task's folder) whose inputs are the outputs of the
steps before it and its own step's options only (:func:`qsmflow.compare.pipelines.
task_configs`). Two pipelines that agree up to a step therefore give that step and every
one before it the same inputs, hence the same hash and the same cache folder: pydra runs
it once (a concurrent twin waits on the folder's lock and reads the result) and every
rerun with the same cache reuses whatever had finished.

(No ``from __future__ import annotations`` here: pydra reads the task functions'
annotations as types.)
"""
import contextlib
import multiprocessing
import os
import time
import typing as ty
from pathlib import Path

os.environ.setdefault('NO_ET', '1')  # no network version check (etelemetry) in pydra

import pydra  # noqa: E402
from fileformats.generic import File  # noqa: E402

from qsmflow.compare import PLUGINS, steps  # noqa: E402
#: The workflow's inputs that vary with the acquisition and with the pipeline.
ACQ_FIELDS = ('acq_name', 'mag_files', 'phase_files', 'echo_times', 'b0_tesla', 'phase_units',
              'label_sets')
PIPELINE_FIELDS = ('pipeline', 'brain', 'field', 'analysis_mask', 'bf_removal', 'inversion',
                   'reference')
#: Folder of pydra's file-hash cache inside the task cache (``PYDRA_HASH_CACHE``).
HASH_CACHE = 'hashes'
#: Steps whose run time is reported, in order (outputs ``<step>_seconds``).
TIMED_STEPS = ('load', 'brain', 'field', 'analysis_mask', 'bf_removal', 'inversion',
               'reference', 'tables')


@pydra.mark.task
@pydra.mark.annotate({'return': {'magnitude': File, 'phase': File, 'seconds': float}})
def load_task(mag_files: ty.List[File], phase_files: ty.List[File], echo_times: list,
              b0_tesla: float, phase_units: ty.Any):
    return steps.load_megre([str(f) for f in mag_files], [str(f) for f in phase_files],
                            echo_times, b0_tesla, phase_units)


@pydra.mark.task
@pydra.mark.annotate({'return': {'mask': File, 'seconds': float}})
def brain_task(magnitude: File, config: dict):
    return steps.brain_mask(str(magnitude), config)


@pydra.mark.task
@pydra.mark.annotate({'return': {'total_field': File, 'noise_hz': File, 'seconds': float}})
def field_task(magnitude: File, phase: File, mask: File, echo_times: list, b0_tesla: float,
               config: dict):
    return steps.field_map(str(magnitude), str(phase), str(mask), echo_times, b0_tesla, config)


@pydra.mark.task
@pydra.mark.annotate({'return': {'mask': File, 'seconds': float}})
def analysis_mask_task(magnitude: File, phase: File, mask: File, echo_times: list,
                       config: dict):
    return steps.analysis_mask(str(magnitude), str(phase), str(mask), echo_times, config)


@pydra.mark.task
@pydra.mark.annotate({'return': {'local_field': File, 'mask': File, 'seconds': float}})
def bg_removal_task(total_field: File, mask: File, config: dict):
    return steps.bg_removal(str(total_field), str(mask), config)


@pydra.mark.task
@pydra.mark.annotate({'return': {'chi': File, 'seconds': float}})
def inversion_task(local_field: File, mask: File, magnitude: File, noise_hz: File,
                   b0_tesla: float, config: dict):
    return steps.inversion(str(local_field), str(mask), str(magnitude), str(noise_hz),
                           b0_tesla, config)


@pydra.mark.task
@pydra.mark.annotate({'return': {'chimap': File, 'chimap_path': str, 'seconds': float}})
def reference_task(chi: File, mask: File, magnitude: File, echo_times: list, config: dict):
    # chimap_path: the file in the task's folder, beside its sidecar (a workflow copies
    # its File outputs into its own folder, without sidecars)
    chimap, seconds = steps.reference(str(chi), str(mask), str(magnitude), echo_times, config)
    return chimap, chimap, seconds


@pydra.mark.task
@pydra.mark.annotate({'return': {'tables': list, 'seconds': float}})
def tables_task(chimap: File, mask: File, label_sets: list):
    return steps.regional_tables(str(chimap), str(mask), label_sets)


def build_workflow(runs_acq: list[dict], runs_pipeline: list[dict], cache_dir) -> pydra.Workflow:
    """The comparison workflow over ``runs_acq`` × ``runs_pipeline``.

    Parameters
    ----------
    runs_acq : list of dict
        One per acquisition, with the keys of :data:`ACQ_FIELDS`.
    runs_pipeline : list of dict
        One per pipeline, with the keys of :data:`PIPELINE_FIELDS` (the task options of
        :func:`qsmflow.compare.pipelines.task_configs` and the pipeline's name).
    cache_dir : path
        pydra's cache: every task's folder, reused by reruns.
    """
    inputs = {k: [r[k] for r in runs_acq] for k in ACQ_FIELDS}
    inputs.update({k: [r[k] for r in runs_pipeline] for k in PIPELINE_FIELDS})
    wf = pydra.Workflow(name='compare', input_spec=[*ACQ_FIELDS, *PIPELINE_FIELDS],
                        cache_dir=str(cache_dir))
    wf.split([tuple(ACQ_FIELDS), tuple(PIPELINE_FIELDS)], **inputs)
    lz = wf.lzin
    wf.add(load_task(name='load', mag_files=lz.mag_files, phase_files=lz.phase_files,
                     echo_times=lz.echo_times, b0_tesla=lz.b0_tesla,
                     phase_units=lz.phase_units))
    wf.add(brain_task(name='brain', magnitude=wf.load.lzout.magnitude, config=lz.brain))
    wf.add(field_task(name='field', magnitude=wf.load.lzout.magnitude,
                      phase=wf.load.lzout.phase, mask=wf.brain.lzout.mask,
                      echo_times=lz.echo_times, b0_tesla=lz.b0_tesla, config=lz.field))
    wf.add(analysis_mask_task(name='analysis_mask', magnitude=wf.load.lzout.magnitude,
                              phase=wf.load.lzout.phase, mask=wf.brain.lzout.mask,
                              echo_times=lz.echo_times, config=lz.analysis_mask))
    wf.add(bg_removal_task(name='bf_removal', total_field=wf.field.lzout.total_field,
                           mask=wf.analysis_mask.lzout.mask, config=lz.bf_removal))
    wf.add(inversion_task(name='inversion', local_field=wf.bf_removal.lzout.local_field,
                          mask=wf.bf_removal.lzout.mask, magnitude=wf.load.lzout.magnitude,
                          noise_hz=wf.field.lzout.noise_hz, b0_tesla=lz.b0_tesla,
                          config=lz.inversion))
    wf.add(reference_task(name='reference', chi=wf.inversion.lzout.chi,
                          mask=wf.bf_removal.lzout.mask, magnitude=wf.load.lzout.magnitude,
                          echo_times=lz.echo_times, config=lz.reference))
    wf.add(tables_task(name='tables', chimap=wf.reference.lzout.chimap,
                       mask=wf.bf_removal.lzout.mask, label_sets=lz.label_sets))
    wf.combine(['acq_name', 'pipeline'])
    wf.set_output([('chimap', wf.reference.lzout.chimap_path), ('tables', wf.tables.lzout.tables),
                   *((f'{s}_seconds', getattr(wf, s).lzout.seconds) for s in TIMED_STEPS)])
    return wf


def run_workflow(runs_acq: list[dict], runs_pipeline: list[dict], cache_dir, *,
                 plugin: str = 'cf', nprocs: int = 1, plugin_args: dict | None = None) -> list:
    """Run the comparison; one dict per acquisition × pipeline (acquisition-major order):
    ``acq_name``, ``pipeline``, ``chimap``, ``tables`` and ``<step>_seconds``.

    ``plugin`` ``'cf'`` runs on ``nprocs`` local processes (concurrent futures), ``'slurm'``
    submits every task with ``sbatch`` (``plugin_args``, e.g. ``{"sbatch_args": "-p
    short"}``, go to pydra's SLURM worker; ``cache_dir`` must be on a shared file system).
    """
    if plugin not in PLUGINS:
        raise ValueError(f'unknown plugin {plugin!r}; choose one of {PLUGINS}')
    wf = build_workflow(runs_acq, runs_pipeline, cache_dir)
    kwargs = dict(plugin_args or {})
    if plugin == 'cf':
        kwargs.setdefault('n_procs', nprocs)
    # pydra's cache of file hashes goes inside the cache too (not ~/.cache/pydra): nothing
    # outside the output or work folder, and its locks are cleared with the others
    os.environ['PYDRA_HASH_CACHE'] = str(Path(cache_dir) / HASH_CACHE)
    started = time.time()
    try:
        with _forkserver(), pydra.Submitter(plugin=plugin, **kwargs) as submitter:
            submitter(wf)
    except Exception:
        failed = failed_tasks(cache_dir, since=started)
        if failed:
            raise TaskFailure('; '.join(failed)) from None
        raise
    results = wf.result(return_inputs=False)
    out = []
    order = [(a['acq_name'], p['pipeline']) for a in runs_acq for p in runs_pipeline]
    for (acq_name, pipeline), result in zip(order, results, strict=True):
        if result.errored:
            raise RuntimeError(f'{acq_name} × {pipeline}: a task failed (see {cache_dir})')
        values = {k: v for k, v in result.output.__dict__.items() if not k.startswith('_')}
        values['chimap'] = str(values['chimap'])
        out.append({'acq_name': acq_name, 'pipeline': pipeline, **values})
    return out


@contextlib.contextmanager
def _forkserver():
    """Start the concurrent-futures worker's processes from a fork server while pydra runs.

    pydra 0.25 builds its process pool with the default start method (``fork`` on Linux):
    once this process has used numba's OpenMP threads, a forked worker is terminated
    ("fork() called from a process already using GNU OpenMP") and the pool breaks. The
    participant level gives Nipype's MultiProc ``mp_context='forkserver'`` for the same
    reason (:func:`qsmflow.execution.engines.select_plugin`). The previous default is
    restored afterwards.
    """
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method('forkserver', force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(before, force=True)


class TaskFailure(RuntimeError):
    """A step of the comparison failed; the text names each failed step, its options, the
    error and the folder holding pydra's crash record."""


def failed_tasks(cache_dir, since: float = 0.0) -> list[str]:
    """One line per task that failed in ``cache_dir`` since ``since`` (epoch seconds):
    step, options, the error's last line and the folder of its ``_error.pklz``."""
    import cloudpickle

    lines = []
    for error in sorted(Path(cache_dir).glob('FunctionTask_*/_error.pklz')):
        if error.stat().st_mtime < since:
            continue
        info = cloudpickle.loads(error.read_bytes())
        message = ''.join(info.get('error message', [])).strip().splitlines() or ['?']
        try:
            task = cloudpickle.loads((error.parent / '_task.pklz').read_bytes())
            what = f'step {task.name} {getattr(task.inputs, "config", "")}'.rstrip()
        except Exception:  # the record of the task itself is unreadable: name the folder
            what = 'a step'
        lines.append(f'{what} failed: {message[-1]} (details: {error})')
    return lines


def cache_folders(cache_dir) -> list[Path]:
    """Task folders of pydra's cache that hold a finished result (``_result.pklz``)."""
    return sorted(p.parent for p in Path(cache_dir).glob('*/_result.pklz'))


def stale_locks(cache_dir) -> list[Path]:
    """Lock files pydra leaves in its cache (tasks, workflows, and its file-hash cache)
    when its process is killed (soft locks: a file that exists is a held lock, so a killed
    run's would block every rerun forever)."""
    cache = Path(cache_dir)
    return sorted([*cache.glob('*.lock'), *(cache / HASH_CACHE).glob('*.lock')])
