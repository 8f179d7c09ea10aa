# SPDX-License-Identifier: Apache-2.0
"""Accuracy metrics comparing a susceptibility map with a reference (ground truth).

Definitions follow the QSM reconstruction challenges [1]_ [2]_ and ``QSM_NOTES.md``:

* :func:`rmse` — ``100 · ‖χ − χ_ref‖ / ‖χ_ref‖`` in the mask, each map minus its mask mean.
* :func:`hfen` — the same on Laplacian-of-Gaussian filtered maps (σ = 1.5 voxels).
* :func:`ssim` — 3D structural similarity with a Gaussian window, data range from the truth.
* :func:`roi_means`, :func:`deep_gm_error` — ROI means and the mean absolute error of ROI
  contrasts (ROI mean − mask mean).
* :func:`streaking` — spread of the error in a rim around a calcification.

References
----------
.. [1] Langkammer C, Schweser F, Shmueli K, et al. Quantitative susceptibility mapping:
   report from the 2016 reconstruction challenge. Magn Reson Med 2018;79:1661-1673.
   doi:10.1002/mrm.26830
.. [2] QSM Challenge 2.0 Organization Committee. QSM reconstruction challenge 2.0: design
   and report of results. Magn Reson Med 2021;86:1241-1255. doi:10.1002/mrm.28754
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _pair(chi, chi_true, mask):
    chi = np.asarray(chi, dtype=np.float64)
    chi_true = np.asarray(chi_true, dtype=np.float64)
    mask = np.asarray(mask)
    if chi.ndim != 3:
        raise ValueError(f'chi must be a 3D array, got shape {chi.shape}')
    if chi_true.shape != chi.shape or mask.shape != chi.shape:
        raise ValueError(
            f'shape mismatch: chi {chi.shape}, chi_true {chi_true.shape}, mask {mask.shape}'
        )
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError('mask is empty')
    if not (np.all(np.isfinite(chi[mask])) and np.all(np.isfinite(chi_true[mask]))):
        raise ValueError('chi and chi_true must be finite inside the mask')
    return chi, chi_true, mask


def _demeaned(x, mask):
    """``x`` minus its mask mean inside the mask, 0 outside (float64)."""
    out = np.zeros_like(x)
    out[mask] = x[mask] - x[mask].mean()
    return out


def _relative_error_percent(a, b, mask):
    den = np.linalg.norm(b[mask])
    if den == 0:
        raise ValueError('reference map is constant in the mask; relative error undefined')
    return float(100.0 * np.linalg.norm(a[mask] - b[mask]) / den)


def rmse(chi: np.ndarray, chi_true: np.ndarray, mask: np.ndarray) -> float:
    """Relative root-mean-square error in percent.

    ``100 · ‖(χ − mean χ) − (χ_ref − mean χ_ref)‖ / ‖χ_ref − mean χ_ref‖`` over ``mask``
    (means over ``mask``), so a constant offset between the maps is not penalised [1]_.

    Parameters
    ----------
    chi, chi_true : (nx, ny, nz) ndarray
        Reconstructed and reference susceptibility (ppm).
    mask : (nx, ny, nz) ndarray of bool
        Evaluation region (non-empty).

    Returns
    -------
    float
        Error in percent (0 for identical maps).

    References
    ----------
    .. [1] Langkammer C, et al. Quantitative susceptibility mapping: report from the 2016
       reconstruction challenge. Magn Reson Med 2018;79:1661-1673. doi:10.1002/mrm.26830

    Examples
    --------
    >>> rng = np.random.default_rng(0); t = rng.random((8, 8, 8)); m = t > 0.2
    >>> round(rmse(t + 5, t, m), 6), round(rmse(2 * t, t, m), 6)
    (0.0, 100.0)
    """
    chi, chi_true, mask = _pair(chi, chi_true, mask)
    return _relative_error_percent(_demeaned(chi, mask), _demeaned(chi_true, mask), mask)


def hfen(chi: np.ndarray, chi_true: np.ndarray, mask: np.ndarray,
         sigma_vox: float = 1.5) -> float:
    """High-frequency error norm in percent.

    Both maps are de-meaned in the mask and set to 0 outside it, filtered with a
    Laplacian of Gaussian of width ``sigma_vox``, and compared as in :func:`rmse` over
    ``mask`` [1]_ [2]_.

    Parameters
    ----------
    chi, chi_true : (nx, ny, nz) ndarray
        Reconstructed and reference susceptibility (ppm).
    mask : (nx, ny, nz) ndarray of bool
        Evaluation region (non-empty).
    sigma_vox : float, optional
        Gaussian width (voxels), default 1.5.

    Returns
    -------
    float
        Error in percent (0 for identical maps).

    References
    ----------
    .. [1] Ravishankar S, Bresler Y. MR image reconstruction from highly undersampled
       k-space data by dictionary learning. IEEE Trans Med Imaging 2011;30:1028-1041.
       doi:10.1109/TMI.2010.2090538
    .. [2] Langkammer C, et al. Quantitative susceptibility mapping: report from the 2016
       reconstruction challenge. Magn Reson Med 2018;79:1661-1673. doi:10.1002/mrm.26830

    Examples
    --------
    >>> rng = np.random.default_rng(0); t = rng.random((12, 12, 12)); m = np.ones(t.shape, bool)
    >>> hfen(t, t, m), round(hfen(3 * t + 1, t, m), 6)
    (0.0, 200.0)
    """
    chi, chi_true, mask = _pair(chi, chi_true, mask)
    if not sigma_vox > 0:
        raise ValueError(f'sigma_vox must be positive, got {sigma_vox}')
    a = ndi.gaussian_laplace(_demeaned(chi, mask), sigma_vox)
    b = ndi.gaussian_laplace(_demeaned(chi_true, mask), sigma_vox)
    return _relative_error_percent(a, b, mask)


def ssim(chi: np.ndarray, chi_true: np.ndarray, mask: np.ndarray, *,
         sigma_vox: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean 3D structural similarity (SSIM) over the mask.

    Both maps are de-meaned in the mask and set to 0 outside; local means, variances and
    covariance use a Gaussian window (σ = ``sigma_vox``); ``L`` is the range (max − min) of
    the truth in the mask; ``C1 = (k1 L)²``, ``C2 = (k2 L)²`` [1]_. The SSIM map is averaged
    over ``mask``.

    Parameters
    ----------
    chi, chi_true : (nx, ny, nz) ndarray
        Reconstructed and reference susceptibility (ppm).
    mask : (nx, ny, nz) ndarray of bool
        Evaluation region (non-empty).
    sigma_vox : float, optional
        Gaussian window width (voxels), default 1.5.
    k1, k2 : float, optional
        Stabilising constants (default 0.01, 0.03 [1]_).

    Returns
    -------
    float
        SSIM (dimensionless, ≤ 1; 1 for identical maps).

    References
    ----------
    .. [1] Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from error
       visibility to structural similarity. IEEE Trans Image Process 2004;13:600-612.
       doi:10.1109/TIP.2003.819861

    Examples
    --------
    >>> rng = np.random.default_rng(0); t = rng.random((12, 12, 12)); m = np.ones(t.shape, bool)
    >>> round(ssim(t, t, m), 6), bool(ssim(t + rng.random(t.shape), t, m) < 0.9)
    (1.0, True)
    """
    chi, chi_true, mask = _pair(chi, chi_true, mask)
    x = _demeaned(chi, mask)
    y = _demeaned(chi_true, mask)
    data_range = float(chi_true[mask].max() - chi_true[mask].min())
    if data_range == 0:
        raise ValueError('reference map is constant in the mask; SSIM undefined')
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2

    def g(a):
        return ndi.gaussian_filter(a, sigma_vox, truncate=3.5)

    mx, my = g(x), g(y)
    vx = g(x * x) - mx * mx
    vy = g(y * y) - my * my
    cxy = g(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap[mask].mean())


def roi_means(chi: np.ndarray, labels: np.ndarray, label_ids) -> np.ndarray:
    """Mean of ``chi`` in each labelled region.

    Parameters
    ----------
    chi : (nx, ny, nz) ndarray
        Susceptibility (ppm).
    labels : (nx, ny, nz) ndarray of int
        Label image.
    label_ids : sequence of int
        Labels to summarise.

    Returns
    -------
    means : (len(label_ids),) ndarray of float64
        ROI means in ppm; NaN for a label with no voxel.

    Examples
    --------
    >>> lab = np.zeros((4, 4, 4), int); lab[0] = 1; lab[1] = 2
    >>> roi_means(lab * 0.1, lab, [1, 2, 7]).round(3).tolist()
    [0.1, 0.2, nan]
    """
    chi = np.asarray(chi, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != chi.shape:
        raise ValueError(f'labels shape {labels.shape} does not match chi shape {chi.shape}')
    ids = np.atleast_1d(np.asarray(label_ids))
    if ids.size == 0:
        raise ValueError('label_ids is empty')
    sums = ndi.sum_labels(chi, labels, ids)
    counts = ndi.sum_labels(np.ones_like(chi), labels, ids)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def deep_gm_error(chi: np.ndarray, chi_true: np.ndarray, labels: np.ndarray, label_ids,
                  mask: np.ndarray) -> float:
    """Mean absolute error of ROI contrasts (ROI mean − mask mean), in ppm.

    Referencing both maps to their own mask mean makes the error independent of the
    (unrecoverable) χ offset [1]_.

    Parameters
    ----------
    chi, chi_true : (nx, ny, nz) ndarray
        Reconstructed and reference susceptibility (ppm).
    labels : (nx, ny, nz) ndarray of int
        Label image.
    label_ids : sequence of int
        ROI labels (e.g. the deep grey-matter nuclei); all must be present.
    mask : (nx, ny, nz) ndarray of bool
        Region whose mean is the reference (non-empty).

    Returns
    -------
    float
        ``mean_i |(m_i − m̄) − (t_i − t̄)|`` in ppm.

    References
    ----------
    .. [1] QSM Challenge 2.0 Organization Committee. QSM reconstruction challenge 2.0.
       Magn Reson Med 2021;86:1241-1255. doi:10.1002/mrm.28754

    Examples
    --------
    >>> lab = np.zeros((4, 4, 4), int); lab[0] = 1; m = np.ones(lab.shape, bool)
    >>> t = 0.1 * (lab == 1)
    >>> round(deep_gm_error(t + 1, t, lab, [1], m), 6)
    0.0
    >>> round(deep_gm_error(2 * t, t, lab, [1], m), 4)
    0.075
    """
    chi, chi_true, mask = _pair(chi, chi_true, mask)
    a = roi_means(chi, labels, label_ids) - chi[mask].mean()
    b = roi_means(chi_true, labels, label_ids) - chi_true[mask].mean()
    if np.any(np.isnan(a)):
        raise ValueError('a label in label_ids has no voxel')
    return float(np.mean(np.abs(a - b)))


def streaking(chi: np.ndarray, chi_true: np.ndarray, labels: np.ndarray, calc_label: int,
              rim_mm: float, voxel_size, *, mask: np.ndarray | None = None) -> float:
    """Streaking around a calcification: standard deviation of the error in a rim.

    The rim holds the voxels within ``rim_mm`` of the calcification (``labels ==
    calc_label``), excluding the calcification itself (and, if given, voxels outside
    ``mask``). The standard deviation of ``χ − χ_true`` there measures streaks independently
    of any offset [1]_.

    Parameters
    ----------
    chi, chi_true : (nx, ny, nz) ndarray
        Reconstructed and reference susceptibility (ppm).
    labels : (nx, ny, nz) ndarray of int
        Label image containing ``calc_label``.
    calc_label : int
        Label of the calcification.
    rim_mm : float
        Rim width (mm).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    mask : (nx, ny, nz) ndarray of bool, optional
        Restrict the rim to this region (e.g. the brain mask).

    Returns
    -------
    float
        Standard deviation of the error in the rim (ppm).

    References
    ----------
    .. [1] QSM Challenge 2.0 Organization Committee. QSM reconstruction challenge 2.0.
       Magn Reson Med 2021;86:1241-1255. doi:10.1002/mrm.28754

    Examples
    --------
    >>> lab = np.zeros((9, 9, 9), int); lab[4, 4, 4] = 5
    >>> t = np.zeros(lab.shape); rng = np.random.default_rng(0)
    >>> streaking(t, t, lab, 5, 2.0, (1, 1, 1)), streaking(t + 3, t, lab, 5, 2.0, (1, 1, 1))
    (0.0, 0.0)
    """
    if mask is None:
        mask = np.ones(np.shape(chi), bool)
    chi, chi_true, mask = _pair(chi, chi_true, mask)
    labels = np.asarray(labels)
    if labels.shape != chi.shape:
        raise ValueError(f'labels shape {labels.shape} does not match chi shape {chi.shape}')
    calc = labels == calc_label
    if not calc.any():
        raise ValueError(f'calc_label {calc_label} not found in labels')
    if not rim_mm > 0:
        raise ValueError(f'rim_mm must be positive, got {rim_mm}')
    vsz = np.asarray(voxel_size, dtype=np.float64)
    box = tuple(
        slice(max(int(i.min()) - int(np.ceil(rim_mm / h)) - 1, 0),
              min(int(i.max()) + int(np.ceil(rim_mm / h)) + 2, n))
        for i, h, n in zip(np.nonzero(calc), vsz, calc.shape)
    )
    dist = ndi.distance_transform_edt(~calc[box], sampling=vsz)
    rim = np.zeros_like(calc)
    rim[box] = (dist > 0) & (dist <= rim_mm)
    rim &= mask
    if not rim.any():
        raise ValueError('the rim around the calcification is empty')
    return float(np.std(chi[rim] - chi_true[rim]))


#: χ (ppm) beyond which a map is implausible for brain tissue at its 1st/99th percentile
#: (haemorrhages and veins reach past it in a few voxels, not in 1 % of the brain).
CHI_PLAUSIBLE_PPM = 1.0


def chi_qc(chi: np.ndarray, mask: np.ndarray, *,
           plausible_ppm: float = CHI_PLAUSIBLE_PPM) -> dict:
    """Quality numbers of a susceptibility map that need no ground truth.

    Parameters
    ----------
    chi : (nx, ny, nz) ndarray
        Susceptibility (ppm).
    mask : (nx, ny, nz) ndarray of bool
        Brain mask.
    plausible_ppm : float
        Bound (ppm) on the 1st and 99th percentiles of χ in the mask; past it the map is
        flagged (a mask holding scalp, a wrong echo time or phase scaling, a failed
        background removal).

    Returns
    -------
    dict
        ``Percentile01PPM``, ``Percentile99PPM``, ``ShareBeyondPlausible`` (share of mask
        voxels with ``|χ| > plausible_ppm``), ``NonFinite`` (count) and ``Warning`` (a
        sentence, or None).

    Examples
    --------
    >>> m = np.ones((8, 8, 8), bool)
    >>> chi_qc(np.zeros((8, 8, 8)), m)['Warning'] is None
    True
    >>> chi_qc(np.full((8, 8, 8), 1.8), m)['Warning'] is not None
    True
    """
    mask = np.asarray(mask, bool)
    values = np.asarray(chi, np.float64)[mask]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {'Percentile01PPM': None, 'Percentile99PPM': None, 'ShareBeyondPlausible': None,
                'NonFinite': int(values.size), 'Warning': 'χ has no finite value in the mask'}
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    share = float(np.mean(np.abs(finite) > plausible_ppm))
    warning = None
    if low < -plausible_ppm or high > plausible_ppm:
        warning = (f'χ looks implausible for brain tissue: 1st/99th percentiles '
                   f'{low:.2f}/{high:.2f} ppm (expected within ±{plausible_ppm:g} ppm); '
                   'check the brain mask, echo times and phase scaling')
    elif values.size != finite.size:
        warning = f'χ has {values.size - finite.size} non-finite voxels in the mask'
    return {'Percentile01PPM': round(low, 4), 'Percentile99PPM': round(high, 4),
            'ShareBeyondPlausible': round(share, 5), 'NonFinite': int(values.size - finite.size),
            'Warning': warning}
