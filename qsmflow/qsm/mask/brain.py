# SPDX-License-Identifier: Apache-2.0
"""Brain masks from GRE magnitude, and ventricular CSF from multi-echo magnitude.

:func:`brain_mask` extracts the brain from a 3D magnitude image (threshold → opening →
largest connected component → hole filling). :func:`r2star_map` fits R2* and
:func:`csf_mask` finds ventricular CSF (a reference region for χ). Phase-quality masks are
in :mod:`qsmflow.qsm.mask.quality`; all are importable from :mod:`qsmflow.qsm.mask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm import _morphology as morph
from qsmflow.qsm._validation import (
    as_echo_times,
    as_image,
    as_mask,
    as_voxel_size,
    check_finite_in_mask,
)
from qsmflow.qsm.kernels import bounding_box

#: Radius (mm) of the morphological opening that detaches scalp joined by thin bridges.
DEFAULT_OPENING_MM = 3.0
#: Percentile of positive magnitudes used as the robust maximum.
ROBUST_MAX_PERCENTILE = 99.0


def brain_mask(
    magnitude: np.ndarray,
    voxel_size: Sequence[float],
    *,
    threshold: float | None = None,
    fill_holes: bool = True,
    erode_mm: float = 0.0,
    opening_mm: float = DEFAULT_OPENING_MM,
) -> np.ndarray:
    """Brain mask from a 3D GRE magnitude image.

    Steps:

    1. Threshold. The robust maximum is the 99th percentile of the positive magnitudes.
       With ``threshold=None``, Otsu's threshold of the positive magnitudes (clipped at
       the robust maximum) separates background/bone from tissue; otherwise the threshold
       is ``threshold × robust maximum``.
    2. Opening by a ball of ``opening_mm``: erosion, largest connected component of the
       eroded mask, dilation back (by one voxel more, to keep the thresholded boundary),
       intersection with the thresholded mask. Scalp joined to the brain through bridges
       thinner than ``2 × opening_mm`` (or separated by the dark skull) is discarded, and
       so are thin shells that would otherwise outnumber the brain's voxels; brain
       structures thinner than that are lost too.
    3. Largest connected component.
    4. ``fill_holes``: fill cavities enclosed in 3D, then holes in every 2D slice along
       each axis. This restores dark but enclosed structures (iron-rich deep grey matter
       with strong R2* decay, vessels, ventricles at late echoes).
    5. Optional erosion by ``erode_mm``.

    Parameters
    ----------
    magnitude : (X, Y, Z) ndarray of float
        Magnitude image (arbitrary units, ≥ 0), e.g. the first echo or the root sum of
        squares over echoes.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    threshold : float in (0, 1), optional
        Threshold as a fraction of the robust maximum (dimensionless); default Otsu.
    fill_holes : bool
        Fill enclosed holes (3D and slice-wise).
    erode_mm : float
        Final erosion radius (mm); 0 for none.
    opening_mm : float
        Radius of the opening (mm); 0 for none.

    Returns
    -------
    mask : (X, Y, Z) ndarray of bool
        Brain mask.

    Raises
    ------
    ValueError
        On a non-3D or non-finite magnitude, bad voxel size or options, or when nothing
        exceeds the threshold.

    Examples
    --------
    >>> x, y, z = np.ogrid[-20:20, -20:20, -20:20]
    >>> r = np.sqrt(x**2 + y**2 + z**2)
    >>> mag = (r < 12) * (1.0 - 0.8 * (r < 3)) + (r > 15) * (r < 18)
    >>> m = brain_mask(mag.astype(np.float32), (1, 1, 1))
    >>> bool(m[20, 20, 20]), bool(m[20, 20, 36]), int(m.sum()) == int((r < 12).sum())
    (True, False, True)
    """
    mag = as_image(magnitude, 'magnitude', 3)
    vox = as_voxel_size(voxel_size)
    if not np.isfinite(mag).all():
        raise ValueError('magnitude has non-finite values')
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f'threshold must be a fraction in (0, 1), got {threshold}')
    if not (erode_mm >= 0 and opening_mm >= 0):
        raise ValueError('erode_mm and opening_mm must be ≥ 0 (mm)')
    return _brain_mask(mag, vox, threshold, bool(fill_holes), float(erode_mm), float(opening_mm))


def _brain_mask(mag, vox, threshold, fill_holes, erode_mm, opening_mm):
    step = 2 if mag.size > 2_000_000 else 1  # the histogram needs no more than that
    sample = mag[::step, ::step, ::step]
    sample = sample[sample > 0]
    if sample.size == 0:
        raise ValueError('magnitude has no positive voxels')
    robust_max = float(np.percentile(sample, ROBUST_MAX_PERCENTILE))
    if threshold is None:
        thr = morph.otsu(np.minimum(sample, robust_max))
    else:
        thr = threshold * robust_max
    fg = mag > thr
    if not fg.any():
        raise ValueError(f'no voxel exceeds the magnitude threshold {thr:g}')
    box = bounding_box(fg, 1)
    sel = fg[box]
    if opening_mm > 0:
        core = morph.ball_filter(sel, vox, opening_mm, erode=True)
        if core.any():
            core = morph.largest_component(core)
            # dilate one voxel further than the erosion, to keep the thresholded boundary
            sel = sel & morph.ball_filter(core, vox, opening_mm + float(vox.max()), erode=False)
    sel = morph.largest_component(sel)
    if fill_holes:
        sel = morph.fill_holes(sel)
    if erode_mm > 0:
        sel = morph.ball_filter(sel, vox, erode_mm, erode=True)
    out = np.zeros(mag.shape, bool)
    out[box] = sel
    return out


#: Largest R2* (1/s) of a CSF voxel for :func:`csf_mask` (CSF ≈ 2–5 1/s at 3 T; the
#: least-relaxing tissue, cortical grey matter, ≈ 15 1/s).
DEFAULT_CSF_MAX_R2STAR_HZ = 8.0
#: Least depth (mm) below the mask surface of a :func:`csf_mask` voxel: excludes the
#: sulcal CSF at the brain surface, where the field (and χ) is least reliable.
DEFAULT_CSF_MIN_DEPTH_MM = 10.0
#: Smallest connected CSF region (mm³) kept by :func:`csf_mask`.
DEFAULT_CSF_MIN_VOLUME_MM3 = 200.0


def r2star_map(magnitude: np.ndarray, mask: np.ndarray, *, echo_times_s) -> np.ndarray:
    """R2* (1/s) by a log-linear least-squares fit of magnitude vs echo time.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) ndarray
        Multi-echo magnitude (arbitrary units), E ≥ 2.
    mask : (X, Y, Z) ndarray of bool
        Voxels to fit; 0 elsewhere.
    echo_times_s : sequence of E float
        Echo times (s).

    Returns
    -------
    r2star_hz : (X, Y, Z) ndarray of float32
        ``−slope`` of ``ln(magnitude)`` vs TE (1/s), clipped at 0; 0 outside ``mask``.

    Examples
    --------
    >>> te = np.array([0.005, 0.01, 0.02])
    >>> mag = np.exp(-20.0 * te) * np.ones((4, 4, 4, 1))
    >>> r2 = r2star_map(mag, np.ones((4, 4, 4), bool), echo_times_s=te)
    >>> bool(np.allclose(r2, 20.0, atol=1e-3))
    True
    """
    mag = as_image(magnitude, 'magnitude', 4)
    msk = as_mask(mask, mag.shape[:3])
    te = as_echo_times(echo_times_s, mag.shape[3])
    if te.size < 2:
        raise ValueError('R2* needs at least 2 echoes')
    check_finite_in_mask(mag[..., 0], msk, 'magnitude')
    logm = np.log(np.maximum(mag[msk].astype(np.float64), 1e-12))
    tc = te - te.mean()
    slope = (logm - logm.mean(axis=1, keepdims=True)) @ tc / float(tc @ tc)
    out = np.zeros(msk.shape, np.float32)
    out[msk] = np.maximum(-slope, 0)
    return out


def csf_mask(
    magnitude: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    *,
    echo_times_s: Sequence[float],
    max_r2star_hz: float = DEFAULT_CSF_MAX_R2STAR_HZ,
    min_depth_mm: float = DEFAULT_CSF_MIN_DEPTH_MM,
    min_volume_mm3: float = DEFAULT_CSF_MIN_VOLUME_MM3,
) -> np.ndarray:
    """Ventricular CSF inside the brain, from multi-echo magnitude (a reference region).

    Heuristic: CSF relaxes slowly and has the highest proton density, so a voxel is taken
    as ventricular CSF when (1) its R2* (:func:`r2star_map`) is below ``max_r2star_hz``,
    (2) its first-echo magnitude is at least the median over the mask, (3) it lies at least
    ``min_depth_mm`` below the mask surface (which keeps the ventricles and drops sulcal
    CSF, veins' surroundings and edge voxels) and (4) it belongs to a connected region of
    at least ``min_volume_mm3``. CSF's χ is close to that of water and nearly free of
    anisotropy, which is why it is a common reference; the region's purity (partial
    volume with the choroid plexus or periventricular white matter) limits its accuracy.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) ndarray
        Multi-echo magnitude (arbitrary units), E ≥ 2.
    mask : (X, Y, Z) ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    echo_times_s : sequence of E float
        Echo times (s).
    max_r2star_hz, min_depth_mm, min_volume_mm3 : float, optional
        Thresholds (1/s, mm, mm³); see the module constants.

    Returns
    -------
    csf : (X, Y, Z) ndarray of bool
        Ventricular CSF voxels (a subset of ``mask``).

    Raises
    ------
    ValueError
        For invalid inputs or when no voxel passes the criteria.

    Examples
    --------
    >>> te = np.array([0.005, 0.015, 0.025])
    >>> g = np.indices((40, 40, 40)) - 19.5
    >>> brain = (g ** 2).sum(0) < 18 ** 2; ventricle = (g ** 2).sum(0) < 4 ** 2
    >>> r2 = np.where(ventricle, 3.0, 20.0); m0 = np.where(ventricle, 1.0, 0.8) * brain
    >>> mag = m0[..., None] * np.exp(-r2[..., None] * te)
    >>> csf = csf_mask(mag, brain, (1, 1, 1), echo_times_s=te)
    >>> bool(csf.any()) and bool(np.all(ventricle[csf]))
    True
    """
    mag = as_image(magnitude, 'magnitude', 4)
    msk = as_mask(mask, mag.shape[:3])
    vox = as_voxel_size(voxel_size)
    if not msk.any():
        raise ValueError('mask is empty')
    r2 = r2star_map(mag, msk, echo_times_s=echo_times_s)
    box = bounding_box(msk, 1)
    depth = morph.distance_transform(msk[box], vox)
    first = mag[..., 0][box]
    cand = (msk[box] & (depth >= min_depth_mm) & (r2[box] < max_r2star_hz)
            & (first >= np.median(first[msk[box]])))
    lab, n = ndi.label(cand)
    if n:
        sizes = np.bincount(lab.ravel())[1:] * float(np.prod(vox))
        cand = np.isin(lab, 1 + np.nonzero(sizes >= min_volume_mm3)[0])
    if not cand.any():
        raise ValueError('no CSF found: no voxel deep in the mask has low R2* and high '
                         'magnitude (use another reference)')
    out = np.zeros(msk.shape, bool)
    out[box] = cand
    return out
