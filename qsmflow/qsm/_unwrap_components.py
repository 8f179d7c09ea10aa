# SPDX-License-Identifier: Apache-2.0
"""Pieces of :mod:`qsmflow.qsm.unwrap`'s region growing (private): neighbour pairs along an
axis, the growing's start and its bucket queue, and the 2π alignment of separately grown
components."""
from __future__ import annotations

import math
from concurrent.futures import wait

import numpy as np
from numba import njit
from scipy import fft as sfft

from qsmflow.qsm import _vector, threads
from qsmflow.qsm._morphology import largest_component, nearest_outside
from qsmflow.qsm._vector import Selection, by_slabs, planewise


def _axis_pairs(axis):
    """Index tuples selecting voxel ``v`` and ``v + e_axis`` of a 3D array."""
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis] = slice(None, -1)
    hi[axis] = slice(1, None)
    return tuple(lo), tuple(hi)


def _growing_start(mask, quality):
    """``(state, first)`` of the region growing: int32 (N,) −1 in ``mask``, 0 elsewhere,
    and ``argmax(where(mask, quality, −1))`` (the first best voxel, flat), both by slabs
    of planes side by side: each slab's first best, then the first slab with the best."""
    q = quality.reshape(mask.shape)
    plane = mask[0].size

    def best(s):
        w = np.where(mask[s], q[s], -1)
        i = int(np.argmax(w))
        return w.reshape(-1)[i], s.start * plane + i

    parts = planewise(best, mask.shape[0])
    first = parts[int(np.argmax(np.array([v for v, _ in parts])))][1]
    return by_slabs(lambda m: -m.astype(np.int32), mask).reshape(-1), first


#: Edges per block of the growing's per-level stacks (:func:`_grow`).
GROW_BLOCK = 1024


def _grow(phase, state, bins, s0, s1, seeds, out, n_comp, beside=None):
    """Bucket-queue region growing; fills ``out`` and ``state`` in place.

    ``phase`` float32 (N,); ``state`` int32 (N,): 0 outside the mask, −1 not yet reached,
    else the component number; ``bins`` uint8 (3, N), the priority level (0 best) of the
    edge from voxel ``v`` to ``v + e_a``; ``seeds`` int64 candidates tried in order; ``out``
    float32 (N,). Border voxels of the box must lie outside the mask. Each component
    grows from its seed by the best edge into an unreached voxel, among equally good ones
    the one found last. Returns the number of components labelled so far.

    Each priority level is a stack (last pushed, first popped) of the edges into unreached
    voxels, one integer per edge (the voxel reached times 8 plus the direction it is
    reached in; int32 below 2²⁸ voxels), in a chain of blocks of :data:`GROW_BLOCK` edges
    taken from and handed back to one pool: the pushes and pops of a level stay in a few
    cache lines. Every edge enters a stack at most once.

    ``beside``: work (a callable) for the caller, independent of the growing. With two
    or more threads in force (:func:`qsmflow.qsm.threads.limit`) the growing, which is
    serial, runs on the thread pool (it allocates nothing there: its storage is made
    here) while ``beside()`` runs on the calling thread on one thread; else ``beside()``
    runs first.
    """
    n_left = int(np.count_nonzero(state < 0))
    n_blocks = (3 * n_left + 8) // GROW_BLOCK + 256 + 1
    store = np.empty(n_blocks * GROW_BLOCK, np.int32 if phase.size < 2**28 else np.int64)
    below = np.empty(n_blocks, np.int32)
    free = np.arange(n_blocks - 1, -1, -1, dtype=np.int32)

    def grow():
        return _grow_levels(phase, state, bins, s0, s1, seeds, out, n_comp, store, below,
                            free, GROW_BLOCK)

    if beside is None:
        return grow()
    if sfft.get_workers() < 2:
        beside()
        return grow()
    growing = _vector._pool(1).submit(grow)
    try:
        with threads.limit(1):
            beside()
    finally:
        wait([growing])
    return growing.result()


@njit(cache=True, nogil=True)
def _grow_levels(phase, state, bins, s0, s1, seeds, out, n_comp, store, below, free,
                 blk):  # pragma: no cover - numba
    """:func:`_grow` with the blocks' storage ``store`` (``n`` blocks of ``blk`` edges,
    enough for every edge and one open block per level), ``below`` (n,) int32 for the
    block under each block of a stack and ``free`` (n,) int32 ``n − 1 … 0``, the unused
    blocks (a stack too)."""
    nbins = 256
    n_free = free.size
    top = np.full(nbins, -1, np.int32)  # each level's top block (−1: empty)
    fill = np.zeros(nbins, np.int32)  # edges in it
    offs = np.array([s0, -s0, s1, -s1, 1, -1], np.int64)
    two_pi = 2.0 * math.pi
    for seed in seeds:
        if state[seed] >= 0:
            continue
        n_comp += 1
        out[seed] = phase[seed]
        state[seed] = n_comp
        cur = nbins
        v = seed
        while True:
            # push the edges from v to its unreached neighbours
            for d in range(6):
                w = v + offs[d]
                if state[w] >= 0:
                    continue
                b = bins[d // 2, v] if d % 2 == 0 else bins[d // 2, w]
                t, f = top[b], fill[b]
                if t < 0 or f == blk:  # a block from the pool
                    n_free -= 1
                    below[free[n_free]] = t
                    t = top[b] = free[n_free]
                    f = 0
                store[t * blk + f] = w * 8 + d
                fill[b] = f + 1
                if b < cur:
                    cur = b
            # pop the best edge leading to an unreached voxel
            v = -1
            while cur < nbins:
                t = top[cur]
                if t < 0:
                    cur += 1
                    continue
                f = fill[cur] - 1
                e = store[t * blk + f]
                if f == 0:  # the block is empty: back to the pool
                    free[n_free] = t
                    n_free += 1
                    top[cur] = below[t]
                    fill[cur] = blk
                else:
                    fill[cur] = f
                w = e >> 3
                if state[w] < 0:
                    v = w
                    k = math.floor((out[w - offs[e & 7]] - phase[v]) / two_pi + 0.5)
                    out[v] = phase[v] + two_pi * k
                    state[v] = n_comp
                    break
            if v < 0:
                break
    return n_comp


def _distances_mm(near, where, vox):
    """Distance (mm) from the voxels ``where`` to their nearest voxels ``near`` (index
    tuples), computed as :func:`scipy.ndimage.distance_transform_edt` computes its
    distances (so the same bits), but only at these voxels instead of on the whole box."""
    sq = np.array([np.subtract(n, w).astype(np.float64) for n, w in zip(near, where)])
    for a, s in enumerate(np.asarray(vox, np.float64)):
        sq[a] *= s
    np.multiply(sq, sq, sq)
    return np.sqrt(np.add.reduce(sq, axis=0))


def _ref_step(out, in_ref, near, axis):
    """Phase step (float32) along ``axis`` inside the component ``in_ref`` at the voxels
    ``near`` (index tuple): the backward difference where the voxel before is in it, else
    the forward one, else 0 — evaluated at these voxels only (the same float32
    subtractions as on the whole box)."""
    i = near[axis]
    n = out.shape[axis]

    def shifted(by):  # index tuple of the neighbours ``near + by·e_axis`` (clipped)
        return near[:axis] + (np.clip(i + by, 0, n - 1),) + near[axis + 1:]

    before, after = shifted(-1), shifted(1)
    here = in_ref[near]
    has_bwd = (i > 0) & here & in_ref[before]
    has_fwd = (i < n - 1) & here & in_ref[after]
    bwd = np.where(has_bwd, out[near] - out[before], 0)
    fwd = np.where(has_fwd, out[after] - out[near], 0)
    return np.where(has_bwd, bwd, np.where(has_fwd, fwd, 0))


def _nearest_reference(mask, vox):
    """``(main, near)``: the largest face-connected component of ``mask`` and, for every
    voxel, the flat index of its nearest voxel of it (:func:`nearest_outside` of
    ``~main``), or None when ``mask`` is one piece (nothing to align)."""
    main = largest_component(mask)
    if np.count_nonzero(main) == np.count_nonzero(mask):
        return None
    return main, nearest_outside(~main, vox)


def _align_components(out, label, n_comp, vox, known=None):
    """Shift components by 2π·k to continue the largest one across the gaps (in place).

    For each voxel of a smaller component, the unwrapped phase of the largest component
    is extrapolated linearly from the nearest voxel (in mm) of that component, with
    one-sided differences inside it as gradient; the mean mismatch over the voxels
    closest to the largest component (within one voxel of the smallest distance) gives
    the component's 2π·k. ``known``: :func:`_nearest_reference` of the mask if computed
    already (used when its component is the largest one grown, else computed anew).
    """
    # the whole-box passes by slabs side by side (the same arrays, any thread count)
    n0 = label.shape[0]
    sizes = np.sum(planewise(lambda s: np.bincount(label[s].ravel(), minlength=n_comp + 1),
                             n0), axis=0)
    sizes[0] = 0
    ref = int(np.argmax(sizes))
    in_ref = by_slabs(lambda a: a == ref, label)
    other = Selection(by_slabs(lambda a, b: (a > 0) & ~b, label, in_ref))
    lab = other.gather(label)
    if known is not None and all(planewise(
            lambda s: np.array_equal(known[0][s], in_ref[s]), n0)):
        nearest = known[1]
    else:
        nearest = nearest_outside(~in_ref, vox)
    near = np.unravel_index(other.gather(nearest.reshape(label.shape)), label.shape)
    where = other.nonzero()
    values = other.gather(out)
    d = _distances_mm(near, where, vox)
    pred = out[near].astype(np.float64)
    for a in range(3):
        # one-sided difference inside the reference component at the nearest voxel
        pred += _ref_step(out, in_ref, near, a) * (where[a] - near[a])
    dmin = np.full(n_comp + 1, np.inf)
    np.minimum.at(dmin, lab, d)
    close = d <= dmin[lab] + float(np.max(vox))
    diff = (pred - values)[close]
    count = np.bincount(lab[close], minlength=n_comp + 1)
    mean = np.bincount(lab[close], diff, minlength=n_comp + 1) / np.maximum(count, 1)
    from qsmflow.qsm.unwrap import TWO_PI

    k = np.round(mean / TWO_PI)
    k[ref] = 0
    k[0] = 0
    values += (TWO_PI * k[lab]).astype(np.float32)
    other.scatter(out, values)
