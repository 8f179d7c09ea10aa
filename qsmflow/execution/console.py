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
import os
import re
import sys


class StepMessagesOnly(logging.Filter):
    """Pass the steps' warnings (``nipype.interface`` and the like at WARNING or above,
    e.g. a χ map out of the tissue range); drop the engine's records (``nipype.workflow``)."""

    def filter(self, record) -> bool:
        return record.levelno >= logging.WARNING \
            and not record.name.startswith('nipype.workflow')


#: A node's working directory under an acquisition's workflow
#: (``…/qsmflow_wf/sub_01_ses_a_wf/…``, :attr:`qsmflow.bids.inputs.Acquisition.name`): whose
#: step is running.
_ACQUISITION_DIR = re.compile(
    r'/qsmflow_wf/(sub_[0-9A-Za-z]+(?:_(?:ses|acq|rec|run)_[0-9A-Za-z]+)*)_wf(?:/|$)')


def running_acquisition(cwd: str) -> str | None:
    """The acquisition (``sub-01_ses-a``) whose node runs in ``cwd``, or None.

    >>> running_acquisition('/w/qsmflow_wf/sub_01_ses_a_run_2_wf/qsm_wf/brain_mask')
    'sub-01_ses-a_run-2'
    >>> running_acquisition('/home/me') is None
    True
    """
    match = _ACQUISITION_DIR.search(cwd)
    if not match:
        return None
    return re.sub(r'(sub|ses|acq|rec|run)_([0-9A-Za-z]+)', r'\1-\2', match.group(1))


class WarningLine(logging.Formatter):
    """A step's warning as one console line like qsmflow's own: ``qsmflow: warning: …``,
    naming the acquisition whose step it is (Nipype runs each node in its own folder)."""

    def format(self, record) -> str:
        text = record.getMessage()
        text = text[9:] if text.startswith('qsmflow: ') else text
        try:
            who = running_acquisition(os.getcwd())
        except OSError:  # the folder was removed
            who = None
        return 'qsmflow: warning: ' + (f'{who}: ' if who else '') + text


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
