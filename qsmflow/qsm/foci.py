# SPDX-License-Identifier: Apache-2.0
"""Compact paramagnetic and diamagnetic foci in χ: haemorrhage-like, calcification-like.

SWI and T2*-weighted images show blood products and calcium alike (both dark); χ tells
them apart by sign: blood products are paramagnetic (positive χ), calcium diamagnetic
(negative χ) [1]_. The detector works on χ relative to the local tissue
(:func:`qsmflow.qsm.contrast.local_contrast_ppm`):

1. seeds: voxels at least ``edge_margin_mm`` inside the mask whose contrast exceeds
   ``para_threshold_ppm`` (or is below −``dia_threshold_ppm``), outside the veins
   (``vein_mask``, grown by one voxel) when they are given;
2. each seed component is grown over the connected voxels of the same sign, not in a
   vein, whose contrast is at least half the component's peak contrast (the half-maximum
   boundary: a blurred sphere's half-maximum surface lies near its true surface);
3. its own background is the median χ 2–3 voxels around it (the nucleus it lies in), and
   its volume counts every voxel of the region and of its one-voxel rim by its share of
   the peak contrast to that background (a partial-volume estimate: the half-maximum
   region alone is off by up to half for foci of a few voxels);
4. kept when its volume is within [``min_volume_mm3``, ``max_volume_mm3``], a
   paramagnetic region touching a vein peaks at ``vein_ratio`` times the vein's contrast
   or more (else it is a piece of the vein), and it is compact: the elongation
   √(λmax/λmin) of its voxel coordinates' covariance (mm²) is at most ``max_elongation`` (a vein segment, a tube, is long and thin; a focus is not).

Each focus is described, never diagnosed: "paramagnetic focus, haemorrhage-like" or
"diamagnetic focus, calcification-like".

References
----------
.. [1] Chen W, Zhu W, Kovanlikaya I, et al. Intracranial calcifications and hemorrhages:
   characterization with quantitative susceptibility mapping. Radiology
   2014;270:496-505.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._validation import as_image, as_mask, as_voxel_size, positive
from qsmflow.qsm.contrast import DEFAULT_WINDOW_MM, local_contrast_ppm

#: Contrast (ppm above the local tissue) of a paramagnetic seed: above deep grey matter's
#: contrast to its surroundings (≤ 0.2 ppm), below blood products (0.3–1.5 ppm).
DEFAULT_PARA_THRESHOLD_PPM = 0.25
#: Contrast magnitude (ppm below the local tissue) of a diamagnetic seed: beyond white
#: matter against grey (≈ 0.05 ppm), within calcification (−0.2 to −1 ppm).
DEFAULT_DIA_THRESHOLD_PPM = 0.15
#: Volume limits (mm³): from a 2-mm sphere (4.2 mm³, a little less to allow for partial
#: volume) to 30 mL.
DEFAULT_MIN_VOLUME_MM3, DEFAULT_MAX_VOLUME_MM3 = 3.0, 30000.0
#: Largest elongation √(λmax/λmin) of a focus; a vein segment of length L and radius r
#: has about L/(1.15 r), above 3 for any segment longer than 3.5 radii.
DEFAULT_MAX_ELONGATION = 2.5
#: A paramagnetic focus touching a vein must peak at this multiple of the vein's contrast
#: there (its 90th percentile nearby): a piece of vein the segmentation missed (beside a
#: focus its vesselness drops) is as bright as the vein, blood products beside a vein are
#: brighter. A haemorrhage no
#: brighter than the vein beside it is not told apart from it.
DEFAULT_VEIN_RATIO = 1.5
#: Seeds keep this far (mm) from the mask edge, where inversion artefacts and the
#: background-field residue sit.
DEFAULT_EDGE_MARGIN_MM = 3.0

#: Label (index in the label image, name) of each kind of focus.
KINDS = {'paramagnetic': (1, 'haemorrhage-like'), 'diamagnetic': (2, 'calcification-like')}


def detect_foci(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    vein_mask: np.ndarray | None = None,
    para_threshold_ppm: float = DEFAULT_PARA_THRESHOLD_PPM,
    dia_threshold_ppm: float = DEFAULT_DIA_THRESHOLD_PPM,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    max_volume_mm3: float = DEFAULT_MAX_VOLUME_MM3,
    max_elongation: float = DEFAULT_MAX_ELONGATION,
    vein_ratio: float = DEFAULT_VEIN_RATIO,
    edge_margin_mm: float = DEFAULT_EDGE_MARGIN_MM,
    window_mm: float = DEFAULT_WINDOW_MM,
) -> tuple[np.ndarray, list[dict]]:
    """Find compact strongly para- and diamagnetic foci in χ.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) ndarray
        Susceptibility (ppm).
    mask : (X, Y, Z) array_like of bool
        Brain mask.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    vein_mask : (X, Y, Z) array_like of bool, optional
        Veins (:func:`qsmflow.qsm.veins.segment_veins`); no seed lies in them.
    para_threshold_ppm, dia_threshold_ppm : float
        Seed contrast (ppm, both > 0) of paramagnetic and diamagnetic foci.
    min_volume_mm3, max_volume_mm3 : float
        Volume limits (mm³).
    max_elongation : float
        Largest √(λmax/λmin) of the principal axes (≥ 1).
    vein_ratio : float
        A paramagnetic focus within 2 voxels of a vein must peak at ≥ this times the
        vein's median contrast there.
    edge_margin_mm : float
        Seeds lie this far (mm) inside the mask.
    window_mm : float
        Block of the local background (:func:`qsmflow.qsm.contrast.local_background_ppm`).

    Returns
    -------
    labels : (X, Y, Z) ndarray of int16
        0 background, ``n`` the n-th focus (rows in order).
    foci : list of dict
        One row per focus: ``index``, ``kind`` ('paramagnetic'/'diamagnetic'), ``label``
        ('haemorrhage-like'/'calcification-like'), ``description``, ``volume_mm3`` (the
        partial-volume estimate), ``n_voxels`` (of the label image), ``peak_chi_ppm`` (χ
        at the peak, as in the map), ``mean_chi_ppm``, ``background_chi_ppm`` (median χ
        of the tissue 2-3 voxels around it), ``peak_contrast_ppm`` and
        ``mean_contrast_ppm`` (relative to that background),
        ``centroid_vox`` (3 floats, voxel indices), ``elongation``.

    Examples
    --------
    >>> chi = np.zeros((40, 40, 40), np.float32)
    >>> i, j, k = np.ogrid[:40, :40, :40]
    >>> chi[(i - 12)**2 + (j - 20)**2 + (k - 20)**2 <= 9] = 0.8   # 6-mm haemorrhage-like
    >>> chi[(i - 28)**2 + (j - 20)**2 + (k - 20)**2 <= 4] = -0.5  # 4-mm calcification-like
    >>> chi[18:20, 30:32, 5:35] = 0.45                             # a vein: not a focus
    >>> labels, foci = detect_foci(chi, np.ones(chi.shape, bool), (1, 1, 1))
    >>> [(f['label'], f['n_voxels']) for f in foci]
    [('haemorrhage-like', 123), ('calcification-like', 33)]
    """
    chi = as_image(chi_ppm, 'chi_ppm', 3)
    msk = as_mask(mask, chi.shape)
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    thresholds = {'paramagnetic': positive('para_threshold_ppm', para_threshold_ppm),
                  'diamagnetic': positive('dia_threshold_ppm', dia_threshold_ppm)}
    positive('min_volume_mm3', min_volume_mm3)
    if max_volume_mm3 < min_volume_mm3:
        raise ValueError('max_volume_mm3 must be >= min_volume_mm3')
    if max_elongation < 1:
        raise ValueError(f'max_elongation must be >= 1, got {max_elongation!r}')
    contrast = local_contrast_ppm(chi, msk, vox, window_mm=window_mm).astype(np.float64)
    inner = ndi.distance_transform_edt(msk, sampling=vox) > edge_margin_mm
    veins = np.zeros(chi.shape, bool)
    if vein_mask is not None:
        veins = np.asarray(vein_mask, dtype=bool)
        if veins.shape != chi.shape:
            raise ValueError(f'vein_mask has shape {veins.shape}, expected {chi.shape}')
        veins = ndi.binary_dilation(veins)
        inner &= ~veins
    allowed = msk & ~veins
    voxel_mm3 = float(np.prod(vox))
    labels = np.zeros(chi.shape, np.int16)
    foci = []
    for kind, sign in (('paramagnetic', 1.0), ('diamagnetic', -1.0)):
        signed = sign * contrast
        seeds = inner & (signed >= thresholds[kind])
        seed_labels, n = ndi.label(seeds, structure=np.ones((3, 3, 3)))
        for sl, lab in zip(ndi.find_objects(seed_labels), range(1, n + 1)):
            region = _half_max_region(signed, allowed, seed_labels, lab, sl, labels)
            if region is None:
                continue
            n_vox = int(region.sum())
            background = _ring_median(chi, region, allowed)
            volume = _partial_volume(sign * (chi - background), region, allowed) * voxel_mm3
            elong = _elongation(np.argwhere(region) * vox, vox)
            if not (min_volume_mm3 <= volume <= max_volume_mm3 and elong <= max_elongation):
                continue
            if kind == 'paramagnetic' and not _stands_out_from_veins(signed, region, veins,
                                                                     vein_ratio):
                continue
            index = len(foci) + 1
            labels[region] = index
            peak = np.unravel_index(np.argmax(np.where(region, signed, -np.inf)), chi.shape)
            name = KINDS[kind][1]
            foci.append({
                'index': index, 'kind': kind, 'label': name,
                'description': f'{kind} focus, {name}',
                'volume_mm3': volume, 'n_voxels': n_vox,
                'peak_chi_ppm': float(chi[peak]), 'mean_chi_ppm': float(chi[region].mean()),
                'background_chi_ppm': background,
                'peak_contrast_ppm': float(chi[peak]) - background,
                'mean_contrast_ppm': float(chi[region].mean()) - background,
                'centroid_vox': [float(c) for c in np.argwhere(region).mean(axis=0)],
                'elongation': float(elong),
            })
    return labels, foci


def _half_max_region(signed, msk, seed_labels, lab, sl, taken):
    """Voxels of ``msk`` (the brain less the veins) connected to seed component ``lab``
    with ≥ half its peak signed contrast."""
    pad = 6
    box = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in sl)
    local = signed[box]
    seed = seed_labels[box] == lab
    peak = float(local[seed].max())
    if taken[box][seed].any():
        return None  # already part of a focus grown from another seed component
    grow = msk[box] & (local >= 0.5 * peak) & (taken[box] == 0)
    comp, _ = ndi.label(grow, structure=np.ones((3, 3, 3)))
    ids = np.unique(comp[seed & grow])
    ids = ids[ids > 0]
    region_local = np.isin(comp, ids)
    if region_local.any() and _touches_box_edge(region_local, box, signed.shape):
        return _half_max_region_unboxed(signed, msk, seed_labels == lab, peak, taken)
    region = np.zeros(signed.shape, bool)
    region[box] = region_local
    return region


def _stands_out_from_veins(signed, region, veins, ratio) -> bool:
    """Whether a paramagnetic region touching a vein (within 2 voxels) peaks above
    ``ratio`` times that vein's contrast (the 90th percentile over its voxels within 4
    voxels of the region: the vein's axis, not its partial-volume edge); else it is a
    piece of that vein the segmentation missed."""
    box = tuple(slice(max(s.start - 5, 0), s.stop + 5) for s in ndi.find_objects(
        region.astype(np.int8))[0])
    reg = region[box]
    if not (ndi.binary_dilation(reg, iterations=2) & veins[box]).any():
        return True
    near = ndi.binary_dilation(reg, iterations=4) & veins[box]
    return float(signed[box][reg].max()) >= ratio * float(
        np.percentile(signed[box][near], 90))


def _box(region, pad):
    return tuple(slice(max(s.start - pad, 0), s.stop + pad)
                 for s in ndi.find_objects(region.astype(np.int8))[0])


def _ring_median(chi, region, allowed) -> float:
    """Median χ (ppm) of the tissue 2-3 voxels around a focus (its own background: the
    nucleus it sits in, not the blockwise median of the neighbourhood)."""
    box = _box(region, 4)
    reg = region[box]
    ring = ndi.binary_dilation(reg, iterations=3) & ~ndi.binary_dilation(reg, iterations=1)
    ring &= allowed[box]
    values = chi[box][ring] if ring.any() else chi[box][~reg]
    return float(np.median(values))


def _partial_volume(signed, region, allowed) -> float:
    """Volume (voxels) of a focus: each voxel of the region and of its one-voxel rim counts
    its contrast to the focus's background over the peak contrast, clipped to [0, 1] (a
    voxel half filled by the source has half its contrast)."""
    box = _box(region, 1)
    reg = region[box]
    near = ndi.binary_dilation(reg) & (allowed[box] | reg)
    peak = float(signed[box][reg].max())
    return float(np.clip(signed[box][near] / peak, 0.0, 1.0).sum())


def _touches_box_edge(region, box, shape) -> bool:
    for axis, s in enumerate(box):
        idx = [slice(None)] * 3
        if s.start > 0:
            idx[axis] = 0
            if region[tuple(idx)].any():
                return True
        if s.stop < shape[axis]:
            idx[axis] = -1
            if region[tuple(idx)].any():
                return True
    return False


def _half_max_region_unboxed(signed, msk, seed, peak, taken):
    grow = msk & (signed >= 0.5 * peak) & (taken == 0)
    comp, _ = ndi.label(grow, structure=np.ones((3, 3, 3)))
    ids = np.unique(comp[seed & grow])
    return np.isin(comp, ids[ids > 0])


def _elongation(coords_mm: np.ndarray, vox) -> float:
    """√(λmax/λmin) of the coordinates' covariance (mm²) plus each voxel's own extent
    (side²/12 per axis, a uniform cube), so that foci of a few voxels stay finite."""
    cov = np.diag(np.asarray(vox, float) ** 2 / 12.0)
    if coords_mm.shape[0] >= 2:
        cov = cov + np.cov(coords_mm.T, bias=True)
    lam = np.linalg.eigvalsh(cov)
    return float(np.sqrt(lam[-1] / max(lam[0], 1e-12)))
