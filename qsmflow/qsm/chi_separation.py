# SPDX-License-Identifier: Apache-2.0
"""χ-separation: paramagnetic (χ⁺ ≥ 0) and diamagnetic (χ⁻ ≤ 0) susceptibility sources.

The local field sees the sum of the sources, the reversible transverse relaxation R2′ their
absolute amounts (Shin et al. 2021 [1]_)::

    field = D ∗ (χ⁺ + χ⁻)              (ppm; D the unit dipole)
    R2′   = R2* − R2 = Dr (χ⁺ − χ⁻)     (1/s; Dr the relaxometric constant, Hz/ppm)

With ``s = χ⁺ + χ⁻`` (the usual χ) and ``d = χ⁺ − χ⁻`` the sign constraints read
``d ≥ |s|``, so ``χ⁺ = (s + d)/2`` and ``χ⁻ = (s − d)/2``. :func:`chi_separation` solves

    min ½‖M (D s − f)‖² + λ TV_ε(s) + ½‖W (d − R2′/Dr)‖² + λ_sep Σ± TV_ε(χ±)
    subject to d ≥ |s|

by a forward–backward (FISTA) iteration in ``(s, d)`` with a diagonal metric: the field term
and the (Charbonnier-smoothed) total-variation terms take gradient steps, the R2′ term and
the sign constraints a closed-form per-voxel proximal step (a weighted projection onto the
wedge ``d ≥ |s|``). It starts from the total-variation dipole inversion of the field
(:func:`qsmflow.qsm.inversion.tv`, on its padded grid, χ outside the mask included) and the
voxelwise split ``d = max(R2′/Dr, |s|)``. ``W`` lowers the weight of R2′ (to 1/100) where it
is unreliable, outside [1, 30] 1/s at 3 T (scaled with B0), as the authors' toolbox does.

**Dr**: 137 Hz/ppm at 3 T, the value of [1]_, scaled in proportion to B0 (the toolbox
scales it by the centre frequency relative to 2.9 T, which gives 137 for a nominal 3 T
scanner at 2.89 T). It was regressed against single-orientation QSM in iron-rich deep grey
matter, which is what qsmflow's χ is; the 114 Hz/ppm of Kim et al. 2025 [2]_ (the χ-sepnet
networks' normalisation) was regressed against COSMOS and belongs with COSMOS-like χ.

**R2**: spin-echo R2 is not part of a GRE acquisition. Without an R2 map, a single value
per field strength is assumed: the white-matter R2 measured with one method (gradient echo
sampling of a spin echo) at 1.5, 3 and 7 T by Cox & Gowland [3]_, T2 = 80, 71 and 47 ms
(12.5, 14.1 and 21.3 1/s, linearly interpolated in B0, constant beyond). Grey matter is
within 1–2 1/s of it there (T2 76–87 ms), deep nuclei differ more; an error ΔR2 shifts χ⁺
and χ⁻ by ∓ΔR2 / (2 Dr) (0.0036 ppm per 1/s at 3 T).

References
----------
.. [1] Shin HG, Lee J, Yun YH, et al. χ-separation: Magnetic susceptibility source
   separation toward iron and myelin mapping in the brain. NeuroImage 2021;240:118371.
   doi:10.1016/j.neuroimage.2021.118371
.. [2] Kim M, Ji S, Kim J, et al. χ-sepnet: Deep neural network for magnetic susceptibility
   source separation. Hum Brain Mapp 2025;46(4):e70136. doi:10.1002/hbm.70136
.. [3] Cox EF, Gowland PA. Simultaneous quantification of T2 and T′2 using a combined
   gradient echo-spin echo sequence at ultrahigh field. Magn Reson Med 2010;64:1440-1445.
   doi:10.1002/mrm.22522
"""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._validation import (
    as_image, check_field_mask, iterations, non_negative, positive)
from qsmflow.qsm.inversion._common import _Problem
from qsmflow.qsm.inversion.total_variation import _tv_grid
from qsmflow.qsm.kernels import gradient, gradient_adjoint, irfft, rfft

#: Relaxometric constant Dr at 3 T (Hz/ppm), Shin et al. 2021 (scaled with B0).
DR_3T_HZ_PER_PPM = 137.0
#: White-matter R2 (1/s) by field strength (T): 1/T2 with T2 = 80, 71, 47 ms (Cox & Gowland
#: 2010); :func:`default_r2_hz` interpolates linearly in B0.
R2_WHITE_MATTER_HZ = ((1.5, 12.5), (3.0, 14.08), (7.0, 21.28))
#: R2′ (1/s) outside which R2′ is unreliable, at 3 T (scaled with B0), and the weight it
#: then gets (the toolbox of [1]: 1 and 30 1/s, a weight 1/10 on the residual).
R2PRIME_RELIABLE_3T_HZ = (1.0, 30.0)
UNRELIABLE_WEIGHT = 0.01
#: Smoothing of the total-variation terms (ppm/mm): |∇x| ≈ √(|∇x|² + ε²).
DEFAULT_EPS_PPM_PER_MM = 5e-3


def relaxometric_constant(b0_tesla: float) -> float:
    """Dr (Hz/ppm) at ``b0_tesla``: 137 Hz/ppm at 3 T [1]_, in proportion to B0.

    Examples
    --------
    >>> relaxometric_constant(3.0), relaxometric_constant(7.0) > relaxometric_constant(3.0)
    (137.0, True)
    """
    return DR_3T_HZ_PER_PPM * positive('b0_tesla', b0_tesla) / 3.0


def default_r2_hz(b0_tesla: float) -> float:
    """Assumed tissue R2 (1/s) at ``b0_tesla``: white matter's, :data:`R2_WHITE_MATTER_HZ`.

    Examples
    --------
    >>> default_r2_hz(3.0), 12.5 < default_r2_hz(2.0) < 14.08, default_r2_hz(9.4)
    (14.08, True, 21.28)
    """
    b0, r2 = zip(*R2_WHITE_MATTER_HZ)
    return float(np.interp(positive('b0_tesla', b0_tesla), b0, r2))


def chi_separation(
    local_field: np.ndarray,
    r2star_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    b0_tesla: float,
    r2_hz: float | np.ndarray | None = None,
    dr_hz_per_ppm: float | None = None,
    chi_ppm: np.ndarray | None = None,
    lam: float | None = None,
    lam_sep: float = 1e-3,
    eps: float = DEFAULT_EPS_PPM_PER_MM,
    update_total: bool = False,
    max_iter: int = 10,
    tol: float = 1e-3,
    noise_ppm: np.ndarray | None = None,
) -> dict:
    """Separate χ into paramagnetic and diamagnetic sources from the local field and R2*.

    Parameters
    ----------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0 (valid inside ``mask``).
    r2star_hz : (nx, ny, nz) ndarray
        R2* in 1/s (inside ``mask``).
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless).
    b0_tesla : float
        Main field (T): sets the defaults of ``dr_hz_per_ppm`` and ``r2_hz`` and the R2′
        reliability window.
    r2_hz : float or (nx, ny, nz) ndarray, optional
        Spin-echo R2 in 1/s, a value or a map; R2′ = R2* − R2. Default None:
        :func:`default_r2_hz` (white matter's R2 at ``b0_tesla``).
    dr_hz_per_ppm : float, optional
        Relaxometric constant Dr (Hz/ppm); default :func:`relaxometric_constant`.
    chi_ppm : (nx, ny, nz) ndarray, optional
        χ (ppm) of ``local_field`` when it is already computed (e.g. the pipeline's
        dipole inversion before referencing): used as ``s`` instead of running
        :func:`~qsmflow.qsm.inversion.tv`. Not with ``update_total``.
    lam : float, optional
        TV weight of the dipole inversion (ppm·mm), chosen from the data when None as in
        :func:`~qsmflow.qsm.inversion.tv`; also weights ``TV_ε(s)`` in the refinement.
    lam_sep : float, optional
        Weight (ppm·mm) of ``TV_ε(χ⁺) + TV_ε(χ⁻)`` (default 1e-3).
    eps : float, optional
        Smoothing ε of the TV terms (ppm/mm).
    update_total : bool, optional
        Let the refinement change ``s = χ⁺ + χ⁻`` under the field term. Default False:
        ``s`` stays the dipole inversion's χ and is only split (χ⁺ + χ⁻ = χ exactly). On
        the 2 mm phantom the joint update moved deep-GM sums by up to 0.010 ppm and veins
        by −0.14 ppm (the wedge pulls χ towards R2′/Dr where R2′ is too small for χ)
        without bringing χ⁺ or χ⁻ closer to the truth.
    max_iter : int, optional
        Iterations of the refinement (default 10: at 1 mm 0.5 s on 2 cores; 19 until
        ``tol`` changed ROI means by < 0.003 ppm).
    tol : float, optional
        Stop when the iterate changes by ≤ ``tol`` relative to its norm in the mask.
    noise_ppm : (nx, ny, nz) ndarray, optional
        Standard error of the field (ppm), for the choice of ``lam`` as in
        :func:`~qsmflow.qsm.inversion.tv`.

    Returns
    -------
    dict
        ``chi_para_ppm``, ``chi_dia_ppm`` : (nx, ny, nz) ndarray, χ⁺ ≥ 0 and χ⁻ ≤ 0 in ppm
        (0 outside ``mask``, float dtype of ``local_field``); ``chi_ppm``: their sum (ppm);
        ``r2prime_hz``: R2′ used (1/s); ``info``: dict of the effective parameters
        (``dr_hz_per_ppm``, ``r2_hz`` or ``'map'``, ``r2_source``, ``lam``,
        ``iterations``, the TV inversion's choice of weights, ``unreliable_r2prime``: the
        share of mask voxels with R2′ outside the reliability window).

    Raises
    ------
    ValueError
        On invalid shapes, non-finite data in the mask, or non-positive parameters.

    Examples
    --------
    >>> m = np.zeros((24, 24, 24), bool); m[4:20, 4:20, 4:20] = True
    >>> out = chi_separation(np.zeros(m.shape, np.float32), np.full(m.shape, 30.0), m,
    ...                      (1, 1, 1), b0_tesla=3.0, r2_hz=16.3, max_iter=5)
    >>> p, d = out['chi_para_ppm'][m], out['chi_dia_ppm'][m]
    >>> bool(p.min() >= 0 >= d.max()), round(float(np.median(p - d)), 2)  # R2′/Dr = 0.1
    (True, 0.1)
    """
    field, mask, vsz, b0 = check_field_mask(local_field, mask, voxel_size, b0_dir,
                                            name='local_field')
    r2star = as_image(r2star_hz, 'r2star_hz', 3, field.shape)
    if not np.all(np.isfinite(r2star[mask])):
        raise ValueError('r2star_hz has non-finite values inside the mask')
    b0_tesla = positive('b0_tesla', b0_tesla)
    dr = relaxometric_constant(b0_tesla) if dr_hz_per_ppm is None else positive(
        'dr_hz_per_ppm', dr_hz_per_ppm)
    if r2_hz is None:
        r2, source = default_r2_hz(b0_tesla), 'default: white matter at B0 (Cox & Gowland 2010)'
    elif np.ndim(r2_hz) == 0:
        r2, source = non_negative('r2_hz', r2_hz), 'given value'
    else:
        r2, source = as_image(r2_hz, 'r2_hz', 3, field.shape), 'map'
        if not np.all(np.isfinite(r2[mask])):
            raise ValueError('r2_hz has non-finite values inside the mask')
    lam_sep, eps = positive('lam_sep', lam_sep), positive('eps', eps)
    max_iter, tol = iterations(max_iter, tol)

    r2prime = np.where(mask, r2star - r2, 0).astype(np.float32)
    low, high = (v * b0_tesla / 3.0 for v in R2PRIME_RELIABLE_3T_HZ)
    unreliable = mask & ((r2prime < low) | (r2prime > high))
    weight = np.where(unreliable, np.float32(UNRELIABLE_WEIGHT), mask.astype(np.float32))
    if chi_ppm is None:
        prob, s0, info = _tv_grid(field, mask, vsz, b0, lam=lam, noise_ppm=noise_ppm)
    else:
        if update_total:
            raise ValueError('update_total needs the field inversion on its own grid: '
                             'leave chi_ppm out')
        chi = as_image(chi_ppm, 'chi_ppm', 3, field.shape)
        if not np.all(np.isfinite(chi[mask])):
            raise ValueError('chi_ppm has non-finite values inside the mask')
        prob = _Problem(field, mask, vsz, b0, kernel=False)
        s0 = prob.grid.to_grid(np.where(mask, chi, 0), np.float32)
        info = {'lam': None, 'criterion': 'given chi'}
    grid = prob.grid
    s, d, n_iter = _separate_core(
        prob, s0, grid.to_grid(r2prime / np.float32(dr), np.float32),
        grid.to_grid(weight, np.float32), lam=info['lam'] if update_total else 0.0,
        lam_sep=lam_sep, eps=eps, update_total=update_total, max_iter=max_iter, tol=tol)
    para = prob.finish(0.5 * (s + d), field.dtype)
    dia = prob.finish(0.5 * (s - d), field.dtype)
    info = {'dr_hz_per_ppm': dr, 'r2_hz': r2 if source != 'map' else 'map',
            'r2_source': source, 'lam': info['lam'], 'lam_sep': lam_sep, 'eps': eps,
            'update_total': bool(update_total), 'iterations': n_iter,
            'chi_source': 'TV dipole inversion' if chi_ppm is None else 'given chi',
            'unreliable_r2prime': float(unreliable.sum() / mask.sum()),
            'inversion': info}
    return {'chi_para_ppm': para, 'chi_dia_ppm': dia, 'chi_ppm': para + dia,
            'r2prime_hz': r2prime.astype(field.dtype, copy=False), 'info': info}


def _tv_eps_gradient(x, vsz, eps):
    """Gradient of ``Σ √(|∇x|² + ε²)`` (Charbonnier TV) with respect to ``x``."""
    g = gradient(x, vsz)
    norm = np.sqrt(np.einsum('i...,i...->...', g, g) + np.float32(eps * eps))
    g /= norm
    return gradient_adjoint(g, vsz)


def _project_wedge(s, d, a_s, a_d):
    """Per-voxel projection of ``(s, d)`` onto ``d ≥ |s|`` in the metric ``a_s ds² + a_d dd²``
    (``a_s = inf``: ``s`` kept); in place."""
    mag = np.abs(s)
    out = d < mag
    if np.isinf(a_s):
        d[out] = mag[out]
        return s, d
    t = np.maximum((a_s * mag + a_d * d) / (a_s + a_d), 0).astype(np.float32)
    s[out] = (np.sign(s) * t)[out]
    d[out] = t[out]
    return s, d


def _separate_core(prob, s0, r, w, *, lam, lam_sep, eps, update_total, max_iter, tol):
    """FISTA in ``(s, d)`` on the padded grid; returns ``(s, d, iterations)`` (float32)."""
    vsz, D, M = prob.vsz, prob.D, prob.mask
    lip_tv = 4.0 * float(np.sum(1.0 / vsz**2)) / eps
    a_s = (4.0 / 9.0 + (lam + lam_sep) * lip_tv) if update_total else np.inf
    a_d = lam_sep * lip_tv
    field = prob.field * M
    s = s0.astype(np.float32, copy=True)
    d = np.where(w > 0, np.maximum(r, np.abs(s)), np.abs(s)).astype(np.float32)
    ys, yd, t = s.copy(), d.copy(), 1.0
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        gp = _tv_eps_gradient(0.5 * (ys + yd), vsz, eps)
        gm = _tv_eps_gradient(0.5 * (ys - yd), vsz, eps)
        gd = np.float32(0.5 * lam_sep) * (gp - gm)
        if update_total:
            res = irfft(rfft(ys) * D, ys.shape) * M - field
            gs = irfft(rfft(res) * D, ys.shape) + np.float32(0.5 * lam_sep) * (gp + gm)
            if lam > 0:
                gs += np.float32(lam) * _tv_eps_gradient(ys, vsz, eps)
            s_new = ys - gs / np.float32(a_s)
        else:
            s_new = s
        d_new = (a_d * (yd - gd / np.float32(a_d)) + w * r) / (a_d + w)
        s_new, d_new = _project_wedge(s_new.astype(np.float32), d_new.astype(np.float32),
                                      a_s, a_d + w)
        change = np.linalg.norm((d_new - d)[M]) + np.linalg.norm((s_new - s)[M])
        size = np.linalg.norm(d_new[M]) + np.linalg.norm(s_new[M])
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        beta = np.float32((t - 1.0) / t_new)
        ys = s_new + beta * (s_new - s) if update_total else s_new
        yd = d_new + beta * (d_new - d)
        s, d, t = s_new, d_new, t_new
        if change <= tol * size:
            break
    return s, d, n_iter
