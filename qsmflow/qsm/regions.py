# SPDX-License-Identifier: Apache-2.0
"""Regional susceptibility statistics: labels + χ + mask → one row per region and side.

Pure numpy (no file paths, no Nipype). A *region set* says which labels make which
region; it comes from ``bids_specs/atlases.json`` for the built-in atlases, or is derived
from a lookup table's names (:func:`regions_from_lut`) for custom atlases and
segmentations. Statistics are computed on the native χ grid: labels are brought to χ, never
χ to the labels, so χ is not interpolated.
"""
from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

#: Table columns, in order (χ statistics in ppm, volume in mm³).
COLUMNS = ('region', 'hemisphere', 'n_voxels', 'volume_mm3', 'mean', 'median', 'std',
           'p05', 'p95')

#: Name of the whole-brain and reference rows.
WHOLE_BRAIN, REFERENCE = 'whole_brain', 'reference'

_SIDE_PATTERNS = (
    (re.compile(r'^(left|lh|l)[-_ ](.+)$', re.I), 1, 0),
    (re.compile(r'^(right|rh|r)[-_ ](.+)$', re.I), 1, 0),
    (re.compile(r'^(.+)[-_ ](left|lh|l)$', re.I), 0, 1),
    (re.compile(r'^(.+)[-_ ](right|rh|r)$', re.I), 0, 1),
)


def split_hemisphere(name: str) -> tuple[str, str]:
    """Split a label name into a base name and a hemisphere.

    Parameters
    ----------
    name : str
        Label name such as ``'left-caudate'``, ``'Right_Dentate'`` or ``'putamen_left'``.

    Returns
    -------
    base : str
        Lower-case base name with ``-`` and spaces turned into ``_``.
    hemisphere : {'left', 'right', 'bilateral'}
        ``'bilateral'`` when the name carries no side.

    Examples
    --------
    >>> split_hemisphere('left-globus-pallidus-externa')
    ('globus_pallidus_externa', 'left')
    >>> split_hemisphere('Right_Dentate'), split_hemisphere('fornix')
    (('dentate', 'right'), ('fornix', 'bilateral'))
    """
    for pattern, ibase, iside in _SIDE_PATTERNS:
        match = pattern.match(name.strip())
        if match:
            groups = match.groups()
            side = groups[iside].lower()
            hemi = 'left' if side in ('left', 'lh', 'l') else 'right'
            return _norm(groups[ibase]), hemi
    return _norm(name), 'bilateral'


def _norm(name: str) -> str:
    return re.sub(r'[-\s]+', '_', name.strip()).lower()


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
        ``n_voxels``, ``volume_mm3`` and ``mean``, ``median``, ``std``, ``p05``, ``p95``
        (ppm; NaN when the region is empty).

    Examples
    --------
    >>> s = roi_stats(np.arange(101, dtype=float) / 100, 2.0)
    >>> s['n_voxels'], s['volume_mm3'], round(s['mean'], 6), round(s['p95'], 6)
    (101, 202.0, 0.5, 0.95)
    """
    v = np.asarray(values_ppm, dtype=np.float64).ravel()
    out = {'n_voxels': int(v.size), 'volume_mm3': float(v.size * voxel_volume_mm3)}
    if v.size == 0:
        return {**out, **{k: float('nan') for k in ('mean', 'median', 'std', 'p05', 'p95')}}
    p05, p50, p95 = np.percentile(v, [5, 50, 95])
    return {**out, 'mean': float(v.mean()), 'median': float(p50),
            'std': float(v.std(ddof=1)) if v.size > 1 else 0.0,
            'p05': float(p05), 'p95': float(p95)}


def region_table(chi_ppm: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 voxel_size, regions: list[dict], *, erode: bool = False,
                 reference_mask: np.ndarray | None = None) -> list[dict]:
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
        Erode every region by one voxel (6-connectivity) against partial volume.
    reference_mask : (nx, ny, nz) ndarray of bool, optional
        Region χ was referenced to; gives the ``reference`` row (omitted when None).

    Returns
    -------
    list of dict
        Rows with the keys of :data:`COLUMNS`.

    Examples
    --------
    >>> lab = np.zeros((6, 6, 6), int); lab[1:5, 1:5, 1:3] = 1; lab[1:5, 1:5, 3:5] = 2
    >>> chi = np.where(lab == 1, 0.1, 0.0); m = lab > 0
    >>> rows = region_table(chi, lab, m, (1, 1, 1), regions_from_lut({1: 'a_left', 2: 'a_right'}))
    >>> [(r['region'], r['hemisphere'], r['n_voxels'], round(r['mean'], 3)) for r in rows]
    [('a', 'left', 32, 0.1), ('a', 'right', 32, 0.0), ('a', 'bilateral', 64, 0.05), \
('whole_brain', 'bilateral', 64, 0.05)]
    """
    chi = np.asarray(chi_ppm)
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if not chi.shape == labels.shape == mask.shape or chi.ndim != 3:
        raise ValueError(f'chi {chi.shape}, labels {labels.shape} and mask {mask.shape} must '
                         'be 3D arrays of one shape')
    vol = float(np.prod(np.asarray(voxel_size, dtype=float)))
    rows = []
    for reg in regions:
        roi = np.isin(labels, reg['labels']) & mask
        if erode:
            roi = _erode_each(labels, reg['labels']) & mask
        rows.append({'region': reg['region'], 'hemisphere': reg['hemisphere'],
                     **roi_stats(chi[roi], vol)})
    rows.append({'region': WHOLE_BRAIN, 'hemisphere': 'bilateral', **roi_stats(chi[mask], vol)})
    if reference_mask is not None:
        ref = np.asarray(reference_mask, dtype=bool) & mask
        rows.append({'region': REFERENCE, 'hemisphere': 'bilateral', **roi_stats(chi[ref], vol)})
    return rows


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
