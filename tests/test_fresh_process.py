# SPDX-License-Identifier: Apache-2.0
"""``in_fresh_process``: every ANTs call runs in its own interpreter. The child must
import what the caller imports (not what lies in its working folder), and hand results,
errors and crashes back."""
from __future__ import annotations

import importlib
import sys

import pytest

from qsmflow.interfaces.registration import in_fresh_process

PROBE = '''
import os


def origin():
    import {name}
    return {name}.__file__


def fail(message):
    raise ValueError(message)


def die(code):
    os._exit(code)
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module on the caller's import path, and a decoy of the same name in the working
    folder (where a bare ``python -c`` would look first)."""
    name = 'qsmflow_probe_module'
    real, decoy = tmp_path / 'real', tmp_path / 'node'
    real.mkdir()
    decoy.mkdir()
    (real / f'{name}.py').write_text(PROBE.format(name=name))
    (decoy / f'{name}.py').write_text(PROBE.format(name=name).replace(
        'return {name}.__file__'.format(name=name), "return 'decoy'"))
    monkeypatch.syspath_prepend(str(real))
    monkeypatch.chdir(decoy)
    sys.modules.pop(name, None)
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def test_child_imports_from_the_callers_path(probe, tmp_path):
    assert in_fresh_process(probe.origin) == str(tmp_path / 'real' / f'{probe.__name__}.py')


def test_child_errors_are_raised_in_the_caller(probe):
    with pytest.raises(ValueError, match='no such template'):
        in_fresh_process(probe.fail, 'no such template')


def test_a_dead_child_is_an_error_with_its_exit_code(probe, tmp_path):
    with pytest.raises(RuntimeError, match=r'die died in its process \(exit 3\)'):
        in_fresh_process(probe.die, 3)
    # the call's scratch folder is gone
    assert not list((tmp_path / 'node').glob('.qsmflow-call-*'))


def test_the_ants_calls_load_without_nipype_in_the_child():
    """The child unpickles the called function and so imports its module: the registration,
    resampling and refinement calls must not bring Nipype or nibabel with them (about half
    a second per call), nor antspyx's ``ants`` package (1.5–2 s; they call ANTs' library)."""
    import pickle
    import subprocess

    from qsmflow.interfaces import refinement
    from qsmflow.interfaces import registration as reg

    calls = [reg.register_images, reg.apply_to_reference, refinement.refine_chi]
    code = ('import pickle, sys; pickle.loads(sys.stdin.buffer.read()); '
            "print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'nipype', 'nibabel', 'ants'}))")
    out = subprocess.run([sys.executable, '-c', code], input=pickle.dumps(calls),
                         capture_output=True, check=True)
    assert out.stdout.decode().strip() == '[]'
    # and the interfaces' module does bring them (the check can fail)
    out = subprocess.run([sys.executable, '-c', code], input=pickle.dumps(reg.register),
                         capture_output=True, check=True)
    assert out.stdout.decode().strip() == "['nibabel', 'nipype']"
