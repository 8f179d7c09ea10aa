# SPDX-License-Identifier: Apache-2.0
"""How many threads :mod:`qsmflow.qsm` uses: the :func:`limit` context manager.

Two kinds of work in :mod:`qsmflow.qsm` run in parallel: FFTs (:mod:`scipy.fft`, called
with ``workers=None``, so they use the worker count of the innermost
:func:`scipy.fft.set_workers` context) and the compiled loops (numba ``parallel=True``
kernels, which use :func:`numba.get_num_threads`). ``with limit(n):`` sets both to ``n``
and restores them on exit; both settings are local to the calling thread, so concurrent
threads can use different limits. Nothing is read from the environment or fixed at
import time.

Default, outside any :func:`limit` block: FFTs use one worker (scipy's default) and the
compiled loops numba's default (every core, or ``NUMBA_NUM_THREADS``). The BIDS App runs
every step inside ``limit(omp_nthreads)`` (the ``num_threads`` input of each interface in
:mod:`qsmflow.interfaces`). Results are bitwise the same for any thread count: the
parallel loops write disjoint voxels and sum their partial norms in a fixed order.

Examples
--------
>>> import numba, scipy.fft
>>> with limit(1):
...     (scipy.fft.get_workers(), numba.get_num_threads())
(1, 1)
>>> scipy.fft.get_workers() == 1  # restored
True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numba
from scipy import fft as sfft


def available() -> int:
    """Most threads :func:`limit` can give the compiled loops (numba's pool size)."""
    return int(numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def limit(n: int | None = None) -> Iterator[int]:
    """Run the enclosed :mod:`qsmflow.qsm` calls on at most ``n`` threads.

    Parameters
    ----------
    n : int, optional
        Threads (≥ 1) for the FFTs (:func:`scipy.fft.set_workers`) and the numba loops
        (:func:`numba.set_num_threads`, capped at :func:`available`); None for every core
        (:func:`os.cpu_count`).

    Yields
    ------
    n : int
        The FFT worker count in force.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer.
    """
    if n is None:
        n = os.cpu_count() or 1
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f'thread count must be a positive integer, got {n!r}')
    n = int(n)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(n, available()))
    try:
        with sfft.set_workers(n):
            yield n
    finally:
        numba.set_num_threads(previous)
