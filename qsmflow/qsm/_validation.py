# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by the public functions of :mod:`qsmflow.qsm` (private).

Each public function validates its arguments with these helpers, then calls a private core
that computes; the helpers return the arguments in the form the cores expect (float
arrays, bool masks, float64 voxel sizes in mm, a unit B0 direction).
"""

from __future__ import annotations

import numpy as np


def as_image(arr, name, ndim, shape=None) -> np.ndarray:
    """``arr`` as a float32/float64 array of ``ndim`` dimensions (and ``shape``)."""
    a = np.asarray(arr)
    if a.ndim not in np.atleast_1d(ndim):
        raise ValueError(f'{name} must be {ndim}-dimensional, got shape {a.shape}')
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f'{name} has shape {a.shape}, expected {tuple(shape)}')
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f'{name} must be real-valued, got dtype {a.dtype}')
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return a


def as_mask(mask, shape) -> np.ndarray:
    """``mask`` as a non-empty bool array of ``shape``."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f'mask has shape {m.shape}, expected {tuple(shape)}')
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise ValueError(f'mask must be boolean, got dtype {m.dtype}')
        m = m != 0
    if not m.any():
        raise ValueError('mask is empty')
    return m


def check_finite_in_mask(arr, mask, name) -> None:
    """Raise ValueError if ``arr`` (3D, or 4D over a 3D mask) is non-finite in the mask."""
    if not np.isfinite(arr).all() and not np.isfinite(arr[mask]).all():
        raise ValueError(f'{name} has non-finite values inside the mask')


def as_voxel_size(voxel_size, name='voxel_size') -> np.ndarray:
    """``voxel_size`` as three positive finite float64 (mm)."""
    v = np.asarray(voxel_size, dtype=np.float64).ravel()
    if v.size != 3 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f'{name} must be 3 positive numbers (mm), got {voxel_size!r}')
    return v


def as_b0_dir(b0_dir) -> np.ndarray:
    """``b0_dir`` as a unit 3-vector (float64, voxel index axes)."""
    b0 = np.asarray(b0_dir, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(b0) if b0.shape == (3,) else 0.0
    if b0.shape != (3,) or not np.isfinite(norm) or norm == 0:
        raise ValueError(f'b0_dir must be a non-zero 3-vector, got {b0_dir!r}')
    return b0 / norm


def as_echo_times(echo_times_s, n_echoes) -> np.ndarray:
    """Echo times as ``n_echoes`` positive, strictly increasing floats (s)."""
    t = np.asarray(echo_times_s, dtype=np.float64).ravel()
    if t.size != n_echoes:
        raise ValueError(f'{t.size} echo times for {n_echoes} echoes')
    if not np.all(np.isfinite(t)) or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError(f'echo_times_s must be positive and strictly increasing (s), got {t}')
    if t[-1] > 1.0:
        raise ValueError(f'echo times look like ms, not s: {t}')
    return t


def check_field_mask(field, mask, voxel_size, b0_dir=(0, 0, 1), *, name='field'):
    """Validate the common ``(image, mask, voxel_size, b0_dir)`` arguments.

    Parameters
    ----------
    field : (nx, ny, nz) array_like
        Real image (e.g. a field in ppm); must be finite inside ``mask``.
    mask : (nx, ny, nz) array_like
        Region of interest (non-zero = inside); must not be empty.
    voxel_size : sequence of 3 float
        Positive voxel spacing (mm).
    b0_dir : sequence of 3 float
        Non-zero B0 direction in voxel index axes.
    name : str
        Name of ``field`` used in error messages.

    Returns
    -------
    field : ndarray, float32 or float64
        The image (float dtype kept, other types converted to float32).
    mask : ndarray of bool
    voxel_size : (3,) ndarray of float64
        Voxel spacing (mm).
    b0_dir : (3,) ndarray of float64
        Unit vector.

    Raises
    ------
    ValueError
        On wrong dimensionality, mismatched shapes, non-finite values in the mask, an empty
        mask, non-positive voxel sizes or a zero/non-finite ``b0_dir``.
    """
    field = np.asarray(field)
    if not np.issubdtype(field.dtype, np.floating):
        if np.iscomplexobj(field):
            raise ValueError(f'{name} must be real-valued, got dtype {field.dtype}')
        field = field.astype(np.float32)
    mask = np.asarray(mask)
    if field.ndim != 3:
        raise ValueError(f'{name} must be a 3D array, got shape {field.shape}')
    if mask.shape != field.shape:
        raise ValueError(f'mask shape {mask.shape} does not match {name} shape {field.shape}')
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError('mask is empty')
    if not np.all(np.isfinite(field[mask])):
        raise ValueError(f'{name} has non-finite values (NaN/inf) inside the mask')
    vsz = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if vsz.shape != (3,) or not np.all(np.isfinite(vsz)) or np.any(vsz <= 0):
        raise ValueError(f'voxel_size must be 3 positive numbers, got {voxel_size!r}')
    return field, mask, vsz, as_b0_dir(b0_dir)


def positive(name, value) -> float:
    """``value`` as a float; ValueError unless it is a finite number > 0."""
    if not (np.isscalar(value) and np.isfinite(value) and value > 0):
        raise ValueError(f'{name} must be a positive number, got {value!r}')
    return float(value)


def non_negative(name, value) -> float:
    """``value`` as a float; ValueError unless it is a finite number >= 0."""
    number = float(value)
    if not (np.isfinite(number) and number >= 0):
        raise ValueError(f'{name} must be finite and >= 0, got {value!r}')
    return number


def fraction(name, value, *, closed=False) -> float:
    """``value`` as a float in (0, 1) (``closed``: in [0, 1]); ValueError otherwise."""
    ok = (0 <= value <= 1) if closed else (0 < value < 1)
    if not ok:
        interval = '[0, 1]' if closed else '(0, 1)'
        raise ValueError(f'{name} must lie in {interval}, got {value}')
    return float(value)


def count(name, value) -> int:
    """``value`` as an int; ValueError unless it is a whole number ≥ 1."""
    if int(value) != value or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


def iterations(max_iter, tol, *, tol_positive=False) -> tuple[int, float]:
    """``(max_iter, tol)`` as ``(int ≥ 1, float ≥ 0)`` (``tol_positive``: tol > 0)."""
    count('max_iter', max_iter)
    if not (np.isscalar(tol) and np.isfinite(tol) and (tol > 0 if tol_positive else tol >= 0)):
        kind = 'positive' if tol_positive else 'non-negative'
        raise ValueError(f'tol must be a {kind} number, got {tol!r}')
    return int(max_iter), float(tol)
