# SPDX-License-Identifier: Apache-2.0
"""``qsmflow compare`` on the tiny phantom: the outputs, the participant level's numbers,
shared prefixes computed once, and a killed run resumed from pydra's cache.

The inputs and the participant-level reference are those of the session fixture
``tiny_linear_run`` (``tests/test_resume.py``: the tiny turned participant, registered to
the phantom template, with an atlas table and a ``--segmentations`` table), shared with
the resume and determinism tests. One comparison (three presets and a 2×2 grid, both
label sources) is run once for the module.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qsmflow.compare import engine
from qsmflow.config.presets import load_preset

pytestmark = pytest.mark.slow

PRESETS = ('default', 'consensus', 'medi')
GRID = ('bf_removal=pdf,vsharp', 'inversion=tv,rts')
#: The pipelines the run resolves to: the presets, then the grid less its combinations
#: equal to a preset (pdf + tv: default; vsharp + rts: consensus).
PIPELINES = ('default', 'consensus', 'medi', 'bf_removal=pdf,inversion=rts',
             'bf_removal=vsharp,inversion=tv')
RUN_TIMEOUT_S = 600


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep='\t', na_values=['n/a'], keep_default_na=False,
                       dtype={'participant': str})


def _args(inputs, out, *extra) -> list[str]:
    return [str(inputs['bids']), str(out), '--skip-bids-validation',
            '--segmentations', str(inputs['truth']), *extra]


@pytest.fixture(scope='module')
def comparison(tiny_linear_run, tmp_path_factory):
    """Three presets and a 2×2 grid on the tiny participant, labels from --segmentations
    and from the participant-level output (--labels-from), 2 processes."""
    from qsmflow.cli import main

    assert tiny_linear_run['code'] == 0, tiny_linear_run['log'].read_text()[-3000:]
    out = tmp_path_factory.mktemp('compare') / 'out'
    t0 = time.monotonic()
    code = main(['compare', *_args(tiny_linear_run['inputs'], out, '--labels-from',
                                   str(tiny_linear_run['out']), '--pipelines', *PRESETS,
                                   '--grid', *GRID, '--nprocs', '2', '--keep-maps')])
    return {'code': code, 'out': out, 'folder': out / 'compare', 'seconds':
            time.monotonic() - t0, 'participant': tiny_linear_run['out'],
            'inputs': tiny_linear_run['inputs']}


def test_writes_table_summary_figures_and_page(comparison):
    assert comparison['code'] == 0
    folder = comparison['folder']
    table = _read(folder / 'table.tsv')
    assert tuple(dict.fromkeys(table['pipeline'])) == PIPELINES
    for column in ('participant', 'pipeline', 'masking', 'bf_removal', 'bf_removal_params',
                   'inversion', 'inversion_params', 'region', 'hemisphere', 'mean', 'median',
                   'n_voxels', 'run_time_s'):
        assert column in table, column
    assert set(table['atlas']) == {'segmentations', 'Phantom'}
    rows = table.groupby(['pipeline', 'atlas']).size().unstack()
    assert (rows.nunique() == 1).all(), rows  # every pipeline has every region row
    assert (table['run_time_s'] > 0).all()
    assert table.loc[table['pipeline'] == 'medi', 'inversion'].eq('medi').all()

    spread = _read(folder / 'spread.tsv')
    regions = table[['atlas', 'region', 'hemisphere']].drop_duplicates()
    assert len(spread) == len(regions)
    assert (spread['n_pipelines'] == len(PIPELINES)).all()
    putamen = spread[(spread['region'] == 'putamen') & (spread['hemisphere'] == 'bilateral')]
    assert (putamen['range_max'] > 0).all() and (putamen['sd_max'] > 0).all()
    icc = _read(folder / 'icc.tsv')
    assert len(icc) == len(regions) * len(PIPELINES) * (len(PIPELINES) - 1) // 2
    assert icc['icc_a1'].isna().all()  # one participant: no agreement across participants

    figures = sorted((folder / 'figures').glob('*.png'))
    assert len(figures) == len(table[['atlas', 'region']].drop_duplicates())
    assert all(f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for f in figures)
    page = (folder / 'index.html').read_text()
    assert all(f'figures/{f.name}' in page for f in figures)
    side = json.loads((folder / 'table.json').read_text())
    assert list(side['Pipelines']) == list(PIPELINES)
    assert side['PydraVersion'].startswith('0.25')
    maps = sorted((folder / 'maps').glob('*_Chimap.nii.gz'))
    assert len(maps) == len(PIPELINES)
    assert not list(folder.rglob('.*.tmp*'))  # atomic writes leave no temporary


def test_default_rows_equal_the_participant_level_tables(comparison):
    table = _read(comparison['folder'] / 'table.tsv')
    default = table[table['pipeline'] == 'default']
    anat = comparison['participant'] / 'sub-01' / 'anat'
    for atlas in ('segmentations', 'Phantom'):
        ref = _read(anat / f'sub-01_atlas-{atlas}_stats.tsv')
        mine = default[default['atlas'] == atlas]
        merged = ref.merge(mine, on=['region', 'hemisphere'], suffixes=('_ref', ''))
        assert len(merged) == len(ref) == len(mine), atlas
        for column in ('mean', 'median'):
            assert (merged[f'{column}_ref'] - merged[column]).abs().max() <= 1e-6, column
        assert (merged['n_voxels_ref'] == merged['n_voxels']).all()


def _with(folder: Path, name: str) -> list[Path]:
    """Finished task folders of pydra's cache holding the file ``name``."""
    return [d for d in engine.cache_folders(folder) if (d / name).exists()]


def test_shared_prefixes_are_computed_once(comparison):
    work = comparison['folder'] / 'work'
    # one acquisition: one load, one brain mask, one field map for all five pipelines
    assert len(_with(work, 'total_field_ppm.nii.gz')) == 1
    assert len(_with(work, 'megre_magnitude.nii.gz')) == 1
    # background removal: pdf and vsharp only
    assert len(_with(work, 'local_field_ppm.nii.gz')) == 2
    # inversions: tv, rts, medi on pdf; tv, rts on vsharp (consensus is vsharp + rts too)
    assert len(_with(work, 'chi_ppm.nii.gz')) == 5
    assert len(_with(work, 'chi_ref.nii.gz')) == 5


def _start(cmd, log: Path) -> subprocess.Popen:
    with open(log, 'ab') as fobj:
        return subprocess.Popen(cmd, stdout=fobj, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_killed_run_resumes_from_the_cache(comparison, tmp_path):
    """SIGKILL the whole process group once the field map is cached; the rerun reuses it
    (its folder untouched) and gives the same table as the uninterrupted run."""
    out = tmp_path / 'out'
    work = out / 'compare' / 'work'
    cmd = [sys.executable, '-m', 'qsmflow', 'compare',
           *_args(comparison['inputs'], out, '--pipelines', 'default', 'medi',
                  '--nprocs', '1')]
    log = tmp_path / 'run.log'
    proc = _start(cmd, log)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not (work.is_dir() and _with(work, 'total_field_ppm.nii.gz')):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert not (out / 'compare' / 'table.tsv').exists(), 'the run ended before the kill'
    done = {d: (d / '_result.pklz').stat().st_mtime_ns for d in engine.cache_folders(work)}
    field = _with(work, 'total_field_ppm.nii.gz')
    assert len(field) == 1

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _with(work, 'total_field_ppm.nii.gz') == field
    assert all((d / '_result.pklz').stat().st_mtime_ns == t for d, t in done.items())
    assert not engine.stale_locks(work)
    table = _read(out / 'compare' / 'table.tsv')
    full = _read(comparison['folder'] / 'table.tsv')
    for name in ('default', 'medi'):
        a = table[(table['pipeline'] == name)].set_index(['region', 'hemisphere'])
        b = full[(full['pipeline'] == name) & (full['atlas'] == 'segmentations')].set_index(
            ['region', 'hemisphere'])
        assert a['mean'].equals(b.loc[a.index, 'mean']), name


def test_bad_pipelines_are_one_line_errors(run_cli, tmp_path):
    res = run_cli('compare', tmp_path, tmp_path / 'o', '--pipelines', 'default',
                  'inversion=magic', '--segmentations', tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "qsmflow: error: --pipelines inversion=magic: unknown inversion method 'magic'; "
        'choose one of tv, rts, tkd, tikhonov, medi, lsqr, ilsqr, ndi']
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({**load_preset('default'),
                               'inversion': {'method': 'tv', 'params': {'bogus': 1}}}))
    res = run_cli('compare', tmp_path, tmp_path / 'o', '--pipelines', 'default', bad,
                  '--segmentations', tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert f"--pipelines {bad}: preset {bad}: inversion 'tv' has no option 'bogus'" \
        in res.stderr
    res = run_cli('compare', tmp_path, tmp_path / 'o', '--pipelines', 'default')
    assert res.returncode == 2 and 'at least two different pipelines' in res.stderr
    res = run_cli('compare', tmp_path, tmp_path / 'o', '--pipelines', 'default', 'consensus')
    assert res.returncode == 2 and '--segmentations' in res.stderr
    assert not (tmp_path / 'o').exists()


def test_a_failing_step_is_one_line_and_exit_1(run_cli, comparison, tmp_path):
    """A pipeline whose inversion rejects an option's value (an unknown option name is
    refused before anything runs, exit 2): one line naming the step, its options and the
    error; exit code 1. The other steps come from the module run's cache (``-w``), so only
    the failing inversion runs."""
    preset = json.loads((Path(__file__).parents[1] / 'qsmflow' / 'data' / 'presets'
                         / 'default.json').read_text())
    preset['inversion'] = {'method': 'tv', 'params': {'lam': -1.0}}
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(preset))
    res = run_cli('compare', *_args(comparison['inputs'], tmp_path / 'out', '--pipelines',
                                    'default', str(bad), '-w', comparison['folder'] / 'work',
                                    '--nprocs', '1'))
    assert res.returncode == 1
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        "qsmflow: error: compare: step inversion {'method': 'tv', 'params': {'lam': -1.0}} "
        'failed: ValueError: lam must be a positive number, got -1.0'), errors
