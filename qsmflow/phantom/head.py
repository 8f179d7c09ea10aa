# SPDX-License-Identifier: Apache-2.0
"""Numerical head phantom: anatomy in continuous mm coordinates, sampled on a voxel grid.

The anatomy is a layered superellipsoid head (scalp 5 mm, skull 5 mm, CSF rim 3 mm,
cortical ribbon 3 mm, white matter) holding lateral and third ventricles, an
interhemispheric fissure, the bilateral deep grey-matter nuclei at roughly their MNI
positions relative to the anterior commissure (AC), a cerebellum with dentate nuclei, a
brainstem, a superior sagittal and a straight sinus, a calcification, a haemorrhage and
frontal + ethmoid/sphenoid sinus air cavities that produce a strong background field.

The grid is RAS-oriented: index ``i`` runs left → right (x), ``j`` posterior → anterior (y)
and ``k`` inferior → superior (z); the field of view is :data:`FOV_MM`, centred on the
head. The head is smallish (124 × 154 × 124 mm incl. scalp, so that ≥ 10 mm of air
surrounds it); the cerebrum is scaled down with it while the deep nuclei keep realistic
sizes. Coarse grids are built from an oversampled label grid: labels are taken at the voxel
centres, χ, M0 and R2* are partial-volume averages.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .geometry import Box, Capsule, Difference, Intersection, Superellipsoid, rasterise
from .tissues import (
    BRAIN_LABELS,
    DEEP_GM,
    LABEL_INDEX,
    LABEL_NAMES,
    LABELS,
    tissue_chi_ppm,
    tissue_chi_separation,
    tissue_m0,
    tissue_r2star_hz,
)

__all__ = ['DEEP_GM', 'FOV_MM', 'LABELS', 'SIZES', 'HeadPhantom', 'make_head', 'tissue_chi_ppm']

#: Field of view of every phantom grid (mm, along x, y, z).
FOV_MM = (144.0, 176.0, 144.0)

#: Isotropic voxel size (mm) of each named size; shapes are ``floor(FOV_MM / voxel)``:
#: 'full' (144, 176, 144), 'small' (72, 88, 72), 'tiny' (48, 58, 48).
SIZES = {'full': 1.0, 'small': 2.0, 'tiny': 3.0}

#: The head: outer surface of the scalp (mm).
HEAD = Superellipsoid((0.0, 0.0, 0.0), (62.0, 77.0, 62.0), power=2.4)

#: Anterior commissure (mm); deep structures are placed relative to it.
AC_MM = (0.0, 10.0, -4.0)

_SCALP_MM, _SKULL_MM, _CSF_RIM_MM, _CORTEX_MM = 5.0, 5.0, 3.0, 3.0

#: Height of the anterior skull base (mm): below it, in front of the temporal lobes, the
#: head is bone and soft tissue (orbits, nasal cavity) around the sinuses.
_SKULL_BASE_Z_MM = -28.0


def _rel(dx, dy, dz):
    return (AC_MM[0] + dx, AC_MM[1] + dy, AC_MM[2] + dz)


def _ell(centre, semi, yaw_deg=0.0):
    return Superellipsoid(tuple(centre), tuple(semi), 2.0, yaw_deg)


def anatomy():
    """Ordered ``(label, solid, within)`` list that :func:`rasterise` paints (later wins).

    Returns
    -------
    list of tuple
        Label index, solid (mm) and an optional solid restricting it.
    """
    idx = LABEL_INDEX
    skull_outer = HEAD.grown(-_SCALP_MM)
    intracranial = skull_outer.grown(-_SKULL_MM)
    brain = intracranial.grown(-_CSF_RIM_MM)
    white = brain.grown(-_CORTEX_MM)
    items = [
        (idx['scalp'], HEAD, None),
        (idx['skull'], skull_outer, None),
        (idx['csf'], intracranial, None),
        (idx['cortex'], brain, None),
        (idx['white_matter'], white, None),
    ]
    sides = (('left', -1.0), ('right', 1.0))
    # Cerebellum: hemispheres wrapped by a CSF cleft and by cerebral cortex above.
    hemis = [_ell(_rel(s * 20, -44, -26), (19, 17, 13)) for _, s in sides]
    for margin, name in ((4.0, 'cortex'), (1.5, 'csf'), (0.0, 'cortex')):
        items += [(idx[name], h.grown(margin), brain) for h in hemis]
    items += [(idx['white_matter'], _ell(_rel(s * 14, -44, -25), (9, 10, 7)), None)
              for _, s in sides]
    items += [(idx[f'dentate_nucleus_{side}'], _ell(_rel(s * 12, -44, -26), (4, 6, 5)), None)
              for side, s in sides]
    # Brainstem (midbrain, pons) in white matter.
    items += [
        (idx['white_matter'], _ell(_rel(0, -20, -10), (13, 11, 9)), intracranial),
        (idx['white_matter'], _ell(_rel(0, -26, -30), (12, 11, 13)), intracranial),
    ]
    for side, s in sides:
        items += [
            (idx[f'thalamus_{side}'], _ell(_rel(s * 10, -17, 6), (7, 13, 9)), None),
            (idx[f'putamen_{side}'], _ell(_rel(s * 25, 3, 0), (5.5, 16, 10)), None),
            (idx[f'globus_pallidus_{side}'], _ell(_rel(s * 19, -3, -2), (4, 10, 6)), None),
            (idx[f'caudate_{side}'], _ell(_rel(s * 13, 12, 9), (5, 9, 9)), None),
            (idx[f'caudate_{side}'], _ell(_rel(s * 11, -10, 18), (3.5, 12, 4)), None),
        ]
    # Ventricles and the interhemispheric fissure carve into their neighbours.
    items += [(idx['csf'], _ell(_rel(s * 6, -4, 16), (4, 24, 6)), None) for _, s in sides]
    items += [
        (idx['csf'], _ell(_rel(0, -10, 2), (2, 12, 9)), None),
        (idx['csf'], Box((-1.5, -math.inf, AC_MM[2] + 28), (1.5, math.inf, math.inf)), brain),
    ]
    for side, s in sides:
        items += [
            (idx[f'subthalamic_nucleus_{side}'], _ell(_rel(s * 12, -13, -4), (3, 4.5, 2)), None),
            (idx[f'substantia_nigra_{side}'],
             _ell(_rel(s * 11, -15, -12), (2.5, 8, 5), yaw_deg=-s * 35.0), None),
            (idx[f'red_nucleus_{side}'], _ell(_rel(s * 5, -19, -7), (3, 3.5, 4)), None),
        ]
    # Dural venous sinuses: superior sagittal (a midline band under the skull) and straight.
    sss = Intersection((Difference(intracranial, intracranial.grown(-7.0)),
                        Box((-3.5, -math.inf, -15.0), (3.5, math.inf, math.inf))))
    items += [
        (idx['vein'], sss, None),
        (idx['vein'], Capsule((0.0, -30.0, 8.0), (0.0, -62.0, -8.0), 2.5), None),
        (idx['calcification'], _ell((28, 28, 20), (3, 3, 3)), None),
        (idx['haemorrhage'], _ell((-26, -30, 22), (4, 4, 4)), None),
    ]
    # Anterior skull base: bone floor under the frontal lobes and around the sphenoid body,
    # soft tissue below it, then the paranasal sinuses (air) in a bony wall.
    # The soft tissue is walled in bone on every side that faces the brain (as in a real
    # skull base), so that no magnitude-based mask can leak from the brain into it.
    floor_z, wall = _SKULL_BASE_Z_MM, 3.0
    boxes = (((-math.inf, 12.0, -math.inf), (math.inf, math.inf, floor_z)),
             ((-18.0, -2.0, -math.inf), (18.0, 12.0, floor_z)))
    items += [(idx['skull'], Box((lo[0] - wall, lo[1] - wall, lo[2]),
                                 (hi[0] + wall, hi[1] + wall, floor_z + wall)), intracranial)
              for lo, hi in boxes]
    items += [(idx['scalp'], Box(lo, hi), intracranial) for lo, hi in boxes]
    for cavity in (_ell((0, 67, -12), (10, 4, 7)), _ell((0, 32, -42), (10, 14, 8)),
                   _ell((0, 5, -41), (9, 8, 7))):
        items += [(idx['skull'], cavity.grown(2.5), skull_outer),
                  (idx['sinus_air'], cavity, None)]
    return items


@dataclass
class HeadPhantom:
    """A sampled head phantom (all arrays share one RAS-oriented 3D shape).

    Attributes
    ----------
    labels : ndarray of int16
        Tissue label per voxel (see :data:`LABELS`), taken at the voxel centre.
    chi_ppm : ndarray of float32
        Susceptibility (ppm, relative to CSF; air +9.4 ppm), partial-volume averaged.
    m0 : ndarray of float32
        Relative proton density (dimensionless).
    r2star_hz : ndarray of float32
        R2* (1/s).
    brain_mask : ndarray of bool
        Union of the brain labels.
    voxel_size_mm : tuple of 3 float
        Voxel spacing (mm).
    label_names : dict
        Label index -> name.
    age_years : float
        Age used for the tissue values (years).
    brain_chi_ppm : ndarray of float32
        χ of brain tissue only (ppm): inside ``brain_mask`` the brain part of each voxel
        (partial volume of air or bone counts as 0), exactly 0 outside ``brain_mask``.
    chi_para_ppm, chi_dia_ppm, r2_hz : ndarray of float32 or None
        Only with ``make_head(..., chi_separation=True)``: the paramagnetic (≥ 0) and
        diamagnetic (≤ 0) parts of χ (ppm) and the R2 (1/s) with
        ``R2* = R2 + Dr (χ⁺ − χ⁻)`` (:func:`~qsmflow.phantom.tissues.tissue_chi_separation`),
        partial-volume averaged like χ, so ``chi_para_ppm + chi_dia_ppm == chi_ppm``.
    """

    labels: np.ndarray
    chi_ppm: np.ndarray
    m0: np.ndarray
    r2star_hz: np.ndarray
    brain_mask: np.ndarray
    voxel_size_mm: tuple
    label_names: dict
    age_years: float
    brain_chi_ppm: np.ndarray | None = None
    chi_para_ppm: np.ndarray | None = None
    chi_dia_ppm: np.ndarray | None = None
    r2_hz: np.ndarray | None = None

    def __post_init__(self):
        if self.brain_chi_ppm is None:
            self.brain_chi_ppm = np.where(self.brain_mask, self.chi_ppm, 0).astype(np.float32)

    @property
    def shape(self) -> tuple:
        """Grid shape (voxels)."""
        return self.labels.shape

    def roi(self, name: str) -> np.ndarray:
        """Boolean mask of a label, or of both sides for a base name such as ``'putamen'``."""
        names = [name] if name in LABEL_INDEX else [f'{name}_left', f'{name}_right']
        if any(n not in LABEL_INDEX for n in names):
            raise KeyError(f'unknown label {name!r}')
        return np.isin(self.labels, [LABEL_INDEX[n] for n in names])


def _resolve_grid(voxel_size_mm, shape, size, oversample):
    if voxel_size_mm is None:
        if size not in SIZES:
            raise ValueError(f'size must be one of {sorted(SIZES)}, got {size!r}')
        voxel_size_mm = SIZES[size]
    vox = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size_mm, float), (3,)))
    if min(vox) <= 0:
        raise ValueError(f'voxel_size_mm must be positive, got {voxel_size_mm!r}')
    if shape is None:
        shape = tuple(int(math.floor(f / v + 1e-6)) for f, v in zip(FOV_MM, vox))
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f'shape must be 3 ints >= 8, got {shape!r}')
    if oversample is None:
        oversample = max(1, math.ceil(max(vox) - 1e-6))
        oversample += 1 - oversample % 2
    if oversample < 1 or oversample % 2 == 0:
        raise ValueError(f'oversample must be a positive odd integer, got {oversample!r}')
    return vox, shape, int(oversample)


@functools.lru_cache(maxsize=4)
def _sampled_labels(vox, shape, oversample, items=anatomy, n_labels=len(LABELS)):
    """Labels at voxel centres and, for voxels straddling a boundary, label fractions.

    ``items`` is the function returning the painted ``(label, solid, within)`` list
    (:func:`anatomy`, or another variant's) and ``n_labels`` the size of its label table.
    Returns ``(labels, mixed, fractions)``: the int16 label image, the flat indices of
    the voxels whose sub-samples disagree and their ``(n_mixed, n_labels)`` fractions.
    """
    f = oversample
    fine = rasterise(items(), tuple(n * f for n in shape), tuple(v / f for v in vox))
    c = f // 2
    labels = np.ascontiguousarray(fine[c::f, c::f, c::f], dtype=np.int16)
    if f == 1:
        mixed, fractions = np.zeros(0, dtype=np.intp), np.zeros((0, n_labels), np.float32)
    else:
        n0, n1, n2 = shape
        blocks = fine.reshape(n0, f, n1, f, n2, f).transpose(0, 2, 4, 1, 3, 5)
        blocks = blocks.reshape(n0 * n1 * n2, f**3)
        mixed = np.flatnonzero(blocks.min(axis=1) != blocks.max(axis=1))
        rows = np.repeat(np.arange(mixed.size), f**3) * n_labels
        counts = np.bincount(rows + blocks[mixed].ravel(), minlength=mixed.size * n_labels)
        fractions = (counts.reshape(mixed.size, n_labels) / f**3).astype(np.float32)
    for array in (labels, mixed, fractions):
        array.setflags(write=False)
    return labels, mixed, fractions


def _partial_volume_map(sampled, lut) -> np.ndarray:
    """Per-voxel property (float32) from a label lookup table, averaged over sub-samples."""
    labels, mixed, fractions = sampled
    out = lut[labels]
    out.ravel()[mixed] = fractions @ lut
    return out


def make_head(voxel_size_mm=None, shape=None, age_years: float = 40.0, *,
              size: str = 'full', oversample: int | None = None,
              chi_separation: bool = False, items=None,
              chi_overrides_ppm: dict | None = None) -> HeadPhantom:
    """Sample the head phantom on an RAS-oriented grid.

    Parameters
    ----------
    voxel_size_mm : float or tuple of 3 float, optional
        Voxel spacing (mm). Default: the one of ``size`` (1, 2 or 3 mm).
    shape : tuple of 3 int, optional
        Grid shape (voxels). Default: ``floor(FOV_MM / voxel_size_mm)``.
    age_years : float
        Age (years) setting deep-GM iron (χ, R2*) and white-matter χ.
    size : {'full', 'small', 'tiny'}
        Preset voxel size when ``voxel_size_mm`` is not given: 1 mm (144, 176, 144),
        2 mm (72, 88, 72) or 3 mm (48, 58, 48).
    oversample : int, optional
        Odd number of sub-samples per voxel and axis used for partial-volume averaging.
        Default: the smallest odd number giving ≤ 1 mm sub-samples.
    chi_separation : bool
        Also fill the χ-separation truth (``chi_para_ppm``, ``chi_dia_ppm``, ``r2_hz``);
        every other map is the same either way.
    items : callable, optional
        Returns the painted ``(label, solid, within)`` list (default :func:`anatomy`; the
        clinical variant :func:`qsmflow.phantom.clinical.clinical_anatomy` adds foci and
        veins).
    chi_overrides_ppm : dict, optional
        χ (ppm) of some labels (name → value) instead of the tissue table's.

    Returns
    -------
    HeadPhantom
        Labels, χ (ppm), M0, R2* (1/s) and the brain mask.

    Examples
    --------
    >>> head = make_head(size='tiny')
    >>> head.shape, bool(head.roi('red_nucleus_left').any())
    ((48, 58, 48), True)
    """
    vox, shape, factor = _resolve_grid(voxel_size_mm, shape, size, oversample)
    sampled = _sampled_labels(vox, shape, factor, items or anatomy)
    labels = sampled[0].copy()

    chi = {**tissue_chi_ppm(age_years), **(chi_overrides_ppm or {})}
    r2 = tissue_r2star_hz(age_years)
    m0 = tissue_m0()
    names = [name for _, name in LABELS]
    lut = {key: np.array([table[n] for n in names], dtype=np.float32)
           for key, table in (('chi', chi), ('r2', r2), ('m0', m0))}
    lut['brain_chi'] = np.array([chi[n] if n in BRAIN_LABELS else 0.0 for n in names],
                                dtype=np.float32)
    if chi_separation:
        split = tissue_chi_separation(age_years)
        for i, key in enumerate(('chi_para', 'chi_dia', 'r2_spin')):
            lut[key] = np.array([split[n][i] for n in names], dtype=np.float32)
    maps = {key: _partial_volume_map(sampled, table) for key, table in lut.items()}
    brain_mask = np.isin(labels, [LABEL_INDEX[n] for n in BRAIN_LABELS])
    maps['brain_chi'][~brain_mask] = 0.0
    return HeadPhantom(
        labels=labels,
        chi_ppm=maps['chi'],
        m0=maps['m0'],
        r2star_hz=maps['r2'],
        brain_mask=brain_mask,
        voxel_size_mm=vox,
        label_names=dict(LABEL_NAMES),
        age_years=float(age_years),
        brain_chi_ppm=maps['brain_chi'],
        chi_para_ppm=maps.get('chi_para'),
        chi_dia_ppm=maps.get('chi_dia'),
        r2_hz=maps.get('r2_spin'),
    )
