# SPDX-License-Identifier: Apache-2.0
"""Bitwise regression: ``qsmflow demo DIR --size tiny --nprocs 1`` gives the outputs
recorded in ``tests/checksums/demo_tiny.json`` (χ, masks, fields, transforms, atlas labels,
regional and group tables), checksummed by ``tests/checksums/record.py``.

A refactoring must not change a single bit. A deliberate change of results (a new default,
a fixed bug) re-records the file: ``python -m tests.checksums.record --why '...'``, in the
commit that changes the results. Bits are only comparable on the numeric stack the record
was taken with (numpy, scipy, numba, antspyx, nibabel, nipype, the CPU's SIMD features): the
file holds one record per stack, and on a stack without one the test skips.
"""
from __future__ import annotations

import pytest

from tests.checksums import record

pytestmark = pytest.mark.slow


def _differences(got: dict, want: dict) -> str:
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    lines = [f'changed: {k}' for k in changed]
    lines += [f'missing (recorded, not produced): {k}' for k in sorted(set(want) - set(got))]
    lines += [f'new (produced, not recorded): {k}' for k in sorted(set(got) - set(want))]
    return '\n'.join(lines)


def test_tiny_demo_outputs_match_the_recorded_checksums(tmp_path):
    stack = record.stack_versions()
    recorded = record.for_stack(stack)
    if recorded is None:
        known = [r['stack'] for r in record.records()]
        other = [{k: f'{r.get(k)} recorded, {v} installed' for k, v in stack.items()
                  if v != r.get(k)} for r in known]
        pytest.skip(f'no record in {record.RECORD.name} for this numeric stack (differences '
                    f'from the {len(known)} recorded: {other}); bitwise results are only '
                    'comparable on the same stack')
    code = record.run_demo(tmp_path / 'demo')  # in this process
    assert code == 0
    got = record.checksums(record.demo_outputs(tmp_path / 'demo'))
    assert got == recorded['outputs'], (
        f'the tiny demo no longer reproduces {record.RECORD.name} '
        f'({recorded["taken_with"]}):\n{_differences(got, recorded["outputs"])}\n'
        'If the change of results is deliberate, re-record: '
        'python -m tests.checksums.record --why "..."')
