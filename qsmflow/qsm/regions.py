# SPDX-License-Identifier: Apache-2.0
"""Regional susceptibility statistics: labels + χ + mask → one row per region and side.

Pure numpy (no file paths, no Nipype). A *region set* says which labels make which
region; it comes from ``bids_specs/atlases.json`` for the built-in atlases, or is derived
from a lookup table's names (:func:`regions_from_lut`) for custom atlases and
segmentations. Statistics are computed on the native χ grid: labels are brought to χ, never
χ to the labels, so χ is not interpolated.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmflow.qsm.region_names import split_hemisphere

#: Table columns, in order (χ statistics in ppm, volume in mm³; shares in [0, 1]).
COLUMNS = ('region', 'hemisphere', 'n_voxels', 'volume_mm3', 'mean', 'median', 'std',
           'p05', 'p95', 'trimmed_mean', 'boundary_share', 'n_labelled', 'mask_coverage')

#: Columns of the other maps of the acquisition, after :data:`COLUMNS` and in this order,
#: each the mean of its map over the voxels of the χ statistics: R2* (1/s), paramagnetic
#: χ⁺ and diamagnetic χ⁻ (ppm, χ before referencing). A table has only those of the maps
#: that exist (``maps`` of :func:`region_table`).
MAP_COLUMNS = ('r2star_mean', 'chi_para_mean', 'chi_dia_mean')

#: Share of the values cut from *each* end for the ``trimmed_mean`` column (10 %).
TRIM_PROPORTION = 0.1

#: ``--erode-rois`` never leaves a region with fewer voxels than this: a region that
#: erosion would shrink below it is tabulated uneroded (and the sidecar lists it).
MIN_ERODED_VOXELS = 10

#: Name of the whole-brain and reference rows.
WHOLE_BRAIN, REFERENCE = 'whole_brain', 'reference'

def regions_from_lut(lut: dict) -> list[dict]:
    """Region set with one region per label and bilateral merges of left/right pairs.

    Parameters
    ----------
    lut : dict
        Label index (int) → name.

    Returns
    -------
    list of dict
        ``{'region', 'hemisphere', 'labels'}`` entries (labels: list of int).

    Examples
    --------
    >>> rows = regions_from_lut({1: 'caudate_left', 2: 'caudate_right', 3: 'vein'})
    >>> [(r['region'], r['hemisphere'], r['labels']) for r in rows]
    [('caudate', 'left', [1]), ('caudate', 'right', [2]), ('caudate', 'bilateral', [1, 2]), \
('vein', 'bilateral', [3])]
    """
    groups: dict = {}
    for index, name in sorted(lut.items()):
        if int(index) == 0:
            continue
        base, hemi = split_hemisphere(name)
        groups.setdefault(base, {}).setdefault(hemi, []).append(int(index))
    return _expand(groups)


def regions_from_set(region_set: dict, lut: dict) -> list[dict]:
    """Resolve a region set (region → label names) against a lookup table.

    Parameters
    ----------
    region_set : dict
        Region name → list of label names (as in the lookup table's ``name`` column); the
        side of each label is read from its name; merges are lists of several names.
    lut : dict
        Label index (int) → name.

    Returns
    -------
    list of dict
        ``{'region', 'hemisphere', 'labels'}`` entries, with bilateral merges.

    Raises
    ------
    ValueError
        When a name of the region set is absent from the lookup table.

    Examples
    --------
    >>> lut = {9: 'left-gpi', 10: 'right-gpi', 11: 'left-gpe', 12: 'right-gpe'}
    >>> rows = regions_from_set({'pallidum': ['left-gpi', 'left-gpe', 'right-gpi',
    ...                                       'right-gpe']}, lut)
    >>> [(r['hemisphere'], r['labels']) for r in rows]
    [('left', [9, 11]), ('right', [10, 12]), ('bilateral', [9, 10, 11, 12])]
    """
    by_name = {str(n).lower(): int(i) for i, n in lut.items()}
    groups: dict = {}
    for region, names in region_set.items():
        for name in names:
            if name.lower() not in by_name:
                raise ValueError(f'label {name!r} of region {region!r} is not in the atlas '
                                 'lookup table')
            hemi = split_hemisphere(name)[1]
            groups.setdefault(region, {}).setdefault(hemi, []).append(by_name[name.lower()])
    return _expand(groups)


def _expand(groups: dict) -> list[dict]:
    rows = []
    for base, sides in groups.items():
        for hemi in ('left', 'right'):
            if hemi in sides:
                rows.append({'region': base, 'hemisphere': hemi, 'labels': sorted(sides[hemi])})
        merged = sorted(i for ids in sides.values() for i in ids)
        rows.append({'region': base, 'hemisphere': 'bilateral', 'labels': merged})
    return rows


def trimmed_mean(values_ppm: np.ndarray, *, proportion: float = TRIM_PROPORTION) -> float:
    """Mean after cutting ``proportion`` of the sorted values from each end.

    Parameters
    ----------
    values_ppm : (n,) ndarray
        χ values (ppm).
    proportion : float
        Share cut from each end, in [0, 0.5) (0.1: the 10 %-trimmed mean, as
        ``scipy.stats.trim_mean(values, 0.1)``).

    Returns
    -------
    float
        Trimmed mean (ppm); NaN for no values.

    Examples
    --------
    >>> v = np.r_[np.zeros(9), 10.0]  # one outlier in ten
    >>> float(v.mean()), trimmed_mean(v)  # the trimmed mean ignores it
    (1.0, 0.0)
    """
    if not 0 <= proportion < 0.5:
        raise ValueError(f'proportion must be in [0, 0.5), got {proportion}')
    v = np.sort(np.asarray(values_ppm, dtype=np.float64).ravel())
    if v.size == 0:
        return float('nan')
    cut = int(proportion * v.size)
    return float(v[cut:v.size - cut].mean())


def boundary_share(roi: np.ndarray) -> float:
    """Share of a region's voxels that have a 6-neighbour outside the region.

    These voxels share a face with another tissue (or with the outside of the brain mask,
    or of the image), so partial volume mixes that tissue into them.

    Parameters
    ----------
    roi : (nx, ny, nz) ndarray of bool
        The region (voxels entering the statistics).

    Returns
    -------
    float
        Boundary voxels / region voxels, in [0, 1]; NaN for an empty region.

    Examples
    --------
    >>> cube = np.zeros((7, 7, 7), bool); cube[1:6, 1:6, 1:6] = True
    >>> boundary_share(cube) == 1 - 27 / 125  # all but the 3³ core
    True
    """
    roi = np.asarray(roi, dtype=bool)
    n = int(roi.sum())
    if n == 0:
        return float('nan')
    inner = ndimage.binary_erosion(roi, border_value=0)  # 6-connectivity
    return float((n - int(inner.sum())) / n)


def roi_stats(values_ppm: np.ndarray, voxel_volume_mm3: float) -> dict:
    """Summary statistics of χ values (ppm) in one region.

    Parameters
    ----------
    values_ppm : (n,) ndarray
        χ of the region's voxels (ppm).
    voxel_volume_mm3 : float
        Volume of one voxel (mm³).

    Returns
    -------
    dict
        ``n_voxels``, ``volume_mm3`` and ``mean``, ``median``, ``std``, ``p05``, ``p95``,
        ``trimmed_mean`` (:func:`trimmed_mean`; ppm; NaN when the region is empty).

    Examples
    --------
    >>> s = roi_stats(np.arange(101, dtype=float) / 100, 2.0)
    >>> s['n_voxels'], s['volume_mm3'], round(s['mean'], 6), round(s['p95'], 6)
    (101, 202.0, 0.5, 0.95)
    >>> round(s['trimmed_mean'], 6) == round(s['median'], 6)  # symmetric values
    True
    """
    v = np.asarray(values_ppm, dtype=np.float64).ravel()
    out = {'n_voxels': int(v.size), 'volume_mm3': float(v.size * voxel_volume_mm3)}
    if v.size == 0:
        return {**out, **{k: float('nan') for k in ('mean', 'median', 'std', 'p05', 'p95',
                                                     'trimmed_mean')}}
    p05, p50, p95 = np.percentile(v, [5, 50, 95])
    return {**out, 'mean': float(v.mean()), 'median': float(p50),
            'std': float(v.std(ddof=1)) if v.size > 1 else 0.0,
            'p05': float(p05), 'p95': float(p95), 'trimmed_mean': trimmed_mean(v)}


def region_table(chi_ppm: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 voxel_size, regions: list[dict], *, erode: bool = False,
                 min_eroded_voxels: int = MIN_ERODED_VOXELS,
                 reference_mask: np.ndarray | None = None,
                 maps: dict | None = None) -> list[dict]:
    """One row of χ statistics per region and hemisphere, plus whole brain and reference.

    Parameters
    ----------
    chi_ppm : (nx, ny, nz) ndarray
        Referenced susceptibility (ppm).
    labels : (nx, ny, nz) ndarray of int
        Segmentation on the χ grid (0 = unlabelled).
    mask : (nx, ny, nz) ndarray of bool
        Brain mask of χ; regions are restricted to it.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    regions : list of dict
        ``{'region', 'hemisphere', 'labels'}`` entries (:func:`regions_from_lut`,
        :func:`regions_from_set`).
    erode : bool
        Erode every label by one voxel (6-connectivity) against partial volume; a region
        that erosion would leave with fewer than ``min_eroded_voxels`` voxels is kept
        uneroded (its row's ``eroded`` is False).
    min_eroded_voxels : int
        Smallest region (voxels) erosion may leave.
    reference_mask : (nx, ny, nz) ndarray of bool, optional
        Region χ was referenced to; gives the ``reference`` row (omitted when None).
    maps : dict, optional
        Column name (:data:`MAP_COLUMNS`) → another map of the acquisition on the χ grid
        (R2* in 1/s, χ⁺ or χ⁻ in ppm). Each row gains that column: the mean of the map's
        finite values over the row's voxels (the voxels of the χ statistics: same mask,
        same erosion; NaN when there are none). Columns follow the order of ``maps``.

    Returns
    -------
    list of dict
        Rows with the keys of :data:`COLUMNS` and ``eroded`` (bool). ``n_labelled``: voxels
        with the region's labels on the χ grid (before brain mask and erosion);
        ``mask_coverage``: the share of them inside the brain mask; ``boundary_share``
        (:func:`boundary_share`) and the χ statistics are those of the voxels tabulated;
        then the columns of ``maps``.

    Examples
    --------
    >>> lab = np.zeros((6, 6, 6), int); lab[1:5, 1:5, 1:3] = 1; lab[1:5, 1:5, 3:5] = 2
    >>> chi = np.where(lab == 1, 0.1, 0.0); m = lab > 0
    >>> rows = region_table(chi, lab, m, (1, 1, 1), regions_from_lut({1: 'a_left', 2: 'a_right'}))
    >>> [(r['region'], r['hemisphere'], r['n_voxels'], round(r['mean'], 3)) for r in rows]
    [('a', 'left', 32, 0.1), ('a', 'right', 32, 0.0), ('a', 'bilateral', 64, 0.05), \
('whole_brain', 'bilateral', 64, 0.05)]
    >>> rows[0]['boundary_share'], rows[0]['mask_coverage']  # 4x4x2 slab: all on the edge
    (1.0, 1.0)
    >>> r2 = np.where(lab == 1, 20.0, 30.0)
    >>> rows = region_table(chi, lab, m, (1, 1, 1), regions_from_lut({1: 'a_left'}),
    ...                     maps={'r2star_mean': r2})
    >>> rows[0]['r2star_mean'], rows[-1]['r2star_mean']  # left; whole brain: half of each
    (20.0, 25.0)
    """
    chi = np.asarray(chi_ppm)
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if not chi.shape == labels.shape == mask.shape or chi.ndim != 3:
        raise ValueError(f'chi {chi.shape}, labels {labels.shape} and mask {mask.shape} must '
                         'be 3D arrays of one shape')
    maps = {k: np.asarray(v, dtype=np.float64) for k, v in (maps or {}).items()}
    for key, data in maps.items():
        if data.shape != chi.shape:
            raise ValueError(f'map {key!r} {data.shape} must have the shape of chi {chi.shape}')
    vol = float(np.prod(np.asarray(voxel_size, dtype=float)))
    rows = []
    for reg in regions:
        labelled = np.isin(labels, reg['labels'])
        roi = labelled & mask
        eroded = False
        if erode:
            small = _erode_each(labels, reg['labels']) & mask
            if small.sum() >= min_eroded_voxels:
                roi, eroded = small, True
        rows.append(_row(reg['region'], reg['hemisphere'], chi, roi, labelled, mask, vol,
                         eroded, maps))
    rows.append(_row(WHOLE_BRAIN, 'bilateral', chi, mask, mask, mask, vol, False, maps))
    if reference_mask is not None:
        ref = np.asarray(reference_mask, dtype=bool)
        rows.append(_row(REFERENCE, 'bilateral', chi, ref & mask, ref, mask, vol, False,
                         maps))
    return rows


def _row(region, hemisphere, chi, roi, labelled, mask, vol, eroded, maps) -> dict:
    n_labelled = int(labelled.sum())
    in_mask = int((labelled & mask).sum())
    return {'region': region, 'hemisphere': hemisphere, **roi_stats(chi[roi], vol),
            'boundary_share': boundary_share(roi), 'n_labelled': n_labelled,
            'mask_coverage': in_mask / n_labelled if n_labelled else float('nan'),
            **{key: _finite_mean(data[roi]) for key, data in maps.items()},
            'eroded': eroded}


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN when there are none)."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float('nan')


def _erode_each(labels: np.ndarray, ids) -> np.ndarray:
    """Union of each label eroded by one voxel (so adjacent labels erode at their border)."""
    out = np.zeros(labels.shape, dtype=bool)
    for i in ids:
        out |= ndimage.binary_erosion(labels == i)
    return out


def resample_labels(labels: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                    dst_shape) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto another grid of the same space.

    Parameters
    ----------
    labels : (nx, ny, nz) ndarray of int
        Label image.
    src_affine, dst_affine : (4, 4) ndarray
        Voxel → world (mm) affines of the label and target grids (same world space).
    dst_shape : tuple of 3 int
        Target grid shape.

    Returns
    -------
    ndarray of int32
        Labels on the target grid (0 outside the source field of view).

    Examples
    --------
    >>> lab = np.zeros((4, 4, 4), int); lab[2, 1, 3] = 7
    >>> aff = np.diag([2.0, 2.0, 2.0, 1.0])
    >>> fine = resample_labels(lab, aff, np.diag([1.0, 1.0, 1.0, 1.0]), (8, 8, 8))
    >>> int(fine[4, 2, 6]), int(fine[3, 1, 5]), int((fine == 7).sum())
    (7, 7, 8)
    """
    if np.allclose(src_affine, dst_affine) and tuple(labels.shape) == tuple(dst_shape):
        return np.asarray(labels, dtype=np.int32)
    vox2vox = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    grid = np.indices(tuple(dst_shape), dtype=np.float64).reshape(3, -1)
    coords = vox2vox[:3, :3] @ grid + vox2vox[:3, 3:4]
    idx = np.floor(coords + 0.5 + 1e-6).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(labels.shape)[:, None]), axis=0)
    out = np.zeros(idx.shape[1], dtype=np.int32)
    out[inside] = np.asarray(labels)[tuple(i[inside] for i in idx)]
    return out.reshape(tuple(dst_shape))


def resample_linear(image: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                    dst_shape, valid: np.ndarray | None = None) -> np.ndarray:
    """Trilinear resampling of a quantitative map onto another grid of the same space.

    Only ``valid`` voxels of the source count: the value at a target voxel is the
    trilinear average of the valid neighbours (weights renormalised), so a map that is 0
    or NaN outside its own mask does not bleed into the edge. A target voxel whose
    neighbours are less than half valid (or outside the source field of view) is NaN.

    Parameters
    ----------
    image : (nx, ny, nz) ndarray
        Source map (any units).
    src_affine, dst_affine : (4, 4) ndarray
        Voxel → world (mm) affines of the source and target grids (same world space).
    dst_shape : tuple of 3 int
        Target grid shape.
    valid : (nx, ny, nz) ndarray of bool, optional
        Source voxels holding a value; default: the finite ones.

    Returns
    -------
    ndarray of float32
        The map on the target grid, NaN where it has no value.

    Examples
    --------
    >>> src = np.tile(np.arange(4.0), (4, 4, 1))            # 0, 1, 2, 3 along z
    >>> aff = np.diag([2.0, 2.0, 2.0, 1.0])
    >>> fine = resample_linear(src, aff, np.diag([1.0, 1.0, 1.0, 1.0]), (7, 7, 7))
    >>> [float(v) for v in fine[2, 2, :]]
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    >>> float(resample_linear(src, aff, aff, (4, 4, 4), valid=src > 0)[0, 0, 0])
    nan
    """
    image = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(image) if valid is None else (np.asarray(valid, bool) & np.isfinite(image))
    vox2vox = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    grid = np.indices(tuple(dst_shape), dtype=np.float64).reshape(3, -1)
    coords = vox2vox[:3, :3] @ grid + vox2vox[:3, 3:4]
    num = ndimage.map_coordinates(np.where(ok, image, 0.0), coords, order=1, mode='constant',
                                  cval=0.0, prefilter=False)
    den = ndimage.map_coordinates(ok.astype(np.float64), coords, order=1, mode='constant',
                                  cval=0.0, prefilter=False)
    out = np.full(num.shape, np.nan)
    keep = den >= 0.5 - 1e-9
    out[keep] = num[keep] / den[keep]
    return out.reshape(tuple(dst_shape)).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two boolean masks (NaN when both are empty).

    Examples
    --------
    >>> dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
    0.6666666666666666
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else float('nan')
