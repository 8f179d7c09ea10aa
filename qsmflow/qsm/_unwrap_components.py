# SPDX-License-Identifier: Apache-2.0
"""Pieces of :mod:`qsmflow.qsm.unwrap`'s region growing (private): neighbour pairs along an
axis and the 2π alignment of separately grown components."""
from __future__ import annotations

import numpy as np
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
