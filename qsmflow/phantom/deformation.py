# SPDX-License-Identifier: Apache-2.0
"""Known smooth deformations of a phantom head: rigid pose, scale and a low-frequency warp.

Used by :mod:`qsmflow.phantom.anatomy` to give every simulated subject its own anatomy
(seed → deformation), so that registration to the template has real work to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ['Deformation', 'random_deformation', 'rotation_matrix']

def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation matrix of successive turns about x, y, z (degrees)."""
    out = np.eye(3)
    for axis, angle in enumerate(angles_deg):
        t = math.radians(float(angle))
        c, s = math.cos(t), math.sin(t)
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


@dataclass(frozen=True)
class Deformation:
    """A smooth map from a subject's head coordinates to template (MNI) coordinates.

    ``m = centre + R · (scale · p) + translation + u(p)``, with ``p`` the position (mm)
    relative to the native grid centre, ``R`` the rotation of :attr:`rotation_deg`
    (about x, y, z) and ``u(p) = Σ_k a_k sin(2π w_k · p + φ_k)`` the low-frequency
    displacement (mm).

    Attributes
    ----------
    rotation_deg, translation_mm : tuple of 3 float
    scale : float
    wavevectors_per_mm : (K, 3) ndarray
    phases_rad : (K,) ndarray
    amplitudes_mm : (K, 3) ndarray
    seed : int or None
    """

    rotation_deg: tuple = (0.0, 0.0, 0.0)
    translation_mm: tuple = (0.0, 0.0, 0.0)
    scale: float = 1.0
    wavevectors_per_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    phases_rad: np.ndarray = field(default_factory=lambda: np.zeros(0))
    amplitudes_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    seed: int | None = None

    def displacement_mm(self, points_mm) -> np.ndarray:
        """Non-linear displacement ``u(p)`` (mm) at points ``(..., 3)`` (mm)."""
        p = np.asarray(points_mm, dtype=np.float32)
        out = np.zeros(p.shape, np.float32)
        for w, phi, a in zip(self.wavevectors_per_mm, self.phases_rad, self.amplitudes_mm):
            arg = 2 * np.pi * (p @ w.astype(np.float32)) + np.float32(phi)
            out += np.sin(arg)[..., None] * a.astype(np.float32)
        return out

    def to_template_mm(self, points_mm, centre_mm) -> np.ndarray:
        """Template coordinates (mm) of head points ``(..., 3)`` (mm from the grid centre)."""
        p = np.asarray(points_mm, dtype=np.float32)
        lin = (rotation_matrix(self.rotation_deg) * self.scale).astype(np.float32)
        off = (np.asarray(centre_mm) + np.asarray(self.translation_mm)).astype(np.float32)
        return p @ lin.T + off + self.displacement_mm(p)

    def as_dict(self) -> dict:
        """JSON-ready description."""
        return {'rotation_deg': list(map(float, self.rotation_deg)),
                'translation_mm': list(map(float, self.translation_mm)),
                'scale': float(self.scale), 'seed': self.seed,
                'wavevectors_per_mm': np.asarray(self.wavevectors_per_mm).tolist(),
                'phases_rad': np.asarray(self.phases_rad).tolist(),
                'amplitudes_mm': np.asarray(self.amplitudes_mm).tolist(),
                'model': 'm = centre + R(rotation_deg, x then y then z) (scale p) + '
                         'translation + sum_k amplitudes_k sin(2 pi wavevectors_k . p + '
                         'phases_k); p in mm from the native grid centre'}


def random_deformation(seed, *, rotation_deg: float = 6.0, translation_mm: float = 5.0,
                       scale_range: float = 0.04, displacement_mm: float = 3.0,
                       n_modes: int = 8, wavelength_mm=(70.0, 160.0)) -> Deformation:
    """A seeded random subject deformation.

    Rotations (per axis) and translations are uniform in ±``rotation_deg`` /
    ``±translation_mm``, the scale uniform in 1 ± ``scale_range``; the displacement is a
    sum of ``n_modes`` plane sine waves (wavelengths uniform in ``wavelength_mm``, random
    directions) scaled so that its largest magnitude over a brain-sized lattice
    (±70 × ±90 × ±70 mm, 5 mm steps) is ``displacement_mm``.

    Examples
    --------
    >>> d = random_deformation(3)
    >>> p = np.zeros((1, 3))
    >>> bool(np.linalg.norm(d.displacement_mm(p)) <= 3.0 + 1e-4)
    True
    """
    rng = np.random.default_rng(seed)
    rot = tuple(rng.uniform(-rotation_deg, rotation_deg, 3))
    tra = tuple(rng.uniform(-translation_mm, translation_mm, 3))
    scale = float(1.0 + rng.uniform(-scale_range, scale_range))
    dirs = rng.standard_normal((n_modes, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs / rng.uniform(*wavelength_mm, n_modes)[:, None]
    phases = rng.uniform(0, 2 * np.pi, n_modes)
    amps = rng.standard_normal((n_modes, 3))
    deform = Deformation(rot, tra, scale, waves, phases, amps, seed)
    lattice = np.moveaxis(np.mgrid[-70:71:5, -90:91:5, -70:71:5], 0, -1).reshape(-1, 3)
    peak = float(np.linalg.norm(deform.displacement_mm(lattice), axis=-1).max())
    amps = amps * (displacement_mm / peak if peak > 0 else 0.0)
    return Deformation(rot, tra, scale, waves, phases, amps, seed)
