# SPDX-License-Identifier: Apache-2.0
"""The ``qsmflow`` command line: the parser (``parser``), the run configuration built from
it (``config``), the entry point (``main``) and one module per sub-command
(``participant``, ``demo``, ``bench``, ``fetch_templates``; the group level is
:func:`qsmflow.group.run.run_group`)."""
from qsmflow.cli.main import main

__all__ = ['main']
