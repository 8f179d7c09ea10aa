# SPDX-License-Identifier: Apache-2.0
"""Coarser voxel grids by whole blocks: block means, the factors that reach a voxel size,
and the affine of the coarser grid.

Used where a step works on about a given voxel size (brain extraction's working grid, the
polarity check, the moving image of a template registration). A block mean is the
anti-aliased downsampling by an integer factor per axis: every coarse voxel is the mean of
``f0 × f1 × f2`` fine voxels, the grid cropped to whole blocks at its far end.
"""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._vector import slabwise


def block_factors(voxel_size_mm, target_mm: float) -> tuple:
    """Integer factor per axis that brings ``voxel_size_mm`` up to at most ``target_mm``.

    ``floor(target / voxel size)``, at least 1: the coarse voxels are never larger than
    ``target_mm`` along any axis.

    Examples
    --------
    >>> block_factors((1.0, 1.0, 1.0), 2.0), block_factors((0.6, 0.6, 2.0), 2.0)
    ((2, 2, 2), (3, 3, 1))
    >>> block_factors((2.0, 2.0, 2.0), 3.0)
    (1, 1, 1)
    """
    return tuple(max(1, int(float(target_mm) / float(h) + 1e-6)) for h in voxel_size_mm)


def block_mean(img: np.ndarray, factors) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels of a 3D (or more: the trailing axes are kept)
    array, the grid cropped to whole blocks.

    Computed in slabs of blocks along the first axis side by side on the thread pool
    (:func:`qsmflow.qsm._vector.slabwise`); each block's sum runs in the same order as on
    the whole array, so the result has the same bits for any thread count. Factors of 1
    return ``img`` itself.

    Parameters
    ----------
    img : (nx, ny, nz, ...) ndarray
        Image (any units; the mean keeps them).
    factors : sequence of 3 int
        Block size per spatial axis (voxels, ≥ 1).

    Returns
    -------
    (nx // f0, ny // f1, nz // f2, ...) ndarray

    Examples
    --------
    >>> a = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    >>> block_mean(a, (2, 2, 2)).tolist()
    [[[3.5]]]
    >>> block_mean(np.ones((5, 4, 3, 2)), (2, 2, 1)).shape
    (2, 2, 3, 2)
    """
    factors = tuple(int(f) for f in factors)
    if any(f < 1 for f in factors) or len(factors) != 3:
        raise ValueError(f'factors must be 3 integers ≥ 1, got {factors}')
    if all(f == 1 for f in factors):
        return img
    n = [s // f for s, f in zip(img.shape[:3], factors)]
    rest = img.shape[3:]
    sub = img[:n[0] * factors[0], :n[1] * factors[1], :n[2] * factors[2]]
    blocks = sub.reshape(n[0], factors[0], n[1], factors[1], n[2], factors[2], *rest)
    out = np.empty(tuple(n) + rest, blocks[:0].mean(axis=(1, 3, 5)).dtype)

    def one(s):
        out[s] = blocks[s].mean(axis=(1, 3, 5))

    slabwise(one, n[0], 4)
    return out


def block_affine(affine, factors) -> np.ndarray:
    """Voxel-to-world affine of the grid of :func:`block_mean`: each coarse voxel's centre
    is the centre of its block.

    Examples
    --------
    >>> block_affine(np.eye(4), (2, 2, 1))[:3].tolist()
    [[2.0, 0.0, 0.0, 0.5], [0.0, 2.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]]
    """
    affine = np.asarray(affine, dtype=np.float64)
    f = np.asarray(factors, dtype=np.float64)
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * f
    out[:3, 3] = affine[:3, :3] @ ((f - 1) / 2) + affine[:3, 3]
    return out
