# SPDX-License-Identifier: Apache-2.0
"""Field units: Hz ↔ ppm of B0, the one place where the conversion is done."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm.kernels import GAMMA_HZ_PER_T


def hz_to_ppm(field_hz, b0_tesla: float):
    """Convert a field offset from Hz to ppm of the main field.

    ``field_ppm = field_hz / (γ/2π · B0) · 1e6`` with γ/2π =
    :data:`~qsmflow.qsm.kernels.GAMMA_HZ_PER_T`.

    Parameters
    ----------
    field_hz : float or ndarray, any shape
        Field offset (Hz).
    b0_tesla : float
        Main field strength (T), > 0.

    Returns
    -------
    float or ndarray, same shape (and float dtype) as ``field_hz``
        Field offset (ppm).

    Examples
    --------
    >>> round(hz_to_ppm(127.73, 3.0), 4)
    1.0
    """
    return field_hz * _ppm_per_hz(b0_tesla)


def ppm_to_hz(field_ppm, b0_tesla: float):
    """Convert a field offset from ppm of the main field to Hz (inverse of :func:`hz_to_ppm`).

    Parameters
    ----------
    field_ppm : float or ndarray, any shape
        Field offset (ppm).
    b0_tesla : float
        Main field strength (T), > 0.

    Returns
    -------
    float or ndarray, same shape (and float dtype) as ``field_ppm``
        Field offset (Hz).

    Examples
    --------
    >>> round(ppm_to_hz(1.0, 7.0), 2)
    298.04
    """
    return field_ppm / _ppm_per_hz(b0_tesla)


def _ppm_per_hz(b0_tesla) -> float:
    b0 = float(b0_tesla)
    if not np.isfinite(b0) or b0 <= 0:
        raise ValueError(f'b0_tesla must be a positive field strength (T), got {b0_tesla!r}')
    return 1e6 / (GAMMA_HZ_PER_T * b0)
