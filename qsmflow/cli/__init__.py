# SPDX-License-Identifier: Apache-2.0
"""The ``qsmflow`` command line: the parser (``parser``), the entry point (``main``) and one
module per sub-command (``participant``, ``group``, ``demo``, ``bench``,
``fetch_templates``)."""
from qsmflow.cli.main import main

__all__ = ['main']
