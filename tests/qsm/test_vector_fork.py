# SPDX-License-Identifier: Apache-2.0
"""_vector's thread pools after a fork: a forked child (Nipype's MultiProc workers) has none
of the parent's pool threads, so it must make its own pools instead of handing work to
threads that do not exist (it waited forever before 2026-12-05)."""

import subprocess
import sys

CHILD = '''
import os, signal
from qsmflow.qsm import _vector, threads
with threads.limit(2):
    parent = _vector.planewise(lambda s: s.start, 40)  # the parent's pool exists now
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a hang ends the child with SIGALRM
    with threads.limit(2):
        child = _vector.planewise(lambda s: s.start, 40)
    os._exit(0 if child == parent == [0, 8, 16, 24, 32] else 3)
_, status = os.waitpid(pid, 0)
print('child', os.waitstatus_to_exitcode(status))
'''


def test_a_forked_child_makes_its_own_pool():
    # a fresh interpreter: this test process may have OpenMP/numba threads of its own
    out = subprocess.run([sys.executable, '-c', CHILD], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['child', '0'], (out.stdout, out.stderr)
