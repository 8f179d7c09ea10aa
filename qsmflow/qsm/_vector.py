# SPDX-License-Identifier: Apache-2.0
"""Vector work of the iterative solvers split over threads (private): the conjugate-gradient
updates and inner products, and element-wise work on FFT spectra.

The work is cut into FIXED chunks (:data:`CHUNK` elements of the flattened arrays, or
slabs along the first axis) whatever the thread count; chunks run in contiguous blocks on
the calling thread and a persistent :class:`~concurrent.futures.ThreadPoolExecutor`, as
many threads in all as FFT workers are in force (:func:`scipy.fft.get_workers`, set by
:func:`qsmflow.qsm.threads.limit`). The compiled chunk kernels are serial numba
functions that release the GIL (no OpenMP pool that would spin-wait on the cores the next
FFT needs). Inner products are per-chunk float64 partial sums added in chunk order, so
results are bitwise the same for any thread count.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np
from scipy import fft as sfft

#: Elements per chunk of the flattened vectors (fixed: the partial sums, hence the rounding
#: of the inner products, do not depend on the thread count).
CHUNK = 1 << 16

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: drop the parent's pools, whose threads the child does not have
    (work handed to them would never run, and :func:`_map` would wait for it forever)."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _pool(n_threads: int) -> ThreadPoolExecutor:
    """The persistent pool of ``n_threads`` threads (made on first use)."""
    with _pools_lock:
        pool = _pools.get(n_threads)
        if pool is None:
            pool = _pools[n_threads] = ThreadPoolExecutor(n_threads, 'qsmflow-vector')
    return pool


def _map(func, n_chunks: int) -> list:
    """``[func(c) for c in range(n_chunks)]``, on :func:`scipy.fft.get_workers` threads.

    The chunks are dealt out in contiguous blocks, one per thread, the calling thread
    running the first: one hand-over per thread and call instead of one per chunk (the GIL
    hand-overs cost more than a small chunk's work). Which thread runs a chunk does not
    change its result."""
    workers = min(sfft.get_workers(), n_chunks)
    if workers <= 1:
        return [func(c) for c in range(n_chunks)]
    pool = _pool(workers - 1)
    ends = [n_chunks * w // workers for w in range(workers + 1)]

    def block(w):
        return [func(c) for c in range(ends[w], ends[w + 1])]

    others = [pool.submit(block, w) for w in range(1, workers)]
    try:
        out = block(0)
    finally:  # no chunk may still be running when this returns or raises
        wait(others)
    for future in others:
        out.extend(future.result())
    return out


def _n_chunks(size: int) -> int:
    return max(1, -(-size // CHUNK))


@numba.njit(nogil=True, fastmath=False, cache=True)
def _dot_nb(a, b, lo, hi):  # pragma: no cover - compiled
    s = 0.0
    for i in range(lo, hi):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


@numba.njit(nogil=True, fastmath=False, cache=True)
def _cg_step_nb(x, r, p, q, alpha, lo, hi):  # pragma: no cover - compiled
    """``x += α p``; ``r -= α q`` on ``[lo, hi)``; returns that chunk's ``Σ r²``."""
    s = 0.0
    for i in range(lo, hi):
        x[i] += alpha * p[i]
        ri = r[i] - alpha * q[i]
        r[i] = ri
        s += np.float64(ri) * np.float64(ri)
    return s


@numba.njit(nogil=True, fastmath=False, cache=True)
def _xpby_nb(r, p, beta, lo, hi):  # pragma: no cover - compiled
    """``p ← r + β p`` on ``[lo, hi)``."""
    for i in range(lo, hi):
        p[i] = r[i] + beta * p[i]


def _bounds(c, size):
    return c * CHUNK, min(size, (c + 1) * CHUNK)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """``Σ a·b`` of two contiguous float32 arrays (float64 partial sums per fixed chunk)."""
    a, b = a.reshape(-1), b.reshape(-1)
    parts = _map(lambda c: _dot_nb(a, b, *_bounds(c, a.size)), _n_chunks(a.size))
    return float(sum(parts))


def cg_step(x, r, p, q, alpha: float) -> float:
    """In place ``x += α p``, ``r -= α q`` (float32); returns ``‖r‖²`` after the update."""
    x, r, p, q = (v.reshape(-1) for v in (x, r, p, q))
    a = np.float32(alpha)
    parts = _map(lambda c: _cg_step_nb(x, r, p, q, a, *_bounds(c, x.size)),
                 _n_chunks(x.size))
    return float(sum(parts))


def xpby(r, p, beta: float) -> None:
    """In place ``p ← r + β p`` (float32)."""
    r, p = r.reshape(-1), p.reshape(-1)
    b = np.float32(beta)
    _map(lambda c: _xpby_nb(r, p, b, *_bounds(c, r.size)), _n_chunks(r.size))


def slabwise(func, n0: int, slab: int = 8) -> None:
    """``func(slice)`` for fixed slabs of ``slab`` indices along the first axis (element-wise
    numpy work on large arrays releases the GIL, so slabs run side by side)."""
    planewise(func, n0, slab)


def by_slabs(func, *arrays) -> np.ndarray:
    """``func(*arrays)`` for element-wise numpy work on arrays of one shape, evaluated in
    slabs of planes of the first axis side by side (:func:`slabwise`) into a new array:
    each element gets the same operations, so the same bits. ``func`` must give one
    element per element (its dtype is found on the first one)."""
    out = np.empty(arrays[0].shape, func(*(a[(slice(0, 1),) * a.ndim] for a in arrays)).dtype)

    def one(s):
        out[s] = func(*(a[s] for a in arrays))

    slabwise(one, out.shape[0])
    return out


def planewise(func, n0: int, slab: int = 8) -> list:
    """``[func(s) for s in slabs]`` over the fixed slabs ``s`` of ``slab`` indices of a first
    axis of ``n0``, side by side (:func:`slabwise` with results: the parts of reductions
    that combine exactly, such as all, min or integer counts)."""
    return _map(lambda c: func(slice(c * slab, min(n0, (c + 1) * slab))), -(-n0 // slab))


def chunkwise(func, size: int) -> None:
    """``func(slice)`` for the fixed chunks of :data:`CHUNK` elements of ``range(size)``
    (element-wise work on long 1D arrays), side by side as :func:`slabwise`."""
    _map(lambda c: func(slice(*_bounds(c, size))), _n_chunks(size))


class Selection:
    """The voxels of a 3D boolean ``mask`` in the order ``arr[mask]`` gives them, gathered
    and scattered by fixed slabs of ``slab`` planes of the first axis side by side on the
    thread pool (:func:`slabwise`): each slab's voxels sit at its own offset, so the values
    and their order do not depend on the thread count."""

    def __init__(self, mask: np.ndarray, slab: int = 8):
        self.mask, self.slab = mask, slab
        n0 = mask.shape[0]
        counts = _map(lambda c: int(np.count_nonzero(mask[c * slab:(c + 1) * slab])),
                      -(-n0 // slab))
        self.starts = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        self.size = int(self.starts[-1])

    def each(self, func) -> None:
        """``func(planes, voxels)`` per slab: its planes (slice of the first axis) and the
        range of its voxels in the selection (slice)."""
        n0, slab, starts = self.mask.shape[0], self.slab, self.starts
        _map(lambda c: func(slice(c * slab, min(n0, (c + 1) * slab)),
                            slice(int(starts[c]), int(starts[c + 1]))), starts.size - 1)

    def gather(self, arr: np.ndarray, dtype=None) -> np.ndarray:
        """``arr[mask]`` (``arr`` 3D of the mask's shape; cast to ``dtype`` if given)."""
        out = np.empty(self.size, arr.dtype if dtype is None else dtype)

        def one(planes, voxels):
            out[voxels] = arr[planes][self.mask[planes]]

        self.each(one)
        return out

    def nonzero(self) -> tuple:
        """``np.nonzero(mask)``."""
        idx = np.empty((self.mask.ndim, self.size), np.intp)

        def one(planes, voxels):
            found = np.nonzero(self.mask[planes])
            idx[0, voxels] = found[0] + planes.start
            for axis in range(1, self.mask.ndim):
                idx[axis, voxels] = found[axis]

        self.each(one)
        return tuple(idx)

    def scatter(self, out: np.ndarray, values: np.ndarray) -> None:
        """``out[mask] = values`` in place (``out`` 3D of the mask's shape)."""
        def one(planes, voxels):
            out[planes][self.mask[planes]] = values[voxels]

        self.each(one)


def median(values: np.ndarray):
    """:func:`numpy.median` of a 1D float32 array (the same value and type), on the thread
    count in force: the middle values are found by a histogram of the top 16 bits of their
    order-preserving integer keys (exact counts, added over the threads' parts) and a
    partition of the bucket(s) that hold them. With one thread, few values, another dtype
    or a non-finite value, :func:`numpy.median` itself."""
    v = values.reshape(-1)
    n, workers = v.size, sfft.get_workers()
    if workers <= 1 or n < 4 * CHUNK or v.dtype != np.float32:
        return np.median(v)
    ends = [n * w // workers for w in range(workers + 1)]

    def buckets(w):
        return _buckets(v[ends[w]:ends[w + 1]])

    counts = sum(_map(lambda w: np.bincount(buckets(w), minlength=65536), workers))
    top, bottom = (int(b) for b in _buckets(np.array([np.inf, -np.inf], np.float32)))
    if counts[top:].any() or counts[:bottom + 1].any():
        return np.median(v)  # infinite or NaN values
    cum = np.cumsum(counts)
    k1, k2 = (n - 1) // 2, n // 2
    b1, b2 = (int(np.searchsorted(cum, k, side='right')) for k in (k1, k2))
    below = int(cum[b1 - 1]) if b1 else 0

    def candidates(w):
        b = buckets(w)
        return v[ends[w]:ends[w + 1]][(b >= b1) & (b <= b2)]

    part = np.partition(np.concatenate(_map(candidates, workers)), [k1 - below, k2 - below])
    return np.median(part[k1 - below:k2 - below + 1])


def _buckets(values: np.ndarray) -> np.ndarray:
    """The 16-bit buckets :func:`median` sorts float32 ``values`` into (0…65535, monotone
    in the value: the sign-magnitude bits turned into an ordered integer, its top half)."""
    k = values.view(np.int32)
    return ((k ^ ((k >> 31) & 0x7FFFFFFF)) >> 16) + 32768
