# SPDX-License-Identifier: Apache-2.0
"""Command-line behaviour: help, version and one-line errors for bad invocations."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qsmflow import __version__
from qsmflow.cli import main
from qsmflow.cli.parser import build_parser


def _run(*args, cwd=None):
    """Run the console entry point in a subprocess, as a user would."""
    return subprocess.run([sys.executable, '-m', 'qsmflow', *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_version():
    """In its own process: ``python -m qsmflow`` and the exit code through the process."""
    proc = _run('--version')
    assert proc.returncode == 0
    assert proc.stdout.strip() == f'qsmflow {__version__}'


# The other tests call ``main`` in this process (the ``run_cli`` fixture of conftest.py).


def test_help_lists_bids_app_arguments(run_cli):
    proc = run_cli('--help')
    assert proc.returncode == 0
    for flag in ('bids_dir', 'output_dir', '{participant,group}', 'qsmflow demo',
                 '--participant-label', '--work-dir', '--nprocs', '--skip-bids-validation',
                 '--preset', '--template', '--segmentations'):
        assert flag in proc.stdout


@pytest.mark.parametrize('argv', [
    [],
    ['a', 'b'],
    ['a', 'b', 'everything'],
    ['a', 'b', 'participant', '--nprocs', '0'],
])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def _one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('qsmflow: error:')]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


def test_missing_bids_dir(tmp_path, run_cli):
    proc = run_cli(tmp_path / 'nope', tmp_path / 'out', 'participant')
    _one_line_error(proc, 'does not exist', str(tmp_path / 'nope'))


def test_not_a_bids_dir(tmp_path, run_cli):
    (tmp_path / 'data').mkdir()
    proc = run_cli(tmp_path / 'data', tmp_path / 'out', 'participant')
    _one_line_error(proc, 'not a BIDS dataset', 'dataset_description.json')


def _skeleton(root, subjects=('01',), with_megre=True):
    """A BIDS skeleton: real JSON sidecars, 0-byte NIfTIs (enough for indexing)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'x', 'BIDSVersion': '1.10.0'}))
    for sub in subjects:
        anat = root / f'sub-{sub}' / 'anat'
        anat.mkdir(parents=True)
        if not with_megre:
            (anat / f'sub-{sub}_T1w.nii.gz').write_bytes(b'')
            continue
        for echo, te in ((1, 0.004), (2, 0.012)):
            for part in ('mag', 'phase'):
                stem = anat / f'sub-{sub}_echo-{echo}_part-{part}_MEGRE'
                stem.with_suffix('.nii.gz').write_bytes(b'')
                meta = {'EchoTime': te, 'MagneticFieldStrength': 3}
                if part == 'phase':
                    meta['Units'] = 'rad'
                stem.with_suffix('.json').write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize('inside', [False, True])
def test_output_inside_bids_dir(tmp_path, inside, run_cli):
    bids = _skeleton(tmp_path / 'ds')
    out = bids / 'derivatives' / 'qsmflow' if inside else bids
    proc = run_cli(bids, out, 'participant', '--skip-bids-validation')
    _one_line_error(proc, 'inside the BIDS directory')
    assert not (bids / 'derivatives').exists()


def test_unknown_participant(tmp_path, run_cli):
    bids = _skeleton(tmp_path / 'ds')
    proc = run_cli(bids, tmp_path / 'out', 'participant', '--participant-label', '07',
                   '--skip-bids-validation')
    _one_line_error(proc, '07', 'not found', 'available: 01')


@pytest.mark.parametrize('label', ['../01', 'sub-0 1', 'a/b'])
def test_participant_label_with_path_characters(tmp_path, label, run_cli):
    bids = _skeleton(tmp_path / 'ds')
    proc = run_cli(bids, tmp_path / 'out', 'participant', '--participant-label', label,
                   '--skip-bids-validation')
    _one_line_error(proc, 'invalid label')


def test_participant_without_megre(tmp_path, run_cli):
    bids = _skeleton(tmp_path / 'ds', with_megre=False)
    proc = run_cli(bids, tmp_path / 'out', 'participant', '--skip-bids-validation')
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert 'sub-01: no multi-echo GRE data found' in proc.stderr


def test_main_returns_code_instead_of_raising(tmp_path):
    assert main([str(tmp_path / 'missing'), str(tmp_path / 'o'), 'participant']) == 2
