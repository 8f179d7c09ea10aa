# SPDX-License-Identifier: Apache-2.0
"""Phase scaling: bring stored phase values to radians in [−π, π).

Scanners store phase either in radians or as integers spanning one full cycle
(−4096…4095, 0…4095, …; BIDS ``Units: "arbitrary"``); some store the complex signal as
real and imaginary parts instead. The functions here turn all of these into magnitude
(arbitrary units) and phase (rad, wrapped to [−π, π)).
"""
from __future__ import annotations

import numpy as np

#: Slack (rad) allowed around [−π, 2π] before values are deemed not to be radians.
RAD_TOLERANCE = 0.01

#: Smallest span (stored units) of integer phase that is taken as scanner integers.
MIN_ARBITRARY_SPAN = 255.0

PHASE_UNITS = ('rad', 'arbitrary')


def phase_range(phase: np.ndarray) -> tuple[float, float, bool]:
    """Range of the finite values of a stored phase image.

    Parameters
    ----------
    phase : ndarray, any shape
        Stored phase values (any unit).

    Returns
    -------
    lo, hi : float
        Smallest and largest finite value (stored units).
    integer : bool
        Whether every finite value is a whole number.

    Raises
    ------
    ValueError
        If the image has no finite value.

    Examples
    --------
    >>> phase_range(np.array([-4096, 12, 4095, np.nan]))
    (-4096.0, 4095.0, True)
    """
    data = np.asarray(phase)
    lo, hi, integer = np.inf, -np.inf, True
    for part in _slabs(data):
        part = np.asarray(part, dtype=np.float64)
        finite = part[np.isfinite(part)]
        if finite.size:
            lo, hi = min(lo, finite.min()), max(hi, finite.max())
            integer = integer and bool(np.all(finite == np.round(finite)))
    if lo > hi:
        raise ValueError('phase image has no finite values')
    return float(lo), float(hi), integer


def _slabs(data: np.ndarray, n_values: int = 1 << 20):
    """Views of ``data`` of about ``n_values`` values each, planes of its first axis (the
    whole array when it has fewer than 2 dimensions): elementwise work slab by slab gives
    bitwise the result on the whole array, with float64 temporaries of one slab only."""
    if data.ndim < 2:
        yield data
        return
    step = max(1, n_values // max(1, data[0].size))
    for i in range(0, data.shape[0], step):
        yield data[i:i + step]


def infer_phase_units(lo: float, hi: float, integer: bool, units: str | None = None) -> str:
    """Decide how stored phase values are scaled, from BIDS ``Units`` and the value range.

    Parameters
    ----------
    lo, hi : float
        Range of the stored phase values of a whole acquisition (every echo).
    integer : bool
        Whether all stored values are whole numbers.
    units : {'rad', 'arbitrary', None}
        BIDS ``Units`` from the sidecar (``None`` when missing).

    Returns
    -------
    {'rad', 'arbitrary'}
        ``'rad'`` for values already in radians (within [−π, 2π] ± 0.01), ``'arbitrary'``
        for scanner integers spanning one cycle.

    Raises
    ------
    ValueError
        If ``units`` is unknown, contradicts the values (``'rad'`` but spanning −4096…4095),
        the data are constant, or ``units`` is missing and the range is ambiguous (neither
        radians nor a wide integer range); the message says which.

    Examples
    --------
    >>> infer_phase_units(-3.14, 3.14, False), infer_phase_units(0, 4095, True)
    ('rad', 'arbitrary')
    >>> infer_phase_units(-4096, 4095, True, 'arbitrary')
    'arbitrary'
    """
    if units not in (None, *PHASE_UNITS):
        raise ValueError(f'unknown phase Units {units!r} (expected "rad" or "arbitrary")')
    if not hi > lo:
        raise ValueError(f'phase is constant ({lo:g}): no phase information')
    in_rad = lo >= -np.pi - RAD_TOLERANCE and hi <= 2 * np.pi + RAD_TOLERANCE
    wide_int = integer and hi - lo >= MIN_ARBITRARY_SPAN
    if units == 'rad':
        if not in_rad:
            raise ValueError(f'Units is "rad" but the phase spans {lo:g}…{hi:g}, not radians; '
                             'set "Units": "arbitrary"')
        return 'rad'
    if units == 'arbitrary':
        # Floats already in radians are sometimes labelled "arbitrary": keep them as they are.
        return 'rad' if in_rad and not integer else 'arbitrary'
    if in_rad and not integer:
        return 'rad'
    if wide_int:
        return 'arbitrary'
    raise ValueError(f'phase Units missing and the range {lo:g}…{hi:g} is ambiguous; '
                     'set "Units" to "rad" or "arbitrary"')


def to_radians(phase: np.ndarray, units: str | None = 'rad', *,
               out: np.ndarray | None = None) -> np.ndarray:
    """Rescale stored phase to radians, wrapped to [−π, π).

    Computed in float64 one slab at a time (temporaries of a slab, not of the image).

    Parameters
    ----------
    phase : ndarray, any shape
        Stored phase values: radians (``units='rad'``) or scanner integers such as
        −4096…4095 or 0…4095 (``units='arbitrary'``). Pass every echo of an acquisition
        at once, so that all echoes share one scaling.
    units : {'rad', 'arbitrary', None}
        BIDS ``Units`` of the phase image; ``None`` (missing) is decided from the value
        range by :func:`infer_phase_units`.
    out : ndarray of float32, same shape, optional
        Where to write the result; may be ``phase`` itself (converted in place).

    Returns
    -------
    ndarray of float32, same shape
        Phase in rad, wrapped to [−π, π) (``out`` when given); non-finite input stays
        non-finite.

    Raises
    ------
    ValueError
        From :func:`infer_phase_units` (unknown, contradicted or ambiguous units, constant
        data) or when there is no finite value.

    Examples
    --------
    >>> p = to_radians(np.array([-4096, 0, 2048, 4095]), 'arbitrary')
    >>> bool(np.allclose(p, [-np.pi, 0, np.pi / 2, np.pi * 4095 / 4096], atol=1e-6))
    True
    >>> q = to_radians(np.array([0, 1024, 2048, 4095]), None)
    >>> bool(np.allclose(q, [-np.pi, -np.pi / 2, 0, np.pi * 2047 / 2048], atol=1e-6))
    True
    >>> d = to_radians(np.array([-180.0, -90.5, 0.0, 180.0]), 'arbitrary')  # degrees
    >>> bool(np.allclose(d, np.radians([-180.0, -90.5, 0.0, -180.0]), atol=1e-6))
    True
    """
    data = np.asarray(phase)
    lo, hi, integer = phase_range(data)
    units = infer_phase_units(lo, hi, integer, units)
    # Scanner integers span one full cycle: -2^n..2^n-1 or 0..2^(n+1)-1; other
    # (float) values are taken to span one cycle from their minimum to their maximum.
    span = 2.0 ** np.ceil(np.log2(hi - lo + 1)) if integer else hi - lo
    out = np.empty(data.shape, np.float32) if out is None else out
    for part, dest in zip(_slabs(data), _slabs(out)):
        scaled = np.asarray(part, dtype=np.float64)
        if units != 'rad':
            scaled = (scaled / span * 2 * np.pi - np.pi if lo >= 0
                      else scaled / (span / 2) * np.pi)
        dest[...] = np.mod(scaled + np.pi, 2 * np.pi) - np.pi
    return out


def complex_to_mag_phase(real: np.ndarray, imag: np.ndarray, *, out=None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase of a complex signal stored as real and imaginary parts.

    Computed in float64 one slab at a time (temporaries of a slab, not of the image).

    Parameters
    ----------
    real, imag : ndarray, same shape
        Real and imaginary parts (arbitrary units, one scale for both).
    out : pair of float32 ndarrays of that shape, optional
        Where to write magnitude and phase; may be ``(real, imag)`` themselves (in place).

    Returns
    -------
    magnitude : ndarray of float32, same shape
        |real + i·imag| (arbitrary units).
    phase : ndarray of float32, same shape
        arg(real + i·imag) in rad, wrapped to [−π, π).

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> m, p = complex_to_mag_phase(np.array([0.0, -2.0]), np.array([3.0, 0.0]))
    >>> m.tolist(), bool(np.allclose(p, [np.pi / 2, -np.pi]))
    ([3.0, 2.0], True)
    """
    real, imag = np.asarray(real), np.asarray(imag)
    if real.shape != imag.shape:
        raise ValueError(f'real {real.shape} and imaginary {imag.shape} parts differ in shape')
    mag, phase = out or (np.empty(real.shape, np.float32), np.empty(real.shape, np.float32))
    for re, im, m, p in zip(_slabs(real), _slabs(imag), _slabs(mag), _slabs(phase)):
        re, im = np.asarray(re, dtype=np.float64), np.asarray(im, dtype=np.float64)
        m[...] = np.hypot(re, im)
        angle = np.arctan2(im, re)
        p[...] = np.where(angle >= np.pi, angle - 2 * np.pi, angle)  # arctan2 can return +π
    return mag, phase


def zero_nonfinite(magnitude: np.ndarray, phase: np.ndarray, *, copy: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Zero the voxels where any echo of magnitude or phase is NaN or ±Inf.

    A zero magnitude keeps these voxels out of the brain mask and gives them no weight in
    the echo fit.

    Parameters
    ----------
    magnitude, phase : ndarray, shape (X, Y, Z, N)
        Magnitude (arbitrary units) and phase (rad) of N echoes.
    copy : bool, optional
        False: zero float32 inputs in place (no copies). Default True.

    Returns
    -------
    magnitude, phase : ndarray of float32, shape (X, Y, Z, N)
        Copies (or, with ``copy=False`` and float32 inputs, the inputs) with the bad
        voxels set to 0 in every echo.
    n_bad : int
        Number of spatial voxels zeroed.

    Examples
    --------
    >>> m, p, n = zero_nonfinite(np.ones((2, 1, 1, 2)), np.array([[[[0.0, np.nan]]], [[[1, 1]]]]))
    >>> n, m[..., 0].ravel().tolist()
    (1, [0.0, 1.0])
    """
    mag = np.asarray(magnitude, dtype=np.float32)
    ph = np.asarray(phase, dtype=np.float32)
    bad = ~(np.isfinite(mag).all(-1) & np.isfinite(ph).all(-1))
    if copy:
        mag, ph = mag.copy(), ph.copy()
    mag[bad], ph[bad] = 0.0, 0.0
    return mag, ph, int(bad.sum())
