# SPDX-License-Identifier: Apache-2.0
"""Binary morphology shared by the masking and background-removal modules (private).

Erosion and dilation by a ball of radius ``r`` mm are computed as an FFT convolution with
the ball (:func:`~qsmflow.qsm.kernels.sphere_kernel`), whose cost does not grow with the
radius. Connected components use face (6-) connectivity throughout.
"""

from __future__ import annotations

import math

import numba

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._vector import by_slabs, slabwise
from qsmflow.qsm.kernels import bounding_box, irfft, padded_shape, rfft, sphere_kernel


def ball_count(voxel_size, radius_mm) -> int:
    """Number of voxels of the discrete ball that :func:`~qsmflow.qsm.kernels.sphere_kernel`
    uses: offsets whose centre lies within ``radius_mm`` (voxel size in mm).

    >>> ball_count((1, 1, 1), 1.0), ball_count((1, 1, 2), 1.0), ball_count((1, 1, 1), 0.5)
    (7, 5, 1)
    """
    axes = [np.arange(-math.ceil(radius_mm / h), math.ceil(radius_mm / h) + 1) * h
            for h in voxel_size]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return int(np.count_nonzero(r2 <= radius_mm**2 * (1 + 1e-12)))


def ball_filter(mask, voxel_size, radius_mm, erode):
    """Erosion (``erode``) or dilation of ``mask`` by a ball of ``radius_mm``, via FFT.

    Outside the array counts as background (the image is zero-padded), as in
    :func:`scipy.ndimage.binary_erosion` with ``border_value=0``.

    >>> m = np.zeros((9, 9, 9), bool); m[2:7, 2:7, 2:7] = True
    >>> int(ball_filter(m, (1, 1, 1), 1.0, erode=True).sum()), int(m.sum())
    (27, 125)
    >>> bool((ball_filter(m, (1, 1, 1), 1.0, erode=False)
    ...       == ndi.binary_dilation(m)).all())
    True
    """
    n_ball = ball_count(voxel_size, radius_mm)
    if n_ball <= 1:
        return mask.copy()
    pad = [math.ceil(radius_mm / h) + 1 for h in voxel_size]
    pshape = padded_shape(mask.shape, pad)
    inner = tuple(slice(0, n) for n in mask.shape)
    big = np.zeros(pshape, np.float32)
    big[inner] = mask
    kernel = sphere_kernel(pshape, voxel_size, radius_mm)
    spec = rfft(big)
    del big

    def times_kernel(s):  # element-wise, in slabs side by side: the product's bits
        spec[s] *= kernel[s]

    slabwise(times_kernel, spec.shape[0])
    frac = irfft(spec, pshape)[inner]
    del spec
    half = 0.5 / n_ball
    cut = 1 - half if erode else half
    return by_slabs(lambda f: f > cut, frac)


#: Planes of the first axis per slab of :func:`erode_layers` (each slab erodes the planes
#: of ``layers`` either side too).
EROSION_SLAB = 32


def erode_layers(mask, layers):
    """:func:`scipy.ndimage.binary_erosion` ``(mask, iterations=layers)`` (3D, face
    neighbours, border 0), in slabs of planes side by side, each eroded with ``layers``
    planes either side (the reach of the erosion), which it then drops: the same mask."""
    out = np.empty(mask.shape, bool)
    n0 = mask.shape[0]

    def slab(rows):
        lo, hi = max(rows.start - layers, 0), min(rows.stop + layers, n0)
        eroded = ndi.binary_erosion(mask[lo:hi], iterations=layers)
        out[rows] = eroded[rows.start - lo:rows.stop - lo]

    slabwise(slab, n0, EROSION_SLAB)
    return out


def erode(mask, voxel_size, radius_mm):
    """Erosion of ``mask`` by a ball of ``radius_mm`` (voxel size in mm)."""
    return ball_filter(mask, voxel_size, radius_mm, erode=True)


def dilate(mask, voxel_size, radius_mm):
    """Dilation of ``mask`` by a ball of ``radius_mm`` (voxel size in mm)."""
    return ball_filter(mask, voxel_size, radius_mm, erode=False)


def fill_holes_axis(mask, axis=None):
    """Fill background regions not connected to the array border.

    ``axis=None`` fills 3D holes (face-connected background, by one labelling of the
    mask's bounding box grown by one voxel: the background beyond it reaches the border
    through a plane without mask, so a hole is background that does not reach the box's
    faces); an integer fills holes in every 2D slice across that axis (4-connected within
    the slice): a compiled flood fill from each slice's border through its background,
    the slices side by side on numba's threads (the background it does not reach is the
    slice's holes).
    """
    mask = np.asarray(mask, dtype=bool)
    if axis is not None:
        bg = np.ascontiguousarray(np.moveaxis(~mask, axis, 0))
        return mask | ~np.moveaxis(_flood_slices(bg), 0, axis)
    if mask.ndim != 3 or not mask.any():
        return _fill_holes_labelled(mask)
    box = bounding_box(mask, 1)
    out = mask.copy()
    out[box] = _fill_holes_labelled(mask[box])
    return out


def _fill_holes_labelled(mask):
    """3D holes of ``mask`` filled: background not connected to the array's faces."""
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    for a in range(mask.ndim):
        outside[np.take(lab, 0, axis=a)] = True
        outside[np.take(lab, -1, axis=a)] = True
    outside[0] = True
    return mask | ~outside[lab]


@numba.njit(parallel=True, cache=True)
def _flood_slices(bg):  # pragma: no cover - compiled
    """Which voxels of each slice ``bg[s]`` (bool) are 4-connected through ``bg[s]`` to
    the slice's border; the slices in parallel, each by a depth-first flood."""
    n0, n1, n2 = bg.shape
    reached = np.zeros(bg.shape, np.bool_)
    for s in numba.prange(n0):
        b, r = bg[s], reached[s]
        stack = np.empty(n1 * n2, np.int64)  # each voxel is pushed at most once
        top = 0
        for j in range(n1):
            step = 1 if j == 0 or j == n1 - 1 else max(n2 - 1, 1)  # whole row, or its ends
            for k in range(0, n2, step):
                if b[j, k] and not r[j, k]:
                    r[j, k] = True
                    stack[top] = j * n2 + k
                    top += 1
        while top > 0:
            top -= 1
            j, k = divmod(stack[top], n2)
            if j > 0 and b[j - 1, k] and not r[j - 1, k]:
                r[j - 1, k] = True
                stack[top] = (j - 1) * n2 + k
                top += 1
            if j + 1 < n1 and b[j + 1, k] and not r[j + 1, k]:
                r[j + 1, k] = True
                stack[top] = (j + 1) * n2 + k
                top += 1
            if k > 0 and b[j, k - 1] and not r[j, k - 1]:
                r[j, k - 1] = True
                stack[top] = j * n2 + k - 1
                top += 1
            if k + 1 < n2 and b[j, k + 1] and not r[j, k + 1]:
                r[j, k + 1] = True
                stack[top] = j * n2 + k + 1
                top += 1
    return reached


def fill_holes(mask, slicewise=True):
    """3D hole filling, then (``slicewise``) 2D filling across each of the three axes."""
    out = fill_holes_axis(mask)
    if slicewise:
        for axis in range(3):
            out = fill_holes_axis(out, axis)
    return out


def otsu(values, nbins=256) -> float:
    """Otsu's threshold of a 1D sample (same unit as the values)."""
    hist, edges = np.histogram(values, bins=nbins)
    hist = hist.astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(invalid='ignore', divide='ignore'):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


@numba.njit(parallel=True, cache=True)
def _edt_pass(f, step_mm, idx):  # pragma: no cover - compiled
    """Squared-distance lower envelope along the last axis of ``f`` (in place).

    ``f[i, j, p] <- min_q f[i, j, q] + ((p - q) · step_mm)²``, exactly (Felzenszwalb &
    Huttenlocher 2012, parabolas through the finite ``f[q]`` only), and
    ``idx[:, i, j, p] <- idx[:, i, j, q]`` at the minimising ``q`` (``idx`` may have no
    rows); one line per iteration, the lines of ``f[i]`` on one thread, so the result does
    not depend on the thread count.
    """
    n0, n1, n = f.shape
    nc = idx.shape[0]
    s2 = step_mm * step_mm
    for i in numba.prange(n0):
        v = np.empty(n, np.int64)  # apexes of the envelope's parabolas
        z = np.empty(n + 1)  # where parabola k takes over from k - 1 (in units of voxels)
        line = np.empty(n)
        carried = np.empty((nc, n), idx.dtype)
        for j in range(n1):
            for q in range(n):
                line[q] = f[i, j, q]
                for c in range(nc):
                    carried[c, q] = idx[c, i, j, q]
            k = -1
            for q in range(n):
                fq = line[q]
                if fq == np.inf:
                    continue
                while k >= 0:
                    r = v[k]
                    cut = ((fq + s2 * q * q) - (line[r] + s2 * r * r)) / (2.0 * s2 * (q - r))
                    if cut <= z[k]:
                        k -= 1
                    else:
                        break
                k += 1
                v[k] = q
                z[k] = -np.inf if k == 0 else cut
                z[k + 1] = np.inf
            if k < 0:
                continue  # no finite value on this line: it stays at +inf
            m = 0
            for p in range(n):
                while z[m + 1] < p:
                    m += 1
                d = p - v[m]
                f[i, j, p] = line[v[m]] + s2 * d * d
                for c in range(nc):
                    idx[c, i, j, p] = carried[c, v[m]]


def distance_transform(mask, voxel_size) -> np.ndarray:
    """Euclidean distance (mm) of each voxel of ``mask`` to the nearest voxel outside it.

    What :func:`scipy.ndimage.distance_transform_edt` ``(mask, sampling=voxel_size)``
    returns (equal within float rounding; voxels outside ``mask`` are 0), computed as an
    exact separable transform, one pass per axis with the lines in parallel (numba
    threads; the result is bitwise the same for any thread count). A mask without
    background has no defined distance: scipy's answer is returned then.

    Examples
    --------
    >>> m = np.zeros((1, 1, 7), bool); m[0, 0, 1:6] = True
    >>> distance_transform(m, (1.0, 1.0, 2.0))[0, 0].tolist()
    [0.0, 2.0, 4.0, 6.0, 4.0, 2.0, 0.0]
    """
    mask = np.asarray(mask, dtype=bool)
    vox = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    if mask.ndim != 3 or mask.all():
        return ndi.distance_transform_edt(mask, sampling=vox)
    dist = _squared_transform(mask, vox, np.empty((0,) + mask.shape, np.int32))

    def root(s):
        np.sqrt(dist[s], out=dist[s])

    slabwise(root, dist.shape[0])
    return dist


def nearest_outside(mask, voxel_size) -> np.ndarray:
    """Flat (C-order) index of the nearest voxel outside ``mask`` (in mm), for every voxel.

    The voxels that :func:`scipy.ndimage.distance_transform_edt` ``(mask,
    sampling=voxel_size, return_indices=True)`` names (where two voxels are equally near,
    either may be given), as one integer per voxel (int32 below 2³¹ voxels), not three,
    computed in parallel as :func:`distance_transform`; ``np.unravel_index`` gives the
    indices.
    """
    mask = np.asarray(mask, dtype=bool)
    vox = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    if mask.ndim != 3 or mask.all():
        idx = ndi.distance_transform_edt(mask, sampling=vox, return_distances=False,
                                         return_indices=True)
        return np.ravel_multi_index(tuple(idx), mask.shape)
    flat = np.arange(mask.size, dtype=np.int32 if mask.size < 2**31 else np.int64)
    flat = flat.reshape((1,) + mask.shape)
    _squared_transform(mask, vox, flat)
    return flat[0]


def _squared_transform(mask, vox, idx):
    """Squared distances (mm²) of :func:`distance_transform`; carries ``idx`` along."""
    f = np.zeros(mask.shape)

    def start(s):  # np.where(mask, inf, 0) in slabs side by side
        np.copyto(f[s], np.inf, where=mask[s])

    slabwise(start, f.shape[0])
    for axis in (2, 1, 0):  # the last axis first: its lines are contiguous
        _edt_pass(np.moveaxis(f, axis, 2), float(vox[axis]), np.moveaxis(idx, axis + 1, 3))
    return f


# --- face-connected components by a union-find forest, slabs in parallel ---------------------
#: Planes of the first axis per slab of :func:`_forest` (fixed: the forest, hence every
#: result, does not depend on the thread count).
COMPONENT_SLAB = 8


@numba.njit(cache=True, nogil=True)
def _root(parent, v):  # pragma: no cover - compiled
    """Root of ``v``, halving the path on the way (only for voxels this thread owns)."""
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


@numba.njit(cache=True, nogil=True)
def _root_read(parent, v):  # pragma: no cover - compiled
    while parent[v] != v:
        v = parent[v]
    return v


@numba.njit(cache=True, nogil=True)
def _join(parent, size, a, b):  # pragma: no cover - compiled
    """Merge the trees of ``a`` and ``b`` under the smaller root index."""
    ra, rb = _root(parent, a), _root(parent, b)
    if ra != rb:
        lo, hi = min(ra, rb), max(ra, rb)
        parent[hi] = lo
        size[lo] += size[hi]
        size[hi] = 0


@numba.njit(parallel=True, cache=True)
def _forest(f, n1, n2, slab):  # pragma: no cover - compiled
    """Face-connected components of the flat C-order 3D bool ``f`` (planes of ``n1·n2``,
    under 2³¹ voxels): ``parent`` (int32; −1 off ``f``) whose roots are each component's
    first voxel in C order, and ``size`` (voxels, at the roots; 0 elsewhere). Slabs of
    ``slab`` planes are joined within themselves in parallel, then across their faces in
    order."""
    plane = n1 * n2
    n0 = f.size // plane
    parent = np.full(f.size, -1, np.int32)
    size = np.zeros(f.size, np.int32)
    n_slab = -(-n0 // slab)
    for s in numba.prange(n_slab):
        i0, i1 = s * slab, min(n0, (s + 1) * slab)
        for i in range(i0, i1):
            for j in range(n1):
                row = (i * n1 + j) * n2
                for v in range(row, row + n2):
                    if not f[v]:
                        continue
                    # the neighbours before v: the root of the first one is v's root
                    if v > row and f[v - 1]:
                        r = _root(parent, v - 1)
                        parent[v] = r
                        size[r] += 1
                    else:
                        parent[v] = v
                        size[v] = 1
                    if j > 0 and f[v - n2]:
                        _join(parent, size, v - n2, v)
                    if i > i0 and f[v - plane]:
                        _join(parent, size, v - plane, v)
    for s in range(1, n_slab):
        for v in range(s * slab * plane, (s * slab + 1) * plane):
            if f[v] and f[v - plane]:
                _join(parent, size, v - plane, v)
    return parent, size


@numba.njit(parallel=True, cache=True)
def _keep_root(f, parent, best, slab_voxels):  # pragma: no cover - compiled
    """Which voxels of ``f`` have the root ``best`` (read-only walks, slabs in parallel)."""
    out = np.zeros(f.size, np.bool_)
    for s in numba.prange(-(-f.size // slab_voxels)):
        for v in range(s * slab_voxels, min(f.size, (s + 1) * slab_voxels)):
            out[v] = f[v] and _root_read(parent, v) == best
    return out


def largest_component(mask) -> np.ndarray:
    """Largest face-connected component of ``mask`` (``mask`` itself if empty; of equal
    ones, the first in C order, as :func:`scipy.ndimage.label` numbers them). A union-find
    forest built by slabs on numba's threads (:func:`_forest`)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 3 or mask.size == 0 or mask.size >= 2**31:
        lab, n = ndi.label(mask)
        if n <= 1:
            return lab > 0
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        return lab == np.argmax(counts)
    f = mask.ravel()
    plane = mask.shape[1] * mask.shape[2]
    parent, size = _forest(f, mask.shape[1], mask.shape[2], COMPONENT_SLAB)
    best = int(np.argmax(size))  # only roots carry sizes; ties: the first root in C order
    return _keep_root(f, parent, best, COMPONENT_SLAB * plane).reshape(mask.shape)
