# SPDX-License-Identifier: Apache-2.0
"""Engine selection, per-node resources, staged outputs and the progress monitor."""
from __future__ import annotations

import io
import json
from argparse import Namespace
from types import SimpleNamespace

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmflow.execution import engines
from qsmflow.execution import staging
from qsmflow.errors import InputError
from qsmflow.bids.inputs import Acquisition
from qsmflow.execution.progress import RunMonitor, log_path


def _opts(**kw):
    """The engine section of the run configuration, built from command-line options."""
    from qsmflow.cli.config import engine_from_args

    base = {'plugin': None, 'plugin_args': None, 'nprocs': 2, 'mem_gb': None,
            'omp_nthreads': None, 'device': 'cpu'}
    base.update(kw)
    return engine_from_args(Namespace(**base))


def _workflow(mem=(0.5, 3.0), nprocs=(1, 8)):
    wf = pe.Workflow(name='top')
    sub = pe.Workflow(name='sub_01_wf')
    ident = pe.Node(niu.IdentityInterface(fields=['x']), name='inputnode')
    nodes = [pe.Node(niu.Function(function=lambda x: x, input_names=['x'],
                                  output_names=['y']), name=f'step{i}', mem_gb=m, n_procs=n)
             for i, (m, n) in enumerate(zip(mem, nprocs))]
    sub.connect(ident, 'x', nodes[0], 'x')
    sub.connect(nodes[0], 'y', nodes[1], 'x')
    wf.add_nodes([sub])
    return wf


def test_default_plugin_follows_nprocs():
    assert engines.select_plugin(_opts(nprocs=1))[:2] == ('linear', 'Linear')
    choice, name, args = engines.select_plugin(_opts(nprocs=3, mem_gb=5.0))
    assert (choice, name) == ('multiproc', 'MultiProc')
    assert args == {'n_procs': 3, 'memory_gb': 5.0, 'mp_context': 'forkserver'}


def test_plugin_args_json_text_and_file_override_defaults(tmp_path):
    args = engines.select_plugin(_opts(plugin='multiproc', plugin_args='{"n_procs": 1}'))[2]
    assert args['n_procs'] == 1
    path = tmp_path / 'args.json'
    path.write_text(json.dumps({'maxtasksperchild': 4}))
    args = engines.select_plugin(_opts(plugin='multiproc', plugin_args=str(path)))[2]
    assert args == {'n_procs': 2, 'mp_context': 'forkserver', 'maxtasksperchild': 4}


@pytest.mark.parametrize('value, message', [
    ('{"a": ', 'invalid JSON'), ('[1, 2]', 'neither a JSON object nor a file'),
    ('/no/such/file.json', 'neither a JSON object nor a file')])
def test_bad_plugin_args_are_one_line_errors(value, message):
    with pytest.raises(InputError, match=message):
        engines.load_plugin_args(value)


def test_cluster_plugin_without_scheduler_is_clear(monkeypatch):
    monkeypatch.setattr(engines.shutil, 'which', lambda exe: None)
    with pytest.raises(InputError, match='needs sbatch on PATH'):
        engines.select_plugin(_opts(plugin='slurm'))
    with pytest.raises(InputError, match='needs qsub on PATH'):
        engines.select_plugin(_opts(plugin='pbsgraph'))


def test_graph_plugins_resume_completed_jobs(monkeypatch):
    monkeypatch.setattr(engines.shutil, 'which', lambda exe: f'/usr/bin/{exe}')
    args = engines.select_plugin(_opts(plugin='slurmgraph'))[2]
    assert args['dont_resubmit_completed_jobs'] is True and 'sbatch_args' in args


def test_multiproc_threads_capped_and_memory_checked():
    wf = _workflow()
    engines.apply_resources(wf, 'multiproc', {'n_procs': 2, 'memory_gb': 4.0}, nprocs=2)
    steps = [n for n in engines.iter_nodes(wf) if engines.is_step(n)]
    assert len(steps) == 2 and max(n.n_procs for n in steps) == 2
    with pytest.raises(InputError, match='below the 3.0 GB that step step1 needs'):
        engines.apply_resources(_workflow(), 'multiproc', {'memory_gb': 2.0}, nprocs=2)


def test_slurm_jobs_ask_for_node_resources_unless_user_did():
    wf = _workflow()
    engines.apply_resources(wf, 'slurm', {'sbatch_args': '-p short'}, nprocs=2)
    big = wf.get_node('sub_01_wf.step1')
    assert big.plugin_args == {'sbatch_args': ' --mem=3072M --cpus-per-task=8',
                               'overwrite': False}  # a space: SLURMGraph concatenates
    wf = _workflow()
    engines.apply_resources(wf, 'slurm', {'sbatch_args': '--mem=8G -c 2'}, nprocs=2)
    assert wf.get_node('sub_01_wf.step1').plugin_args == {}


def _acq(subject, **ents):
    return Acquisition(entities={'subject': subject, **ents})


def test_staged_files_publish_by_acquisition(tmp_path):
    out = tmp_path / 'out'
    run1, run10 = _acq('01', run='1'), _acq('01', run='10')
    anat = staging.staging_root(out) / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    for name in ('sub-01_run-1_Chimap.nii.gz', 'sub-01_run-1_Chimap.json',
                 'sub-01_run-10_Chimap.nii.gz', '.sub-01_run-1_Chimap.json.tmp123'):
        (anat / name).write_text(name)
    assert staging.name_prefix(run1) == 'sub-01_run-1'
    moved = staging.publish(run1, out)
    assert sorted(p.name for p in moved) == ['sub-01_run-1_Chimap.json',
                                             'sub-01_run-1_Chimap.nii.gz']
    assert (out / 'sub-01' / 'anat' / 'sub-01_run-1_Chimap.nii.gz').read_text() == \
        'sub-01_run-1_Chimap.nii.gz'
    assert not (anat / '.sub-01_run-1_Chimap.json.tmp123').exists()  # a killed copy's
    assert [p.name for p in staging.staged_files(run10, out)] == ['sub-01_run-10_Chimap.nii.gz']
    staging.discard(run10, out)
    assert not staging.staging_root(out).exists()
    assert not (out / 'sub-01' / 'anat' / 'sub-01_run-10_Chimap.nii.gz').exists()


def _node(fullname):
    return SimpleNamespace(fullname=fullname, name=fullname.rsplit('.', 1)[-1])


def test_monitor_counts_logs_and_completes_once(tmp_path):
    a, b = _acq('01'), _acq('02')
    done, stream = [], io.StringIO()
    monitor = RunMonitor([a, b], {'sub_01': 2, 'sub_02': 2}, tmp_path, done.append,
                         stream=stream)
    for status in ('start', 'end'):
        monitor(_node('qsmflow_wf.sub_01_wf.qsm_wf.load'), status)
    monitor(_node('qsmflow_wf.sub_02_wf.qsm_wf.load'), 'exception')
    monitor(_node('qsmflow_wf.sub_01_wf.qsm_wf.invert'), 'end')
    monitor(_node('qsmflow_wf.sub_01_wf.qsm_wf.invert'), 'end')  # a rerun callback
    monitor(_node('qsmflow_wf.sub_02_wf.qsm_wf.invert'), 'end')
    assert done == [a]
    assert monitor.failed == {'sub_02': 'qsm_wf.load'}
    assert monitor.counts() == (3, 4, 2, 2)
    assert 'sub-01 done' in stream.getvalue()
    assert '3/4 steps, 2/2 participants' in monitor.status_line()
    log = log_path(tmp_path, '01').read_text()
    assert 'sub-01: qsm_wf.load started' in log and 'all 2 steps finished' in log
    assert 'sub-02: qsm_wf.load FAILED' in log_path(tmp_path, '02').read_text()


def test_monitor_does_not_count_the_steps_a_failure_skipped(tmp_path):
    """Nipype's Linear plugin ends the steps it skips after a failure as if they had run
    (no start, no result file); a step taken from the cache also ends without a start but
    has its result, and counts."""
    acq, done = _acq('01'), []
    monitor = RunMonitor([acq], {'sub_01': 3}, tmp_path, done.append, stream=io.StringIO())

    def node(name, ran):
        folder = tmp_path / 'work' / name
        folder.mkdir(parents=True)
        if ran:
            (folder / f'result_{name}.pklz').write_bytes(b'x')
        return SimpleNamespace(fullname=f'qsmflow_wf.sub_01_wf.qsm_wf.{name}', name=name,
                               output_dir=lambda: str(folder))

    monitor(node('load', ran=True), 'end')  # cached
    monitor(node('bg', ran=False), 'exception')
    monitor(node('invert', ran=False), 'end')  # skipped
    assert monitor.counts()[0] == 1 and monitor.failed == {'sub_01': 'qsm_wf.bg'}
    log = log_path(tmp_path, '01').read_text()
    assert 'qsm_wf.invert not run (an earlier step failed)' in log
    assert 'qsm_wf.load finished' in log and 'invert finished' not in log


def test_engine_console_keeps_the_steps_warnings_only():
    """A node's crash (``nipype.workflow``, with its traceback) stays off the console;
    the steps' warnings (``nipype.interface``) still show."""
    import logging

    from qsmflow.execution.console import quiet_engine_console

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    nipype_logger = logging.getLogger('nipype')
    nipype_logger.addHandler(handler)
    try:
        quiet_engine_console()
        quiet_engine_console()  # once
        assert len(handler.filters) == 1
        logging.getLogger('nipype.workflow').error('Node bg failed\nTraceback (most recent')
        logging.getLogger('nipype.interface').warning('qsmflow: χ map: beyond 1 ppm')
    finally:
        nipype_logger.removeHandler(handler)
    assert stream.getvalue() == 'qsmflow: warning: χ map: beyond 1 ppm\n'


def test_a_steps_warning_names_its_acquisition(tmp_path, monkeypatch):
    """Nipype runs each node in its folder under the acquisition's workflow: the console
    line says whose step warned (several participants run at once)."""
    import logging

    from qsmflow.execution.console import WarningLine

    record = logging.LogRecord('nipype.interface', logging.WARNING, __file__, 1,
                               'qsmflow: masking: looks like a head', None, None)
    node = tmp_path / 'qsmflow_wf' / 'sub_02_ses_b_run_1_wf' / 'qsm_wf' / 'brain_mask'
    node.mkdir(parents=True)
    monkeypatch.chdir(node)
    assert WarningLine().format(record) == \
        'qsmflow: warning: sub-02_ses-b_run-1: masking: looks like a head'
    monkeypatch.chdir(tmp_path)
    assert WarningLine().format(record) == 'qsmflow: warning: masking: looks like a head'


def test_cohort_bench_helpers_measure_this_process_tree():
    import os
    import sys

    from qsmflow.bench.cohort import cohort, run_and_sample, tree_rss_bytes

    assert tree_rss_bytes(os.getpid()) > 10e6
    ages = [p['age'] for p in cohort(8)]
    assert ages[0] == 20 and ages[-1] == 73 and ages == sorted(ages)
    code, wall, peak, tail = run_and_sample(
        [sys.executable, '-c', 'import numpy, time; a = numpy.ones(60_000_000); '
         'time.sleep(1.0); print("done")'], dict(os.environ))
    assert code == 0 and 'done' in tail and wall >= 1.0
    assert peak > 400e6  # the 480 MB array was seen
