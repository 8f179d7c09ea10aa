# SPDX-License-Identifier: Apache-2.0
"""Continuous solid shapes (in mm) and their rasterisation onto a voxel grid.

Shapes answer ``inside(x, y, z)`` for *open* (broadcastable) coordinate grids in mm, and
know a conservative bounding box, so that painting a small nucleus only touches the voxels
around it. Coordinates follow the phantom's RAS convention: x left → right, y posterior →
anterior, z inferior → superior, origin at the centre of the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_INF = math.inf


@dataclass(frozen=True)
class Superellipsoid:
    """Solid ``Σ |u_i / s_i|^p ≤ 1`` in a frame rotated by ``yaw_deg`` about z.

    Parameters
    ----------
    centre_mm : tuple of 3 float
        Centre (mm).
    semi_mm : tuple of 3 float
        Semi-axes along the rotated x, y and z axes (mm).
    power : float
        Exponent ``p`` (2 gives an ellipsoid; larger values are boxier).
    yaw_deg : float
        Rotation about the z axis (degrees, counter-clockwise seen from above).
    """

    centre_mm: tuple
    semi_mm: tuple
    power: float = 2.0
    yaw_deg: float = 0.0

    def bbox(self):
        """Lower and upper corner (mm) of a box holding the solid."""
        a, b, c = self.semi_mm
        if self.yaw_deg:
            half = (math.hypot(a, b), math.hypot(a, b), c)
        else:
            half = (a, b, c)
        lo = tuple(m - h for m, h in zip(self.centre_mm, half))
        hi = tuple(m + h for m, h in zip(self.centre_mm, half))
        return lo, hi

    def level(self, x, y, z):
        """``Σ |u_i / s_i|^p`` at the given (broadcastable) coordinates (mm)."""
        dx, dy, dz = x - self.centre_mm[0], y - self.centre_mm[1], z - self.centre_mm[2]
        if self.yaw_deg:
            t = math.radians(self.yaw_deg)
            dx, dy = math.cos(t) * dx + math.sin(t) * dy, -math.sin(t) * dx + math.cos(t) * dy
        p = self.power
        a, b, c = self.semi_mm
        return np.abs(dx / a) ** p + np.abs(dy / b) ** p + np.abs(dz / c) ** p

    def inside(self, x, y, z):
        """Boolean occupancy at the given (broadcastable) coordinates (mm)."""
        return self.level(x, y, z) <= 1.0

    def grown(self, margin_mm: float) -> Superellipsoid:
        """The same solid with every semi-axis changed by ``margin_mm`` (mm)."""
        semi = tuple(s + margin_mm for s in self.semi_mm)
        if min(semi) <= 0:
            raise ValueError('shrinking margin larger than a semi-axis')
        return Superellipsoid(self.centre_mm, semi, self.power, self.yaw_deg)


@dataclass(frozen=True)
class Capsule:
    """Points within ``radius_mm`` of the segment ``start_mm`` → ``end_mm`` (mm)."""

    start_mm: tuple
    end_mm: tuple
    radius_mm: float

    def bbox(self):
        """Lower and upper corner (mm) of a box holding the solid."""
        lo = tuple(min(a, b) - self.radius_mm for a, b in zip(self.start_mm, self.end_mm))
        hi = tuple(max(a, b) + self.radius_mm for a, b in zip(self.start_mm, self.end_mm))
        return lo, hi

    def inside(self, x, y, z):
        """Boolean occupancy at the given (broadcastable) coordinates (mm)."""
        p0 = np.asarray(self.start_mm, dtype=np.float64)
        d = np.asarray(self.end_mm, dtype=np.float64) - p0
        rel = (x - p0[0], y - p0[1], z - p0[2])
        t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / float(d @ d), 0.0, 1.0)
        dist2 = sum((r - t * di) ** 2 for r, di in zip(rel, d))
        return dist2 <= self.radius_mm**2


@dataclass(frozen=True)
class Box:
    """Axis-aligned box between ``lo_mm`` and ``hi_mm`` (mm; ±inf for unbounded sides)."""

    lo_mm: tuple = (-_INF, -_INF, -_INF)
    hi_mm: tuple = (_INF, _INF, _INF)

    def bbox(self):
        """Lower and upper corner (mm)."""
        return self.lo_mm, self.hi_mm

    def inside(self, x, y, z):
        """Boolean occupancy at the given (broadcastable) coordinates (mm)."""
        out = True
        for c, lo, hi in zip((x, y, z), self.lo_mm, self.hi_mm):
            out = out & (c >= lo) & (c <= hi)
        return out


@dataclass(frozen=True)
class Intersection:
    """Points inside every one of ``shapes``."""

    shapes: tuple

    def bbox(self):
        """Intersection of the members' boxes (mm)."""
        boxes = [s.bbox() for s in self.shapes]
        lo = tuple(max(b[0][i] for b in boxes) for i in range(3))
        hi = tuple(min(b[1][i] for b in boxes) for i in range(3))
        return lo, hi

    def inside(self, x, y, z):
        """Boolean occupancy at the given (broadcastable) coordinates (mm)."""
        out = True
        for shape in self.shapes:
            out = out & shape.inside(x, y, z)
        return out


@dataclass(frozen=True)
class Difference:
    """Points inside ``shape`` but not inside ``cut``."""

    shape: object
    cut: object

    def bbox(self):
        """Box of the kept shape (mm)."""
        return self.shape.bbox()

    def inside(self, x, y, z):
        """Boolean occupancy at the given (broadcastable) coordinates (mm)."""
        return self.shape.inside(x, y, z) & ~self.cut.inside(x, y, z)


def grid_axes_mm(shape, voxel_size_mm) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates (mm) along each axis of a grid centred on the origin.

    Examples
    --------
    >>> [a.tolist() for a in grid_axes_mm((3, 2, 1), (1.0, 2.0, 3.0))]
    [[-1.0, 0.0, 1.0], [-1.0, 1.0], [0.0]]
    """
    return tuple(
        (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * float(d)
        for n, d in zip(shape, voxel_size_mm)
    )


def rasterise(items, shape, voxel_size_mm, dtype=np.int8) -> np.ndarray:
    """Paint labelled solids, in order (later wins), at the voxel centres of a grid.

    Parameters
    ----------
    items : iterable of (int, shape, shape or None)
        ``(label, solid, within)``: voxels inside ``solid`` (and inside ``within`` when
        given) receive ``label``.
    shape : tuple of 3 int
        Grid shape (voxels); the grid is centred on the origin.
    voxel_size_mm : tuple of 3 float
        Voxel spacing (mm).
    dtype : numpy dtype
        Integer type of the label image.

    Returns
    -------
    ndarray of ``dtype``, shape ``shape``
        Label image, 0 where nothing was painted.

    Examples
    --------
    >>> lab = rasterise([(1, Superellipsoid((0, 0, 0), (2, 2, 2)), None)], (5, 5, 5), (1, 1, 1))
    >>> int(lab.sum()), int(lab[2, 2, 2]), int(lab[0, 0, 0])
    (33, 1, 0)
    """
    axes = grid_axes_mm(shape, voxel_size_mm)
    labels = np.zeros(shape, dtype=dtype)
    for label, solid, within in items:
        lo, hi = solid.bbox() if within is None else Intersection((solid, within)).bbox()
        sl = tuple(
            slice(int(np.searchsorted(ax, a, side='left')),
                  int(np.searchsorted(ax, b, side='right')))
            for ax, a, b in zip(axes, lo, hi)
        )
        if any(s.stop <= s.start for s in sl):
            continue
        x = axes[0][sl[0], None, None]
        y = axes[1][None, sl[1], None]
        z = axes[2][None, None, sl[2]]
        occupied = solid.inside(x, y, z)
        if within is not None:
            occupied = occupied & within.inside(x, y, z)
        occupied = np.broadcast_to(occupied, labels[sl].shape)
        labels[sl][occupied] = label
    return labels
