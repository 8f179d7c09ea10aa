# SPDX-License-Identifier: Apache-2.0
"""Doctest namespace of :mod:`qsmflow.qsm` (``pytest --doctest-modules qsmflow/qsm``).

Functions re-exported by a package (``qsmflow.qsm.inversion.tv``) carry the package as
``__module__``, so their examples run in the package's namespace: ``np`` is injected here.
"""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_numpy(doctest_namespace):
    doctest_namespace['np'] = np
