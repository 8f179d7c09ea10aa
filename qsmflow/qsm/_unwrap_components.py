# SPDX-License-Identifier: Apache-2.0
"""Pieces of :mod:`qsmflow.qsm.unwrap`'s region growing (private): neighbour pairs along an
axis and the 2π alignment of separately grown components."""
from __future__ import annotations

import numpy as np
from qsmflow.qsm._morphology import nearest_outside


def _axis_pairs(axis):
    """Index tuples selecting voxel ``v`` and ``v + e_axis`` of a 3D array."""
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis] = slice(None, -1)
    hi[axis] = slice(1, None)
    return tuple(lo), tuple(hi)


def _distances_mm(near, where, vox):
    """Distance (mm) from the voxels ``where`` to their nearest voxels ``near`` (index
    tuples), computed as :func:`scipy.ndimage.distance_transform_edt` computes its
    distances (so the same bits), but only at these voxels instead of on the whole box."""
    sq = np.array([np.subtract(n, w).astype(np.float64) for n, w in zip(near, where)])
    for a, s in enumerate(np.asarray(vox, np.float64)):
        sq[a] *= s
    np.multiply(sq, sq, sq)
    return np.sqrt(np.add.reduce(sq, axis=0))


def _align_components(out, label, n_comp, vox):
    """Shift components by 2π·k to continue the largest one across the gaps (in place).

    For each voxel of a smaller component, the unwrapped phase of the largest component
    is extrapolated linearly from the nearest voxel (in mm) of that component, with
    one-sided differences inside it as gradient; the mean mismatch over the voxels
    closest to the largest component (within one voxel of the smallest distance) gives
    the component's 2π·k.
    """
    sizes = np.bincount(label.ravel(), minlength=n_comp + 1)
    sizes[0] = 0
    ref = int(np.argmax(sizes))
    in_ref = label == ref
    other = (label > 0) & ~in_ref
    lab = label[other]
    near = np.unravel_index(nearest_outside(~in_ref, vox)[other], label.shape)
    where = np.nonzero(other)
    d = _distances_mm(near, where, vox)
    pred = out[near].astype(np.float64)
    for a in range(3):
        # one-sided difference inside the reference component at the nearest voxel
        lo, hi = _axis_pairs(a)
        fwd = np.zeros(out.shape, np.float32)
        ok = in_ref[hi] & in_ref[lo]
        fwd[lo] = np.where(ok, out[hi] - out[lo], 0)
        has_fwd = np.zeros(out.shape, bool)
        has_fwd[lo] = ok
        bwd = np.zeros(out.shape, np.float32)
        bwd[hi] = fwd[lo]
        has_bwd = np.zeros(out.shape, bool)
        has_bwd[hi] = ok
        step = np.where(has_bwd[near], bwd[near], np.where(has_fwd[near], fwd[near], 0))
        pred += step * (where[a] - near[a])
    dmin = np.full(n_comp + 1, np.inf)
    np.minimum.at(dmin, lab, d)
    close = d <= dmin[lab] + float(np.max(vox))
    diff = (pred - out[other])[close]
    count = np.bincount(lab[close], minlength=n_comp + 1)
    mean = np.bincount(lab[close], diff, minlength=n_comp + 1) / np.maximum(count, 1)
    from qsmflow.qsm.unwrap import TWO_PI

    k = np.round(mean / TWO_PI)
    k[ref] = 0
    k[0] = 0
    out[other] += (TWO_PI * k[lab]).astype(np.float32)
