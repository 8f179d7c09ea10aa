# SPDX-License-Identifier: Apache-2.0
"""Regularisation weight chosen from the data: noise of the local field → TV weight.

A fixed TV weight tuned on a clean phantom under-regularises real data (in-vivo fields carry
more noise, spatially correlated noise and field the dipole model cannot explain) and
over-regularises clean data. :func:`choose_tv_weight` picks the weight per acquisition from
the noise level of the local field itself, so that ``inversion.tv(field, mask, voxel_size)``
needs nothing else; the echo-fit noise map, when the pipeline has it, can only raise the
estimate.

* :func:`estimate_noise` — robust noise standard deviation of a local field (ppm): the median
  absolute value of the finest 3D Haar wavelet detail (``HHH``) inside the eroded mask
  (Donoho's MAD estimator), on the voxel grid and on the grid averaged over 2 × 2 × 2 voxels
  (rescaled by √8, so that both read σ for white noise). Smooth fields and tissue edges
  barely move the median; noise correlated over neighbouring voxels (coil combination,
  interpolation, filtering in the preprocessing) shows at the coarser scale only.
* :func:`choose_tv_weight` — ``λ = σ² / b`` clipped to :data:`TV_LAM_RANGE`, with ``σ`` the
  larger of the two scales (or of the noise map's RMS) and ``b`` =
  :data:`TV_GRADIENT_SCALE_PPM_PER_MM`. This is the MAP weight of a Gaussian data term with
  noise σ and a Laplace prior on the gradient of χ with scale ``b`` (multiplying the
  negative log posterior ``‖r‖²/2σ² + ‖∇χ‖₁/b`` by σ² gives TV's ``½‖r‖² + λ‖∇χ‖₁``).
* :func:`choose_reweighting` — strength ``s = 1 − (σ²/b)/λ`` (0 when the weight was not
  raised to the floor) of one reweighted pass of TV (weights ``1 / (1 + s|∇χ|/b)`` from the
  first solution): where the floor makes TV heavier than the noise asks for, the extra
  penalty comes off the strong edges (the nuclei's boundaries), whose contrast TV loses.
* :func:`choose_shell_weight` — weight ``min(1, σ² / τ²)`` of the prior that the local field
  in a thin shell just outside the mask is small (a Gaussian with scale τ =
  :data:`TV_OUTSIDE_FIELD_PPM`, after background removal), on the same σ² scale: the noisier
  the field, the less freedom sources just outside the mask get to explain noise at the
  mask's edge.

All functions are numpy/scipy (element-wise passes in slabs on the thread pool of
:mod:`qsmflow.qsm._vector`); fields and σ in ppm, voxel size in mm, λ in ppm·mm.
"""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._morphology import erode_layers
from qsmflow.qsm._validation import non_negative
from qsmflow.qsm._vector import Selection, by_slabs, slabwise
from qsmflow.qsm.blocks import block_mean
from qsmflow.qsm.kernels import bounding_box

#: Scale ``b`` of the Laplace prior on ``|∇χ|`` (ppm/mm) in ``λ = σ² / b``. Set between two
#: measured limits. Forward-simulated heads (1 mm at SNR 30: σ 0.0030 ppm; 2 mm slab: 0.0023)
#: lose deep-grey-matter contrast above λ ≈ 1.5e-3 and 1e-3 (error > 0.012 ppm); with this
#: ``b`` they get 8e-4 and 5e-4 (errors 0.0049 and 0.0069 ppm). The in-vivo 2016 challenge
#: field (σ at two voxels 0.0047 ppm, at one voxel 0.0028: correlated noise and model error)
#: gets λ = 2.0e-3, where its RMSE against the χ₃₃ reference falls from 97 % (λ = 5e-4) to
#: 75 % with the slope of ROI means 0.86 (≥ 2.5e-3 lowers RMSE by < 0.5 % but the slope
#: below 0.82).
TV_GRADIENT_SCALE_PPM_PER_MM = 0.011

#: Range of the chosen TV weight (ppm·mm). The floor binds on clean data only (σ below
#: ~0.0018 ppm; in-vivo fields are far above it). It is the weight with the smallest worst
#: case over three independent phantoms at SNR 100 (measured 2026-12-05; README, χ-driven
#: refinement of the nuclei), at 5e-4 → 3e-4: deep-grey-matter error 0.0043 → 0.0067 ppm on
#: the ellipsoid head, 0.0057 → 0.0072 on the realistic head; the real-anatomy phantom's
#: regional tables (1 mm, the whole pipeline, two seeds × two participants) 0.0066–0.0090 →
#: 0.0028–0.0048 ppm mean absolute error, largest 11–27 % → 7–19 %. TV's own loss of
#: contrast shrinks with λ on all three; the simulated heads prefer a heavier weight only
#: because their background removal raises the nuclei by about as much (the harmonic part
#: of the brain's own field, whose sign depends on the anatomy). The ceiling bounds the
#: loss of contrast on very noisy data: on the 2 mm phantom with 0.01 ppm of field noise,
#: 3e-3 lost 0.025 ppm of deep-grey-matter contrast on average (slope 0.86), 2e-3 0.019 ppm.
TV_LAM_RANGE = (3e-4, 2.5e-3)

#: Scale τ (ppm) of the local field in the shell just outside the mask that background
#: removal leaves: the shell prior's weight is ``σ² / τ²`` (capped at 1, the weight of a
#: field voxel inside). Measured with a 4 mm shell (ppm of deep-grey-matter error, RMSE %):
#: the in-vivo 2016 challenge field (σ 0.0047 ppm → weight 0.88) went from RMSE 74.9 % to
#: 72.2 % against χ₃₃ and the slope of ROI means from 0.857 to 0.867 (errors beyond 10 mm
#: from the edge unchanged: the gain is in the outer 10 mm, where free sources outside had
#: fitted edge noise); forward-simulated heads keep what the free outside gives them
#: (1 mm SNR 100, weight 0.05: 0.0037 ppm as before; 1 mm SNR 30, weight 0.36: 0.0053
#: against 0.0049; 2 mm at 0.002 ppm noise, weight 0.18: 0.0033 against 0.0028), where a
#: fixed weight of 1 (the field taken as 0 outside) cost them 0.003–0.007 ppm.
TV_OUTSIDE_FIELD_PPM = 0.005

#: Width (mm) of the shell outside the mask where the shell prior applies (4 mm: 8 mm gained
#: another 0.5 % RMSE in vivo but cost the 1 mm SNR-30 phantom 0.0008 ppm).
TV_SHELL_MM = 4.0

#: Normalisation of the median absolute deviation to σ for Gaussian noise.
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817

#: Fewest valid Haar coefficients for an estimate at one scale.
_MIN_COEFFICIENTS = 64


def _haar_detail_mad(field, valid):
    """σ from the median |HHH| over blocks of 2 × 2 × 2 voxels all inside ``valid``.

    The undecimated HHH coefficient ``Σ ±f / √8`` (sign ``(−1)^(a+b+c)``) has standard
    deviation σ for white noise of standard deviation σ. Returns NaN when fewer than
    :data:`_MIN_COEFFICIENTS` blocks fit. The coefficients are made in slabs of planes
    side by side on the thread pool (:func:`~qsmflow.qsm._vector.slabwise`), each with
    the whole-grid operations in the same order: the same bits for any thread count.
    """
    shape = tuple(n - 1 for n in field.shape)
    if min(shape) < 1:
        return float('nan')
    coef = np.zeros(shape, np.float64)
    inside = np.ones(shape, bool)

    def slab(rows):
        for a in (0, 1):
            for b in (0, 1):
                for c in (0, 1):
                    sl = (slice(rows.start + a, rows.stop + a), slice(b, b + shape[1]),
                          slice(c, c + shape[2]))
                    if (a + b + c) % 2:
                        coef[rows] -= field[sl]
                    else:
                        coef[rows] += field[sl]
                    inside[rows] &= valid[sl]

    slabwise(slab, shape[0])
    sel = Selection(inside)
    if sel.size < _MIN_COEFFICIENTS:
        return float('nan')
    return float(np.median(np.abs(sel.gather(coef))) / np.sqrt(8.0) * _MAD_TO_SIGMA)


def _even_box(mask):
    """Slices of the mask's bounding box, each starting at an even index: the 2 × 2 × 2
    blocks of :func:`_block_mean` stay those of the whole grid, and every block or Haar
    coefficient all inside the mask lies in the box (the whole grid for an empty mask)."""
    if not mask.any():
        return (slice(None),) * 3
    return tuple(slice(s.start // 2 * 2, s.stop) for s in bounding_box(mask))


def _block_mean(field, valid):
    """Average over 2 × 2 × 2 blocks (odd edges dropped); a block is valid if all 8 are
    (:func:`~qsmflow.qsm.blocks.block_mean`'s slabs: the bits of the whole-grid mean)."""
    s = tuple(n // 2 for n in field.shape)
    blocks = valid[: 2 * s[0], : 2 * s[1], : 2 * s[2]].reshape(s[0], 2, s[1], 2, s[2], 2)
    all_valid = np.empty(s, bool)

    def slab(rows):
        all_valid[rows] = blocks[rows].all(axis=(1, 3, 5))

    slabwise(slab, s[0])
    return block_mean(field, (2, 2, 2)), all_valid


def estimate_noise(local_field: np.ndarray, mask: np.ndarray, *, erode_voxels: int = 2) -> dict:
    """Robust noise standard deviation of a local field, at one and two voxels.

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0 (background removed); values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Region where ``local_field`` is valid.
    erode_voxels : int, optional
        Voxels eroded from the mask first (default 2: the mask edge carries the largest
        background-removal errors).

    Returns
    -------
    dict
        ``sigma_ppm`` (float, ppm): the larger of the two scales (the one the TV weight
        uses); ``sigma_voxel_ppm`` (float, ppm): finest-scale estimate; ``sigma_2voxel_ppm``
        (float, ppm): estimate on the 2 × 2 × 2 averaged grid, times √8 (equal to the first
        for white noise, larger for noise correlated between neighbours). NaN where the
        eroded mask is too small for a scale; ``sigma_ppm`` is then the other scale.

    Raises
    ------
    ValueError
        If shapes differ, the field is not 3D or no scale can be estimated.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = 0.01 * rng.standard_normal((40, 40, 40))
    >>> est = estimate_noise(f, np.ones(f.shape, bool))
    >>> bool(abs(est['sigma_voxel_ppm'] - 0.01) < 0.001)
    True
    """
    field = np.asarray(local_field)
    mask = np.asarray(mask, dtype=bool)
    if field.ndim != 3 or field.shape != mask.shape:
        raise ValueError(f'local_field {field.shape} and mask {mask.shape} must be the same 3D '
                         'shape')
    box = _even_box(mask)  # the same blocks and coefficients on far fewer voxels
    field, mask = field[box], mask[box]
    inner = erode_layers(mask, erode_voxels) if erode_voxels else mask
    if not inner.any():
        inner = mask
    # as float64, 0 outside the mask (element-wise, in slabs side by side)
    field = by_slabs(lambda f, m: np.where(m, f.astype(np.float64), 0.0), field, mask)
    s1 = _haar_detail_mad(field, inner)
    f2, v2 = _block_mean(field, inner)
    s2 = _haar_detail_mad(f2, v2) * np.sqrt(8.0)
    if np.isnan(s1) and np.isnan(s2):
        raise ValueError('mask too small to estimate the field noise')
    return {'sigma_ppm': float(np.nanmax([s1, s2])), 'sigma_voxel_ppm': s1,
            'sigma_2voxel_ppm': float(s2)}


def choose_tv_weight(local_field: np.ndarray, mask: np.ndarray, *,
                     noise_ppm: np.ndarray | None = None) -> dict:
    """TV weight λ (ppm·mm) from the noise of the local field: ``λ = σ² / b``, clipped.

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0; values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Region where ``local_field`` is valid.
    noise_ppm : (nx, ny, nz) ndarray, optional
        Standard error of the field (ppm), e.g. from the echo fit. Its RMS inside the mask
        replaces the field's own estimate when larger (the noise map misses spatially
        correlated noise and model errors, so it can only raise σ).

    Returns
    -------
    dict
        ``lam`` (float, ppm·mm), ``criterion`` (str, see below), ``sigma_ppm`` (float, ppm:
        the σ used), ``gradient_scale_ppm_per_mm`` (float), ``lam_range`` (list of 2
        float) and the field estimates of :func:`estimate_noise` (plus ``sigma_map_ppm``
        when ``noise_ppm`` is given). ``criterion`` is
        ``'map-noise-squared-over-gradient-scale'`` when the noise map set σ, else
        ``'field-noise-squared-over-gradient-scale'``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> m = np.ones((32, 32, 32), bool)
    >>> quiet = choose_tv_weight(0.001 * rng.standard_normal(m.shape), m)
    >>> loud = choose_tv_weight(0.005 * rng.standard_normal(m.shape), m)
    >>> quiet['lam'] == TV_LAM_RANGE[0] and quiet['lam'] < loud['lam'] <= TV_LAM_RANGE[1]
    True
    """
    est = estimate_noise(local_field, mask)
    sigma = est['sigma_ppm']
    source = 'field'
    if noise_ppm is not None:
        noise = np.asarray(noise_ppm, dtype=np.float64)
        if noise.shape != np.shape(mask):
            raise ValueError(f'noise_ppm shape {noise.shape} does not match mask '
                             f'{np.shape(mask)}')
        vals = noise[np.asarray(mask, bool) & np.isfinite(noise)]
        sigma_map = float(np.sqrt(np.mean(vals**2))) if vals.size else float('nan')
        est['sigma_map_ppm'] = sigma_map
        if sigma_map > sigma:
            sigma, source = sigma_map, 'map'
    lo, hi = TV_LAM_RANGE
    lam = float(np.clip(sigma**2 / TV_GRADIENT_SCALE_PPM_PER_MM, lo, hi))
    return {'lam': lam, 'criterion': f'{source}-noise-squared-over-gradient-scale',
            'sigma_ppm': sigma, 'gradient_scale_ppm_per_mm': TV_GRADIENT_SCALE_PPM_PER_MM,
            'lam_range': [lo, hi], **{k: v for k, v in est.items() if k != 'sigma_ppm'}}


def choose_shell_weight(sigma_ppm: float, *, outside_field_ppm: float = TV_OUTSIDE_FIELD_PPM
                        ) -> float:
    """Weight of the shell prior of :func:`~qsmflow.qsm.inversion.tv`: ``min(1, σ² / τ²)``.

    The prior says the local field in a thin shell outside the mask is Gaussian with scale
    τ (what background removal leaves there); against a data term with noise σ, multiplied
    through by σ² like the TV weight, its weight is ``σ² / τ²``. It is capped at 1, the
    weight of a voxel of measured field.

    Parameters
    ----------
    sigma_ppm : float
        Noise standard deviation of the local field (ppm), e.g. ``sigma_ppm`` of
        :func:`choose_tv_weight`.
    outside_field_ppm : float, optional
        τ in ppm (default :data:`TV_OUTSIDE_FIELD_PPM`).

    Returns
    -------
    float
        Dimensionless weight in [0, 1].

    Raises
    ------
    ValueError
        If ``sigma_ppm`` is negative or not finite, or ``outside_field_ppm`` is not positive.

    Examples
    --------
    >>> choose_shell_weight(0.001) < choose_shell_weight(0.003) < choose_shell_weight(0.1)
    True
    >>> choose_shell_weight(0.1)
    1.0
    """
    sigma = non_negative('sigma_ppm', sigma_ppm)
    if not outside_field_ppm > 0:
        raise ValueError(f'outside_field_ppm must be > 0, got {outside_field_ppm!r}')
    return float(min(1.0, (sigma / outside_field_ppm) ** 2))


#: Largest voxel edge (mm) for which :func:`choose_reweighting` gives TV a second pass.
#: Measured 2026-12-06 on noise-free local fields of the ellipsoid head (TV at the floor):
#: at 1 mm one pass reads the deep grey matter −0.0025 ppm low and the second pass +0.0012;
#: at 2 mm one pass is already within −0.0009 and the second pass overshoots to +0.0031 (the
#: same jump is half the gradient on coarser voxels, so TV costs it less contrast). The
#: real-anatomy phantom's 2 mm field gets no second pass anyway (its own detail raises σ
#: above the floor's).
REWEIGHT_MAX_VOXEL_MM = 1.2


def choose_reweighting(info: dict, voxel_size_mm=(1.0, 1.0, 1.0)) -> dict:
    """Strength of TV's reweighted pass from how the weight was chosen.

    The floor of :data:`TV_LAM_RANGE` holds λ above the MAP weight ``σ²/b`` on clean data,
    and the extra weight costs the contrast of small, strong structures: on the noise-free
    local fields of the ellipsoid head and of the real-anatomy phantom (1 mm) TV at the
    floor reads the deep nuclei 0.0025 and 0.0054 ppm low. One more pass of TV with
    per-voxel weights ``w = 1 / (1 + s |∇χ₁| / b)`` (``χ₁`` the first solution, ``b`` =
    :data:`TV_GRADIENT_SCALE_PPM_PER_MM`; reweighted ℓ1 [1]_, the majorise-minimise step of
    a log penalty of scale ``b/s``) takes that penalty off the strong edges while weak
    gradients (noise) keep it. Its strength ``s = 1 − (σ²/b)/λ`` is the share of λ the
    floor added: 0 wherever the noise set λ (the MAP weight, in-vivo fields: no second
    pass), up to 1 on noise-free data. Where the floor binds at SNR 100 (σ ≈ 0.0014 ppm)
    ``s`` ≈ 0.4. Voxels coarser than :data:`REWEIGHT_MAX_VOXEL_MM` get no second pass.

    Parameters
    ----------
    info : dict
        The result of :func:`choose_tv_weight` (``lam``, ``sigma_ppm``,
        ``gradient_scale_ppm_per_mm``).
    voxel_size_mm : sequence of 3 float
        Voxel size (mm).

    Returns
    -------
    dict
        ``strength`` (float in [0, 1)), ``edge_scale_ppm_per_mm`` (float: ``b/s``, the
        gradient at which the weight is one half; None when ``strength`` is 0) and
        ``criterion`` (``'share-of-weight-added-by-the-floor'``, or
        ``'off-for-voxels-over-1.2-mm'``).

    References
    ----------
    .. [1] Candès EJ, Wakin MB, Boyd SP. Enhancing sparsity by reweighted ℓ1 minimization.
       J Fourier Anal Appl 2008;14:877-905. doi:10.1007/s00041-008-9045-x

    Examples
    --------
    >>> quiet = {'lam': 3e-4, 'sigma_ppm': 0.0014, 'gradient_scale_ppm_per_mm': 0.011}
    >>> round(choose_reweighting(quiet)['strength'], 3)
    0.406
    >>> noisy = {'lam': 2e-3, 'sigma_ppm': 0.0047, 'gradient_scale_ppm_per_mm': 0.011}
    >>> choose_reweighting(noisy)['strength']
    0.0
    >>> choose_reweighting(quiet, (2, 2, 2))['criterion']
    'off-for-voxels-over-1.2-mm'
    """
    if max(float(v) for v in voxel_size_mm) > REWEIGHT_MAX_VOXEL_MM:
        return {'strength': 0.0, 'edge_scale_ppm_per_mm': None,
                'criterion': f'off-for-voxels-over-{REWEIGHT_MAX_VOXEL_MM:g}-mm'}
    b = float(info['gradient_scale_ppm_per_mm'])
    lam_map = float(info['sigma_ppm']) ** 2 / b
    strength = float(max(0.0, 1.0 - lam_map / float(info['lam'])))
    return {'strength': strength,
            'edge_scale_ppm_per_mm': b / strength if strength > 0 else None,
            'criterion': 'share-of-weight-added-by-the-floor'}
