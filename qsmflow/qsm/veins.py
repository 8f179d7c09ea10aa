# SPDX-License-Identifier: Apache-2.0
"""QSM venography: vesselness of positive χ, a vein segmentation and MIP slabs.

Veins carry deoxyhaemoglobin and are paramagnetic: bright tubes in χ. The multi-scale
Hessian vesselness of Frangi et al. [1]_ is computed on the local χ contrast
(:func:`qsmflow.qsm.contrast.local_contrast_ppm`, ppm): at each scale σ (mm) the Hessian
of the Gaussian-smoothed contrast, scaled by σ², has eigenvalues |λ1| ≤ |λ2| ≤ |λ3|; a
bright tube has λ2, λ3 < 0 and λ1 ≈ 0, and

    V = (1 − exp(−Ra²/2α²)) · exp(−Rb²/2β²) · (1 − exp(−S²/2c²)),

Ra = |λ2|/|λ3| (plate vs line), Rb = |λ1|/√|λ2λ3| (blob vs line), S the Frobenius norm
of the Hessian (structure vs noise); a fourth factor exp(−Rg²/2γ²), Rg = σ|∇I|/|λ3|,
keeps the response to the vessel's axis (on the slope of a blob, where the smoothed
intensity has an inflection, Frangi's measure alone mistakes the blob's edge for a
tube pointing at its centre). χ is quantitative, so ``c`` is fixed in ppm
(``structure_ppm``) instead of scaled to the image maximum. The vesselness is the maximum
over scales, in [0, 1).

The segmentation (:func:`segment_veins`) takes the voxels of vesselness ≥
``threshold`` and contrast ≥ ``min_seed_contrast_ppm`` as seeds (in connected groups of
at least ``min_seed_mm3``) and grows them into the voxels whose contrast exceeds
``min_contrast_ppm`` within ``reach`` × σ of the nearest seed (σ the scale at which that
seed responded best): the vesselness peaks on the vein's axis, the contrast threshold
gives its width, and the reach keeps a blob touching a vein (a haemorrhage beside it)
out. Components smaller than ``min_volume_mm3`` are dropped.

MIP slabs (:func:`maximum_intensity_projection`) are the negative of the minIP of the
negative image (:func:`qsmflow.qsm.swi.minimum_intensity_projection`: the same sliding
slab, thickness in mm, on the input's grid).

References
----------
.. [1] Frangi AF, Niessen WJ, Vincken KL, Viergever MA. Multiscale vessel enhancement
   filtering. MICCAI 1998, LNCS 1496:130-137.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._validation import as_image, as_mask, as_voxel_size, positive
from qsmflow.qsm.contrast import DEFAULT_WINDOW_MM, local_contrast_ppm
from qsmflow.qsm.swi import DEFAULT_SLAB_MM, minimum_intensity_projection

#: Gaussian scales (mm) of the vesselness: veins of about 1.5–6 mm diameter (σ ≈ r/√2).
DEFAULT_SCALES_MM = (0.75, 1.0, 1.5, 2.0)
#: Frangi's α, β (line vs plate, line vs blob) and the structure constant c (ppm).
DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_STRUCTURE_PPM = 0.5, 0.5, 0.05
#: Sensitivity to the centreline term Rg = σ|∇I|/|λ3| (0 on a tube's axis, large on the
#: slope of a blob, where Frangi's measure alone also responds: the inflection point
#: of a smoothed sphere has one near-zero and two negative eigenvalues).
DEFAULT_GAMMA = 0.35
#: Vesselness of a seed voxel.
DEFAULT_THRESHOLD = 0.2
#: Contrast (ppm above the local tissue) of a vein voxel: half the contrast of venous
#: blood at Y ≈ 0.6-0.7 and Hct 0.4 (≈ 0.4-0.5 ppm), so the segmentation edge sits near
#: the vein's partial-volume boundary.
DEFAULT_MIN_CONTRAST_PPM = 0.15
#: How far (in units of the seed's best scale σ) a vein grows from its seeds.
DEFAULT_REACH = 2.0
#: Contrast (ppm) of a seed, on the vein's axis: above the substantia nigra's contrast to
#: its surroundings (≈ 0.15–0.2 ppm; a tilted, elongated nucleus that the vesselness
#: takes for a vein), below venous blood's (≈ 0.45 ppm at Y 0.65, Hct 0.40; thin veins
#: read ≈ 0.3 after partial volume).
DEFAULT_MIN_SEED_CONTRAST_PPM = 0.25
#: Smallest connected group of seed voxels used (mm³).
DEFAULT_MIN_SEED_MM3 = 4.0
#: Smallest vein component kept (mm³).
DEFAULT_MIN_VOLUME_MM3 = 20.0
#: MIP slab thickness (mm) of the venography: 16 mm, the upper end of the clinical
#: 8–16 mm, which shows longer vein segments than the SWI's 8 mm minIP.
DEFAULT_MIP_SLAB_MM = 16.0
assert DEFAULT_MIP_SLAB_MM >= DEFAULT_SLAB_MM


def vesselness(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    structure_ppm: float = DEFAULT_STRUCTURE_PPM,
    gamma: float = DEFAULT_GAMMA,
    window_mm: float = DEFAULT_WINDOW_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale Frangi vesselness of bright (paramagnetic) tubes in χ.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) ndarray
        Susceptibility (ppm).
    mask : (X, Y, Z) array_like of bool
        Brain mask; the vesselness is 0 outside it.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    scales_mm : sequence of float
        Gaussian σ (mm) of the Hessian.
    alpha, beta, gamma : float
        Sensitivity to Ra (line vs plate), Rb (line vs blob) and Rg (axis vs slope).
    structure_ppm : float
        Sensitivity ``c`` to the Hessian norm (ppm).
    window_mm : float
        Block of the local background (:func:`qsmflow.qsm.contrast.local_background_ppm`).

    Returns
    -------
    vesselness : (X, Y, Z) ndarray of float32
        In [0, 1).
    scale_mm : (X, Y, Z) ndarray of float32
        The σ (mm) of the best response (0 where the vesselness is 0).

    Examples
    --------
    >>> chi = np.zeros((32, 32, 32), np.float32)
    >>> chi[15:17, 15:17, :] = 0.4  # a 2-voxel vein along z
    >>> i, j, k = np.ogrid[:32, :32, :32]
    >>> chi[(i - 6)**2 + (j - 6)**2 + (k - 16)**2 <= 9] = 0.8  # a 6-mm blob
    >>> v, s = vesselness(chi, np.ones(chi.shape, bool), (1, 1, 1))
    >>> bool(v[15, 15, 12] > DEFAULT_THRESHOLD > v[:12, :12].max())
    True
    """
    chi = as_image(chi_ppm, 'chi_ppm', 3)
    msk = as_mask(mask, chi.shape)
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    scales = [positive('scales_mm', s) for s in np.atleast_1d(scales_mm)]
    for name, value in (('alpha', alpha), ('beta', beta), ('structure_ppm', structure_ppm),
                        ('gamma', gamma)):
        positive(name, value)
    contrast = local_contrast_ppm(chi, msk, vox, window_mm=window_mm).astype(np.float32)
    best = np.zeros(chi.shape, np.float32)
    best_scale = np.zeros(chi.shape, np.float32)
    for sigma in scales:
        v = _frangi_one_scale(contrast, msk, vox, sigma, alpha, beta, structure_ppm, gamma)
        better = v > best
        best[better], best_scale[better] = v[better], sigma
    return best, best_scale


def _frangi_one_scale(img, msk, vox, sigma_mm, alpha, beta, c, gamma) -> np.ndarray:
    sig = sigma_mm / vox
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    hess = {}
    for a, b in pairs:
        order = [0, 0, 0]
        order[a] += 1
        order[b] += 1
        # σ² scale normalisation, the derivative taken per mm (voxel derivative / spacing).
        hess[a, b] = (ndi.gaussian_filter(img, sig, order=order, mode='nearest')
                      * sigma_mm**2 / (vox[a] * vox[b]))
    where = msk & (img > 0)  # bright tubes only: the contrast is positive on a vein
    out = np.zeros(img.shape, np.float32)
    if not where.any():
        return out
    h = np.empty((int(where.sum()), 3, 3), np.float64)
    for (a, b), arr in hess.items():
        h[:, a, b] = h[:, b, a] = arr[where]
    grad2 = np.zeros(h.shape[0])
    for a in range(3):
        order = [0, 0, 0]
        order[a] = 1
        grad2 += (ndi.gaussian_filter(img, sig, order=order, mode='nearest')[where]
                  * sigma_mm / vox[a]) ** 2
    lam = np.linalg.eigvalsh(h)
    lam = np.take_along_axis(lam, np.argsort(np.abs(lam), axis=1), axis=1)
    l1, l2, l3 = lam[:, 0], lam[:, 1], lam[:, 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        ra = np.abs(l2) / np.abs(l3)
        rb = np.abs(l1) / np.sqrt(np.abs(l2 * l3))
        rg = grad2 / l3**2  # squared: off the axis of a tube, or on a blob's slope
    s2 = (lam**2).sum(axis=1)
    v = ((1 - np.exp(-ra**2 / (2 * alpha**2))) * np.exp(-rb**2 / (2 * beta**2))
         * (1 - np.exp(-s2 / (2 * c**2))) * np.exp(-rg / (2 * gamma**2)))
    v[(l2 >= 0) | (l3 >= 0) | ~np.isfinite(v)] = 0.0
    out[where] = v
    return out


def segment_veins(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_contrast_ppm: float = DEFAULT_MIN_CONTRAST_PPM,
    reach: float = DEFAULT_REACH,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    min_seed_mm3: float = DEFAULT_MIN_SEED_MM3,
    min_seed_contrast_ppm: float = DEFAULT_MIN_SEED_CONTRAST_PPM,
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    structure_ppm: float = DEFAULT_STRUCTURE_PPM,
    window_mm: float = DEFAULT_WINDOW_MM,
) -> dict:
    """Vein segmentation of χ: vesselness seeds grown into the bright voxels around them.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) ndarray
        Susceptibility (ppm).
    mask : (X, Y, Z) array_like of bool
        Brain mask.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    threshold : float
        Vesselness of a seed, in (0, 1).
    min_contrast_ppm : float
        χ above the local tissue (ppm) of a vein voxel.
    reach : float
        Growth limit around the seeds, in units of each seed's best scale σ.
    min_volume_mm3 : float
        Smallest vein component kept (mm³).
    min_seed_mm3 : float
        Smallest connected group of seeds used (mm³): a vein responds along its length,
        an isolated voxel of high vesselness is noise or the tip of a blob.
    min_seed_contrast_ppm : float
        Contrast (ppm above the local tissue) a seed needs: the axis of a vein is
        brighter than the iron-rich nuclei whose shape is tube-like (substantia nigra).
    scales_mm, structure_ppm, window_mm
        Options of :func:`vesselness`.

    Returns
    -------
    dict
        ``veins`` (bool mask), ``vesselness`` (float32 in [0, 1)), ``scale_mm`` (float32,
        best σ per voxel) and ``contrast_ppm`` (χ minus the local tissue, float32).

    Examples
    --------
    >>> chi = np.zeros((24, 24, 32), np.float32); chi[10:13, 10:13, 2:30] = 0.45
    >>> seg = segment_veins(chi, np.ones(chi.shape, bool), (1, 1, 1))
    >>> truth = chi > 0
    >>> dice = 2 * (seg['veins'] & truth).sum() / (seg['veins'].sum() + truth.sum())
    >>> bool(dice > 0.8)
    True
    """
    chi = as_image(chi_ppm, 'chi_ppm', 3)
    msk = as_mask(mask, chi.shape)
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    if not 0 < threshold < 1:
        raise ValueError(f'threshold must be in (0, 1), got {threshold!r}')
    for name, value in (('min_contrast_ppm', min_contrast_ppm), ('reach', reach)):
        positive(name, value)
    vness, scale = vesselness(chi, msk, vox, scales_mm=scales_mm, structure_ppm=structure_ppm,
                              window_mm=window_mm)
    contrast = local_contrast_ppm(chi, msk, vox, window_mm=window_mm)
    seeds = vness >= threshold
    seeds &= contrast >= positive('min_seed_contrast_ppm', min_seed_contrast_ppm)
    seeds = _drop_small(seeds, min_seed_mm3 / float(np.prod(vox)))
    veins = np.zeros(chi.shape, bool)
    if seeds.any():
        dist_mm, nearest = ndi.distance_transform_edt(~seeds, sampling=vox, return_indices=True)
        limit = reach * scale[tuple(nearest)]
        veins = msk & (contrast >= min_contrast_ppm) & (dist_mm <= limit)
        veins = _drop_small(veins, min_volume_mm3 / float(np.prod(vox)))
    return {'veins': veins, 'vesselness': vness, 'scale_mm': scale,
            'contrast_ppm': contrast.astype(np.float32)}


def _drop_small(mask, min_voxels) -> np.ndarray:
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def maximum_intensity_projection(
    image: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    slab_mm: float = DEFAULT_MIP_SLAB_MM,
    slice_axis: int = 2,
) -> np.ndarray:
    """Maximum-intensity projection over a sliding slab (mm), on the input's grid.

    The mirror of :func:`qsmflow.qsm.swi.minimum_intensity_projection` (same slab rule:
    ``round(slab_mm / voxel)`` slices centred on each slice, along ``slice_axis``).

    Examples
    --------
    >>> img = np.zeros((4, 4, 10)); img[1, 1, 5] = 0.4
    >>> mip = maximum_intensity_projection(img, (1, 1, 2), slab_mm=6)
    >>> (mip[1, 1, 3:8] > 0.2).tolist()
    [False, True, True, True, False]
    """
    img = as_image(image, 'image', 3)
    return -minimum_intensity_projection(-img, voxel_size_mm, slab_mm=slab_mm,
                                         slice_axis=slice_axis)
