# SPDX-License-Identifier: Apache-2.0
"""Binary morphology shared by the masking and background-removal modules (private).

Erosion and dilation by a ball of radius ``r`` mm are computed as an FFT convolution with
the ball (:func:`~qsmflow.qsm.kernels.sphere_kernel`), whose cost does not grow with the
radius. Connected components use face (6-) connectivity throughout.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm.kernels import irfft, padded_shape, rfft, sphere_kernel


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
    big = np.zeros(pshape, np.float32)
    big[tuple(slice(0, n) for n in mask.shape)] = mask
    kernel = sphere_kernel(pshape, voxel_size, radius_mm)
    frac = irfft(rfft(big) * kernel, pshape)[tuple(slice(0, n) for n in mask.shape)]
    half = 0.5 / n_ball
    return frac > 1 - half if erode else frac > half


def erode(mask, voxel_size, radius_mm):
    """Erosion of ``mask`` by a ball of ``radius_mm`` (voxel size in mm)."""
    return ball_filter(mask, voxel_size, radius_mm, erode=True)


def dilate(mask, voxel_size, radius_mm):
    """Dilation of ``mask`` by a ball of ``radius_mm`` (voxel size in mm)."""
    return ball_filter(mask, voxel_size, radius_mm, erode=False)


def largest_component(mask) -> np.ndarray:
    """Largest face-connected component of ``mask`` (``mask`` itself if empty)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return lab > 0
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == np.argmax(counts)


def fill_holes_axis(mask, axis=None):
    """Fill background regions not connected to the array border.

    ``axis=None`` fills 3D holes (face-connected background); an integer fills holes in
    every 2D slice across that axis.
    """
    struct = ndi.generate_binary_structure(3, 1)
    faces = [0, 1, 2]
    if axis is not None:
        keep = [slice(None)] * 3
        keep[axis] = 1
        plane = struct[tuple(keep)].copy()
        struct = np.zeros_like(struct)
        struct[tuple(keep)] = plane
        faces.remove(axis)
    lab, n = ndi.label(~mask, struct)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    for a in faces:
        outside[np.take(lab, 0, axis=a)] = True
        outside[np.take(lab, -1, axis=a)] = True
    outside[0] = True
    return mask | ~outside[lab]


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
