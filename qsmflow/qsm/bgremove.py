# SPDX-License-Identifier: Apache-2.0
"""Background field removal: total field (ppm) → local field (ppm).

Three methods, all of the families recommended by the 2024 QSM consensus:

* :func:`vsharp` — variable-radius sophisticated harmonic artifact reduction (V-SHARP):
  harmonic fields obey the spherical mean value (SMV) property, so ``f − SMV_r(f)`` removes
  them; the SMV filter is then deconvolved with a truncated inverse. Fast, erodes the mask.
* :func:`pdf` — projection onto dipole fields (PDF): fit the field inside the mask with
  dipole sources outside it and subtract; keeps the mask, slower.
* :func:`resharp` — SHARP with Tikhonov regularisation instead of truncated deconvolution
  (RESHARP); erodes the mask by one SMV radius.

Both take and return fields in ppm of B0, on the full image grid; FFTs run on the mask's
bounding box (plus a margin), zero-padded to fast FFT lengths.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from qsmflow.qsm.kernels import (
    conjugate_gradient,
    PaddedBox,
    check_field_mask,
    dipole_kernel,
    gradient,
    gradient_adjoint,
    irfft,
    rfft,
    sphere_kernel,
)

#: Largest V-SHARP SMV radius (mm) of the default radius ladder.
DEFAULT_VSHARP_MAX_RADIUS_MM = 12.0

#: Step of the default V-SHARP radius ladder is ``max(1 mm, largest voxel size)``.
DEFAULT_VSHARP_MIN_STEP_MM = 1.0

#: Zero padding (voxels, each side) around the mask's bounding box for V-SHARP. One voxel of
#: background on every side is enough for the (periodic) SMV of the mask to see the edge.
VSHARP_PAD_VOXELS = 1

#: Padding (voxels, each side) around the mask's bounding box for the PDF source region.
PDF_PAD_VOXELS = 4


def default_vsharp_radii_mm(voxel_size) -> np.ndarray:
    """Default V-SHARP radii: 12 mm down to about one voxel.

    The step is ``max(1 mm, largest voxel size)``; the smallest radius is the last one not
    below the largest voxel size (so the final erosion is about one voxel).

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel spacing (mm).

    Returns
    -------
    radii_mm : (n,) ndarray of float64
        Decreasing radii (mm).

    Examples
    --------
    >>> default_vsharp_radii_mm((1, 1, 1)).tolist()
    [12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    >>> default_vsharp_radii_mm((2, 2, 2.5)).tolist()
    [12.0, 9.5, 7.0, 4.5]
    """
    vmax = float(np.max(voxel_size))
    step = max(DEFAULT_VSHARP_MIN_STEP_MM, vmax)
    radii = np.arange(DEFAULT_VSHARP_MAX_RADIUS_MM, vmax - 1e-6, -step)
    if radii.size == 0:
        radii = np.array([vmax])
    return radii


def vsharp(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    radii_mm=None,
    threshold: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field with V-SHARP (variable-radius SHARP).

    For each radius ``r`` (largest first), voxels whose whole sphere of radius ``r`` lies in
    the mask, and that no larger sphere fitted, receive ``f − SMV_r(f)``; harmonic
    (background) fields vanish there by the mean value property. The assembled field is then
    deconvolved with the SMV filter of the *largest* radius, ``δ − s_R``, by truncated
    division: spatial frequencies with ``|1 − S_R(k)| ≤ threshold`` are set to zero [1]_ [2]_.
    The local field is valid in the mask eroded by the smallest radius, which is returned.

    Parameters
    ----------
    total_field : (nx, ny, nz) ndarray
        Total (unwrapped, echo-combined) field in ppm of B0. Values outside ``mask`` are
        ignored.
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless); unused by V-SHARP, accepted for a
        uniform background-removal signature.
    radii_mm : sequence of float, optional
        SMV radii (mm), used largest first. Default :func:`default_vsharp_radii_mm`:
        12 mm down to about one voxel in steps of ``max(1 mm, largest voxel size)``, as in the
        original V-SHARP description (largest radius ≈ 12 mm at the brain centre, shrinking to
        one voxel at the edge) [1]_.
    threshold : float, optional
        Truncation threshold of the deconvolution (dimensionless, default 0.05 [1]_ [2]_).

    Returns
    -------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0 (dtype of ``total_field`` if floating, else float32); 0
        outside ``mask_used``.
    mask_used : (nx, ny, nz) ndarray of bool
        The mask eroded by the smallest radius: where ``local_field`` is valid.

    Raises
    ------
    ValueError
        For mismatched or non-3D inputs, an empty mask, non-finite field values in the mask,
        invalid radii or threshold, or a mask too thin for the smallest radius.

    References
    ----------
    .. [1] Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed
       sensing. Magn Reson Med 2012;67:137-147. doi:10.1002/mrm.23000
    .. [2] Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects
       spatial variation in tissue composition. NeuroImage 2011;55:1645-1656.
       doi:10.1016/j.neuroimage.2010.11.088

    Examples
    --------
    A uniform (hence harmonic) field is removed completely:

    >>> m = np.zeros((32, 32, 32), bool); m[6:26, 6:26, 6:26] = True
    >>> local, m2 = vsharp(np.full(m.shape, 0.3), m, (1, 1, 1), radii_mm=(4, 2))
    >>> bool(np.abs(local[m2]).max() < 1e-5) and bool(m2.sum() < m.sum())
    True
    """
    field, mask, vsz, _ = check_field_mask(total_field, mask, voxel_size, b0_dir,
                                           name='total_field')
    radii = default_vsharp_radii_mm(vsz) if radii_mm is None else np.asarray(radii_mm, float)
    radii = np.atleast_1d(radii).astype(np.float64)
    if radii.ndim != 1 or radii.size == 0 or not np.all(np.isfinite(radii)):
        raise ValueError(f'radii_mm must be a non-empty sequence of numbers, got {radii_mm!r}')
    if np.any(radii < vsz.min()):
        raise ValueError(f'radii_mm must be ≥ the smallest voxel size ({vsz.min()} mm)')
    if not 0 < threshold < 1:
        raise ValueError(f'threshold must be in (0, 1), got {threshold}')
    radii = np.unique(radii)[::-1]
    local, used = _vsharp_core(field, mask, vsz, radii, float(threshold))
    if not used.any():
        raise ValueError(f'mask is too thin: no voxel is {radii[-1]} mm inside it')
    return local.astype(field.dtype, copy=False), used


def _ball_count(vsz, radius_mm) -> int:
    """Number of voxels in the discrete ball of ``radius_mm`` (same rule as the kernel)."""
    reach = np.floor(radius_mm / vsz + 1e-9).astype(int)
    ax = [np.arange(-r, r + 1) * h for r, h in zip(reach, vsz)]
    r2 = ax[0][:, None, None] ** 2 + ax[1][None, :, None] ** 2 + ax[2][None, None, :] ** 2
    return int(np.count_nonzero(r2 <= radius_mm**2 * (1 + 1e-12)))


def _vsharp_core(field, mask, vsz, radii, threshold):
    """V-SHARP on the cropped grid; ``radii`` decreasing (mm). Returns full-size arrays.

    The field and the mask are packed into one complex image ``f + i·m``: the SMV kernel is
    real and even, so one complex inverse FFT per radius yields both ``SMV_r(f)`` (real part)
    and ``SMV_r(m)`` (imaginary part), which decides where the ball fits in the mask.
    """
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=VSHARP_PAD_VOXELS)
    shape = grid.shape
    f = grid.to_grid(np.where(mask, field, 0), np.float32)
    packed = np.empty(shape, np.complex64)
    packed.real = f
    packed.imag = grid.to_grid(mask, np.float32)
    spec = sfft.fftn(packed, overwrite_x=True)
    inside_prev = np.zeros(shape, bool)
    assembled = np.zeros(shape, np.float32)
    work = np.empty(shape, np.complex64)
    for r in radii:
        np.multiply(spec, sphere_kernel(shape, vsz, r, full=True), out=work)
        smv = sfft.ifftn(work, overwrite_x=True)
        # the whole ball lies in the mask ⇔ SMV of the mask is 1 (tolerance: half a voxel)
        inside = smv.imag > 1.0 - 0.5 / _ball_count(vsz, r)
        new = inside & ~inside_prev
        np.subtract(f, smv.real, out=assembled, where=new)
        inside_prev |= inside
    used = inside_prev
    # truncated deconvolution of δ − s_R
    h = 1.0 - sphere_kernel(shape, vsz, radii[0])
    inv = np.zeros_like(h)
    keep = np.abs(h) > threshold
    inv[keep] = 1.0 / h[keep]
    local = irfft(rfft(assembled) * inv, shape).astype(np.float32, copy=False)
    local *= used
    return grid.to_full(local), grid.to_full(used)


def pdf(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    tol: float = 1e-3,
    max_iter: int = 30,
    pad_voxels: int = PDF_PAD_VOXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field by projection onto dipole fields (PDF).

    The background field is modelled as the field of susceptibility sources ``χ_b`` lying
    outside the mask (in the bounding box grown by ``pad_voxels``). ``χ_b`` minimises
    ``‖M (d ∗ (M̄ χ_b)) − M f‖²`` (``M`` the mask, ``M̄`` its complement, ``d`` the unit
    dipole), solved by conjugate gradients on the normal equations (CGNR); the local field
    is ``M (f − d ∗ χ_b)`` [1]_. Uniform weights are used (no magnitude/noise weighting).

    Parameters
    ----------
    total_field : (nx, ny, nz) ndarray
        Total field in ppm of B0. Values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel index axes (dimensionless unit vector).
    tol : float, optional
        Stop when the normal-equation residual falls below ``tol`` times its initial value
        (dimensionless, default 1e-3: about 20 iterations on brain data; the local field
        near the mask edge is still improving at 1e-2). As in [1]_, the iteration count
        also regularises the projection: running to much tighter tolerances mostly fits
        noise with sources just outside the mask.
    max_iter : int, optional
        Maximum number of CG iterations (default 30).
    pad_voxels : int, optional
        Zero padding (voxels) added around the mask's bounding box, where background sources
        may also lie (default 4; sources between the mask and its bounding box are always
        allowed).

    Returns
    -------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0 (dtype of ``total_field`` if floating, else float32); 0
        outside ``mask``.
    mask_used : (nx, ny, nz) ndarray of bool
        A copy of ``mask`` (PDF does not erode).

    Raises
    ------
    ValueError
        For mismatched or non-3D inputs, an empty mask, non-finite field values in the mask
        or invalid solver options.

    References
    ----------
    .. [1] Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y.
       A novel background field removal method for MRI using projection onto dipole fields
       (PDF). NMR Biomed 2011;24:1129-1136. doi:10.1002/nbm.1670

    Examples
    --------
    The field of a source outside the mask is removed; the mask is kept:

    >>> from qsmflow.qsm.kernels import dipole_kernel, rfft, irfft
    >>> chi = np.zeros((48, 48, 48), np.float32); chi[4:8, 20:28, 20:28] = 1.0
    >>> bg = irfft(rfft(chi) * dipole_kernel(chi.shape, (1, 1, 1)), chi.shape)
    >>> m = np.zeros(chi.shape, bool); m[16:36, 14:34, 14:34] = True
    >>> local, m2 = pdf(bg, m, (1, 1, 1))
    >>> bool(np.abs(local[m]).max() < 0.1 * np.abs(bg[m]).max()) and bool((m2 == m).all())
    True
    """
    field, mask, vsz, b0 = check_field_mask(total_field, mask, voxel_size, b0_dir,
                                            name='total_field')
    if not (tol > 0 and np.isfinite(tol)):
        raise ValueError(f'tol must be positive, got {tol}')
    if int(max_iter) < 1:
        raise ValueError(f'max_iter must be ≥ 1, got {max_iter}')
    if int(pad_voxels) < 0:
        raise ValueError(f'pad_voxels must be ≥ 0, got {pad_voxels}')
    local = _pdf_core(field, mask, vsz, b0, float(tol), int(max_iter), int(pad_voxels))
    return local.astype(field.dtype, copy=False), mask.copy()


def _pdf_core(field, mask, vsz, b0, tol, max_iter, pad):
    """PDF by CGNR on the padded box (float32 arrays, float64 scalars)."""
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=pad)
    shape = grid.shape
    m = grid.to_grid(mask, bool)
    out = ~m
    d = dipole_kernel(shape, vsz, b0)
    f = grid.to_grid(np.where(mask, field, 0), np.float32)

    def dipole_conv(x):
        spec = rfft(x)
        spec *= d
        return irfft(spec, shape).astype(np.float32, copy=False)

    def normal_op(x):
        """``M̄ · d ∗ (M · d ∗ (M̄ x))`` (``x`` is already zero in the mask)."""
        y = dipole_conv(x)
        y *= m
        y = dipole_conv(y)
        y *= out
        return y

    # CG on the normal equations  Aᵀ A x = Aᵀ f
    rhs = dipole_conv(f)
    rhs *= out
    x = conjugate_gradient(normal_op, rhs, tol=tol, max_iter=max_iter)
    local = f - dipole_conv(x)
    local *= m
    return grid.to_full(local)


#: Default SMV radius (mm) of :func:`resharp`.
DEFAULT_RESHARP_RADIUS_MM = 5.0


def resharp(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    radius_mm: float = DEFAULT_RESHARP_RADIUS_MM,
    lam: float = 1e-4,
    tol: float = 1e-3,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field with regularisation-enabled SHARP (RESHARP).

    With ``C = δ − s_r`` (identity minus the spherical mean of radius ``r``) and ``M_r`` the
    mask eroded by ``r``, the local field ``x`` minimises
    ``‖M_r (C f − C x)‖² + lam ‖x‖²``: the SMV high-pass of the data is matched only where
    the whole sphere lies inside the mask (where the background is removed exactly), and
    Tikhonov regularisation replaces the truncated deconvolution of SHARP [1]_. Solved by
    conjugate gradients on the normal equations; the local field is returned on ``M_r``.

    Parameters
    ----------
    total_field : (nx, ny, nz) ndarray
        Total field in ppm of B0. Values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        Unused; accepted for the uniform background-removal signature.
    radius_mm : float, optional
        SMV radius (mm, default :data:`DEFAULT_RESHARP_RADIUS_MM`; at least the largest
        voxel size).
    lam : float, optional
        Tikhonov weight (dimensionless, default 1e-4). Larger values (e.g. 1e-2) shrink the
        low spatial frequencies, where ``δ − s_r`` is small: on forward simulations of a
        compact source (2 mm voxels) 1e-2 lost 16–37 % of the local field, 1e-4 ≤ 5 %.
    tol : float, optional
        Relative residual at which CG stops (dimensionless, default 1e-3).
    max_iter : int, optional
        Maximum CG iterations (default 100).

    Returns
    -------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0, 0 outside ``mask_used``.
    mask_used : (nx, ny, nz) ndarray of bool
        ``mask`` eroded by ``radius_mm``.

    Raises
    ------
    ValueError
        For invalid inputs or options, or a mask thinner than the sphere.

    References
    ----------
    .. [1] Sun H, Wilman AH. Background field removal using spherical mean value filtering
       and Tikhonov regularization. Magn Reson Med 2014;71:1151-1157.
       doi:10.1002/mrm.24765

    Examples
    --------
    >>> m = np.zeros((32, 32, 32), bool); m[6:26, 6:26, 6:26] = True
    >>> local, m2 = resharp(np.full(m.shape, 0.3), m, (1, 1, 1), radius_mm=3)
    >>> bool(np.abs(local[m2]).max() < 1e-3) and bool(m2.sum() < m.sum())
    True
    """
    field, mask, vsz, _ = check_field_mask(total_field, mask, voxel_size, b0_dir,
                                           name='total_field')
    if not (np.isscalar(radius_mm) and np.isfinite(radius_mm) and radius_mm >= vsz.max()):
        raise ValueError(f'radius_mm must be ≥ the largest voxel size ({vsz.max()} mm), '
                         f'got {radius_mm!r}')
    if not (np.isscalar(lam) and np.isfinite(lam) and lam > 0):
        raise ValueError(f'lam must be positive, got {lam!r}')
    if not (tol > 0 and np.isfinite(tol)):
        raise ValueError(f'tol must be positive, got {tol}')
    if int(max_iter) < 1:
        raise ValueError(f'max_iter must be ≥ 1, got {max_iter}')
    local, used = _resharp_core(field, mask, vsz, float(radius_mm), float(lam), float(tol),
                                int(max_iter))
    if not used.any():
        raise ValueError(f'mask is too thin: no voxel is {radius_mm} mm inside it')
    return local.astype(field.dtype, copy=False), used


def _resharp_core(field, mask, vsz, radius, lam, tol, max_iter):
    """RESHARP by CG on ``(C M_r C + lam) x = C M_r C f`` (C symmetric) on the padded box."""
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=VSHARP_PAD_VOXELS)
    shape = grid.shape
    s = sphere_kernel(shape, vsz, radius)
    c = (1.0 - s).astype(np.float32)
    m = grid.to_grid(mask, np.float32)
    used = irfft(rfft(m) * s, shape) > 1.0 - 0.5 / _ball_count(vsz, radius)
    f = grid.to_grid(np.where(mask, field, 0), np.float32)

    def conv_c(x):
        return irfft(rfft(x) * c, shape).astype(np.float32, copy=False)

    def normal_op(x):
        y = conv_c(x)
        y *= used
        y = conv_c(y)
        y += np.float32(lam) * x
        return y

    rhs = conv_c(f)
    rhs *= used
    rhs = conv_c(rhs)
    x = conjugate_gradient(normal_op, rhs, tol=tol, max_iter=max_iter)
    x *= used
    return grid.to_full(x), grid.to_full(used)


def _check_solver(tol, max_iter):
    if not (np.isscalar(tol) and np.isfinite(tol) and tol > 0):
        raise ValueError(f'tol must be positive, got {tol!r}')
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f'max_iter must be ≥ 1, got {max_iter!r}')


#: Default SMV radius (mm) of :func:`ismv`.
DEFAULT_ISMV_RADIUS_MM = 5.0


def ismv(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    radius_mm: float = DEFAULT_ISMV_RADIUS_MM,
    tol: float = 1e-4,
    max_iter: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field with iterative spherical mean value filtering (iSMV).

    The background field ``b`` is harmonic, so it equals its own spherical mean:
    ``b = SMV_r(b)`` in the eroded mask ``M_r`` (voxels whose ball of radius ``r`` lies in
    the mask). On the boundary shell ``mask − M_r`` the total field is taken as the
    background (the local field there is assumed negligible). iSMV [1]_ iterates
    ``b ← M_r SMV_r(b) + (1 − M_r) f`` to its fixed point; here the same fixed point is
    computed by conjugate gradients on the equivalent symmetric positive definite system
    ``M_r (δ − s_r) M_r b = M_r s_r ((1 − M_r) f)`` (far fewer iterations than the plain
    fixed-point sweep). The local field is ``f − b`` on ``M_r``.

    Parameters
    ----------
    total_field : (nx, ny, nz) ndarray
        Total field in ppm of B0. Values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        Unused; accepted for the uniform background-removal signature.
    radius_mm : float, optional
        SMV radius (mm, default 5; at least the largest voxel size). The mask is eroded by
        it.
    tol : float, optional
        Relative residual at which CG stops (dimensionless, default 1e-4).
    max_iter : int, optional
        Maximum CG iterations (default 500).

    Returns
    -------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0, 0 outside ``mask_used``.
    mask_used : (nx, ny, nz) ndarray of bool
        ``mask`` eroded by ``radius_mm``.

    Raises
    ------
    ValueError
        For invalid inputs or options, or a mask thinner than the sphere.

    References
    ----------
    .. [1] Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical mean value
       method for background field removal in MRI. Magn Reson Med 2014;72:1065-1071.
       doi:10.1002/mrm.24998

    Examples
    --------
    >>> m = np.zeros((32, 32, 32), bool); m[6:26, 6:26, 6:26] = True
    >>> local, m2 = ismv(np.full(m.shape, 0.3), m, (1, 1, 1), radius_mm=3)
    >>> bool(np.abs(local[m2]).max() < 1e-3) and bool(m2.sum() < m.sum())
    True
    """
    field, mask, vsz, _ = check_field_mask(total_field, mask, voxel_size, b0_dir,
                                           name='total_field')
    if not (np.isscalar(radius_mm) and np.isfinite(radius_mm) and radius_mm >= vsz.max()):
        raise ValueError(f'radius_mm must be ≥ the largest voxel size ({vsz.max()} mm), '
                         f'got {radius_mm!r}')
    _check_solver(tol, max_iter)
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=VSHARP_PAD_VOXELS)
    shape = grid.shape
    s = sphere_kernel(shape, vsz, float(radius_mm))
    m = grid.to_grid(mask, np.float32)
    inner = irfft(rfft(m) * s, shape) > 1.0 - 0.5 / _ball_count(vsz, float(radius_mm))
    if not inner.any():
        raise ValueError(f'mask is too thin: no voxel is {radius_mm} mm inside it')
    f = grid.to_grid(np.where(mask, field, 0), np.float32)
    shell = f * (m.astype(bool) & ~inner)

    def smv(x):
        return irfft(rfft(x) * s, shape).astype(np.float32, copy=False)

    def op(x):
        y = x - smv(x)
        y *= inner
        return y

    rhs = smv(shell) * inner
    b = conjugate_gradient(op, rhs, f * inner, tol=float(tol), max_iter=int(max_iter))
    local = (f - b) * inner
    return grid.to_full(local).astype(field.dtype, copy=False), grid.to_full(inner)


def lbv(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir=(0, 0, 1),
    *,
    tol: float = 1e-5,
    max_iter: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field with the Laplacian boundary value (LBV) method.

    The background field ``b`` solves Laplace's equation ``Δb = 0`` inside the mask, with the
    total field as Dirichlet boundary condition on the mask boundary (the local field is
    assumed negligible on the one-voxel boundary layer) [1]_. The discrete problem uses the
    7-point Laplacian (:func:`~qsmflow.qsm.kernels.gradient` and its adjoint, anisotropic
    voxels honoured) on the interior ``M_1`` (mask voxels whose six neighbours are all in the
    mask), boundary values from the mask's boundary layer; it is solved by conjugate
    gradients on the (symmetric positive definite) interior system, restricted to the
    mask's bounding box, instead of the multigrid solver of [1]_. The local field is
    ``f − b`` on ``M_1``.

    Parameters
    ----------
    total_field : (nx, ny, nz) ndarray
        Total field in ppm of B0. Values outside ``mask`` are ignored.
    mask : (nx, ny, nz) ndarray of bool
        Brain mask (non-empty).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float, optional
        Unused; accepted for the uniform background-removal signature.
    tol : float, optional
        Relative residual at which CG stops (dimensionless, default 1e-5).
    max_iter : int, optional
        Maximum CG iterations (default 2000).

    Returns
    -------
    local_field : (nx, ny, nz) ndarray
        Local field in ppm of B0, 0 outside ``mask_used``.
    mask_used : (nx, ny, nz) ndarray of bool
        The interior ``M_1`` (mask eroded by one voxel, 6-neighbourhood).

    Raises
    ------
    ValueError
        For invalid inputs or options, or a mask without interior voxels.

    References
    ----------
    .. [1] Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the
       Laplacian boundary value problem. NMR Biomed 2014;27:312-319. doi:10.1002/nbm.3064

    Examples
    --------
    >>> m = np.zeros((32, 32, 32), bool); m[6:26, 6:26, 6:26] = True
    >>> i = np.indices(m.shape)[0]
    >>> local, m2 = lbv(0.3 + 0.01 * i, m, (1, 1, 1))
    >>> bool(np.abs(local[m2]).max() < 1e-3) and bool(m2.sum() < m.sum())
    True
    """
    field, mask, vsz, _ = check_field_mask(total_field, mask, voxel_size, b0_dir,
                                           name='total_field')
    _check_solver(tol, max_iter)
    grid = PaddedBox(mask, margin_voxels=1)
    m = grid.to_grid(mask, bool)
    inner = m.copy()
    for a in range(3):
        inner &= np.roll(m, 1, axis=a) & np.roll(m, -1, axis=a)
    if not inner.any():
        raise ValueError('mask is too thin: it has no interior voxel')
    f = grid.to_grid(np.where(mask, field, 0), np.float32)
    shell = f * (m & ~inner)
    inner_f = inner.astype(np.float32)

    def neg_lap(x):
        return gradient_adjoint(gradient(x, vsz), vsz)

    def op(x):
        y = neg_lap(x)
        y *= inner_f
        return y

    rhs = -neg_lap(shell) * inner_f
    b = conjugate_gradient(op, rhs, tol=float(tol), max_iter=int(max_iter))
    local = (f - b) * inner_f
    return grid.to_full(local).astype(field.dtype, copy=False), grid.to_full(inner)
