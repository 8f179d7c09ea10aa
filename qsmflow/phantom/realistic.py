# SPDX-License-Identifier: Apache-2.0
"""A harder head phantom: realistic extracranial tissue, air cavities, veins and noise.

The default phantom (:func:`~qsmflow.phantom.head.make_head`) surrounds the brain with a
bright scalp and a dark skull that a magnitude threshold separates cleanly. Real GRE
heads do not: fat and muscle are as bright as brain, the skull is two thin dark tables
around bright marrow, and the brainstem runs on through the foramen magnum into a
spinal canal surrounded by neck muscle. This variant keeps the default brain (labels,
deep grey-matter nuclei, χ truth) and replaces everything around it:

* scalp: skin (1.5 mm), subcutaneous fat (6.5 mm, brighter than brain at the first echo,
  R2* 45 1/s, χ +0.6 ppm, fat fraction 0.9 with the −3.4 ppm fat chemical shift in the
  simulated signal), temporalis muscle at the temples;
* skull: outer table (1.5 mm), diploic marrow (2 mm, bright, fat fraction 0.6), inner
  table (1.5 mm); cortical bone is dark (R2* 2000 1/s, T2* 0.5 ms, χ −2 ppm);
* below the brain: a neck (skin, fat, muscle), a vertebral body (bone, marrow), the
  spinal canal (CSF) and cord, continuous with the brainstem through a foramen magnum;
* eyes (vitreous) in orbital fat, the paranasal sinuses of the default phantom, ear
  canals and mastoid air cells (air, χ +9.4 ppm relative to tissue, in bone);
* extra veins of several sizes (transverse sinuses r 3 mm, internal cerebral veins
  r 1.2 mm, cortical veins r 0.8–1.3 mm, χ 0.40 ppm) and a pineal calcification
  (r 2.5 mm, χ −0.5 ppm) besides the default calcification and haemorrhage.

The grid (field of view, sizes) is the default phantom's; the head is 3 mm larger on
every side (:data:`REALISTIC_HEAD`), with ≥ 7 mm of air to the grid faces. Air is label
``background`` outside the head and ``sinus_air`` inside it (sinuses, ear canals,
mastoid cells).
Below the field of view the neck is cut: the grid's bottom face is a tissue/air boundary
in the field computation (far from the brain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import Box, Capsule, Difference, Superellipsoid
from .head import (
    _SCALP_MM,
    _SKULL_MM,
    HEAD,
    HeadPhantom,
    _partial_volume_map,
    _resolve_grid,
    _sampled_labels,
    anatomy,
)
from .tissues import (
    BRAIN_LABELS,
    LABEL_INDEX,
    LABELS,
    tissue_chi_ppm,
    tissue_m0,
    tissue_r2star_hz,
)

__all__ = [
    'DEFAULT_REALISTIC_SNR',
    'FAT_SHIFT_PPM',
    'REALISTIC_HEAD',
    'REALISTIC_LABELS',
    'RealisticHead',
    'realistic_anatomy',
    'realistic_head',
    'realistic_tissues',
    'simulate_realistic_megre',
]

#: Default SNR (mean brain magnitude at the first echo over the noise σ) of this variant.
DEFAULT_REALISTIC_SNR = 35.0

#: Chemical shift of the main fat peak relative to water (ppm).
FAT_SHIFT_PPM = -3.4

_EXTRA = ('fat', 'muscle', 'marrow', 'spinal_csf', 'spinal_cord', 'eye')

#: Ordered ``(index, name)`` pairs: the default :data:`~qsmflow.phantom.tissues.LABELS`
#: followed by the extracranial tissues of this variant. ``scalp`` is the skin and
#: ``skull`` the cortical bone here.
REALISTIC_LABELS = LABELS + tuple((len(LABELS) + i, name) for i, name in enumerate(_EXTRA))

_INDEX = {name: index for index, name in REALISTIC_LABELS}

# (χ ppm relative to CSF, R2* 1/s at 3 T, M0 relative to CSF, fat fraction) of the
# extracranial labels; brain labels keep the default phantom's values.
_EXTRACRANIAL = {
    'scalp': (0.0, 40.0, 0.75, 0.0),  # skin
    'skull': (-2.0, 2000.0, 0.15, 0.0),  # cortical bone, T2* 0.5 ms
    'fat': (0.6, 45.0, 1.4, 0.9),  # short T1: bright in a T1-weighted GRE
    'muscle': (0.0, 35.0, 0.72, 0.0),
    'marrow': (0.3, 90.0, 1.2, 0.6),
    'spinal_csf': (0.0, 4.0, 1.0, 0.0),
    'spinal_cord': (-0.02, 21.0, 0.70, 0.0),
    'eye': (0.0, 5.0, 1.0, 0.0),
}

#: Outer surface of this variant's head: the default head grown by 3 mm, so that the
#: scalp (skin and fat, over the default skull) is 8 mm thick, thick enough to survive the
#: morphological opening of a magnitude-threshold mask as a real scalp does.
REALISTIC_HEAD = HEAD.grown(3.0)

_NECK = Superellipsoid((0.0, -14.0, -100.0), (46.0, 50.0, 62.0), power=2.4)
_SKIN_MM, _TABLE_MM, _MARROW_MM = 1.5, 1.5, 2.0


def realistic_tissues(age_years: float = 40.0) -> dict[str, tuple]:
    """χ (ppm), R2* (1/s), M0 and fat fraction of every label of this variant.

    Parameters
    ----------
    age_years : float
        Age (years) for the deep-GM iron and white-matter laws of the brain labels.

    Returns
    -------
    dict
        Label name -> ``(chi_ppm, r2star_hz, m0, fat_fraction)``.

    Examples
    --------
    >>> t = realistic_tissues()
    >>> t['fat'][2] * math.exp(-0.004 * t['fat'][1]) > t['cortex'][2] > t['skull'][2]
    True
    """
    chi, r2, m0 = tissue_chi_ppm(age_years), tissue_r2star_hz(age_years), tissue_m0()
    out = {name: (chi[name], r2[name], m0[name], 0.0) for _, name in LABELS}
    out.update(_EXTRACRANIAL)
    return out


def _outside(solid):
    """Points outside ``solid``."""
    return Difference(Box(), solid)


def _on_surface(solid, direction):
    """Point (mm) where the ray from the solid's centre along ``direction`` leaves it."""
    d = np.asarray(direction, float)
    level = solid.level(*(np.asarray(solid.centre_mm) + d))
    return tuple(np.asarray(solid.centre_mm) + d / float(level) ** (1.0 / solid.power))


def _surface_vein(solid, start_deg, end_deg, radius_mm, steps=6):
    """Capsules along a curve on ``solid``'s surface, (azimuth, elevation) in degrees."""
    points = []
    for t in np.linspace(0.0, 1.0, steps + 1):
        az, el = (math.radians(a + t * (b - a)) for a, b in zip(start_deg, end_deg))
        points.append(_on_surface(solid, (math.cos(el) * math.cos(az),
                                          math.cos(el) * math.sin(az), math.sin(el))))
    return [Capsule(p, q, radius_mm) for p, q in zip(points, points[1:])]


def realistic_anatomy():
    """Ordered ``(label, solid, within)`` list of this variant (later wins).

    Returns
    -------
    list of tuple
        Label index, solid (mm) and an optional solid restricting it.
    """
    idx = _INDEX
    skull_outer = HEAD.grown(-_SCALP_MM)
    intracranial = skull_outer.grown(-_SKULL_MM)
    under_skin = REALISTIC_HEAD.grown(-_SKIN_MM)
    items = [
        (idx['scalp'], REALISTIC_HEAD, None),
        (idx['scalp'], _NECK, None),
        (idx['fat'], under_skin, None),
        (idx['fat'], _NECK.grown(-_SKIN_MM), None),
        (idx['muscle'], _NECK.grown(-6.0), None),
    ]
    temple = Difference(under_skin.grown(-2.0), skull_outer)
    items += [(idx['muscle'], Superellipsoid((s * 58.0, 14.0, 2.0), (10.0, 30.0, 26.0)), temple)
              for s in (-1.0, 1.0)]
    items += [
        (idx['skull'], skull_outer, None),
        (idx['marrow'], skull_outer.grown(-_TABLE_MM), None),
        (idx['skull'], skull_outer.grown(-_TABLE_MM - _MARROW_MM), None),
    ]
    # The default brain, sinuses and skull base; its soft tissue under the skull base
    # (labelled scalp there) becomes muscle.
    default = anatomy()
    assert default[0][1] is HEAD and default[1][1] == skull_outer  # replaced above
    items += [(idx['muscle'] if label == idx['scalp'] else label, solid, within)
              for label, solid, within in default[2:]]
    below = _outside(intracranial)
    in_head = Difference(below, _outside(REALISTIC_HEAD))
    in_bone = Difference(below, _outside(under_skin))
    # Orbits and eyes, ear canals and mastoid air cells in bone.
    for s in (-1.0, 1.0):
        items += [
            (idx['fat'], Superellipsoid((s * 31.0, 46.0, -40.0), (13.0, 15.0, 11.0)), under_skin),
            (idx['eye'], Superellipsoid((s * 31.0, 50.0, -40.0), (10.0, 10.0, 10.0)), under_skin),
            (idx['skull'], Capsule((s * 60.0, -12.0, -38.0), (s * 44.0, -12.0, -38.0), 7.0),
             in_bone),
            (idx['sinus_air'], Capsule((s * 64.0, -12.0, -38.0), (s * 44.0, -12.0, -38.0), 3.5),
             in_head),
            (idx['skull'], Superellipsoid((s * 38.0, -26.0, -44.0), (8.0, 8.5, 7.5)), in_bone),
            (idx['sinus_air'], Superellipsoid((s * 38.0, -26.0, -44.0), (5.0, 6.0, 5.0)), in_bone),
        ]
    # Craniocervical junction: vertebral body, spinal canal (CSF) and cord, continuous
    # with the brainstem through the foramen magnum.
    items += [
        (idx['skull'], Capsule((0.0, -6.0, -62.0), (0.0, -6.0, -130.0), 9.5), below),
        (idx['marrow'], Capsule((0.0, -6.0, -62.0), (0.0, -6.0, -130.0), 8.0), below),
        (idx['spinal_csf'], Capsule((0.0, -28.0, -42.0), (0.0, -32.0, -130.0), 8.0), below),
        (idx['spinal_cord'], Capsule((0.0, -27.0, -42.0), (0.0, -31.0, -130.0), 4.5), below),
        (idx['white_matter'], Capsule((0.0, -27.0, -36.0), (0.0, -27.5, -60.0), 5.0),
         intracranial),
    ]
    # Veins of several sizes and a pineal calcification.
    vein = idx['vein']
    for s in (-1.0, 1.0):
        items += [
            (vein, Capsule((0.0, -62.0, -10.0), (s * 30.0, -56.0, -20.0), 3.0), intracranial),
            (vein, Capsule((s * 30.0, -56.0, -20.0), (s * 42.0, -38.0, -30.0), 2.5),
             intracranial),
            (vein, Capsule((s * 1.5, 4.0, 9.0), (s * 1.5, -24.0, 9.0), 1.2), None),
        ]
    rim = intracranial.grown(-1.5)
    for s in (-1.0, 1.0):
        for (az0, el0), (az1, el1), r in (((20, 5), (60, 75), 1.3), ((-30, 0), (-70, 70), 1.0),
                                          ((0, 20), (10, 80), 0.8)):
            items += [(vein, c, intracranial)
                      for c in _surface_vein(rim, (90 - s * (90 - az0), el0),
                                             (90 - s * (90 - az1), el1), r)]
    items += [(idx['calcification'], Superellipsoid((0.0, -22.0, 4.0), (2.5, 2.5, 2.5)), None)]
    return items


@dataclass
class RealisticHead(HeadPhantom):
    """A sampled realistic head (see :class:`~qsmflow.phantom.head.HeadPhantom`).

    Attributes
    ----------
    head_mask : ndarray of bool
        Voxels inside the head and neck (every label but ``background``; internal air
        cavities included), for the distance to the head surface.
    fat_fraction : ndarray of float32
        Fat signal fraction (dimensionless, 0–1), partial-volume averaged.
    """

    head_mask: np.ndarray | None = None
    fat_fraction: np.ndarray | None = None

    def roi(self, name: str) -> np.ndarray:
        """Boolean mask of a label, or of both sides for a base name such as ``'putamen'``."""
        names = [name] if name in _INDEX else [f'{name}_left', f'{name}_right']
        if any(n not in _INDEX for n in names):
            raise KeyError(f'unknown label {name!r}')
        return np.isin(self.labels, [_INDEX[n] for n in names])


def realistic_head(voxel_size_mm=None, shape=None, age_years: float = 40.0, *,
                   size: str = 'full', oversample: int | None = None) -> RealisticHead:
    """Sample the realistic head phantom on the default phantom's RAS grid.

    Parameters
    ----------
    voxel_size_mm : float or tuple of 3 float, optional
        Voxel spacing (mm). Default: the one of ``size``.
    shape : tuple of 3 int, optional
        Grid shape (voxels). Default: ``floor(FOV_MM / voxel_size_mm)``.
    age_years : float
        Age (years) setting deep-GM iron (χ, R2*) and white-matter χ.
    size : {'full', 'small', 'tiny'}
        Preset voxel size when ``voxel_size_mm`` is not given: 1, 2 or 3 mm.
    oversample : int, optional
        Odd number of sub-samples per voxel and axis for partial-volume averaging.

    Returns
    -------
    RealisticHead
        Labels (:data:`REALISTIC_LABELS`), χ (ppm), M0, R2* (1/s), fat fraction, brain
        mask (the default phantom's brain labels) and head mask.

    Examples
    --------
    >>> h = realistic_head(size='tiny')
    >>> bool(h.roi('fat').any() and h.roi('spinal_cord').any()), h.shape
    (True, (48, 58, 48))
    """
    vox, shape, factor = _resolve_grid(voxel_size_mm, shape, size, oversample)
    sampled = _sampled_labels(vox, shape, factor, realistic_anatomy, len(REALISTIC_LABELS))
    labels = sampled[0].copy()
    table = realistic_tissues(age_years)
    names = [name for _, name in REALISTIC_LABELS]
    lut = {key: np.array([table[n][i] for n in names], dtype=np.float32)
           for i, key in enumerate(('chi', 'r2', 'm0', 'fat'))}
    lut['brain_chi'] = np.array([table[n][0] if n in BRAIN_LABELS else 0.0 for n in names],
                                dtype=np.float32)
    maps = {key: _partial_volume_map(sampled, values) for key, values in lut.items()}
    brain_mask = np.isin(labels, [LABEL_INDEX[n] for n in BRAIN_LABELS])
    maps['brain_chi'][~brain_mask] = 0.0
    return RealisticHead(
        labels=labels, chi_ppm=maps['chi'], m0=maps['m0'], r2star_hz=maps['r2'],
        brain_mask=brain_mask, voxel_size_mm=vox, label_names=dict(REALISTIC_LABELS),
        age_years=float(age_years), brain_chi_ppm=maps['brain_chi'],
        head_mask=labels != _INDEX['background'], fat_fraction=maps['fat'])


def simulate_realistic_megre(head: RealisticHead, echo_times_s, b0_tesla: float = 3.0,
                             b0_dir=(0, 0, 1), *, snr: float = DEFAULT_REALISTIC_SNR,
                             rng=None, fat_shift_ppm: float = FAT_SHIFT_PPM,
                             phase_offset: bool = True):
    """Multi-echo GRE of a :class:`RealisticHead`, with fat chemical shift and noise.

    The noise-free signal of :func:`~qsmflow.phantom.forward.simulate_megre` (same field,
    background handling and phase offset) is multiplied, per voxel, by the water–fat
    factor ``(1 − F) + F·exp(2πi·Δf_fat·TE_n)`` (fat fraction ``F``, single-peak fat at
    ``fat_shift_ppm``), then complex Gaussian noise of σ = mean brain magnitude at the
    first echo / ``snr`` is added per channel (as in ``simulate_megre``; without noise the
    phase is the model's also where the magnitude is 0). The fat shift is not part of the
    χ field truth: in fat voxels the phase does not follow the field.

    Parameters
    ----------
    head : RealisticHead
        Phantom from :func:`realistic_head`.
    echo_times_s : sequence of float
        Echo times (s).
    b0_tesla : float
        Main field strength (T).
    b0_dir : sequence of 3 float
        B0 direction in voxel index axes.
    snr : float
        Mean brain magnitude at the first echo over the noise σ; ``np.inf`` for none.
    rng : None, int or numpy.random.Generator
        Seed or generator for the noise.
    fat_shift_ppm : float
        Fat chemical shift relative to water (ppm); 0 to leave fat on resonance.
    phase_offset : bool
        Add the smooth echo-independent offset φ0.

    Returns
    -------
    magnitude, phase : (X, Y, Z, E) ndarray of float32
        Magnitude (M0 scale) and phase (rad, wrapped to [−π, π)).
    truth : dict
        As :func:`~qsmflow.phantom.forward.simulate_megre`'s, plus ``fat_fraction`` and
        ``brain_mask``.

    Examples
    --------
    >>> mag, pha, truth = simulate_realistic_megre(realistic_head(size='tiny'), [0.004], rng=0)
    >>> mag.shape, round(truth['noise_sigma'] * 35 / float(mag[..., 0][truth['brain_mask']]
    ...                                                  .mean()), 1)
    ((48, 58, 48, 1), 1.0)
    """
    from .forward import _wrap_rad, simulate_megre
    from ..qsm.echoes import ppm_to_hz

    if not snr > 0:
        raise ValueError('snr must be positive (np.inf for no noise)')
    tes = np.asarray(echo_times_s, dtype=np.float64).ravel()
    mag, phase, truth = simulate_megre(head, tes, b0_tesla, b0_dir, snr=np.inf,
                                       phase_offset=phase_offset)
    rng = np.random.default_rng(rng)
    brain = head.brain_mask
    sigma = 0.0
    if np.isfinite(snr):
        sigma = float(mag[..., 0][brain].mean()) / float(snr)
    fat = head.fat_fraction.astype(np.float32)
    has_fat = fat > 0
    fat = fat[has_fat].astype(np.float64)
    shift_hz = ppm_to_hz(float(fat_shift_ppm), b0_tesla)
    shape = head.shape
    for n, te in enumerate(tes):
        m, p = mag[..., n], phase[..., n]  # views
        if fat_shift_ppm:
            water_fat = (1.0 - fat) + fat * np.exp(2j * np.pi * shift_hz * te)
            m[has_fat] *= np.abs(water_fat).astype(np.float32)
            p[has_fat] = _wrap_rad(p[has_fat] + np.angle(water_fat))
        if sigma == 0.0:
            continue
        noise = rng.standard_normal((2,) + shape, dtype=np.float32) * np.float32(sigma)
        real = m * np.cos(p) + noise[0]
        imag = m * np.sin(p) + noise[1]
        mag[..., n] = np.hypot(real, imag)
        phase[..., n] = _wrap_rad(np.arctan2(imag, real))
    truth.update(noise_sigma=sigma, fat_fraction=fat, brain_mask=brain)
    return mag, phase, truth
