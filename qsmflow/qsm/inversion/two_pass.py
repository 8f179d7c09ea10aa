# SPDX-License-Identifier: Apache-2.0
"""χ of a two-pass reconstruction: strict mask first, then the filled mask."""

from __future__ import annotations

import numpy as np


def combine_two_pass(
    chi_strict: np.ndarray,
    chi_filled: np.ndarray,
    strict_mask: np.ndarray,
    filled_mask: np.ndarray,
    *,
    align: bool = True,
) -> tuple[np.ndarray, float]:
    """Combine the two reconstructions of a two-pass QSM into one map on the filled mask.

    The strict reconstruction (background removal and inversion on a mask without the
    unreliable voxels, see :func:`qsmflow.qsm.mask.strict_mask`) is free of the streaks
    that strong, unreliable sources spread into their surroundings; the filled
    reconstruction (on the generous, hole-free mask) gives χ where the strict mask has
    holes [1]_. The result is ``chi_strict`` in ``strict_mask ∧ filled_mask``,
    ``chi_filled + offset`` in the rest of ``filled_mask`` and 0 outside it. Each map's
    mean is arbitrary (``D(0) = 0``), so with ``align`` the offset is the median of
    ``chi_strict − chi_filled`` over the voxels both define (no step at the hole borders);
    otherwise it is 0.

    Parameters
    ----------
    chi_strict, chi_filled : (nx, ny, nz) ndarray
        Susceptibility (ppm, unreferenced) from the strict and the filled reconstruction.
    strict_mask, filled_mask : (nx, ny, nz) ndarray of bool
        Masks the two maps are defined on (after background removal). ``filled_mask`` is
        the mask of the result; voxels of ``strict_mask`` outside it are ignored.

    align : bool, optional
        Shift ``chi_filled`` to ``chi_strict`` before combining (default True).

    Returns
    -------
    chi : (nx, ny, nz) ndarray
        Combined susceptibility in ppm (unreferenced), 0 outside ``filled_mask``; float
        dtype of ``chi_filled`` (float32 for non-float input).
    offset : float
        Value added to ``chi_filled`` (ppm).

    Raises
    ------
    ValueError
        For mismatched shapes, an empty ``filled_mask`` or non-finite χ in the masks.

    References
    ----------
    .. [1] Stewart AW, Robinson SD, O'Brien K, et al. QSMxT: Robust masking and artifact
       reduction for quantitative susceptibility mapping. Magn Reson Med
       2022;87:1289-1300. doi:10.1002/mrm.29048

    Examples
    --------
    >>> filled = np.ones((4, 4, 4), bool); strict = filled.copy(); strict[0] = False
    >>> chi, off = combine_two_pass(np.full(filled.shape, 2.0), np.ones(filled.shape),
    ...                             strict, filled)
    >>> off, float(chi[0].mean()), float(chi[1:].mean())
    (1.0, 2.0, 2.0)
    >>> chi, off = combine_two_pass(np.full(filled.shape, 2.0), np.ones(filled.shape),
    ...                             strict, filled, align=False)
    >>> off, float(chi[0].mean()), float(chi[1:].mean())
    (0.0, 1.0, 2.0)
    """
    a = np.asarray(chi_strict)
    b = np.asarray(chi_filled)
    ms = np.asarray(strict_mask, dtype=bool)
    mf = np.asarray(filled_mask, dtype=bool)
    if not (a.shape == b.shape == ms.shape == mf.shape) or a.ndim != 3:
        raise ValueError(f'chi and mask shapes differ or are not 3D: {a.shape}, {b.shape}, '
                         f'{ms.shape}, {mf.shape}')
    if not mf.any():
        raise ValueError('filled_mask is empty')
    ms = ms & mf
    if not (np.all(np.isfinite(a[ms])) and np.all(np.isfinite(b[mf]))):
        raise ValueError('chi has non-finite values in its mask')
    dtype = b.dtype if np.issubdtype(b.dtype, np.floating) else np.dtype(np.float32)
    offset = float(np.median(a[ms].astype(np.float64) - b[ms])) if align and ms.any() else 0.0
    out = np.zeros(b.shape, dtype)
    out[mf] = b[mf] + offset
    out[ms] = a[ms]
    return out, offset
