# SPDX-License-Identifier: Apache-2.0
"""Oxygen extraction fraction from the susceptibility of veins (QSM-OEF).

Deoxyhaemoglobin makes venous blood paramagnetic relative to the tissue around it:

    Δχ_vein = Δχ_do · Hct · (1 − Y)

with Δχ_do = 3.39 ppm (SI) the susceptibility of fully deoxygenated relative to fully
oxygenated red cells, Hct the haematocrit and Y the venous oxygen saturation [1]_ [2]_.
With the arterial saturation Ya, OEF = (Ya − Y) / Ya; with Ya = 1 (the default: the
brief's OEF = Δχ_vein / (Δχ_do · Hct)) OEF = 1 − Y.

Per vein segment (a connected component of the vein mask):

* **tissue χ**: the median χ of the mask voxels between ``shell_mm`` (inner, outer) from
  the segment, not in any vein and not within one voxel of ``exclude`` (foci).
* **vein Δχ, partial volume**: the 90th percentile of (χ − tissue χ) over the segment, its
  centreline: partial volume and the inversion's regularisation lower χ towards the
  vein's edge and spread it outside, so the segment's mean or median underestimates the
  blood, its brightest voxels least. The part of the segment within ``focus_margin_mm``
  of an excluded focus is left out (a haemorrhage's χ, spread by the inversion, would
  count as blood). Veins narrower than about 3 voxels are still underestimated (a 2-mm
  vein at 1 mm voxels by ≈ 20 %): segments whose largest inner distance (edge to axis)
  is below ``min_radius_vox`` voxels are not measured (partial volume scales with the
  voxel, not the mm).
* Not measured (OEF NaN, ``note`` says why): segments thinner than ``min_radius_vox``,
  without tissue around them, or lying wholly within ``focus_margin_mm`` of a focus.
* Y = 1 − Δχ_vein / (Δχ_do · Hct); OEF = (Ya − Y) / Ya.

The participant's OEF is the median over the measurable segments, weighted by their
half-maximum volume.

References
----------
.. [1] Spees WM, Yablonskiy DA, Oswood MC, Ackerman JJ. Water proton MR properties of
   human blood at 1.5 Tesla: magnetic susceptibility, T1, T2, T2*, and non-Lorentzian
   signal behavior. Magn Reson Med 2001;45:533-542.
.. [2] Fan AP, Bilgic B, Gagnon L, et al. Quantitative oxygenation venography from MRI
   phase. Magn Reson Med 2014;72:149-159.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._validation import as_image, as_mask, as_voxel_size, positive

#: Susceptibility of fully deoxygenated relative to fully oxygenated blood per unit
#: haematocrit (ppm, SI; 0.27 ppm in cgs units × 4π).
DELTA_CHI_DO_PPM = 3.39
#: Default haematocrit (fraction).
DEFAULT_HEMATOCRIT = 0.40
#: Default arterial oxygen saturation (fraction): 1, so that OEF = 1 − Y.
DEFAULT_ARTERIAL_SATURATION = 1.0
#: The parts of segments closer than this (mm) to an excluded focus are not measured: the
#: focus's susceptibility, spread by the inversion, would count as blood.
DEFAULT_FOCUS_MARGIN_MM = 3.0
#: Segments thinner than this largest inner distance (voxels, edge to axis) are not
#: measured: 1.4 keeps veins of ≥ 3 voxels across (≥ 3 mm at 1 mm voxels).
DEFAULT_MIN_RADIUS_VOX = 1.4
#: Tissue shell around a segment (mm, inner and outer distance).
DEFAULT_SHELL_MM = (2.0, 5.0)
#: Smallest segment measured (mm³).
DEFAULT_MIN_SEGMENT_MM3 = 20.0


def saturation_from_delta_chi(delta_chi_ppm, *, hematocrit: float = DEFAULT_HEMATOCRIT,
                              delta_chi_do_ppm: float = DELTA_CHI_DO_PPM):
    """Venous oxygen saturation Y = 1 − Δχ_vein / (Δχ_do · Hct).

    Examples
    --------
    >>> round(float(saturation_from_delta_chi(0.4746)), 4)  # 3.39 · 0.40 · (1 − 0.65)
    0.65
    """
    return 1.0 - np.asarray(delta_chi_ppm, dtype=np.float64) / (delta_chi_do_ppm * hematocrit)


def delta_chi_from_saturation(saturation, *, hematocrit: float = DEFAULT_HEMATOCRIT,
                              delta_chi_do_ppm: float = DELTA_CHI_DO_PPM):
    """Δχ_vein (ppm) of blood at saturation Y: Δχ_do · Hct · (1 − Y) (the inverse).

    >>> round(float(delta_chi_from_saturation(0.65)), 4)
    0.4746
    """
    return delta_chi_do_ppm * hematocrit * (1.0 - np.asarray(saturation, dtype=np.float64))


def vein_oef(
    chi_ppm: np.ndarray,
    vein_mask: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    hematocrit: float = DEFAULT_HEMATOCRIT,
    delta_chi_do_ppm: float = DELTA_CHI_DO_PPM,
    arterial_saturation: float = DEFAULT_ARTERIAL_SATURATION,
    exclude: np.ndarray | None = None,
    focus_margin_mm: float = DEFAULT_FOCUS_MARGIN_MM,
    min_radius_vox: float = DEFAULT_MIN_RADIUS_VOX,
    shell_mm: Sequence[float] = DEFAULT_SHELL_MM,
    min_segment_mm3: float = DEFAULT_MIN_SEGMENT_MM3,
) -> tuple[list[dict], dict]:
    """OEF per vein segment and for the participant.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) ndarray
        Susceptibility (ppm; any reference: only differences are used).
    vein_mask : (X, Y, Z) array_like of bool
        Veins (:func:`qsmflow.qsm.veins.segment_veins`).
    mask : (X, Y, Z) array_like of bool
        Brain mask (the tissue shell stays in it).
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    hematocrit : float
        Haematocrit, in (0, 1).
    delta_chi_do_ppm : float
        Δχ_do (ppm, SI).
    arterial_saturation : float
        Ya, in (0, 1].
    exclude : (X, Y, Z) array_like of bool, optional
        Voxels that are neither vein nor tissue (foci: their χ would count as blood).
    focus_margin_mm, min_radius_vox, shell_mm, min_segment_mm3
        Distance (mm) from an excluded focus within which vein voxels are not used,
        thinnest measured segment (voxels of the finest spacing, edge to axis), tissue
        shell (mm) and smallest segment (mm³).

    Returns
    -------
    segments : list of dict
        Per segment: ``segment``, ``volume_mm3``, ``radius_mm`` (largest inner distance),
        ``halfmax_volume_mm3`` (voxels at ≥ half its Δχ), ``tissue_chi_ppm``,
        ``median_delta_chi_ppm``, ``delta_chi_ppm`` (90th percentile), ``saturation``,
        ``oef`` (NaN when not measured), ``centroid_vox``, ``note``.
    summary : dict
        ``oef`` and ``saturation`` of the participant (weighted median; NaN without a
        measurable segment), ``n_segments``, ``n_measured`` and the parameters.

    Examples
    --------
    >>> chi = np.full((30, 30, 40), -0.03, np.float32)
    >>> i, j, _ = np.ogrid[:30, :30, :40]
    >>> vein = ((i - 15)**2 + (j - 15)**2 <= 6.25) & np.ones((1, 1, 40), bool)
    >>> chi[vein] += 0.4746                       # blood at Y = 0.65, Hct 0.40
    >>> seg, summ = vein_oef(chi, vein, np.ones(chi.shape, bool), (1, 1, 1))
    >>> round(summ['oef'], 3), round(seg[0]['saturation'], 3)
    (0.35, 0.65)
    """
    chi = as_image(chi_ppm, 'chi_ppm', 3)
    msk = as_mask(mask, chi.shape)
    veins = np.asarray(vein_mask, dtype=bool)
    if veins.shape != chi.shape:
        raise ValueError(f'vein_mask has shape {veins.shape}, expected {chi.shape}')
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    if not 0 < hematocrit < 1:
        raise ValueError(f'hematocrit must be in (0, 1), got {hematocrit!r}')
    if not 0 < arterial_saturation <= 1:
        raise ValueError(f'arterial_saturation must be in (0, 1], got {arterial_saturation!r}')
    positive('delta_chi_do_ppm', delta_chi_do_ppm)
    inner_mm, outer_mm = (float(s) for s in shell_mm)
    if not 0 <= inner_mm < outer_mm:
        raise ValueError(f'shell_mm must be (inner, outer) with 0 <= inner < outer, got '
                         f'{shell_mm!r}')
    depth = ndi.distance_transform_edt(veins, sampling=vox)
    dist_out, nearest = ndi.distance_transform_edt(~veins, sampling=vox, return_indices=True)
    seg_labels, n = ndi.label(veins, structure=np.ones((3, 3, 3)))
    owner = seg_labels[tuple(nearest)]
    other = np.zeros(chi.shape, bool) if exclude is None else np.asarray(exclude, bool)
    if other.shape != chi.shape:
        raise ValueError(f'exclude has shape {other.shape}, expected {chi.shape}')
    dist_other = (ndi.distance_transform_edt(~other, sampling=vox) if other.any()
                  else np.full(chi.shape, np.inf))
    tissue_all = msk & ~veins & (dist_other > float(np.max(vox)))
    shell = tissue_all & (dist_out >= inner_mm) & (dist_out <= outer_mm)
    voxel_mm3 = float(np.prod(vox))
    params = {'hematocrit': hematocrit, 'delta_chi_do_ppm': delta_chi_do_ppm,
              'arterial_saturation': arterial_saturation}
    segments = []
    for lab, sl in zip(range(1, n + 1), ndi.find_objects(seg_labels)):
        seg = seg_labels == lab
        volume = float(seg.sum()) * voxel_mm3
        if volume < min_segment_mm3:
            continue
        row = {'segment': lab, 'volume_mm3': volume, 'radius_mm': float(depth[seg].max()),
               'centroid_vox': [float(c) for c in np.argwhere(seg).mean(axis=0)], 'note': ''}
        tissue = shell & (owner == lab)
        away = dist_other > focus_margin_mm  # the part of the segment a focus leaves alone
        far = seg & away
        row.update(_delta_chi(chi, far, tissue, voxel_mm3))
        if row['radius_mm'] < min_radius_vox * float(np.min(vox)):
            row['note'] = (f'thinner than {min_radius_vox} voxels from edge to axis: partial '
                           'volume, not measured')
        elif not tissue.any():
            row['note'] = 'no tissue around the segment inside the mask'
        elif far.sum() * voxel_mm3 < min_segment_mm3:
            row['note'] = (f'within {focus_margin_mm} mm of an excluded focus, whose '
                           'susceptibility spreads into the vein: not measured')
        y, oef = np.nan, np.nan
        if not row['note']:
            y = float(saturation_from_delta_chi(row['delta_chi_ppm'], hematocrit=hematocrit,
                                                delta_chi_do_ppm=delta_chi_do_ppm))
            oef = (arterial_saturation - y) / arterial_saturation
        row['saturation'], row['oef'] = y, oef
        segments.append(row)
    measured = [r for r in segments if np.isfinite(r['oef'])]
    summary = {'n_segments': len(segments), 'n_measured': len(measured), **params,
               'oef': _weighted_median([r['oef'] for r in measured],
                                       [r['halfmax_volume_mm3'] for r in measured]),
               'saturation': _weighted_median([r['saturation'] for r in measured],
                                              [r['halfmax_volume_mm3'] for r in measured])}
    return segments, summary


def _delta_chi(chi, seg, tissue, voxel_mm3) -> dict:
    """Tissue χ, median and 90th-percentile Δχ (ppm) and half-maximum volume (mm³)."""
    nan = float('nan')
    if not tissue.any() or not seg.any():
        return {'tissue_chi_ppm': nan, 'median_delta_chi_ppm': nan, 'delta_chi_ppm': nan,
                'halfmax_volume_mm3': 0.0}
    t = float(np.median(chi[tissue]))
    delta = chi[seg] - t
    peak = float(np.percentile(delta, 90))
    return {'tissue_chi_ppm': t, 'median_delta_chi_ppm': float(np.median(delta)),
            'delta_chi_ppm': peak,
            'halfmax_volume_mm3': int(np.count_nonzero(delta >= 0.5 * peak)) * voxel_mm3}


def _weighted_median(values, weights) -> float:
    """Weighted median (the smallest value whose cumulative weight reaches half).

    >>> _weighted_median([0.3, 0.4, 0.5], [1, 1, 5]), bool(np.isnan(_weighted_median([], [])))
    (0.5, True)
    """
    if not values:
        return float('nan')
    order = np.argsort(values)
    v = np.asarray(values, float)[order]
    w = np.cumsum(np.asarray(weights, float)[order])
    return float(v[np.searchsorted(w, 0.5 * w[-1])])
