# SPDX-License-Identifier: Apache-2.0
"""Execution engines: which Nipype plugin runs the workflow, with which resources.

``--plugin`` picks one of Nipype's own plugins; ``--plugin-args`` (JSON text or a JSON
file) is passed to it unchanged, after qsmflow's defaults. Every node carries ``mem_gb``
and ``n_procs`` (estimated from the image size when the workflow is built): MultiProc
schedules with them, and on SLURM each job asks for them (``--mem``, ``--cpus-per-task``).
"""
from __future__ import annotations

import getpass
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from qsmflow.errors import InputError

#: ``--plugin`` choice → Nipype plugin name.
NIPYPE_PLUGINS = {'linear': 'Linear', 'multiproc': 'MultiProc', 'slurm': 'SLURM',
                  'slurmgraph': 'SLURMGraph', 'sge': 'SGE', 'sgegraph': 'SGEGraph',
                  'pbs': 'PBS', 'pbsgraph': 'PBSGraph'}
#: Plugins that submit the whole graph at once and return (no progress callbacks).
GRAPH_PLUGINS = ('slurmgraph', 'sgegraph', 'pbsgraph')


def load_plugin_args(value: str | None) -> dict:
    """Parse ``--plugin-args``: a JSON object, or the path of a file holding one."""
    if not value:
        return {}
    text = value
    if not value.lstrip().startswith('{'):
        path = Path(value).expanduser()
        if not path.is_file():
            raise InputError(f'--plugin-args {value}: neither a JSON object nor a file; give '
                             "e.g. '{\"sbatch_args\": \"-p short\"}' or a .json file")
        text = path.read_text()
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f'--plugin-args {value}: invalid JSON ({exc})') from None
    if not isinstance(args, dict):
        raise InputError(f'--plugin-args {value}: expected a JSON object ({{...}})')
    return args


def select_plugin(engine) -> tuple[str, str, dict]:
    """``(choice, nipype_name, plugin_args)`` of a :class:`qsmflow.config.EngineConfig`.

    qsmflow's own plugin arguments come first, the user's ``--plugin-args`` last.
    """
    choice = engine.plugin
    args = {}
    if choice == 'multiproc':
        args['n_procs'] = engine.nprocs
        # workers forked from a clean single-threaded server: a plain fork of the running
        # qsmflow process copies locks held by its threads (pool feeder, numba/OpenMP), and
        # a worker can then wait on one forever (seen as a silent hang)
        args['mp_context'] = 'forkserver'
        if engine.mem_gb:
            args['memory_gb'] = float(engine.mem_gb)
    elif choice.startswith('slurm'):
        args['sbatch_args'] = ''
        os.environ.setdefault('LOGNAME', getpass.getuser())  # Nipype's SLURM needs it
    elif choice.startswith(('sge', 'pbs')):
        args['qsub_args'] = ''
    if choice in GRAPH_PLUGINS:
        args['dont_resubmit_completed_jobs'] = True  # resume: finished nodes stay finished
    if choice not in ('linear', 'multiproc'):
        exe = {'slurm': 'sbatch', 'sge': 'qsub', 'pbs': 'qsub'}[choice.replace('graph', '')]
        if shutil.which(exe) is None:
            raise InputError(f'--plugin {choice} needs {exe} on PATH; run qsmflow on a '
                             'submit host of the cluster, or choose --plugin multiproc')
    args.update(engine.plugin_args)
    return choice, NIPYPE_PLUGINS[choice], args


def iter_nodes(workflow):
    """Every node of ``workflow`` and its sub-workflows (identity nodes included)."""
    from nipype.pipeline.engine import Workflow

    for item in workflow._graph.nodes():
        if isinstance(item, Workflow):
            yield from iter_nodes(item)
        else:
            yield item


def is_step(node) -> bool:
    """True for nodes that do work (Nipype drops identity nodes before running)."""
    from nipype.interfaces.utility import IdentityInterface

    return not isinstance(node.interface, IdentityInterface)


def apply_resources(workflow, choice: str, args: dict, nprocs: int) -> None:
    """Fit every node's request to the engine.

    Threads per node never exceed ``nprocs``. With MultiProc and ``--mem-gb``, a node that
    needs more memory than allowed is an error before anything runs (Nipype would stop
    mid-run). With SLURM, each job asks for its node's memory and CPUs unless the user's
    ``sbatch_args`` already set them.
    """
    steps = [n for n in iter_nodes(workflow) if is_step(n)]
    for node in steps:
        node.n_procs = max(1, min(int(node.n_procs), nprocs)) if choice == 'multiproc' \
            else max(1, int(node.n_procs))
    if choice == 'multiproc' and 'memory_gb' in args:
        big = max(steps, key=lambda n: n.mem_gb, default=None)
        if big is not None and big.mem_gb > args['memory_gb']:
            raise InputError(f'--mem-gb {args["memory_gb"]:g} is below the {big.mem_gb:.1f} GB '
                             f'that step {big.name} needs for these images; raise --mem-gb')
    if choice.startswith('slurm'):
        user = str(args.get('sbatch_args', ''))
        for node in steps:
            if node.run_without_submitting:
                continue
            extra = []
            if not re.search(r'--mem(-per-cpu)?[= ]', user):
                extra.append(f'--mem={max(256, math.ceil(node.mem_gb * 1024))}M')
            if not re.search(r'(--cpus-per-task[= ]|(^|\s)-c\s)', user):
                extra.append(f'--cpus-per-task={node.n_procs}')
            if extra:
                # leading space: SLURMGraph glues the user's sbatch_args to the node's
                node.plugin_args = {'sbatch_args': ' ' + ' '.join(extra), 'overwrite': False}


def wait_for_graph_jobs(work_dir: Path, since: float, poll_s: float = 2.0) -> None:
    """Block until the jobs a graph plugin submitted (SLURM) have left the queue.

    Nipype's graph plugins return right after submission. Jobs whose dependency can never
    be satisfied (an upstream job failed) are cancelled, so the wait always ends.
    """
    names = set()
    for script in Path(work_dir).rglob('submit_jobs.sh'):
        if script.stat().st_mtime >= since:
            names.update(re.findall(r' -J (\S+) ', script.read_text()))
    if not names or shutil.which('squeue') is None:
        return
    query = ['squeue', '-h', '-o', '%i %j %r', '-u', getpass.getuser(),
             '-n', ','.join(sorted(names))]
    while True:
        lines = subprocess.run(query, check=False, capture_output=True, text=True).stdout.split('\n')
        jobs = [ln.split() for ln in lines if ln.strip()]
        if not jobs:
            return
        stuck = [j[0] for j in jobs if len(j) > 2 and j[2] == 'DependencyNeverSatisfied']
        if stuck and len(stuck) == len(jobs):
            subprocess.run(["scancel", *stuck], check=False, capture_output=True)
        time.sleep(poll_s)


def multiproc_plugin(plugin_args: dict):
    """Nipype's MultiProc plugin whose workers start with
    :func:`qsmflow.execution.console.worker_initializer`: their console shows the steps'
    warnings, not every node set up, run and finished.

    Nipype gives its process pool its own initializer; the pool is made again (before any
    worker has started) with one that installs the console filter, then calls Nipype's.
    The class keeps Nipype's name, so the workflow still knows the plugin as 'MultiProc'.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from nipype.pipeline.plugins.multiproc import MultiProcPlugin as NipypeMultiProc

    from qsmflow.execution.console import worker_initializer

    class MultiProcPlugin(NipypeMultiProc):
        def __init__(self, plugin_args=None):
            super().__init__(plugin_args=plugin_args)
            self.pool.shutdown(wait=True)  # no worker yet: they start at the first job
            self.pool = ProcessPoolExecutor(
                max_workers=self.processors, initializer=worker_initializer,
                initargs=(self._cwd,),
                mp_context=mp.get_context(self.plugin_args.get('mp_context')))

    return MultiProcPlugin(plugin_args=plugin_args)
