# SPDX-License-Identifier: Apache-2.0
"""Susceptibility referencing: subtract a reference value (ppm) from χ.

The dipole kernel vanishes at k = 0, so an inversion recovers χ only up to a constant;
values are reported relative to a stated reference [1]_: the whole-brain mean (``'mean'``),
the mean of a given region (``'region'``), the mean over ventricular CSF (``'csf'``, the
region from :func:`qsmflow.qsm.mask.csf_mask`), or none (``'none'``).

References
----------
.. [1] QSM Consensus Organization Committee. Recommended implementation of quantitative
   susceptibility mapping for clinical research in the brain: a consensus of the ISMRM
   electro-magnetic tissue properties study group. Magn Reson Med 2024;91:1834-1862.
   doi:10.1002/mrm.30006
"""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._validation import check_field_mask

#: Referencing methods accepted by :func:`reference`.
METHODS = ('mean', 'region', 'csf', 'none')


def reference(
    chi: np.ndarray,
    mask: np.ndarray,
    *,
    method: str = 'mean',
    ref_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Reference a susceptibility map.

    Parameters
    ----------
    chi : (nx, ny, nz) ndarray
        Susceptibility in ppm (unreferenced); must be finite inside ``mask``.
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    method : {'mean', 'region', 'csf', 'none'}, optional
        ``'mean'`` subtracts the mean of χ over ``mask`` (default); ``'region'`` and
        ``'csf'`` subtract the mean over ``ref_mask ∩ mask`` (``'csf'`` only names the
        region: ventricular CSF, e.g. from :func:`qsmflow.qsm.mask.csf_mask`); ``'none'``
        subtracts nothing.
    ref_mask : (nx, ny, nz) ndarray of bool, optional
        Reference region, required by ``'region'`` and ``'csf'``; must overlap ``mask``.

    Returns
    -------
    chi_ref : (nx, ny, nz) ndarray
        Referenced susceptibility in ppm, 0 outside ``mask`` (float dtype of the input,
        float32 for other types).
    ref_value_ppm : float
        The value subtracted (ppm); 0.0 for ``'none'``.

    Raises
    ------
    ValueError
        For an unknown method, mismatched shapes, an empty mask, non-finite values in the
        mask, or a missing/empty/non-overlapping ``ref_mask`` with ``'region'``.

    References
    ----------
    .. [1] QSM Consensus Organization Committee. Recommended implementation of quantitative
       susceptibility mapping for clinical research in the brain. Magn Reson Med
       2024;91:1834-1862. doi:10.1002/mrm.30006

    Examples
    --------
    >>> chi = np.full((4, 4, 4), 0.5); m = np.ones(chi.shape, bool); csf = np.zeros_like(m)
    >>> chi[0] = 0.1; csf[0] = True
    >>> out, value = reference(chi, m, method='region', ref_mask=csf)
    >>> round(value, 6), round(float(out[0].max()), 6), round(float(out[1].max()), 6)
    (0.1, 0.0, 0.4)
    """
    chi, mask, _, _ = check_field_mask(chi, mask, (1, 1, 1), name='chi')
    if method not in METHODS:
        raise ValueError(f'unknown reference method {method!r}; choose one of {METHODS}')
    if method in ('region', 'csf'):
        if ref_mask is None:
            raise ValueError(f'method {method!r} needs ref_mask')
        ref_mask = np.asarray(ref_mask)
        if ref_mask.shape != chi.shape:
            raise ValueError(f'ref_mask shape {ref_mask.shape} does not match chi shape '
                             f'{chi.shape}')
        region = ref_mask.astype(bool) & mask
        if not region.any():
            raise ValueError('ref_mask does not overlap the mask')
    elif ref_mask is not None:
        raise ValueError(f"ref_mask is only used with methods 'region' and 'csf', not {method!r}")
    else:
        region = mask
    value = 0.0 if method == 'none' else float(np.mean(chi[region], dtype=np.float64))
    return _reference_core(chi, mask, value), value


def _reference_core(chi, mask, value):
    out = np.zeros_like(chi)
    out[mask] = chi[mask] - chi.dtype.type(value)
    return out
