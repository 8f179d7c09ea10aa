# SPDX-License-Identifier: Apache-2.0
"""Imported by MultiProc's fork server before it forks a worker (see
:func:`qsmflow.execution.engines.select_plugin`): the workers' Nipype console shows the
steps' warnings only (:func:`qsmflow.execution.console.install_worker_console`)."""
from qsmflow.execution.console import install_worker_console

install_worker_console()
