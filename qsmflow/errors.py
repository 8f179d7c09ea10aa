# SPDX-License-Identifier: Apache-2.0
"""Errors that end a run (or one participant) with a one-line message, never a traceback."""
from __future__ import annotations


class InputError(Exception):
    """A problem with the input data or the invocation; its text is a one-line message.

    The message names the file (or flag) and the fix. The command line prints it as
    ``qsmflow: error: <message>`` and exits with code 2; pre-flight turns it into a skipped
    participant.
    """
