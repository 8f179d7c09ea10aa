# SPDX-License-Identifier: Apache-2.0
"""Quality measures of a brain mask against a head mask (for phantom-based tests).

A magnitude-threshold mask of a real head keeps scalp, skull marrow and neck. Two numbers
show it: the share of the mask's voxels lying within ``depth_mm`` of the head surface (a
brain mask has almost none: scalp and skull are ≈ 10 mm thick), and the mask volume (mL)
against the brain's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ['DEFAULT_SURFACE_DEPTH_MM', 'mask_qc']

#: Depth below the head surface (mm) counted as "near the surface".
DEFAULT_SURFACE_DEPTH_MM = 10.0


def mask_qc(mask, head_mask, voxel_size_mm, *,
            depth_mm: float = DEFAULT_SURFACE_DEPTH_MM) -> dict[str, float]:
    """Share of a mask within ``depth_mm`` of the head surface, and the mask volume.

    The depth of a voxel is the Euclidean distance (mm, anisotropic voxels allowed) from
    its centre to that of the nearest voxel outside ``head_mask`` (one voxel for the
    outermost layer); voxels outside the head have depth 0. The
    faces of the grid are not a surface (a neck cut by the field of view is not scalp).

    Parameters
    ----------
    mask : (X, Y, Z) ndarray of bool
        Mask to assess (e.g. a brain mask).
    head_mask : (X, Y, Z) ndarray of bool
        Head (and neck), internal air cavities included.
    voxel_size_mm : float or sequence of 3 float
        Voxel spacing (mm).
    depth_mm : float
        Depth (mm) below the surface counted as near it.

    Returns
    -------
    dict
        ``near_surface_share``: fraction (0–1) of the mask's voxels at depth ≤
        ``depth_mm``; ``volume_ml``: mask volume (mL); ``head_volume_ml``: head mask
        volume (mL).

    Examples
    --------
    >>> head = np.zeros((40, 40, 40), bool); head[5:35, 5:35, 5:35] = True
    >>> inner = np.zeros_like(head); inner[17:23, 17:23, 17:23] = True
    >>> q = mask_qc(inner, head, 1.0)
    >>> q['near_surface_share'], q['volume_ml']
    (0.0, 0.216)
    >>> round(mask_qc(head, head, 1.0)['near_surface_share'], 3)  # all but a 10³ core
    0.963
    """
    m = np.asarray(mask, dtype=bool)
    h = np.asarray(head_mask, dtype=bool)
    if m.ndim != 3 or m.shape != h.shape:
        raise ValueError(f'mask {m.shape} and head_mask {h.shape} must be 3D of one shape')
    vox = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,))
    if not np.all(vox > 0) or not depth_mm >= 0:
        raise ValueError('voxel_size_mm must be positive and depth_mm ≥ 0 (mm)')
    voxel_ml = float(np.prod(vox)) / 1000.0
    n = int(m.sum())
    share = float('nan')
    if n:
        depth = ndi.distance_transform_edt(h, sampling=vox)
        share = float(np.count_nonzero(depth[m] <= depth_mm)) / n
    return {'near_surface_share': share, 'volume_ml': n * voxel_ml,
            'head_volume_ml': int(h.sum()) * voxel_ml}
