# SPDX-License-Identifier: Apache-2.0
"""Phase scaling: bring stored phase values to radians in [−π, π)."""
from __future__ import annotations

import numpy as np


def to_radians(phase: np.ndarray, units: str | None = 'rad') -> np.ndarray:
    """Rescale stored phase to radians, wrapped to [−π, π).

    Parameters
    ----------
    phase : ndarray, any shape
        Stored phase values: radians (``units='rad'``) or scanner integers such as
        −4096…4095 or 0…4095 (``units='arbitrary'``).
    units : {'rad', 'arbitrary', None}
        BIDS ``Units`` of the phase image. ``None`` (missing) is decided from the value
        range: values within [−π − 0.01, 2π + 0.01] are radians, anything wider is arbitrary.

    Returns
    -------
    ndarray of float32, same shape
        Phase in rad, wrapped to [−π, π).

    Raises
    ------
    ValueError
        If ``units`` is unknown or the data are constant (no phase information).

    Examples
    --------
    >>> p = to_radians(np.array([-4096, 0, 2048, 4095]), 'arbitrary')
    >>> bool(np.allclose(p, [-np.pi, 0, np.pi / 2, np.pi * 4095 / 4096], atol=1e-6))
    True
    """
    data = np.asarray(phase, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise ValueError('phase image has no finite values')
    lo, hi = float(finite.min()), float(finite.max())
    if units is None:
        units = 'rad' if (lo >= -np.pi - 0.01 and hi <= 2 * np.pi + 0.01) else 'arbitrary'
    if units == 'rad':
        scaled = data
    elif units == 'arbitrary':
        if hi <= lo:
            raise ValueError('phase image is constant: no phase information')
        # Scanner integers span one full cycle: -2^n..2^n-1 or 0..2^(n+1)-1.
        span = 2.0 ** np.ceil(np.log2(hi - lo + 1))
        scaled = data / span * 2 * np.pi - np.pi if lo >= 0 else data / (span / 2) * np.pi
    else:
        raise ValueError(f'unknown phase units {units!r} (expected "rad" or "arbitrary")')
    wrapped = np.mod(scaled + np.pi, 2 * np.pi) - np.pi
    return wrapped.astype(np.float32)
