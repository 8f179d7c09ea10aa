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

#: Nipype's console format (``nipype.utils.logger.Logging``).
NIPYPE_FORMAT = '%(asctime)s,%(msecs)d %(name)-2s %(levelname)-2s:\n\t %(message)s'
NIPYPE_DATEFMT = '%y%m%d-%H:%M:%S'


class StepMessagesOnly(logging.Filter):
    """Pass the steps' warnings (``nipype.interface`` and the like at WARNING or above,
    e.g. a χ map out of the tissue range); drop the engine's records (``nipype.workflow``)."""

    def filter(self, record) -> bool:
        return record.levelno >= logging.WARNING \
            and not record.name.startswith('nipype.workflow')


def quiet_engine_console() -> None:
    """Add :class:`StepMessagesOnly` (once) to the console handlers of the ``nipype``
    logger of this process."""
    for handler in logging.getLogger('nipype').handlers:
        if isinstance(handler, logging.StreamHandler) \
                and not isinstance(handler, logging.FileHandler) \
                and not any(isinstance(f, StepMessagesOnly) for f in handler.filters):
            handler.addFilter(StepMessagesOnly())


def install_worker_console() -> None:
    """Give the ``nipype`` logger Nipype's own console handler, filtered, before Nipype is
    imported: Nipype then adds none of its own (it only adds one to a logger without)."""
    nipype_logger = logging.getLogger('nipype')
    if not nipype_logger.handlers:
        handler = logging.StreamHandler(stream=sys.stdout)
        handler.setFormatter(logging.Formatter(fmt=NIPYPE_FORMAT, datefmt=NIPYPE_DATEFMT))
        nipype_logger.addHandler(handler)
    quiet_engine_console()


def worker_initializer(cwd: str) -> None:
    """Initializer of a MultiProc worker: :func:`install_worker_console`, then Nipype's own
    (``nipype.pipeline.plugins.multiproc.process_initializer``: working directory)."""
    install_worker_console()
    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
