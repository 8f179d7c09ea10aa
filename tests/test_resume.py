# SPDX-License-Identifier: Apache-2.0
"""Kill and resume: a run killed (SIGKILL to its whole process group, Nipype workers and
the spawned ANTs processes included) and rerun with the same work directory finishes,
reuses the steps that had finished, and gives outputs identical to an uninterrupted run;
rerunning on a finished output directory recomputes nothing and duplicates nothing.

The tiny phantom (3 mm) with registration to the phantom template, an atlas table and a
``--segmentations`` table, so that every kind of output (maps, transforms, native-space
labels, tables) is covered. The helpers are shared with ``tests/test_determinism.py``.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: Seconds one participant-level run of the tiny phantom may take on a loaded 2-core machine.
RUN_TIMEOUT_S = 600


def write_inputs(root: Path) -> dict:
    """Tiny one-participant phantom dataset (turned and shifted) and the phantom template."""
    from qsmflow.cli.demo import DEMO_POSE
    from qsmflow.phantom.bids import write_dataset
    from qsmflow.phantom.template import write_template

    write_dataset(root / 'rawdata', root / 'truth',
                  [{'participant_id': '01', 'age': 50, 'sex': 'F'}], size='tiny', **DEMO_POSE)
    write_template(root / 'templateflow', size='tiny')
    return {'root': root, 'bids': root / 'rawdata', 'truth': root / 'truth',
            'templateflow': root / 'templateflow'}


def qsmflow_command(inputs: dict, out: Path, work: Path, nprocs: int) -> list[str]:
    """The participant-level command line: registration, an atlas and a segmentation table."""
    return [sys.executable, '-m', 'qsmflow', str(inputs['bids']), str(out), 'participant',
            '-w', str(work), '--nprocs', str(nprocs), '--skip-bids-validation',
            '--template', 'QSMPhantom', '--template-resolution', '3', '--atlases', 'Phantom',
            '--segmentations', str(inputs['truth'])]


def qsmflow_env(inputs: dict) -> dict:
    """Environment of a run: offline phantom templateflow, a private transform cache."""
    return {**os.environ, 'TEMPLATEFLOW_HOME': str(inputs['templateflow']),
            'QSMFLOW_CACHE': str(inputs['root'] / 'cache')}


def start(cmd, env, log: Path) -> subprocess.Popen:
    """Start a run in its own session (process group), output to ``log``."""
    with open(log, 'ab') as fobj:
        return subprocess.Popen(cmd, env=env, stdout=fobj, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run_to_end(cmd, env, log: Path) -> int:
    """Run to completion; return the exit code."""
    proc = start(cmd, env, log)
    try:
        return proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_and_kill(cmd, env, log: Path, work: Path, when, what: str) -> tuple[dict, list]:
    """Start a run, SIGKILL its process group as soon as ``when(work, since)`` holds
    (``since``: the start time, to tell this run's nodes from those of earlier runs).

    Returns the finished nodes at the kill (:func:`finished_nodes`) and the nodes the kill
    interrupted (started by this run, not finished). Fails if the run ends before the
    condition is met (the kill would test nothing).
    """
    since = time.time()
    proc = start(cmd, env, log)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not when(work, since):
            if proc.poll() is not None:
                pytest.fail(f'the run ended (exit {proc.returncode}) before {what}:\n'
                            + log.read_text(errors='replace')[-3000:])
            if time.monotonic() > deadline:
                pytest.fail(f'{what} did not happen in {RUN_TIMEOUT_S} s')
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        _kill_group(proc)
    # every process of the group is gone (workers, spawned ANTs interpreters)
    _wait_group_gone(proc.pid)
    interrupted = [str(n.relative_to(work)) for n in running_nodes(work, since)]
    return finished_nodes(work), interrupted


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Wait until no live process (zombies aside) is left in process group ``pgid``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = _group_members(pgid)
        if not alive:
            return
        if time.monotonic() > deadline:
            pytest.fail(f'processes {alive} of group {pgid} survived SIGKILL')
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from ``/proc`` (Linux)."""
    members = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ('Z', 'X'):
            members.append(int(stat.parent.name))
    return members


# --- the Nipype work directory ----------------------------------------------------------


def node_dirs(work: Path) -> list[Path]:
    """Node folders of the workflow (those Nipype has started: they hold a hash file).

    os.walk, not Path.rglob: while a run goes on, Nipype empties and recreates node
    folders, and rglob fails on a folder that vanishes under it (os.walk skips it).
    """
    return sorted(Path(root) for root, _, files in os.walk(work)
                  if any(f.startswith('_0x') and f.endswith('.json') for f in files))


def _names(node: Path) -> list[str]:
    """File names in ``node`` (none when the folder is being replaced)."""
    try:
        return os.listdir(node)
    except FileNotFoundError:
        return []


def is_finished(node: Path) -> bool:
    """Nipype saves the result, then renames ``_0x<hash>_unfinished.json`` to
    ``_0x<hash>.json``: a node is finished when both are there."""
    names = _names(node)
    return (any(n.startswith('result_') and n.endswith('.pklz') for n in names)
            and any(n.startswith('_0x') and n.endswith('.json')
                    and not n.endswith('_unfinished.json') for n in names))


def is_sink(node: Path) -> bool:
    """Whether the node's interface always reruns (the derivatives sinks), from its
    pickled node."""
    from nipype.utils.filemanip import loadpkl

    return bool(getattr(loadpkl(node / '_node.pklz').interface, 'always_run', False))


def fingerprint(node: Path) -> dict:
    """``{relative path: (inode, mtime_ns, size)}`` of every file of a node folder.

    A rerun node is emptied and rewritten by Nipype, so its files get new inodes and
    modification times; a reused node keeps all of them.
    """
    out = {}
    for path in sorted(node.rglob('*')):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(node))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def finished_nodes(work: Path) -> dict:
    """``{node folder: fingerprint}`` of the finished computing nodes (sinks excluded)."""
    return {str(n.relative_to(work)): fingerprint(n) for n in node_dirs(work)
            if is_finished(n) and not is_sink(n)}


def node_done(work: Path, name: str) -> bool:
    return any(is_finished(n) for n in node_dirs(work) if n.name == name)


def running_nodes(work: Path, since: float) -> list[Path]:
    """Nodes started after ``since`` (their ``_0x<hash>_unfinished.json`` is that recent:
    Nipype empties a node folder before it reruns the node) and not finished."""
    def started_since(node):
        for name in _names(node):
            if name.startswith('_0x') and name.endswith('_unfinished.json'):
                try:
                    if (node / name).stat().st_mtime >= since:
                        return True
                except FileNotFoundError:  # renamed (finished) meanwhile
                    pass
        return False

    return [n for n in node_dirs(work) if not is_finished(n) and started_since(n)]


def assert_reused(before: dict, work: Path) -> None:
    """Every node finished in ``before`` is still there, untouched (not recomputed)."""
    now = {str(n.relative_to(work)): fingerprint(n) for n in node_dirs(work)}
    recomputed = [node for node, files in before.items() if now.get(node) != files]
    assert not recomputed, f'finished nodes were recomputed: {recomputed}'


# --- output directories -------------------------------------------------------------------


def derivative_files(out: Path) -> list[Path]:
    """Relative paths of the derivatives (participant folders and the dataset
    description; run logs are not derivatives)."""
    files = [p for p in out.glob('sub-*/**/*') if p.is_file()]
    files += [out / 'dataset_description.json']
    return sorted(p.relative_to(out) for p in files)


def assert_same_outputs(a: Path, b: Path) -> None:
    """The two output directories hold the same derivatives, byte for byte."""
    files = derivative_files(a)
    assert files == derivative_files(b)
    different = []
    for rel in files:
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            detail = ''
            if rel.name.endswith('.nii.gz'):
                x = np.asarray(nb.load(a / rel).dataobj, dtype=np.float64)
                y = np.asarray(nb.load(b / rel).dataobj, dtype=np.float64)
                detail = (f' ({int(np.sum(x != y))} of {x.size} voxels differ, '
                          f'max {np.max(np.abs(x - y)):.3g})' if x.shape == y.shape
                          else f' (shapes {x.shape} {y.shape})')
            different.append(f'{rel}{detail}')
    assert not different, 'outputs differ: ' + '; '.join(different)


def assert_outputs_readable(out: Path) -> None:
    """No truncated file under a final name: every image decompresses and loads in full,
    every JSON parses, every TSV has the header's number of columns on each row."""
    for path in out.rglob('*.nii.gz'):
        with gzip.open(path) as fobj:  # a truncated stream raises EOFError
            while fobj.read(1 << 20):
                pass
        data = np.asarray(nb.load(path).dataobj)
        assert data.size > 0, path
    for path in out.rglob('*.json'):
        json.loads(path.read_text())
    for path in out.rglob('*.tsv'):
        rows = [line.split('\t') for line in path.read_text().splitlines()]
        assert rows and all(len(r) == len(rows[0]) for r in rows), path


def stats_tables(out: Path) -> dict:
    return {p.name: p.read_text() for p in out.rglob('*_stats.tsv')}


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def resumed(tiny_linear_run):
    """An uninterrupted run (Linear; shared with test_determinism, see conftest.py), and a
    run (MultiProc, 2 processes) killed twice and resumed, then run once more with
    ``--nprocs 1`` (the thread counts are not part of the node hashes, so this rerun must
    reuse everything too; Linear also spares MultiProc's 2 s polling per step)."""
    inputs, env = tiny_linear_run['inputs'], tiny_linear_run['env']
    root = inputs['root'] / 'resume'
    root.mkdir()
    ref_out, out, work = tiny_linear_run['out'], root / 'killed' / 'out', root / 'work'
    ref_code = tiny_linear_run['code']
    cmd, log = qsmflow_command(inputs, out, work, 2), root / 'killed.log'
    # first kill: during the registration (its spawned ANTs process running)
    first, cut_first = run_and_kill(
        cmd, env, log, work,
        lambda w, since: any(n.name == 'register' for n in running_nodes(w, since)),
        'the registration started')
    readable_after_first = _readable(out)
    # second kill, on the rerun: χ referenced and stored, a later step running
    second, cut_second = run_and_kill(
        cmd, env, log, work,
        lambda w, since: node_done(w, 'reference') and any(
            not n.name.startswith('ds_') for n in running_nodes(w, since)),  # sinks: too quick
        'a step after the χ reference started')
    readable_after_second = _readable(out)
    code = run_to_end(cmd, env, log)
    state_done = {str(n.relative_to(work)): fingerprint(n) for n in node_dirs(work)}
    finished_done = finished_nodes(work)
    tables_done = stats_tables(out)
    again = run_to_end(qsmflow_command(inputs, out, work, 1), env, log)
    return {'ref_code': ref_code, 'ref_out': ref_out, 'out': out, 'work': work, 'log': log,
            'first': first, 'second': second, 'code': code, 'again': again,
            'interrupted': (cut_first, cut_second),
            'readable': (readable_after_first, readable_after_second),
            'state_done': state_done, 'finished_done': finished_done,
            'tables_done': tables_done}


def _readable(out: Path) -> str | None:
    """None when the outputs are readable, else the error (checked in the tests)."""
    try:
        assert_outputs_readable(out)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        return f'{type(exc).__name__}: {exc}'
    return None


def test_runs_finish(resumed):
    assert resumed['ref_code'] == 0
    assert resumed['code'] == 0, resumed['log'].read_text(errors='replace')[-3000:]
    assert resumed['again'] == 0


def test_kills_hit_mid_run(resumed):
    """Both kills left work undone, the first one had finished steps to reuse, and some
    step was killed while running."""
    first, second = resumed['first'], resumed['second']
    assert first and set(first) <= set(second) < set(resumed['finished_done'])
    assert any(k.endswith('/reference') for k in second)
    cut_first, cut_second = resumed['interrupted']
    assert any(n.endswith('/register') for n in cut_first) and cut_second


def test_no_truncated_outputs_after_a_kill(resumed):
    assert resumed['readable'] == (None, None)


def test_finished_nodes_are_not_recomputed(resumed):
    """The nodes finished before each kill kept their files (inode, mtime) through the
    reruns."""
    assert_reused(resumed['first'], resumed['work'])
    assert_reused(resumed['second'], resumed['work'])


def test_resumed_outputs_equal_uninterrupted(resumed):
    assert_same_outputs(resumed['ref_out'], resumed['out'])
    assert not list(resumed['out'].rglob('*.tmp*')), 'temporary files left behind'


def test_rerun_on_finished_outputs_redoes_nothing(resumed):
    """A third run only re-stores the derivatives: every computing node is reused and the
    tables hold the same rows, none duplicated."""
    work = resumed['work']
    now = {str(n.relative_to(work)): fingerprint(n) for n in node_dirs(work)}
    assert set(now) == set(resumed['state_done'])
    changed = [n for n in now if now[n] != resumed['state_done'][n]]
    assert all(is_sink(work / n) for n in changed), \
        f'computing nodes reran: {[n for n in changed if not is_sink(work / n)]}'
    tables = stats_tables(resumed['out'])
    assert set(tables) == {'sub-01_atlas-Phantom_stats.tsv',
                           'sub-01_atlas-segmentations_stats.tsv'}
    assert tables == resumed['tables_done']
    for text in tables.values():
        rows = text.splitlines()[1:]
        keys = [tuple(r.split('\t')[:2]) for r in rows]  # (region, hemisphere)
        assert len(keys) == len(set(keys)) > 0
    assert_same_outputs(resumed['ref_out'], resumed['out'])
