# SPDX-License-Identifier: Apache-2.0
"""The examples in the docstrings run and give what they show.

Every module of ``qsmflow`` (``qsmflow.workflows`` and ``qsmflow.bids_specs`` included),
as ``pytest --doctest-modules qsmflow`` would run them; the torch kernels only where torch
is installed (the optional ``--device`` path)."""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import numpy as np
import pytest

import qsmflow

TORCH_MODULES = ('qsmflow.qsm._torch_ops', 'qsmflow.qsm.inversion._tv_torch',
                 'qsmflow.qsm.bgremove._bg_torch')


def _modules() -> list[str]:
    import qsmflow.bids_specs
    import qsmflow.workflows

    names = ['qsmflow', 'qsmflow.workflows', 'qsmflow.bids_specs']
    for package in (qsmflow, qsmflow.workflows, qsmflow.bids_specs):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
            if info.name.rsplit('.', 1)[-1] not in ('conftest', '__main__') \
                    and info.name not in names:
                names.append(info.name)
    return names


@pytest.mark.parametrize('name', _modules())
def test_docstring_examples(name):
    if name in TORCH_MODULES and importlib.util.find_spec('torch') is None:
        pytest.skip('torch not installed (optional --device path)')
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={'np': np}, optionflags=doctest.ELLIPSIS,
                             verbose=False, report=True)
    assert result.failed == 0, f'{result.failed} of {result.attempted} examples failed'
