# SPDX-License-Identifier: Apache-2.0
"""QC numbers of one acquisition: arrays in, floats out (no files)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: χ percentiles (in %) reported inside the mask.
CHI_PERCENTILES = (1, 5, 50, 95, 99)
#: |D(k)| below which k-space counts as the magic-angle cone for the streaking index.
CONE_THRESHOLD = 0.1


def magnitude_snr(magnitude: np.ndarray, brain_mask: np.ndarray) -> tuple[float, float]:
    """SNR of the first-echo magnitude: median inside the brain over the noise σ.

    σ is :func:`qsmflow.qsm.relaxometry.estimate_noise_sigma` of the background (the same
    estimate R2* uses); when the background is not noise (σ = 0) the SNR is NaN.

    Parameters
    ----------
    magnitude : (X, Y, Z[, E]) ndarray
        Magnitude (a.u.).
    brain_mask : (X, Y, Z) ndarray of bool
        Brain mask.

    Returns
    -------
    snr : float
        Dimensionless (NaN when σ could not be estimated).
    sigma : float
        Noise σ per complex channel (a.u.).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> inside = np.zeros((40, 40, 40), bool); inside[10:30, 10:30, 10:30] = True
    >>> noise = np.abs(rng.normal(0, 2, (40, 40, 40)) + 1j * rng.normal(0, 2, (40, 40, 40)))
    >>> snr, sigma = magnitude_snr(noise + 100 * inside, inside)
    >>> 45 < snr < 55
    True
    """
    from qsmflow.qsm.relaxometry import estimate_noise_sigma

    mask = np.asarray(brain_mask, bool)
    first = magnitude[..., 0] if magnitude.ndim == 4 else magnitude
    sigma = float(estimate_noise_sigma(magnitude, mask))
    signal = float(np.median(first[mask])) if mask.any() else float('nan')
    return (signal / sigma if sigma > 0 else float('nan')), sigma


def streaking_index(chi_ppm: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float], *,
                    b0_dir: Sequence[float] = (0, 0, 1),
                    cone: float = CONE_THRESHOLD) -> float:
    """Streaking index of χ: power per k-space voxel in the magic-angle cone over the rest.

    The dipole kernel vanishes on the cone |D(k)| < ``cone``; an inversion that lets noise
    through there paints streaks along it, which raises the power density of the
    (demeaned, masked) χ spectrum in the cone against the rest. Higher is streakier; the
    value depends on the anatomy and resolution, so compare runs of one pipeline. On the
    3 mm demo phantom: TV 0.32, RTS 0.23, TKD (threshold 0.19) 0.23, Tikhonov 0.64, TKD
    with threshold 0.05 (streaky) 1.05; white noise 1.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) ndarray
        Susceptibility (ppm).
    mask : (X, Y, Z) ndarray of bool
        Mask of χ.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel index axes.
    cone : float
        Kernel magnitude below which k is in the cone.

    Returns
    -------
    float
        Dimensionless ratio (NaN for an empty mask).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> m = np.ones((24, 24, 24), bool)
    >>> 0.8 < streaking_index(rng.normal(size=(24, 24, 24)), m, (1, 1, 1)) < 1.2
    True
    """
    from qsmflow.qsm.kernels import dipole_kernel, rfft

    mask = np.asarray(mask, bool)
    if not mask.any():
        return float('nan')
    chi = np.where(mask, chi_ppm - chi_ppm[mask].mean(), 0.0).astype(np.float32)
    power = np.abs(rfft(chi)) ** 2
    kernel = np.abs(dipole_kernel(chi.shape, voxel_size_mm, b0_dir))
    in_cone = kernel < cone
    in_cone.flat[0] = False  # k = 0 (D(0) = 0 by convention) is the mean, not a streak
    out_cone = ~in_cone
    out_cone.flat[0] = False
    if not in_cone.any() or not out_cone.any():
        return float('nan')
    return float(power[in_cone].mean() / max(power[out_cone].mean(), 1e-30))


def chi_percentiles(chi_ppm: np.ndarray, mask: np.ndarray,
                    percentiles: Sequence[float] = CHI_PERCENTILES) -> dict:
    """``{'chi_p01_ppm': …}`` percentiles of χ inside ``mask`` (ppm; NaN when empty).

    >>> p = chi_percentiles(np.arange(101.0).reshape(101, 1, 1), np.ones((101, 1, 1), bool))
    >>> list(p.values()), list(p)[0]
    ([1.0, 5.0, 50.0, 95.0, 99.0], 'chi_p01_ppm')
    """
    values = chi_ppm[np.asarray(mask, bool)]
    got = np.percentile(values, percentiles) if values.size else [np.nan] * len(percentiles)
    return {f'chi_p{int(p):02d}_ppm': float(v) for p, v in zip(percentiles, got)}


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray, *,
                                  bins: int = 32) -> float:
    """Studholme's normalised mutual information (H(a) + H(b)) / H(a, b) inside ``mask``:
    1 for independent images, 2 for images that determine each other. Unlike a
    correlation it does not assume the two contrasts agree (GRE magnitude vs a T1w
    template).

    >>> x = np.random.default_rng(0).normal(size=(20, 20, 20))
    >>> m = np.ones(x.shape, bool)
    >>> round(normalized_mutual_information(x, -x ** 3, m), 3)
    2.0
    >>> normalized_mutual_information(x, np.random.default_rng(1).normal(size=x.shape), m) < 1.1
    True
    """
    mask = np.asarray(mask, bool)
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float('nan')
    joint = np.histogram2d(_ranks(x), _ranks(y), bins=bins)[0] / x.size

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / entropy(joint)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (equal-count bins: robust to outliers and contrast)."""
    out = np.empty(x.size)
    out[np.argsort(x, kind='stable')] = np.arange(x.size)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary images (NaN when both are empty).

    >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.6666666666666666
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float('nan')


def label_volumes_mm3(labels: np.ndarray, voxel_volume_mm3: float) -> dict:
    """``{label: volume in mm³}`` of every non-zero label.

    >>> label_volumes_mm3(np.array([0, 1, 1, 2]), 8.0)
    {1: 16.0, 2: 8.0}
    """
    ids, counts = np.unique(np.asarray(labels).astype(np.int64), return_counts=True)
    return {int(i): float(c) * voxel_volume_mm3 for i, c in zip(ids, counts) if i != 0}


def mask_volume_ml(mask: np.ndarray, voxel_size) -> float:
    """Volume (mL) of the voxels > 0 of a mask with voxels of ``voxel_size`` (mm).

    >>> mask_volume_ml(np.ones((10, 10, 5)), (2.0, 2.0, 2.0))
    4.0
    """
    return float(np.count_nonzero(np.asarray(mask) > 0)) * float(np.prod(voxel_size)) / 1000.0


def volume_ratios(native: dict, template: dict) -> dict:
    """``{label: native / template volume}`` for the labels of the template (0 when the
    label is missing natively).

    >>> volume_ratios({1: 10.0}, {1: 20.0, 2: 5.0})
    {1: 0.5, 2: 0.0}
    """
    return {k: native.get(k, 0.0) / v for k, v in template.items() if v > 0}
