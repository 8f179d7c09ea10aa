# SPDX-License-Identifier: Apache-2.0
"""Resident memory of this process: the current value and a resettable peak (Linux).

On Linux the kernel keeps the peak resident set (``VmHWM`` in ``/proc/self/status``) and
resets it when ``5`` is written to ``/proc/self/clear_refs``, so the peak of one stretch
of code is exact (no sampling). Elsewhere the peak is the process's lifetime maximum
(:func:`resource.getrusage`) and cannot be reset; :func:`reset_peak` then returns False.
"""
from __future__ import annotations

import resource
import sys


def _status_kb(field: str) -> int | None:
    try:
        with open('/proc/self/status') as fobj:
            for line in fobj:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Start a new peak-RSS window; True if the platform allows it (Linux)."""
    try:
        with open('/proc/self/clear_refs', 'w') as fobj:
            fobj.write('5')
    except OSError:
        return False
    return True


def peak_bytes() -> int:
    """Peak resident memory (bytes) since the last :func:`reset_peak` (or process start)."""
    kb = _status_kb('VmHWM')
    if kb is not None:
        return kb * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == 'darwin' else maxrss * 1024)


def current_bytes() -> int:
    """Resident memory (bytes) now."""
    kb = _status_kb('VmRSS')
    return kb * 1024 if kb is not None else peak_bytes()
