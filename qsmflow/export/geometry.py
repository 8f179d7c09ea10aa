# SPDX-License-Identifier: Apache-2.0
"""NIfTI grid → DICOM slice geometry, and the integer storage of float maps.

A NIfTI affine maps voxel (i, j, k) to RAS millimetres; DICOM uses LPS. Slice k of the
exported series holds voxels (i, j, k) with pixel (row r, column c) = voxel (i=c, j=r):

* ``ImageOrientationPatient`` = the unit LPS directions of the i and j axes;
* ``ImagePositionPatient`` of slice k = the LPS centre of voxel (0, 0, k);
* ``PixelSpacing`` = (spacing along j, spacing along i), ``SliceThickness`` and
  ``SpacingBetweenSlices`` = spacing along k.

This is the layout dcm2niix reads back into the same affine (tests/test_export_dicom.py).
Pure numpy: arrays and affines in, numbers out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: RAS → LPS (and back): x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: Largest |stored integer| used for signed (int16) and unsigned (uint16) storage: a
#: margin below 32767 / 65535 keeps values of a re-export of the same map in range.
_SIGNED_MAX, _UNSIGNED_MAX = 32000, 64000


@dataclass(frozen=True)
class SliceGeometry:
    """DICOM geometry of a NIfTI grid (see the module docstring)."""

    orientation: tuple  # ImageOrientationPatient, 6 floats
    positions: tuple    # ImagePositionPatient of each slice, (x, y, z) in LPS mm
    pixel_spacing_mm: tuple  # (between rows = along j, between columns = along i)
    slice_spacing_mm: float
    rows: int
    columns: int


def slice_geometry(affine, shape, tol_deg: float = 0.01) -> SliceGeometry:
    """The DICOM slice geometry of a 3D grid with NIfTI (RAS) ``affine``.

    Parameters
    ----------
    affine : (4, 4) array
        NIfTI voxel-to-RAS affine (mm).
    shape : sequence of 3 int
        Grid shape (i, j, k).
    tol_deg : float
        How far from 90° the angles between the voxel axes may be (DICOM slices
        cannot hold a sheared grid).

    Raises
    ------
    ValueError
        When the voxel axes are not orthogonal or a spacing is zero.

    Examples
    --------
    >>> g = slice_geometry(np.diag([2.0, 3.0, 4.0, 1.0]), (5, 6, 7))
    >>> g.orientation, g.pixel_spacing_mm, g.slice_spacing_mm, g.positions[1]
    ((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0), (3.0, 2.0), 4.0, (0.0, 0.0, 4.0))
    """
    a = np.asarray(affine, dtype=float)
    axes = a[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f'zero voxel size {spacing.tolist()}')
    unit = axes / spacing
    cosines = np.abs(unit.T @ unit - np.eye(3))
    if cosines.max() > np.sin(np.deg2rad(tol_deg)):
        raise ValueError('the voxel axes are not orthogonal (a sheared grid); DICOM '
                         'slices cannot hold it')
    row_dir = RAS_TO_LPS @ unit[:, 0]
    col_dir = RAS_TO_LPS @ unit[:, 1]
    positions = tuple(tuple(float(v) for v in RAS_TO_LPS @ (axes @ [0.0, 0.0, k] + a[:3, 3]))
                      for k in range(int(shape[2])))
    return SliceGeometry(tuple(float(v) for v in (*row_dir, *col_dir)), positions,
                         (float(spacing[1]), float(spacing[0])), float(spacing[2]),
                         int(shape[1]), int(shape[0]))


def nice_step(value: float) -> float:
    """The smallest number of the 1-2-5 ladder (…, 0.1, 0.2, 0.5, 1, 2, …) ≥ ``value``.

    Examples
    --------
    >>> nice_step(0.00013), nice_step(0.02), nice_step(3.1)
    (0.0002, 0.02, 5.0)
    """
    if not value > 0:
        return 1.0
    exp = int(np.floor(np.log10(value)))
    for mant in (1, 2, 5, 10):
        step = float(f'{mant}e{exp}')
        if step >= value * (1 - 1e-12):
            return step
    return float(f'1e{exp + 1}')


def quantise(data, signed: bool) -> tuple[np.ndarray, float]:
    """Store a float map as 16-bit integers with ``value = stored × slope`` (intercept 0).

    The slope is the smallest 1-2-5 step that keeps every value in range, so viewers show
    round numbers and the rounding error is at most slope / 2. Non-finite values are
    stored as 0.

    Parameters
    ----------
    data : ndarray
        The map (any units).
    signed : bool
        int16 (maps with negative values, e.g. χ) or uint16 (non-negative maps).

    Returns
    -------
    stored : ndarray of int16 or uint16
    slope : float

    Raises
    ------
    ValueError
        When ``signed`` is False and the map has negative values.

    Examples
    --------
    >>> stored, slope = quantise(np.array([-0.31, 0.0, 0.1234]), signed=True)
    >>> slope, stored.tolist()
    (1e-05, [-31000, 0, 12340])
    """
    values = np.where(np.isfinite(data), data, 0.0).astype(np.float64)
    if not signed and values.min() < 0:
        raise ValueError(f'negative values (min {values.min():g}) in a map stored unsigned')
    top = _SIGNED_MAX if signed else _UNSIGNED_MAX
    slope = nice_step(float(np.abs(values).max()) / top) if values.any() else 1.0
    stored = np.rint(values / slope)
    return stored.astype(np.int16 if signed else np.uint16), slope
