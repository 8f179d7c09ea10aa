# SPDX-License-Identifier: Apache-2.0
"""Background removal by the boundary-value problem of a harmonic field: :func:`ismv`
(iterative SMV, boundary values on a shell of the SMV radius) and :func:`lbv` (Laplacian
boundary value, boundary values on a one-voxel layer)."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._morphology import ball_count
from qsmflow.qsm._validation import check_field_mask, iterations
from qsmflow.qsm.bgremove.sharp import VSHARP_PAD_VOXELS
from qsmflow.qsm.kernels import (
    PaddedBox,
    conjugate_gradient,
    gradient,
    gradient_adjoint,
    irfft,
    rfft,
    sphere_kernel,
)

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
    iterations(max_iter, tol, tol_positive=True)
    grid = PaddedBox(mask, margin_voxels=0, pad_voxels=VSHARP_PAD_VOXELS)
    shape = grid.shape
    s = sphere_kernel(shape, vsz, float(radius_mm))
    m = grid.to_grid(mask, np.float32)
    inner = irfft(rfft(m) * s, shape) > 1.0 - 0.5 / ball_count(vsz, float(radius_mm))
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
    iterations(max_iter, tol, tol_positive=True)
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
