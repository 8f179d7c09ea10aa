# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: phantom datasets written once per session, one end-to-end run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault('NIPYPE_NO_ET', '1')


class _InstalledPackageOnly:
    """Tests import the installed package (``qsmflow.workflows``, ``qsmflow.bids_specs``),
    never the repository's ``workflows/`` and ``bids_specs/`` folders as top-level modules,
    which pytest makes importable by putting the repository root on ``sys.path`` for the
    ``tests`` package: such an import is an error naming the right one."""

    FOLDERS = ('workflows', 'bids_specs')

    def find_spec(self, name, path=None, target=None):
        top = name.partition('.')[0]
        if top in self.FOLDERS:
            raise ModuleNotFoundError(f"tests import the installed package: 'qsmflow.{name}', "
                                      f"not the repository folder '{top}/' ({name!r})",
                                      name=name)
        return None


assert not set(_InstalledPackageOnly.FOLDERS) & set(sys.modules), 'imported from the repository'
sys.meta_path.insert(0, _InstalledPackageOnly())

#: Participants of the end-to-end test cohort (the demo's).
E2E_PARTICIPANTS = (
    {'participant_id': '01', 'age': 34, 'sex': 'F'},
    {'participant_id': '02', 'age': 71, 'sex': 'M'},
)


@pytest.fixture(scope='session', autouse=True)
def _private_transform_cache(tmp_path_factory):
    """Template transforms computed by the tests go to a temporary cache, not ~/.cache."""
    if 'QSMFLOW_CACHE' not in os.environ:
        os.environ['QSMFLOW_CACHE'] = str(tmp_path_factory.mktemp('qsmflow-cache'))
        yield
        os.environ.pop('QSMFLOW_CACHE', None)
    else:
        yield


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*args)``: ``qsmflow ARGS`` in this process (:func:`qsmflow.cli.main`, no new
    interpreter to start), returned as ``subprocess.run([sys.executable, '-m', 'qsmflow',
    *args], capture_output=True, text=True)`` would return it: the exit code (argparse's
    exits for ``--help``, ``--version`` and usage errors included) and what was printed.
    An exception escaping ``main`` fails the test, as its traceback would in a process.
    Tests about the process itself (console script, environment read at start-up, kill,
    fresh imports) keep a real subprocess."""
    from qsmflow.cli import main

    def run(*args):
        argv = [str(a) for a in args]
        capsys.readouterr()  # what the test printed before
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(['qsmflow', *argv], code, out, err)

    return run


@pytest.fixture(scope='session')
def phantom_dataset(tmp_path_factory):
    """A small two-participant phantom BIDS dataset and its ground truth."""
    from qsmflow.phantom.bids import write_dataset

    root = tmp_path_factory.mktemp('phantom')
    write_dataset(root / 'rawdata', root / 'truth', [dict(p) for p in E2E_PARTICIPANTS],
                  size='small')
    return root


@pytest.fixture(scope='session')
def e2e_run(phantom_dataset):
    """Run the participant level once on the phantom dataset (Linear plugin)."""
    from qsmflow.cli import main

    out = phantom_dataset / 'derivatives' / 'qsmflow'
    code = main([str(phantom_dataset / 'rawdata'), str(out), 'participant', '--nprocs', '1',
                 '-w', str(phantom_dataset / 'work')])
    return {'root': phantom_dataset, 'out': out, 'code': code,
            'truth': phantom_dataset / 'truth'}


@pytest.fixture(scope='session')
def tiny_phantom(tmp_path_factory):
    """One tiny (3 mm) phantom participant for the input-variant tests, written once:
    ``(bids_dir, (mag, phase, affine, sidecar))`` (see ``tests/variants.py``)."""
    from qsmflow.phantom.bids import write_dataset
    from tests.variants import read_phantom

    root = tmp_path_factory.mktemp('tiny')
    write_dataset(root / 'raw', root / 'truth', [{'participant_id': '01', 'age': 50,
                                                  'sex': 'F'}], size='tiny')
    return root / 'raw', read_phantom(root / 'raw')


@pytest.fixture(scope='session')
def tiny_linear_run(tmp_path_factory):
    """The tiny kill/resume inputs (``tests/test_resume.py``: one turned participant, the
    phantom template, an atlas and a segmentation table) and one uninterrupted Linear run
    (``--nprocs 1``) of them in its own interpreter, written once for the session: the
    reference of the resumed run (``test_resume``) and the Linear side of the Linear vs
    MultiProc comparison (``test_determinism``). Other runs use the same inputs, with their
    own output and work folders."""
    from tests.test_resume import qsmflow_command, qsmflow_env, run_to_end, write_inputs

    inputs = write_inputs(tmp_path_factory.mktemp('tiny_runs'))
    root, env = inputs['root'], qsmflow_env(inputs)
    out, work, log = root / 'linear' / 'out', root / 'linear' / 'work', root / 'linear.log'
    code = run_to_end(qsmflow_command(inputs, out, work, 1), env, log)
    return {'inputs': inputs, 'env': env, 'code': code, 'out': out, 'log': log}


@pytest.fixture(scope='session')
def templateflow_skeleton_home(tmp_path_factory):
    """An empty TEMPLATEFLOW_HOME that templateflow fills from its bundled skeleton (0-byte
    image placeholders, real lookup tables) on first use; indexed once per session (the
    client is cached per folder), shared by test_templates and test_prefetch. Tests that
    write into it (test_prefetch's simulated downloads) put its placeholders back."""
    return tmp_path_factory.mktemp('tf_skeleton')
