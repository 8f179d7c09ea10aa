# SPDX-License-Identifier: Apache-2.0
"""qsmflow on a real SLURM cluster gives the same derivatives as MultiProc.

A single-node cluster (munged, slurmctld, slurmd from Debian's packages, installed when
missing; see ``tests/slurm_cluster.py``) is started on this machine. The demo cohort (tiny
phantom, two turned and shifted participants, the phantom template as TEMPLATEFLOW_HOME,
registration and atlas tables) then runs through ``qsmflow ... participant`` three times
side by side, each in a fresh interpreter: ``--plugin multiproc`` (the reference),
``--plugin slurm`` and ``--plugin slurmgraph`` (participant 01 only). Every derivative must
be identical: NIfTI headers and data bitwise (χ, masks, field maps, warps, template-space
χ, atlas labels), TSV tables, ITK transforms and ``.bidsignore`` byte for byte, JSON
sidecars equal; only the per-participant logs (timestamps) are not compared.
``qsmflow compare`` (pydra's SLURM worker) also runs a small grid through the cluster and
must give the table of pydra's local worker.

Needs root (package install, daemons) and takes a few minutes, so it runs only with
``QSMFLOW_TEST_SLURM=1`` (``.ci/run`` sets it).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from tests.slurm_cluster import SlurmCluster, pid_alive

ENABLED = os.environ.get('QSMFLOW_TEST_SLURM') == '1'
pytestmark = [
    pytest.mark.slurm, pytest.mark.slow,
    pytest.mark.skipif(not ENABLED, reason='SLURM cluster tests run with QSMFLOW_TEST_SLURM=1 '
                                           '(they install and start munge + slurm; root)'),
]

#: Processes / threads per step for every run: the same in all three, so that the numbers
#: cannot differ through a different thread count.
NPROCS = 2
#: Arguments the cluster runs pass to the SLURM plugins (a user's typical partition choice).
SBATCH_ARGS = {'sbatch_args': f'--partition={SlurmCluster.partition}'}
#: Steps every participant submits as a SLURM job (a subset; sinks run in-process).
SUBMITTED_STEPS = ('load_megre', 'brain_mask', 'field_fit', 'quality_mask', 'bg_removal',
                   'inversion', 'reference', 'register', 'to_native', 'stats')
#: Files whose content depends on the run itself (timestamps, durations): present in both
#: outputs, content not compared.
RUN_LOGS = ('logs/',)
#: Job states of jobs that have left the queue.
FINISHED_STATES = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY',
                   'PREEMPTED', 'BOOT_FAIL', 'DEADLINE')
RUN_TIMEOUT_S = 900
#: Participants of the SLURMGraph run: one, as every step is a job there (about a second of
#: interpreter start-up each).
GRAPH_SUBJECTS = ('01',)


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    """The demo cohort at the tiny size, and the phantom template in templateflow layout."""
    from qsmflow.cli.demo import DEMO_PARTICIPANTS, DEMO_POSE
    from qsmflow.phantom.bids import write_dataset
    from qsmflow.phantom.template import write_template

    root = tmp_path_factory.mktemp('slurm')
    write_dataset(root / 'rawdata', root / 'truth', [dict(p) for p in DEMO_PARTICIPANTS],
                  size='tiny', **DEMO_POSE)
    write_template(root / 'templateflow', size='tiny')
    return root


@pytest.fixture(scope='module')
def cluster():
    """A running single-node SLURM cluster, stopped (every process ended) afterwards."""
    slurm = SlurmCluster()
    t0 = time.monotonic()
    slurm.start()
    slurm.startup_s = time.monotonic() - t0
    yield slurm
    slurm.stop()


def _start(cohort, name: str, engine: list[str], env) -> dict:
    """Launch ``qsmflow rawdata out-<name> participant`` with ``engine`` flags."""
    from qsmflow.phantom.head import SIZES
    from qsmflow.phantom.template import ATLAS, TEMPLATE

    out, work = cohort / f'out-{name}', cohort / f'work-{name}'
    args = [sys.executable, '-m', 'qsmflow', str(cohort / 'rawdata'), str(out), 'participant',
            '-w', str(work), '--skip-bids-validation', '--nprocs', str(NPROCS),
            '--template', TEMPLATE, '--template-resolution', str(int(SIZES['tiny'])),
            '--atlases', ATLAS, *engine]
    env = {**env, 'TEMPLATEFLOW_HOME': str(cohort / 'templateflow')}
    log = (cohort / f'{name}.log').open('w')
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            cwd=cohort)
    return {'name': name, 'proc': proc, 'out': out, 'work': work, 'log': cohort / f'{name}.log'}


def _check_ok(run):
    text = run['log'].read_text(errors='replace')
    assert run['code'] == 0, (f'{run["name"]} run exited with {run["code"]} after '
                              f'{run["seconds"]:.0f} s:\n' + '\n'.join(text.splitlines()[-40:]))


def _is_graph_job(name: str) -> bool:
    """SLURMGraph names its jobs ``j<index>_<node>``; the SLURM plugin ``<node>.<wf>...``."""
    return re.match(r'j\d+_', name) is not None


@pytest.fixture(scope='module')
def runs(cohort, cluster):
    """The three runs, side by side: MultiProc outside the cluster, SLURM and SLURMGraph
    sharing it (the cores are otherwise idle while jobs are submitted and polled)."""
    t0 = time.monotonic()
    started = [
        _start(cohort, 'multiproc', ['--plugin', 'multiproc'], os.environ),
        _start(cohort, 'slurm', ['--plugin', 'slurm', '--plugin-args',
                                 json.dumps(SBATCH_ARGS)], cluster.env),
        _start(cohort, 'slurmgraph', ['--plugin', 'slurmgraph', '--plugin-args',
                                      json.dumps(SBATCH_ARGS), '--participant-label',
                                      *GRAPH_SUBJECTS], cluster.env)]
    runs = {r['name']: r for r in started}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while any('code' not in r for r in started):
        for run in started:
            if 'code' in run or run['proc'].poll() is None:
                continue
            run['code'], run['seconds'] = run['proc'].returncode, time.monotonic() - t0
            if run['name'] == 'slurmgraph':  # what is still queued when qsmflow returns
                run['queued_after'] = [j['JobName'] for j in cluster.jobs()
                                       if _is_graph_job(j['JobName'])
                                       and j['JobState'] not in FINISHED_STATES]
        if time.monotonic() > deadline:
            for run in started:
                if 'code' not in run:
                    run['proc'].kill()
                    run['proc'].wait()
                    run['code'], run['seconds'] = 'timeout', time.monotonic() - t0
        time.sleep(0.5)
    jobs = cluster.jobs()
    runs['slurm']['jobs'] = [j for j in jobs if not _is_graph_job(j['JobName'])]
    runs['slurmgraph']['jobs'] = [j for j in jobs if _is_graph_job(j['JobName'])]
    print(f'\nSLURM test timings: cluster start-up {cluster.startup_s:.1f} s; runs side by '
          'side, finished after ' + ', '.join(f'{r["name"]} {r["seconds"]:.0f} s'
                                             for r in started))
    return runs


# ---------------------------------------------------------------------------- comparison
def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob('*')) if p.is_file()}


def _nifti_differences(a: Path, b: Path) -> list[str]:
    ia, ib = nb.load(a), nb.load(b)
    problems = []
    if ia.header.binaryblock != ib.header.binaryblock:
        fields = [k for k in ia.header if not np.array_equal(ia.header[k], ib.header[k])]
        problems.append(f'header differs in {fields}')
    da, db = ia.dataobj.get_unscaled(), ib.dataobj.get_unscaled()
    if da.dtype != db.dtype or da.shape != db.shape:
        problems.append(f'data {da.dtype}{da.shape} vs {db.dtype}{db.shape}')
    elif da.tobytes() != db.tobytes():
        diff = np.abs(da.astype(np.float64) - db.astype(np.float64))
        problems.append(f'data differ in {int(np.count_nonzero(diff))} of {diff.size} '
                        f'voxels, max |difference| {np.nanmax(diff):.3g}')
    return problems


def _json_differences(a: Path, b: Path) -> list[str]:
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())

    def canon(value):  # NaN equals NaN here
        return json.dumps(value, sort_keys=True)

    if canon(ja) == canon(jb):
        return []
    keys = sorted(k for k in set(ja) | set(jb) if canon(ja.get(k)) != canon(jb.get(k))) \
        if isinstance(ja, dict) and isinstance(jb, dict) else ['(top level)']
    return [f'JSON fields differ: {keys}']


def _subject(rel: str) -> str | None:
    """The participant label a derivative belongs to (``sub-01/...``, ``logs/sub-01.log``)."""
    found = re.search(r'(?:^|/)sub-([A-Za-z0-9]+)', rel)
    return found.group(1) if found else None


def _run_record_key(rel: str) -> str:
    """``logs/participant-<time>_config.json`` (the run configuration, named by the time the
    run started) with the time left out, so two runs' records pair up."""
    return re.sub(r'^(logs/[a-z]+)-[0-9-]+(_config\.json)$', r'\1-<time>\2', rel)


def compare_derivatives(reference: Path, other: Path, subjects=None) -> list[str]:
    """Every difference between two qsmflow output folders, one line each (only the
    dataset-level files and the ``sub-<label>`` folders of ``subjects`` when given)."""
    ref = {_run_record_key(k): v for k, v in _files(reference).items()}
    oth = {_run_record_key(k): v for k, v in _files(other).items()}
    if subjects is not None:
        ref = {k: v for k, v in ref.items() if _subject(k) in (None, *subjects)}
    problems = [f'only in {reference.name}: {k}' for k in sorted(set(ref) - set(oth))]
    problems += [f'only in {other.name}: {k}' for k in sorted(set(oth) - set(ref))]
    for rel in sorted(set(ref) & set(oth)):
        a, b = ref[rel], oth[rel]
        if rel.startswith(RUN_LOGS):
            continue
        if rel.endswith(('.nii', '.nii.gz')):
            found = _nifti_differences(a, b)
        elif rel.endswith('.json'):
            found = _json_differences(a, b)
        else:  # .tsv tables, .mat transforms, .bidsignore: byte for byte
            found = [] if a.read_bytes() == b.read_bytes() else ['content differs']
        problems += [f'{rel}: {p}' for p in found]
    return problems


def _outputs(run) -> dict[str, Path]:
    return {k: v for k, v in _files(run['out']).items() if not k.startswith(RUN_LOGS)}


# ---------------------------------------------------------------------------- tests
def test_cluster_node_is_idle_and_configured(cluster):
    info = cluster.run(['sinfo', '--noheader', '--Node', '--format=%N %t %c %m']).stdout.split()
    assert info[0] == cluster.node and info[2] == str(os.cpu_count())
    assert int(info[3]) > 1024  # RealMemory (MB) from the machine


def test_multiproc_reference_completes(runs):
    _check_ok(runs['multiproc'])
    names = _outputs(runs['multiproc'])
    for sub in ('01', '02'):
        for kind in ('Chimap.nii.gz', 'desc-brain_mask.nii.gz', 'atlas-Phantom_stats.tsv',
                     'from-MEGRE_to-QSMPhantom_mode-image_desc-affine_xfm.mat'):
            assert f'sub-{sub}/anat/sub-{sub}_{kind}' in names, kind


def test_slurm_run_submits_every_step_as_a_job(runs, cluster):
    run = runs['slurm']
    _check_ok(run)
    jobs = run['jobs']
    bad = [(j['JobName'], j['JobState'], j.get('ExitCode')) for j in jobs
           if j['JobState'] != 'COMPLETED' or j.get('ExitCode') != '0:0']
    assert not bad, bad
    names = [j['JobName'] for j in jobs]
    for sub in ('sub_01', 'sub_02'):
        for step in SUBMITTED_STEPS:
            assert any(n.startswith(f'{step}.') and f'.{sub}_wf.' in n for n in names), \
                (step, sub, names)
    # Each job asks for its step's memory and threads (engines.apply_resources).
    register = next(j for j in jobs if j['JobName'].startswith('register.'))
    assert register['NumCPUs'] == str(NPROCS)
    assert register['MinMemoryNode'] == '2G', register['MinMemoryNode']


def test_slurm_outputs_identical_to_multiproc(runs):
    _check_ok(runs['multiproc'])
    _check_ok(runs['slurm'])
    problems = compare_derivatives(runs['multiproc']['out'], runs['slurm']['out'])
    assert not problems, '\n'.join(problems)


def test_slurmgraph_waits_for_its_jobs_and_matches_multiproc(runs):
    run = runs['slurmgraph']
    _check_ok(run)
    assert run['queued_after'] == [], 'qsmflow returned while its jobs were still queued'
    assert run['jobs'], 'SLURMGraph submitted no job'
    bad = [(j['JobName'], j['JobState']) for j in run['jobs'] if j['JobState'] != 'COMPLETED']
    assert not bad, bad
    names = [j['JobName'] for j in run['jobs']]
    for step in SUBMITTED_STEPS:
        assert any(re.fullmatch(rf'j\d+_{step}', n) for n in names), (step, names)
    _check_ok(runs['multiproc'])
    problems = compare_derivatives(runs['multiproc']['out'], run['out'], GRAPH_SUBJECTS)
    assert not problems, '\n'.join(problems)


#: ``sacct`` for a cluster without an accounting database: pydra's SLURM worker asks sacct
#: for a finished job's state and exit code; this answers from slurmctld's memory of the
#: job (``scontrol``; finished jobs are kept for ``MinJobAge``, an hour here).
SACCT_SHIM = """#!{python}
import subprocess, sys
job = sys.argv[sys.argv.index('-j') + 1]
out = subprocess.run(['scontrol', '--oneliner', 'show', 'job', job], capture_output=True,
                     text=True).stdout
fields = dict(item.split('=', 1) for item in out.split() if '=' in item)
if 'JobState' in fields:
    print(job, fields['JobState'], fields['ExitCode'])
"""
#: The grid ``qsmflow compare`` runs through SLURM (2 × 1 pipelines, one participant; TKD
#: keeps it short: each task is a job that starts an interpreter).
COMPARE_GRID = ('bf_removal=pdf,vsharp', 'inversion=tkd')


def test_compare_runs_a_small_grid_through_slurm(cohort, cluster, tmp_path):
    """``qsmflow compare --plugin slurm``: every pydra task is a SLURM job, the shared
    field map is computed once, and the table equals the local (cf) worker's."""
    shim = tmp_path / 'bin'
    shim.mkdir()
    (shim / 'sacct').write_text(SACCT_SHIM.format(python=sys.executable))
    (shim / 'sacct').chmod(0o755)
    env = {**cluster.env, 'PATH': f'{shim}{os.pathsep}{cluster.env.get("PATH", "")}'}
    before = {j['JobId'] for j in cluster.jobs()}
    base = [sys.executable, '-m', 'qsmflow', 'compare', str(cohort / 'rawdata')]
    flags = ['--skip-bids-validation', '--participant-label', '01', '--segmentations',
             str(cohort / 'truth'), '--grid', *COMPARE_GRID]
    tables = {}
    for plugin, extra in (('slurm', ['--plugin-args', json.dumps(SBATCH_ARGS)]),
                          ('cf', ['--nprocs', str(NPROCS)])):
        out = cohort / f'out-compare-{plugin}'
        proc = subprocess.run([*base, str(out), *flags, '--plugin', plugin, *extra],
                              env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 0, (plugin, proc.stdout[-2000:], proc.stderr[-3000:])
        tables[plugin] = (out / 'compare' / 'table.tsv').read_text().splitlines()
        if plugin == 'slurm':
            work = out / 'compare' / 'work'
            fields = [d for d in work.glob('*/total_field_ppm.nii.gz')]
            assert len(fields) == 1, fields
    names = [j['JobName'] for j in cluster.jobs() if j['JobId'] not in before]
    for task in ('load', 'brain', 'field', 'bf_removal', 'inversion', 'reference', 'tables'):
        assert any(n.startswith(f'{task}.') for n in names), (task, names)
    # same rows and numbers; run_time_s (the last column) is the run's own
    assert [r.rsplit('\t', 1)[0] for r in tables['slurm']] == \
        [r.rsplit('\t', 1)[0] for r in tables['cf']]


def test_cluster_stops_without_leftover_processes(runs, cluster):
    pids = cluster.daemon_pids()
    assert all(pids.values()), pids
    cluster.stop()
    alive = [f'{name} ({pid})' for name, pid in pids.items() if pid_alive(pid)]
    assert not alive, f'still running after stop: {alive}'
    assert cluster.leftover_pids() == []
    assert not cluster.root.exists()
