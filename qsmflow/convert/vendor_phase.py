# SPDX-License-Identifier: Apache-2.0
"""Vendor phase conventions: scaling to radians, GE slice chopping and phase polarity.

After dcm2niix (which applies ``RescaleSlope``/``RescaleIntercept`` and, for Philips, the
private floating-point scale), the stored phase of one echo is, by vendor:

* **Siemens**: integers −4096…4094 (or 0…4095 on older software) for one cycle →
  × π/4096 (:func:`qsmflow.qsm.phase.to_radians`);
* **Philips**: radians already (dcm2niix's floating-point scaling of
  ``ScaleSlope``/``RescaleSlope``/``RescaleIntercept``), or milliradians (−3142…3142,
  the displayed values when the floating-point scale is missing or is the magnitude's,
  integers or not) → × 0.001;
* **GE**: often real and imaginary images whose sign alternates from slice to slice
  (the reconstruction's FFT shift, "chopping"), and a phase of inverted polarity
  (left-handed): the complex signal is conjugated so that paramagnetic sources give a
  positive field, as for the other vendors.

Functions take arrays and return arrays (no files).
"""
from __future__ import annotations

import numpy as np

from qsmflow.qsm.phase import infer_phase_units, phase_range, to_radians

#: Manufacturers (lower-case prefix of DICOM ``Manufacturer``) whose phase polarity is
#: inverted with respect to the right-handed convention qsmflow uses.
INVERTED_POLARITY = ('ge',)

#: Span (stored units) of Philips milliradian phase: 2π·1000.
_MRAD_SPAN = 2000 * np.pi


def vendor(manufacturer: str) -> str:
    """Short vendor name: ``'siemens'``, ``'philips'``, ``'ge'`` or ``'other'``.

    Examples
    --------
    >>> vendor('SIEMENS'), vendor('GE MEDICAL SYSTEMS'), vendor('Philips Medical Systems')
    ('siemens', 'ge', 'philips')
    """
    m = (manufacturer or '').strip().lower()
    for name in ('siemens', 'philips', 'ge'):
        if m.startswith(name):
            return name
    return 'other'


def inverted_polarity(manufacturer: str) -> bool:
    """Whether the vendor's phase polarity is inverted (left-handed)."""
    return vendor(manufacturer) in INVERTED_POLARITY


def phase_to_rad(phase: np.ndarray, manufacturer: str) -> tuple[np.ndarray, str]:
    """Stored phase of every echo of an acquisition → radians in [−π, π), right-handed.

    Parameters
    ----------
    phase : ndarray, shape (..., N)
        Phase of N echoes as dcm2niix wrote it (stored units); every echo at once, so that
        all share one scaling.
    manufacturer : str
        DICOM ``Manufacturer``.

    Returns
    -------
    phase_rad : ndarray of float32, same shape
        Phase in rad, wrapped to [−π, π), sign flipped for inverted-polarity vendors.
    note : str
        What was done, for the sidecar.

    Raises
    ------
    ValueError
        When the values are constant or their scaling cannot be told.

    Examples
    --------
    >>> p, note = phase_to_rad(np.array([-4096.0, 0.0, 2048.0]), 'SIEMENS')
    >>> np.allclose(p, [-np.pi, 0, np.pi / 2]), note.startswith('scanner integers')
    (True, True)
    >>> p, note = phase_to_rad(np.array([-3142.0, 0.0, 1571.0]), 'Philips')
    >>> bool(np.allclose(p, [np.pi, 0, 1.571], atol=1e-3)), note.startswith('milliradians')
    (True, True)
    >>> p, note = phase_to_rad(np.array([-1.0, 0.5]), 'GE')
    >>> p.tolist(), note
    ([1.0, -0.5], 'radians; polarity inverted (GE phase is left-handed)')
    """
    lo, hi, integer = phase_range(phase)
    span = hi - lo
    if vendor(manufacturer) == 'philips' and span > 10 * np.pi \
            and max(-lo, hi) <= 0.505 * _MRAD_SPAN:
        rad = to_radians(np.asarray(phase, dtype=np.float64) * 1e-3, 'rad')
        note = 'milliradians (Philips displayed values) x 0.001'
    else:
        units = infer_phase_units(lo, hi, integer, None)
        rad = to_radians(phase, units)
        note = ('radians' if units == 'rad' else
                f'scanner integers {lo:g}..{hi:g} for one cycle, rescaled to rad')
    if inverted_polarity(manufacturer):
        rad = -rad
        rad[rad >= np.pi] -= 2 * np.pi
        note += f'; polarity inverted ({vendor(manufacturer).upper()} phase is left-handed)'
    return rad.astype(np.float32), note


def chopping(real: np.ndarray, imag: np.ndarray, axis: int = 2) -> bool:
    """Whether the complex signal's sign alternates from slice to slice along ``axis``.

    The signal of neighbouring slices is nearly the same, so the sum of
    z_k · conj(z_{k+1}) over the volume has a positive real part; a sign that alternates
    between slices (GE chopping) makes it negative.

    Parameters
    ----------
    real, imag : ndarray, shape (X, Y, Z[, N])
        Real and imaginary parts (arbitrary units).

    Examples
    --------
    >>> z = np.ones((2, 2, 4)) * np.exp(0.3j)
    >>> chopped = z * np.array([1, -1, 1, -1])
    >>> chopping(z.real, z.imag), chopping(chopped.real, chopped.imag)
    (False, True)
    """
    z = np.moveaxis(np.asarray(real, np.float64) + 1j * np.asarray(imag, np.float64), axis, 0)
    corr = np.vdot(z[1:], z[:-1])  # sum of conj(z_{k+1}) * z_k
    return bool(corr.real < 0)


def fix_complex(real: np.ndarray, imag: np.ndarray, manufacturer: str,
                axis: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Undo slice chopping and inverted polarity of real/imaginary images.

    Parameters
    ----------
    real, imag : ndarray, shape (X, Y, Z, N)
        Real and imaginary parts of N echoes (arbitrary units).
    manufacturer : str
        DICOM ``Manufacturer``.
    axis : int
        Slice axis.

    Returns
    -------
    real, imag : ndarray of float32, same shape
        Corrected parts: sign of every other slice flipped back when chopped; imaginary
        part negated (complex conjugate) for inverted-polarity vendors.
    notes : list of str
        What was done.
    """
    re_, im_ = np.asarray(real, np.float32).copy(), np.asarray(imag, np.float32).copy()
    notes = []
    if chopping(re_, im_, axis):
        sign = np.where(np.arange(re_.shape[axis]) % 2, -1.0, 1.0).astype(np.float32)
        shape = [1] * re_.ndim
        shape[axis] = -1
        re_ *= sign.reshape(shape)
        im_ *= sign.reshape(shape)
        notes.append('slice chopping undone (sign of every other slice flipped)')
    if inverted_polarity(manufacturer):
        im_ = -im_
        notes.append(f'polarity inverted: complex conjugate ({vendor(manufacturer).upper()} '
                     'phase is left-handed)')
    return re_, im_, notes
