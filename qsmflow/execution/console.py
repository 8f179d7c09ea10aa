# SPDX-License-Identifier: Apache-2.0
"""What of Nipype's logging reaches the console: the steps' warnings, not the engine.

Nipype prints its engine's records (``nipype.workflow``: every node set up, run and
finished, a failed node's traceback) on the console. qsmflow prints its own progress and,
for a failed participant, one ``FAILED`` line; the engine's records go to
``WORK_DIR/logs/pypeline.log`` and the crash file into the participant's log. Standard
library only (Nipype imported only inside :func:`worker_initializer`): MultiProc's workers
import this module to install the filter before Nipype
(:func:`qsmflow.execution.engines.multiproc_plugin`).
"""
from __future__ import annotations

import logging
import sys


class StepMessagesOnly(logging.Filter):
    """Pass the steps' warnings (``nipype.interface`` and the like at WARNING or above,
    e.g. a χ map out of the tissue range); drop the engine's records (``nipype.workflow``)."""

    def filter(self, record) -> bool:
        return record.levelno >= logging.WARNING \
            and not record.name.startswith('nipype.workflow')


class WarningLine(logging.Formatter):
    """A step's warning as one console line like qsmflow's own: ``qsmflow: warning: …``."""

    def format(self, record) -> str:
        text = record.getMessage()
        return 'qsmflow: warning: ' + (text[9:] if text.startswith('qsmflow: ') else text)


def quiet_engine_console() -> None:
    """Give the console handlers of the ``nipype`` logger of this process
    :class:`StepMessagesOnly` (once) and the :class:`WarningLine` format."""
    for handler in logging.getLogger('nipype').handlers:
        if isinstance(handler, logging.StreamHandler) \
                and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, StepMessagesOnly) for f in handler.filters):
                handler.addFilter(StepMessagesOnly())
            handler.setFormatter(WarningLine())


def install_worker_console() -> None:
    """Give the ``nipype`` logger a console handler before Nipype is imported (Nipype then
    adds none of its own: it only adds one to a logger without), and quiet it."""
    nipype_logger = logging.getLogger('nipype')
    if not nipype_logger.handlers:
        nipype_logger.addHandler(logging.StreamHandler(stream=sys.stdout))
    quiet_engine_console()


def worker_initializer(cwd: str) -> None:
    """Initializer of a MultiProc worker: :func:`install_worker_console`, then Nipype's own
    (``nipype.pipeline.plugins.multiproc.process_initializer``: working directory)."""
    install_worker_console()
    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
