# SPDX-License-Identifier: Apache-2.0
"""A susceptibility-contrast image of an atlas: its iron-rich nuclei painted with typical χ.

Template images (T1w) show the small iron-rich nuclei (substantia nigra, subthalamic and red
nucleus, dentate, pallidum) with little contrast, while in χ they are the brightest
structures of the brain. The χ-driven refinement of the atlas registration
(:mod:`qsmflow.interfaces.refinement`, ``RefineNuclei``) aligns the participant's χ map,
already brought to the atlas by the magnitude registration, with this *prior image*: the
atlas labels of those nuclei set to typical 3 T susceptibilities (:data:`TYPICAL_CHI_PPM`),
zero elsewhere, lightly smoothed where the χ map is coarser than about 1 mm
(``qsmflow.interfaces.refinement.prior_smoothing_mm``). Its metric (local
cross-correlation) ignores scale and offset, so only the pattern and the order of the
values matter, not the numbers.

Pure numpy/scipy (arrays and lookup tables in, arrays out).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm.region_names import nucleus_kind

#: Nucleus kind (:func:`qsmflow.qsm.region_names.nucleus_kind`: full names and the usual
#: abbreviations, ``GPe``, ``SNr``, ``STN`` …) → typical χ in ppm. Midpoints of the ranges
#: of typical 3 T values relative to CSF in the project's physics notes (QSM_NOTES.md,
#: "Typical values"): globus pallidus 0.12–0.20, substantia nigra 0.10–0.20, red nucleus,
#: subthalamic and dentate nucleus 0.08–0.15, caudate 0.05–0.08, putamen 0.03–0.08. Other
#: labels (thalamus, accumbens, amygdala…) stay 0: their χ is close to the surrounding
#: tissue's.
TYPICAL_CHI_PPM = {
    'pallidum': 0.16,
    'nigra': 0.15,
    'red_nucleus': 0.115,
    'subthalamic': 0.115,
    'dentate': 0.115,
    'caudate': 0.065,
    'putamen': 0.055,
}

#: Fewest labelled nuclei (e.g. left and right pallidum and nigra) an atlas needs for a
#: refinement: with fewer, χ gives the registration too little to hold on to.
MIN_PRIOR_LABELS = 4

#: Smoothing of the painted labels (Gaussian σ, mm), against the staircase of the label
#: edges, where the refinement stops at the χ map's coarse levels (2 mm and coarser χ); a
#: χ map of 1 mm gets the labels unsmoothed
#: (``qsmflow.interfaces.refinement.FINE_LEVEL_PRIOR_SMOOTH_MM``).
PRIOR_SMOOTH_MM = 0.7

#: Margin (mm) around the painted nuclei of the prior's box, the region the refinement
#: registers (the grid is padded where the atlas image ends sooner).
PRIOR_MARGIN_MM = 10.0

#: Distance (mm) from the painted nuclei within which the refinement is judged
#: (:func:`near_nuclei`): whether χ correlates better with the prior there after it than
#: before. Over the whole box the veins and the tissue far from any nucleus dilute the
#: correlation to 0.2-0.3, and a refinement that moved the nigra by a millimetre changed it
#: in the fourth decimal (measured 2026-12-07, 1 mm real-anatomy phantom: 0.2326 → 0.2321,
#: within 3 mm 0.893 → 0.897; a participant whose nuclei the magnitude registration had put
#: 1-2 mm off, 0.234 → 0.285 over the box, 0.698 → 0.885 within 3 mm).
CHECK_DISTANCE_MM = 3.0

#: Finest voxel edge (mm) of the prior's grid, the grid the refinement registers on. An
#: atlas finer than this (CIT168's 0.7 mm release, 0.5 mm atlases) is resampled to it
#: before its prior is painted (:func:`coarsen`): the refinement's settings count voxels
#: (window radius, field smoothing) and were measured on 1 mm grids, and a finer grid costs
#: the cube of the ratio in time. Measured on 2026-12-07 on the 1 mm real-anatomy phantom
#: (seed 24 sub-01, the pipeline's own χ and magnitude registration), the custom atlas
#: with each voxel split into eight (0.5 mm, the same nuclei): registered at 0.5 mm, mean /
#: least Dice of the 18 nuclei 0.948 / 0.902, table mean |error| 0.0067 ppm, 339 s; at
#: 1 mm, 0.952 / 0.906, 0.0051 ppm, 42 s.
PRIOR_MIN_VOXEL_MM = 1.0


def prior_values(lut: dict) -> dict:
    """Typical χ (ppm) of each label of a lookup table that names an iron-rich nucleus.

    Parameters
    ----------
    lut : dict
        Label index (int) → name.

    Returns
    -------
    dict
        Label index → χ (ppm), only for the labels :data:`TYPICAL_CHI_PPM` matches.

    Examples
    --------
    >>> prior_values({1: 'L Globus Pallidus externa', 2: 'right-putamen', 3: 'Thalamus',
    ...               4: 'R Substantia-Nigra-pars-reticulata', 5: 'Left Red Nucleus',
    ...               6: 'STN_L', 7: 'GPi_R'})
    {1: 0.16, 2: 0.055, 4: 0.15, 5: 0.115, 6: 0.115, 7: 0.16}
    """
    out = {}
    for index, name in sorted(lut.items()):
        value = TYPICAL_CHI_PPM.get(nucleus_kind(str(name)))
        if int(index) != 0 and value is not None:
            out[int(index)] = value
    return out


def chi_prior(labels: np.ndarray, lut: dict, voxel_size_mm, *,
              smooth_mm: float = PRIOR_SMOOTH_MM) -> np.ndarray:
    """The prior image: iron-rich nuclei of ``labels`` at their typical χ, 0 elsewhere.

    Parameters
    ----------
    labels : ndarray of int, 3D
        Atlas label image.
    lut : dict
        Label index → name (:func:`prior_values` picks the nuclei).
    voxel_size_mm : sequence of 3 float
        Voxel size of ``labels`` (mm).
    smooth_mm : float
        Gaussian σ (mm) of the smoothing.

    Returns
    -------
    ndarray of float32
        χ (ppm), the shape of ``labels``.

    Raises
    ------
    ValueError
        When fewer than :data:`MIN_PRIOR_LABELS` labels of ``lut`` are iron-rich nuclei
        present in ``labels``.

    Examples
    --------
    >>> lab = np.zeros((9, 9, 9), int); lab[2:4, 2:4, 2:4] = 1; lab[5:7, 5:7, 5:7] = 2
    >>> lab[2:4, 5:7, 2:4] = 3; lab[5:7, 2:4, 5:7] = 4
    >>> p = chi_prior(lab, {1: 'l pallidum', 2: 'r pallidum', 3: 'l nigra', 4: 'r nigra'},
    ...               (1, 1, 1), smooth_mm=0)
    >>> float(p[2, 2, 2]), float(p[2, 5, 2]), float(p[0, 0, 0])
    (0.1599999964237213, 0.15000000596046448, 0.0)
    """
    values = prior_values(lut)
    labels = np.asarray(labels)
    present = [i for i in values if np.any(labels == i)]
    if len(present) < MIN_PRIOR_LABELS:
        raise ValueError(f'{len(present)} iron-rich nuclei in the atlas (at least '
                         f'{MIN_PRIOR_LABELS} are needed)')
    table = np.zeros(int(max(labels.max(), max(present))) + 1, np.float32)
    for index in present:
        table[index] = values[index]
    inside = (labels > 0) & (labels < table.size)
    prior = np.where(inside, table[np.where(inside, labels, 0)], 0.0).astype(np.float32)
    if smooth_mm > 0:
        sigma = [smooth_mm / float(v) for v in voxel_size_mm]
        prior = ndi.gaussian_filter(prior, sigma, mode='constant').astype(np.float32)
    return prior


def prior_box(prior: np.ndarray, voxel_size_mm, *, margin_mm: float = PRIOR_MARGIN_MM):
    """Start and stop index (per axis, may lie outside the image) of the box around the
    painted nuclei of ``prior`` with a margin of ``margin_mm``.

    Returns
    -------
    start, stop : tuple of int
        The box is ``[start, stop)`` on each axis; a start below 0 or a stop beyond the
        shape means padding.

    Examples
    --------
    >>> p = np.zeros((20, 20, 20)); p[8:10, 8:10, 8:10] = 1
    >>> prior_box(p, (1, 1, 1), margin_mm=3)
    ((5, 5, 5), (13, 13, 13))
    >>> prior_box(p, (2, 2, 2), margin_mm=20)
    ((-2, -2, -2), (20, 20, 20))
    """
    idx = np.argwhere(prior > 0)
    margin = [int(np.ceil(margin_mm / float(v))) for v in voxel_size_mm]
    start = tuple(int(idx[:, a].min()) - margin[a] for a in range(3))
    stop = tuple(int(idx[:, a].max()) + 1 + margin[a] for a in range(3))
    return start, stop


def crop_or_pad(image: np.ndarray, affine: np.ndarray, start, stop):
    """``image[start:stop]`` with zeros where the box leaves the image, and its affine.

    Examples
    --------
    >>> im, aff = crop_or_pad(np.ones((4, 4, 4)), np.eye(4), (-1, 1, 1), (3, 3, 5))
    >>> im.shape, float(im[0, 0, 0]), float(im[1, 0, 0]), aff[:3, 3].tolist()
    ((4, 2, 4), 0.0, 1.0, [-1.0, 1.0, 1.0])
    """
    shape = tuple(b - a for a, b in zip(start, stop))
    out = np.zeros(shape, image.dtype)
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, image.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
    out[dst] = image[src]
    new = np.array(affine, float).copy()
    new[:3, 3] = new[:3, :3] @ np.asarray(start, float) + new[:3, 3]
    return out, new


def coarsen(labels: np.ndarray, affine: np.ndarray, voxel_size_mm, *,
            min_voxel_mm: float = PRIOR_MIN_VOXEL_MM):
    """Atlas labels on a grid of voxel edges no finer than ``min_voxel_mm`` (nearest
    neighbour, so the nuclei keep sharp edges; the same extent in the world, its corner
    kept).

    Parameters
    ----------
    labels : ndarray of int, 3D
        Atlas label image.
    affine : ndarray (4, 4)
        Its voxel → world (mm) affine.
    voxel_size_mm : sequence of 3 float
        Its voxel size (mm).
    min_voxel_mm : float
        Finest voxel edge (mm) of the result; coarser axes keep their size.

    Returns
    -------
    labels : ndarray
        ``labels`` itself when no axis is finer than ``min_voxel_mm``.
    affine : ndarray (4, 4)
        The result's affine.
    voxel_size_mm : tuple of 3 float
        The result's voxel size.

    Examples
    --------
    >>> lab = np.zeros((10, 10, 4), np.int16); lab[4:6, 4:8, :] = 3
    >>> out, aff, vox = coarsen(lab, np.diag([0.5, 0.5, 2, 1]), (0.5, 0.5, 2))
    >>> out.shape, vox, np.diag(aff).tolist(), int((out == 3).sum() * 2), int((lab == 3).sum() / 2)
    ((5, 5, 4), (1.0, 1.0, 2.0), [1.0, 1.0, 2.0, 1.0], 16, 16)
    >>> coarsen(lab, np.eye(4), (1, 1, 1))[0] is lab
    True
    """
    old = np.asarray([float(v) for v in voxel_size_mm])
    new = np.maximum(old, float(min_voxel_mm))
    if np.all(new == old):
        return labels, affine, tuple(float(v) for v in old)
    scale = new / old
    shape = tuple(int(np.ceil(n / s - 1e-6)) for n, s in zip(labels.shape, scale))
    affine = np.asarray(affine, float)
    out_affine = affine.copy()
    out_affine[:3, :3] = affine[:3, :3] * scale
    out_affine[:3, 3] = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3] + \
        out_affine[:3, :3] @ np.full(3, 0.5)
    # output voxel o sits at input voxel (o + 0.5) * scale - 0.5
    out = ndi.affine_transform(labels, np.diag(scale), offset=0.5 * scale - 0.5,
                               output_shape=shape, order=0, mode='constant', cval=0)
    return out, out_affine, tuple(float(v) for v in new)


def near_nuclei(prior: np.ndarray, voxel_size_mm, *,
                distance_mm: float = CHECK_DISTANCE_MM) -> np.ndarray:
    """Voxels of ``prior`` within ``distance_mm`` of its painted nuclei (χ of at least half
    the smallest of :data:`TYPICAL_CHI_PPM`, so the edge of a smoothed putamen counts).

    Parameters
    ----------
    prior : ndarray, 3D
        The prior (ppm).
    voxel_size_mm : sequence of 3 float
        Its voxel size (mm).
    distance_mm : float
        Largest distance (mm) from a painted voxel.

    Returns
    -------
    ndarray of bool
        The whole image when nothing is painted.

    Examples
    --------
    >>> p = np.zeros((11, 3, 3), np.float32); p[5] = 0.15
    >>> near_nuclei(p, (1, 1, 1), distance_mm=2)[:, 1, 1].astype(int).tolist()
    [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    """
    painted = np.asarray(prior) >= 0.5 * min(TYPICAL_CHI_PPM.values())
    if not painted.any():
        return np.ones(np.shape(prior), bool)
    distance = ndi.distance_transform_edt(~painted, sampling=[float(v) for v in voxel_size_mm])
    return distance <= distance_mm
