# SPDX-License-Identifier: Apache-2.0
"""A head phantom on real anatomy: the MNI152NLin2009cAsym template with CIT168 nuclei.

The ellipsoid phantoms (:mod:`~qsmflow.phantom.head`, :mod:`~qsmflow.phantom.realistic`)
have nuclei that registration finds easily. This one is built from public MNI-space data:

* **Tissue** from the MNI152NLin2009cAsym T1w (2 mm, with skull and scalp), resampled to
  a 1 mm grid cropped to the head. The brain mask is derived by intensity and morphology
  (:func:`template_brain_mask`: white-matter core, grown by 6 mm into tissue, largest
  component, closed, holes filled; 1.91 L at 2 mm). Inside it, CSF / cortical GM / WM
  come from a 3-class k-means of the T1w intensity; χ, M0 and R2* are interpolated
  piecewise-linearly between the class means, so partial volume is smooth.
* **Nuclei**: the CIT168 atlas (Pauli et al. 2018; 32 labels, 1 mm, same space) and a
  **dentate nucleus that is an approximation** (no SUIT file is vendored): per side a
  3 mm thick ellipsoidal shell, outer semi-axes :data:`DENTATE_SEMI_AXES_MM`, centred at
  (±14, −56, −35) mm (literature MNI position), long axis turned 30° (anterior end
  medial), open anteromedially (the hilum). It is labelled 33 (left) / 34 (right).
* **Veins** (χ 0.40 ppm): internal cerebral veins, vein of Galen, straight sinus and
  superior sagittal sinus as tubes along MNI polylines (:data:`VEINS_MM`).
* **Outside the brain**: a CSF rim (3 mm), bone (dark T1w: χ −2 ppm, dark in GRE), soft
  tissue (bright T1w: scalp fat and muscle, bright in GRE, χ 0), air cavities (large dark
  regions below the brain: frontal and sphenoid sinuses, mastoid; χ +9.4 ppm relative to
  tissue) and air around the head.

χ per structure follows the typical 3 T values of the project's notes (ppm relative to
CSF, :data:`STRUCTURE_CHI_PPM`) with a smooth ±8 % variation within each structure. A
subject is the template anatomy moved by a known, seeded smooth deformation
(:func:`random_deformation`: rigid pose + isotropic scale + a low-frequency displacement of
a few mm) and sampled on its native grid (1 or 2 mm; partial volume by Gaussian
prefiltering). The forward simulation is :func:`qsmflow.phantom.forward.simulate_megre`.
:func:`qsmflow.phantom.anatomy_bids.write_anatomy_dataset` writes a BIDS MEGRE dataset,
ground truth and the atlas triple for ``--atlas/--atlas-labels/--atlas-template[-mask]``.

The package does not ship the template or the atlas: every function takes their paths.
"""

from __future__ import annotations

import csv
import functools
import math
import warnings
from dataclasses import dataclass, field

import nibabel as nb
import numpy as np
from scipy import ndimage

from .deformation import Deformation, random_deformation, rotation_matrix
from .forward import simulate_megre
from .tissues import CHI_AIR_PPM

__all__ = [
    'DENTATE_CENTRES_MM',
    'STRUCTURE_CHI_PPM',
    'AnatomyPhantom',
    'Deformation',
    'TemplateAnatomy',
    'random_deformation',
    'simulate_anatomy_megre',
    'subject_phantom',
    'template_anatomy',
    'template_brain_mask',
]

#: Label indices of the approximate dentate nuclei (after CIT168's 1..32).
DENTATE_LABELS = {33: 'L Dentate', 34: 'R Dentate'}

#: Centres of the dentate shells (mm, MNI152NLin2009cAsym; left, right).
DENTATE_CENTRES_MM = ((-14.0, -56.0, -35.0), (14.0, -56.0, -35.0))

#: Outer semi-axes (mm: lateral, anteroposterior, vertical) and wall thickness of a dentate.
DENTATE_SEMI_AXES_MM = (6.5, 9.5, 6.5)
DENTATE_WALL_MM = 2.5

#: χ (ppm, relative to CSF) per CIT168 structure (the TSV's ``structure`` column, lower
#: case), the dentate, veins and the brain tissue classes; typical 3 T values.
STRUCTURE_CHI_PPM = {
    'putamen': 0.06, 'caudate': 0.06, 'nucleus accumbens': 0.04, 'extended amygdala': 0.01,
    'globus pallidus externa': 0.17, 'globus pallidus interna': 0.17,
    'substantia nigra pars compacta': 0.15, 'substantia-nigra-pars-reticulata': 0.15,
    'red nucleus': 0.12, 'subthalamic nucleus': 0.13, 'parabrachial pigmented': 0.08,
    'ventral tegmental area': 0.06, 'ventral pallidum': 0.10, 'habenular nucleus': 0.03,
    'hypothalamus': 0.0, 'mammillary nucleus': 0.02, 'dentate': 0.12,
    'vein': 0.40, 'csf': 0.0, 'gm': 0.015, 'wm': -0.03, 'bone': -2.0, 'soft': 0.0,
}

#: R2* (1/s) per structure; nuclei not listed get :data:`_R2STAR_NUCLEUS_DEFAULT_HZ`.
STRUCTURE_R2STAR_HZ = {
    'putamen': 30.0, 'caudate': 22.0, 'globus pallidus externa': 42.0,
    'globus pallidus interna': 42.0, 'substantia nigra pars compacta': 40.0,
    'substantia-nigra-pars-reticulata': 40.0, 'red nucleus': 35.0,
    'subthalamic nucleus': 35.0, 'dentate': 35.0, 'vein': 45.0,
    'csf': 4.0, 'gm': 16.0, 'wm': 21.0, 'bone': 300.0, 'soft': 30.0,
}
_R2STAR_NUCLEUS_DEFAULT_HZ = 22.0

#: Relative proton density per tissue class (GRE at a small flip angle: CSF brightest,
#: scalp fat and muscle about as bright as GM, bone dark, air 0).
CLASS_M0 = {'csf': 1.0, 'gm': 0.85, 'wm': 0.70, 'nucleus': 0.80, 'vein': 0.75,
            'bone': 0.10, 'soft': 0.85}

#: Head models outside the brain (:func:`template_anatomy`'s ``head_model``): ``template``
#: takes the MNI template's head as it is (scalp and muscle as bright as GM: ``soft`` of
#: ``CLASS_M0`` and ``STRUCTURE_R2STAR_HZ``); ``thick-skull`` is a second kind of head, as
#: the held-out builds of the issue "Deep nuclei on real anatomy" describe one: a skull
#: thicker by ``skull_extra_mm`` (the soft tissue that far outside the bone becomes bone,
#: as long as ``SCALP_MIN_MM`` of it stays) and a scalp and muscle that do not outshine the
#: brain (M0 0.55, muscle-like R2* 45/s: darker than GM at every echo).
HEAD_MODELS = {
    'template': {'skull_extra_mm': 0.0, 'soft_m0': CLASS_M0['soft'],
                 'soft_r2star_hz': STRUCTURE_R2STAR_HZ['soft']},
    'thick-skull': {'skull_extra_mm': 3.0, 'soft_m0': 0.55, 'soft_r2star_hz': 45.0},
}

#: Least scalp (mm) a thicker skull leaves (:data:`HEAD_MODELS`).
SCALP_MIN_MM = 4.0

#: Tissue classes of the ``desc-tissue`` segmentation.
TISSUE_LABELS = {0: 'air', 1: 'csf', 2: 'gm', 3: 'wm', 4: 'nucleus', 5: 'vein', 6: 'soft',
                 7: 'bone', 8: 'air_cavity'}

#: Veins: (polyline of MNI points in mm, radius in mm).
VEINS_MM = (
    (((-3.0, -8.0, 14.0), (-2.5, -25.0, 12.0), (-1.5, -40.0, 7.0)), 1.3),  # internal cerebral
    (((3.0, -8.0, 14.0), (2.5, -25.0, 12.0), (1.5, -40.0, 7.0)), 1.3),
    (((0.0, -40.0, 7.0), (0.0, -48.0, 4.0)), 2.5),  # vein of Galen
    (((0.0, -48.0, 4.0), (0.0, -70.0, 2.0), (0.0, -92.0, -4.0)), 2.5),  # straight sinus
)

#: Superior sagittal sinus: radius (mm) and the MNI y range (mm) it follows, just above the
#: brain mask's midline edge (placed from the mask, see :func:`_sagittal_sinus`).
SAGITTAL_SINUS_RADIUS_MM = 3.0
SAGITTAL_SINUS_Y_MM = (-95.0, 45.0)

#: Relative amplitude of the smooth χ variation within each structure.
WITHIN_STRUCTURE_VARIATION = 0.08

_CSF_RIM_MM = 3.0
_HEAD_MARGIN_MM = 6.0


def _ball(radius_vox: int) -> np.ndarray:
    g = np.mgrid[(slice(-radius_vox, radius_vox + 1),) * 3]
    return (g**2).sum(0) <= radius_vox**2 + 0.5


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


def template_brain_mask(t1w, voxel_size_mm: float = 2.0, *, wm_quantile: float = 0.75,
                        grow_mm: float = 6.0) -> np.ndarray:
    """Brain mask of a T1w head template (skull and scalp on), by intensity and morphology.

    Thresholds are relative to the white-matter intensity ``w`` (the ``wm_quantile`` of
    the head voxels brighter than half the 99th percentile): white-matter core
    ``> 0.8 w`` eroded by one voxel and reduced to its largest component, grown by
    ``grow_mm`` within tissue ``> 0.4 w``, largest component, closed with a 4-voxel ball,
    holes (ventricles) filled. On MNI152NLin2009cAsym res-02 it gives 1.91 L; the edge
    follows the pial surface and the brainstem runs down to the template's lower edge.

    Parameters
    ----------
    t1w : (X, Y, Z) array_like
        T1w intensities (arbitrary units).
    voxel_size_mm : float
        Isotropic voxel size (mm).
    wm_quantile, grow_mm : float
        See above.

    Returns
    -------
    (X, Y, Z) ndarray of bool
    """
    t1 = np.asarray(t1w, dtype=np.float32)
    bright = t1[t1 > 0.5 * np.percentile(t1, 99)]
    w = float(np.quantile(bright, wm_quantile))
    core = _largest(ndimage.binary_erosion(t1 > 0.8 * w, _ball(1)))
    grow = max(1, round(grow_mm / voxel_size_mm))
    brain = _largest(ndimage.binary_dilation(core, _ball(grow)) & (t1 > 0.4 * w))
    pad = 4
    brain = ndimage.binary_closing(np.pad(brain, pad), _ball(pad))[pad:-pad, pad:-pad, pad:-pad]
    return ndimage.binary_fill_holes(brain)


def _kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 30) -> np.ndarray:
    centres = np.percentile(values, np.linspace(10, 90, k))
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None]).argmin(1)
        centres = np.array([values[assign == j].mean() for j in range(k)])
    return np.sort(centres)


def _read_labels_tsv(path) -> dict[int, tuple[str, str]]:
    """``{index: (name, structure)}`` from a CIT168-style TSV (index, name[, structure])."""
    with open(path, newline='') as table:
        rows = list(csv.DictReader(table, delimiter='\t'))
    out = {}
    for row in rows:
        name = row['name']
        structure = row.get('structure') or name.split(' ', 1)[-1]
        out[int(row['index'])] = (name, structure.strip().lower())
    return out


def _tube_mask(points_mm, polyline, radius_mm) -> np.ndarray:
    """Voxels (points ``(..., 3)`` in mm) within ``radius_mm`` of a polyline."""
    inside = np.zeros(points_mm.shape[:-1], dtype=bool)
    for a, b in zip(polyline, polyline[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        ab = b - a
        t = np.clip(((points_mm - a) @ ab) / (ab @ ab), 0.0, 1.0)
        dist2 = ((points_mm - a - t[..., None] * ab) ** 2).sum(-1)
        inside |= dist2 <= radius_mm**2
    return inside


def _in_box(shape, affine, lo_mm, hi_mm, func) -> np.ndarray:
    """Evaluate ``func(points_mm)`` (bool) only in the voxel box spanning ``lo_mm..hi_mm``."""
    inv = np.linalg.inv(affine)
    corners = [inv[:3, :3] @ np.asarray(c, float) + inv[:3, 3] for c in (lo_mm, hi_mm)]
    start = np.clip(np.floor(np.minimum(*corners)).astype(int), 0, shape)
    stop = np.clip(np.ceil(np.maximum(*corners)).astype(int) + 1, 0, shape)
    out = np.zeros(shape, bool)
    if np.any(stop <= start):
        return out
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    ijk = np.moveaxis(np.mgrid[box].astype(np.float64), 0, -1)
    out[box] = func(ijk @ affine[:3, :3].T + affine[:3, 3])
    return out


def _sagittal_sinus(brain, affine) -> tuple:
    """Polyline (mm) 1 mm + radius above the brain mask's top along the midline."""
    inv = np.linalg.inv(affine)
    i0 = int(round(inv[0, 3]))  # x = 0
    column = brain[max(i0 - 2, 0):i0 + 3].any(0)
    points = []
    for y in np.arange(SAGITTAL_SINUS_Y_MM[0], SAGITTAL_SINUS_Y_MM[1] + 1, 10.0):
        j = int(round(inv[1, 1] * y + inv[1, 3]))
        ks = np.flatnonzero(column[j]) if 0 <= j < column.shape[0] else []
        if len(ks):
            z = ks.max() * affine[2, 2] + affine[2, 3] + 1.0 + SAGITTAL_SINUS_RADIUS_MM
            points.append((0.0, float(y), float(z)))
    return tuple(points)


def _dentate_mask(points_mm, centre, side: int) -> np.ndarray:
    """One approximate dentate nucleus: a hilum-opened ellipsoidal shell (``side`` ±1)."""
    d = points_mm - np.asarray(centre, float)
    yaw = math.radians(30.0) * side  # anterior end turned medially
    c, s = math.cos(yaw), math.sin(yaw)
    x = c * d[..., 0] + s * d[..., 1]
    y = -s * d[..., 0] + c * d[..., 1]
    z = d[..., 2]
    a = np.asarray(DENTATE_SEMI_AXES_MM, float)
    outer = (x / a[0]) ** 2 + (y / a[1]) ** 2 + (z / a[2]) ** 2 <= 1.0
    b = a - DENTATE_WALL_MM
    inner = (x / b[0]) ** 2 + (y / b[1]) ** 2 + (z / b[2]) ** 2 <= 1.0
    hilum = (-side * x > 1.0) & (y > 0.0)  # medial and anterior
    return outer & ~inner & ~hilum


@dataclass
class TemplateAnatomy:
    """The phantom's anatomy in template (MNI) space, on a 1 mm grid cropped to the head.

    Attributes
    ----------
    affine : (4, 4) ndarray
        Voxel → MNI mm.
    t1w : ndarray of float32
        Template T1w resampled (arbitrary units).
    labels : ndarray of int16
        Nuclei: CIT168 1..32, dentate 33/34 (:attr:`label_names`).
    tissue : ndarray of uint8
        Tissue class (:data:`TISSUE_LABELS`).
    brain_mask : ndarray of bool
    chi_ppm, m0, r2star_hz : ndarray of float32
        Head χ (ppm relative to CSF; air +9.4), relative proton density, R2* (1/s).
    label_names : dict
        Index → name (CIT168 names, 'L Dentate', 'R Dentate').
    label_structures : dict
        Index → structure (lower case) for :data:`STRUCTURE_CHI_PPM`.
    template_mask_2mm : tuple
        ``(mask, affine)`` of the brain mask on the template's own grid.
    variation : ndarray of float32
        Smooth field in [−1, 1] that modulates χ within structures.
    """

    affine: np.ndarray
    t1w: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    brain_mask: np.ndarray
    chi_ppm: np.ndarray
    m0: np.ndarray
    r2star_hz: np.ndarray
    label_names: dict
    label_structures: dict
    template_mask_2mm: tuple
    variation: np.ndarray = field(repr=False, default=None)

    @property
    def voxel_size_mm(self) -> float:
        """Voxel size (mm)."""
        return float(abs(self.affine[0, 0]))

    @property
    def centre_mm(self) -> np.ndarray:
        """MNI coordinates (mm) of the grid centre."""
        return self.affine[:3, :3] @ ((np.asarray(self.t1w.shape) - 1) / 2) + self.affine[:3, 3]


def _resample(data, src_affine, dst_affine, dst_shape, order=1, cval=0.0):
    """Sample ``data`` (grid ``src_affine``) on an axis-aligned grid, through world mm."""
    m = np.linalg.inv(src_affine) @ dst_affine
    lin = m[:3, :3]
    if np.allclose(lin, np.diag(np.diag(lin))):
        lin = np.diag(lin)  # axis-aligned: scipy's fast zoom/shift path
    with warnings.catch_warnings():  # the 1-D matrix means a diagonal, as intended
        warnings.simplefilter('ignore', UserWarning)
        return ndimage.affine_transform(np.asarray(data, np.float32), lin, m[:3, 3],
                                        output_shape=tuple(dst_shape), order=order,
                                        cval=cval, mode='constant')


@functools.lru_cache(maxsize=2)
def template_anatomy(template_t1w, cit168_dseg, cit168_tsv,
                     head_model: str = 'template') -> TemplateAnatomy:
    """Build (once per process, cached) the template-space anatomy at 1 mm.

    Parameters
    ----------
    template_t1w : str
        MNI152NLin2009cAsym T1w (e.g. ``tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz``).
    cit168_dseg : str
        CIT168 labels in the same space (uint8, 1..32, any grid).
    cit168_tsv : str
        Its label table (``index``, ``name``, ``structure`` columns).
    head_model : str
        The tissues outside the brain, one of :data:`HEAD_MODELS` (the brain is the same).

    Returns
    -------
    TemplateAnatomy
    """
    if head_model not in HEAD_MODELS:
        raise ValueError(f'head_model {head_model!r}: one of {sorted(HEAD_MODELS)}')
    model = HEAD_MODELS[head_model]
    img = nb.load(str(template_t1w))
    t1_2 = np.asarray(img.get_fdata(), np.float32)
    vox2 = float(abs(img.affine[0, 0]))
    mask2 = template_brain_mask(t1_2, vox2)
    head2 = _largest(ndimage.binary_fill_holes(ndimage.gaussian_filter(t1_2, 1.0)
                                               > 0.13 * np.percentile(t1_2, 99)))
    gm2 = float(np.median(t1_2[mask2]))
    # Air cavities: large dark regions (opened with a ~8 mm ball) below the AC plane, away
    # from the brain and ≥ 6 mm inside the head (frontal/sphenoid sinuses, mastoid).
    dark2 = head2 & ~ndimage.binary_dilation(mask2, _ball(1)) & (t1_2 < 0.35 * gm2)
    deep2 = ndimage.distance_transform_edt(head2) * vox2 >= 6.0
    low2 = (np.indices(t1_2.shape)[2] * img.affine[2, 2] + img.affine[2, 3]) < 0
    cavity2 = ndimage.binary_opening(dark2, _ball(max(1, round(4.0 / vox2)))) & deep2 & low2
    rim2 = (ndimage.distance_transform_edt(~mask2) * vox2 <= _CSF_RIM_MM) & ~mask2
    # 1 mm grid over the head's bounding box plus a margin (world axes = template axes).
    idx = np.argwhere(head2)
    lo = img.affine[:3, :3] @ idx.min(0) + img.affine[:3, 3] - _HEAD_MARGIN_MM
    hi = img.affine[:3, :3] @ idx.max(0) + img.affine[:3, 3] + _HEAD_MARGIN_MM
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    shape = tuple(int(2 * math.ceil((h - l) / 2)) for l, h in zip(lo, hi))
    affine = np.eye(4)
    affine[:3, 3] = np.floor(lo)
    t1 = _resample(t1_2, img.affine, affine, shape, order=1)
    brain = _resample(mask2, img.affine, affine, shape) > 0.5
    head = _resample(head2, img.affine, affine, shape) > 0.5
    cavity = (_resample(cavity2, img.affine, affine, shape) > 0.5) & ~brain
    near = _resample(rim2, img.affine, affine, shape) > 0.5

    # Tissue classes inside the brain: 3-class k-means of the T1w intensity.
    csf_m, gm_m, wm_m = _kmeans_1d(t1[brain][::7].astype(np.float64))
    means = [csf_m, gm_m, wm_m]
    tissue = np.zeros(shape, np.uint8)
    bounds = [(csf_m + gm_m) / 2, (gm_m + wm_m) / 2]
    tissue[brain] = (np.digitize(t1[brain], bounds) + 1).astype(np.uint8)
    chi = np.interp(t1, means, [STRUCTURE_CHI_PPM[c] for c in ('csf', 'gm', 'wm')])
    m0 = np.interp(t1, means, [CLASS_M0[c] for c in ('csf', 'gm', 'wm')])
    r2 = np.interp(t1, means, [STRUCTURE_R2STAR_HZ[c] for c in ('csf', 'gm', 'wm')])

    # Outside the brain: CSF rim, bone, soft tissue, air cavities, air.
    nonbrain = head & ~brain
    rim = nonbrain & near & (t1 < gm_m) & ~cavity
    soft_w = np.clip((t1 - 0.3 * gm_m) / (0.5 * gm_m), 0.0, 1.0)  # 0 dark .. 1 bright
    outside = nonbrain & ~rim
    if model['skull_extra_mm'] > 0:
        # the soft tissue next to the skull becomes bone where at least SCALP_MIN_MM of it
        # stays above (1 mm grid: voxels are mm); the skull: dark voxels nearer the brain
        # than the outside (not the template head's dark outer layer)
        depth = ndimage.distance_transform_edt(head)
        skull = outside & (soft_w < 0.5) & (ndimage.distance_transform_edt(~brain) < depth)
        near_bone = ndimage.distance_transform_edt(~skull) <= model['skull_extra_mm']
        soft_w[outside & near_bone & (depth > SCALP_MIN_MM) & ~cavity] = 0.0
    for cls_name, sel in (('bone', outside & (soft_w < 0.5)),
                          ('soft', outside & (soft_w >= 0.5))):
        tissue[sel] = 7 if cls_name == 'bone' else 6
    chi[outside] = (STRUCTURE_CHI_PPM['bone'] * (1 - soft_w))[outside]
    m0[outside] = (CLASS_M0['bone'] + (model['soft_m0'] - CLASS_M0['bone']) * soft_w)[outside]
    r2[outside] = np.exp(np.log(STRUCTURE_R2STAR_HZ['bone']) * (1 - soft_w)
                         + np.log(model['soft_r2star_hz']) * soft_w)[outside]
    tissue[rim] = 1
    chi[rim], m0[rim], r2[rim] = 0.0, CLASS_M0['csf'], STRUCTURE_R2STAR_HZ['csf']
    tissue[cavity] = 8
    air = ~head | cavity
    chi[air], m0[air], r2[air] = CHI_AIR_PPM, 0.0, 0.0
    tissue[~head] = 0

    # Smooth within-structure variation (fixed pattern, in [-1, 1]).
    rng = np.random.default_rng(168)
    var = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 6.0)
    var /= np.abs(var).max()

    # Nuclei: CIT168 and the dentate approximation, then veins.
    cit = nb.load(str(cit168_dseg))
    lut = _read_labels_tsv(cit168_tsv)
    labels = np.rint(_resample(np.asarray(cit.dataobj), cit.affine, affine, shape,
                               order=0)).astype(np.int16)
    labels[~np.isin(labels, list(lut))] = 0
    for (index, name), centre, side in zip(DENTATE_LABELS.items(), DENTATE_CENTRES_MM,
                                           (-1, 1)):
        reach = max(DENTATE_SEMI_AXES_MM)
        shell = _in_box(shape, affine, np.subtract(centre, reach), np.add(centre, reach),
                        functools.partial(_dentate_mask, centre=centre, side=side))
        labels[shell & brain & (labels == 0)] = index
        lut[index] = (name, 'dentate')
    labels[~brain] = 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or index not in lut:
            continue
        structure = lut[index][1]
        sel = np.zeros(shape, bool)
        sel[box] = labels[box] == index
        value = STRUCTURE_CHI_PPM.get(structure, STRUCTURE_CHI_PPM['gm'])
        chi[sel] = value * (1.0 + WITHIN_STRUCTURE_VARIATION * var[sel])
        m0[sel] = CLASS_M0['nucleus']
        r2[sel] = STRUCTURE_R2STAR_HZ.get(structure, _R2STAR_NUCLEUS_DEFAULT_HZ)
        tissue[sel] = 4
    veins = np.zeros(shape, bool)
    sss = ((_sagittal_sinus(brain, affine), SAGITTAL_SINUS_RADIUS_MM),)
    for polyline, radius in VEINS_MM + sss:
        pts = np.asarray(polyline, float)
        veins |= _in_box(shape, affine, pts.min(0) - radius, pts.max(0) + radius,
                         functools.partial(_tube_mask, polyline=polyline, radius_mm=radius))
    veins &= head & ~cavity & (labels == 0)
    chi[veins] = STRUCTURE_CHI_PPM['vein']
    m0[veins], r2[veins], tissue[veins] = CLASS_M0['vein'], STRUCTURE_R2STAR_HZ['vein'], 5
    return TemplateAnatomy(
        affine=affine, t1w=t1, labels=labels, tissue=tissue, brain_mask=brain,
        chi_ppm=chi.astype(np.float32), m0=m0.astype(np.float32),
        r2star_hz=r2.astype(np.float32),
        label_names={i: n for i, (n, _) in sorted(lut.items())},
        label_structures={i: s for i, (_, s) in sorted(lut.items())},
        template_mask_2mm=(mask2, img.affine.copy()), variation=var)


@dataclass
class AnatomyPhantom:
    """One subject on its native grid; duck-types :class:`~qsmflow.phantom.head.HeadPhantom`.

    ``labels`` are the nuclei (CIT168 + dentate), ``tissue`` the tissue classes; χ in ppm
    relative to CSF (air +9.4), ``brain_chi_ppm`` 0 outside ``brain_mask``; ``affine`` the
    native voxel → scanner mm map (slab tilt included); ``template_coords_mm`` the MNI
    position of every voxel centre (the known deformation).
    """

    labels: np.ndarray
    tissue: np.ndarray
    chi_ppm: np.ndarray
    brain_chi_ppm: np.ndarray
    m0: np.ndarray
    r2star_hz: np.ndarray
    brain_mask: np.ndarray
    voxel_size_mm: tuple
    label_names: dict
    affine: np.ndarray
    deformation: Deformation
    template_coords_mm: np.ndarray = field(repr=False, default=None)

    @property
    def shape(self) -> tuple:
        """Grid shape (voxels)."""
        return self.labels.shape


def _tilted_affine(shape, vox: float, tilt_deg: float) -> np.ndarray:
    rot = rotation_matrix((tilt_deg, 0.0, 0.0))
    affine = np.eye(4)
    affine[:3, :3] = rot * vox
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, float) - 1) / 2)
    return affine


def subject_phantom(anatomy: TemplateAnatomy, deformation: Deformation, *,
                    voxel_size_mm: float = 1.0, tilt_deg: float = 0.0,
                    chi_jitter: float = 0.0, rng=None) -> AnatomyPhantom:
    """Sample the template anatomy, moved by ``deformation``, on a subject's native grid.

    The native grid spans the template crop (same extent) at ``voxel_size_mm``; for
    voxels larger than 1 mm the continuous maps are Gaussian-prefiltered (σ = 0.42 ×
    the voxel size, a box average's width) before linear sampling; labels are nearest.
    ``chi_jitter`` scales each nucleus's χ by ``1 + chi_jitter · N(0, 1)`` (clipped at
    ±2 σ) drawn from ``rng``, a per-subject head model.

    Returns
    -------
    AnatomyPhantom
    """
    vox = float(voxel_size_mm)
    extent = np.asarray(anatomy.t1w.shape) * anatomy.voxel_size_mm
    shape = tuple(int(2 * round(e / vox / 2)) for e in extent)
    centre_idx = (np.asarray(shape, np.float32) - 1) / 2
    p = (np.moveaxis(np.indices(shape, dtype=np.float32), 0, -1) - centre_idx) * np.float32(vox)
    m = deformation.to_template_mm(p, anatomy.centre_mm)
    inv = np.linalg.inv(anatomy.affine)
    coords = np.moveaxis(m @ inv[:3, :3].T.astype(np.float32)
                         + inv[:3, 3].astype(np.float32), -1, 0)
    rng = np.random.default_rng(rng)

    chi = anatomy.chi_ppm.copy()
    if chi_jitter:
        for index in anatomy.label_names:
            sel = anatomy.labels == index
            chi[sel] *= np.float32(1.0 + chi_jitter * np.clip(rng.standard_normal(), -2, 2))
    brain = anatomy.brain_mask
    sigma = 0.42 * vox / anatomy.voxel_size_mm if vox > anatomy.voxel_size_mm else 0.0

    def sample(data, cval=0.0, order=1):
        data = np.asarray(data, np.float32)
        if order and sigma:
            data = ndimage.gaussian_filter(data, sigma, mode='nearest')
        return ndimage.map_coordinates(data, coords, order=order, cval=cval,
                                       mode='constant').astype(np.float32)

    brain_part = sample(np.where(brain, chi, 0.0))
    other_part = sample(np.where(brain, 0.0, chi), cval=CHI_AIR_PPM)
    mask = sample(brain, order=0) > 0.5
    labels = sample(anatomy.labels, order=0).astype(np.int16)
    tissue = sample(anatomy.tissue, order=0).astype(np.uint8)
    return AnatomyPhantom(
        labels=labels, tissue=tissue, chi_ppm=brain_part + other_part,
        brain_chi_ppm=np.where(mask, brain_part, 0.0).astype(np.float32),
        m0=sample(anatomy.m0), r2star_hz=sample(anatomy.r2star_hz), brain_mask=mask,
        voxel_size_mm=(vox,) * 3, label_names=dict(anatomy.label_names),
        affine=_tilted_affine(shape, vox, tilt_deg), deformation=deformation,
        template_coords_mm=m)


def simulate_anatomy_megre(phantom: AnatomyPhantom, echo_times_s, b0_tesla: float = 3.0,
                           *, snr: float = 100.0, rng=None):
    """Multi-echo GRE of an :class:`AnatomyPhantom` (:func:`~.forward.simulate_megre`).

    B0 is the scanner z axis; its direction in voxel axes follows from ``phantom.affine``
    (the slab tilt). Returns ``(magnitude, phase_rad, truth)`` as ``simulate_megre``.
    """
    from ..qsm.kernels import b0_dir_from_affine

    return simulate_megre(phantom, echo_times_s, b0_tesla, b0_dir_from_affine(phantom.affine),
                          snr=snr, rng=rng)
