# SPDX-License-Identifier: Apache-2.0
"""χ relative to the local tissue: the susceptibility map minus a blockwise median.

Compact sources (veins, haemorrhage, calcification) are judged against the tissue around
them, not against the whole-brain reference: a vein in the pallidum and one in white
matter differ by the tissue, not by the blood. The local background is the median of χ
inside the mask over blocks of ``window_mm`` (blocks with too few mask voxels take the
nearest block's median), interpolated trilinearly back to the voxel grid. The median
ignores sources that fill less than half a block, and blocks make it cheap (a sliding
3D median over 15 mm would cost minutes per map).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._validation import as_image, as_mask, as_voxel_size, positive

#: Side (mm) of the blocks whose median is the local tissue χ: 15 mm, about twice the
#: largest compact focus the detector looks for (8 mm) so that it cannot dominate a block.
DEFAULT_WINDOW_MM = 15.0

#: Share of a block that must lie in the mask for its median to be used.
MIN_BLOCK_FILL = 0.25


def local_background_ppm(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    window_mm: float = DEFAULT_WINDOW_MM,
) -> np.ndarray:
    """Local tissue χ (ppm): blockwise median inside ``mask``, interpolated.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) ndarray
        Susceptibility (ppm).
    mask : (X, Y, Z) array_like of bool
        Voxels whose χ counts (brain).
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    window_mm : float
        Block side (mm).

    Returns
    -------
    (X, Y, Z) ndarray
        Local background χ (ppm), input dtype, defined everywhere.

    Examples
    --------
    >>> chi = np.full((30, 30, 30), 0.05, np.float32); chi[14:17, 14:17, 14:17] = 1.0
    >>> bg = local_background_ppm(chi, np.ones(chi.shape, bool), (1, 1, 1))
    >>> bool(np.allclose(bg, 0.05))  # the focus does not move the median
    True
    """
    chi = as_image(chi_ppm, 'chi_ppm', 3)
    msk = as_mask(mask, chi.shape)
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    window = positive('window_mm', window_mm)
    return _block_median(chi, msk, vox, window).astype(chi.dtype)


def local_contrast_ppm(chi_ppm, mask, voxel_size_mm, *, window_mm: float = DEFAULT_WINDOW_MM):
    """χ minus :func:`local_background_ppm` (ppm), 0 outside ``mask``.

    Examples
    --------
    >>> chi = np.zeros((20, 20, 20), np.float32); chi[9:11, 9:11, 9:11] = 0.5
    >>> c = local_contrast_ppm(chi, np.ones(chi.shape, bool), (1, 1, 1))
    >>> round(float(c[10, 10, 10]), 3), round(float(c[0, 0, 0]), 3)
    (0.5, 0.0)
    """
    chi = as_image(chi_ppm, 'chi_ppm', 3)
    msk = as_mask(mask, chi.shape)
    bg = local_background_ppm(chi, msk, voxel_size_mm, window_mm=window_mm)
    return np.where(msk, chi - bg, 0).astype(chi.dtype)


def _block_median(chi, msk, vox, window) -> np.ndarray:
    block = np.maximum(1, np.round(window / vox).astype(int))
    nblocks = -(-np.asarray(chi.shape) // block)
    medians = np.full(tuple(nblocks), np.nan)
    need = MIN_BLOCK_FILL * np.prod(block)
    for idx in np.ndindex(*nblocks):
        sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(idx, block))
        inside = chi[sl][msk[sl]]
        if inside.size >= need:
            medians[idx] = np.median(inside)
    valid = np.isfinite(medians)
    if not valid.any():  # a mask smaller than a quarter block: one global median
        return np.full(chi.shape, np.median(chi[msk]))
    _, nearest = ndi.distance_transform_edt(~valid, return_indices=True)
    medians = medians[tuple(nearest)]
    # Block centres sit at (i + 0.5) * b - 0.5 voxels: map every voxel to block coordinates.
    axes = [(np.arange(n) + 0.5) / b - 0.5 for n, b in zip(chi.shape, block)]
    coords = np.meshgrid(*axes, indexing='ij', sparse=True)
    coords = [np.broadcast_to(c, chi.shape) for c in coords]
    return ndi.map_coordinates(medians, coords, order=1, mode='nearest')
