# SPDX-License-Identifier: Apache-2.0
"""k-space kernels and FFT geometry shared by background removal and inversion.

Conventions
-----------
* Arrays are indexed ``[i, j, k]`` in voxel index space; ``voxel_size`` gives the
  spacing along those axes in mm.
* ``b0_dir`` is the unit B0 direction expressed in voxel index axes (see
  :func:`b0_dir_from_affine`).
* Kernels are returned for real-to-complex transforms (:func:`scipy.fft.rfftn`), i.e. with
  shape ``(n0, n1, n2 // 2 + 1)``, as float32 unless asked otherwise.
* FFTs use the worker count of the enclosing :func:`qsmflow.qsm.threads.limit` (scipy's
  ``workers=None``), and the compiled loops numba's thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy import fft as sfft

from qsmflow.qsm import _vector
from qsmflow.qsm._validation import check_field_mask  # noqa: F401 - public name, kept

#: Proton gyromagnetic ratio over 2π, in Hz/T.
GAMMA_HZ_PER_T = 42.577478e6


def b0_dir_from_affine(affine) -> np.ndarray:
    """Unit B0 direction in voxel index axes, from a NIfTI voxel-to-world affine.

    World B0 is the scanner z axis in both RAS and LPS conventions. With the 3×3 part of
    the affine written ``A = R · diag(zooms)`` (``R`` orthonormal), the B0 direction in
    voxel index coordinates is ``R.T @ (0, 0, 1)``.

    Parameters
    ----------
    affine : (4, 4) or (3, 3) array_like
        Voxel-to-world affine (mm).

    Returns
    -------
    b0_dir : (3,) ndarray of float64
        Unit vector (dimensionless).

    Examples
    --------
    >>> b = b0_dir_from_affine(np.diag([2.0, 1.0, 1.5, 1.0]))
    >>> bool(np.allclose(b, [0, 0, 1]))
    True
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.linalg.norm(a, axis=0)
    if np.any(zooms == 0):
        raise ValueError('affine has a zero-length voxel axis')
    rot = a / zooms
    b0 = rot.T @ np.array([0.0, 0.0, 1.0])
    return b0 / np.linalg.norm(b0)


def padded_shape(shape, pad_voxels=0) -> tuple[int, ...]:
    """Shape padded by ``pad_voxels`` on each side, then grown to fast FFT lengths.

    Parameters
    ----------
    shape : tuple of int
        Array shape (voxels).
    pad_voxels : int or sequence of int
        Padding added on *each* side of each axis (voxels).

    Returns
    -------
    tuple of int
        Padded shape (voxels); every length is a fast length for :mod:`scipy.fft`.

    Examples
    --------
    >>> padded_shape((97, 100, 13), 4)
    (108, 108, 24)
    """
    pad = np.broadcast_to(np.asarray(pad_voxels, dtype=int), (len(shape),))
    return tuple(int(sfft.next_fast_len(int(n + 2 * p), real=True)) for n, p in zip(shape, pad))


def pad_to(array: np.ndarray, shape) -> np.ndarray:
    """Zero-pad ``array`` to ``shape``, centring the original data.

    Returns the padded array (same dtype); :func:`crop_from` undoes it.
    """
    before = [(s - n) // 2 for s, n in zip(shape, array.shape)]
    if any(b < 0 for b in before):
        raise ValueError(f'cannot pad shape {array.shape} to smaller shape {tuple(shape)}')
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(b, b + n) for b, n in zip(before, array.shape))] = array
    return out


def crop_from(array: np.ndarray, shape) -> np.ndarray:
    """Central crop of a padded ``array`` back to ``shape`` (inverse of :func:`pad_to`)."""
    before = [(n - s) // 2 for s, n in zip(shape, array.shape)]
    return array[tuple(slice(b, b + s) for b, s in zip(before, shape))]


def bounding_box(mask: np.ndarray, margin=0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``margin`` voxels (clipped).

    Examples
    --------
    >>> m = np.zeros((10, 10, 10), bool); m[2:4, 5, 6:9] = True
    >>> bounding_box(m, 1)
    (slice(1, 5, None), slice(4, 7, None), slice(5, 10, None))
    """
    mask = np.asarray(mask)
    box = []
    for axis, n in enumerate(mask.shape):  # projections: no index array per mask voxel
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            raise ValueError('mask is empty')
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return tuple(box)


def kspace_grid(shape, voxel_size, dtype=np.float32):
    """Spatial-frequency coordinates (cycles/mm) of an ``rfftn`` grid of ``shape``.

    Returns three broadcastable arrays ``(k0, k1, k2)``; the last axis holds the
    non-negative frequencies only (``rfftfreq``).
    """
    d = np.asarray(voxel_size, dtype=np.float64)
    k0 = sfft.fftfreq(shape[0], d=d[0]).astype(dtype)[:, None, None]
    k1 = sfft.fftfreq(shape[1], d=d[1]).astype(dtype)[None, :, None]
    k2 = sfft.rfftfreq(shape[2], d=d[2]).astype(dtype)[None, None, :]
    return k0, k1, k2


def dipole_kernel(shape, voxel_size, b0_dir=(0, 0, 1), dtype=np.float32, *,
                  cross_taper: float | None = None) -> np.ndarray:
    """Unit dipole kernel ``D(k) = 1/3 − (k·b)² / |k|²`` on an ``rfftn`` grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Real-space grid shape (voxels), normally already padded.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel index axes (normalised here).
    dtype : numpy dtype
        Output float type.
    cross_taper : float, optional
        For an oblique B0: fade the cross terms ``2 b_i b_j k_i k_j`` of ``(k·b)²`` to 0 at
        each axis's Nyquist frequency, each ``k_i`` by a raised cosine from ``cross_taper``
        × its Nyquist frequency up (a fraction in (0, 1)). Without it the kernel of an
        oblique B0 jumps where the periodic grid wraps from +k_N to −k_N, and the field of
        any voxel-sharp source rings at the Nyquist frequency (a checkerboard that reaches
        far from the source). Below the taper, and for a B0 along a grid axis (no cross
        terms), the kernel is the plain one (to rounding below the taper, bit for bit for
        an axis-aligned B0). Default None: the plain kernel, whose Nyquist planes average
        both signs instead.

    Returns
    -------
    D : ndarray, shape ``(n0, n1, n2 // 2 + 1)``
        Dimensionless kernel; ``D(0) = 0`` (the mean of χ is not recoverable).

    Raises
    ------
    ValueError
        If ``cross_taper`` is not in (0, 1).

    Examples
    --------
    >>> D = dipole_kernel((16, 16, 16), (1, 1, 1))
    >>> [round(float(v), 4) for v in (D[0, 0, 1], D[1, 0, 0], D[0, 0, 0])]
    [-0.6667, 0.3333, 0.0]
    >>> bool((dipole_kernel((16, 16, 16), (1, 1, 1), cross_taper=0.8) == D).all())
    True
    """
    b = np.asarray(b0_dir, dtype=np.float64)
    b = b / np.linalg.norm(b)
    k = kspace_grid(shape, voxel_size, dtype=np.float64)
    if cross_taper is None:
        kb2_of = _kb2_nyquist_averaged(k, shape, b)
    else:
        if not 0.0 < float(cross_taper) < 1.0:
            raise ValueError(f'cross_taper must be in (0, 1), got {cross_taper!r}')
        kb2_of = _kb2_cross_tapered(k, voxel_size, b, float(cross_taper))
    D = np.empty((k[0].shape[0], k[1].shape[1], k[2].shape[2]), dtype)

    def slab(s):  # slabs of the first axis side by side: each value's operations as a whole
        ks = (k[0][s], k[1], k[2])
        kb2 = kb2_of(s, ks)
        k2sum = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
        with np.errstate(invalid='ignore', divide='ignore'):
            D[s] = 1.0 / 3.0 - kb2 / k2sum  # float64, rounded to dtype as astype does

    _vector.slabwise(slab, D.shape[0])
    D[0, 0, 0] = 0.0
    return D


def _kb2_nyquist_averaged(k, shape, b):
    """``(k·b)²`` of :func:`dipole_kernel`'s plain kernel, per slab ``s`` of the first axis
    (``ks``: the grid's k for that slab). On an even axis the Nyquist frequency stands for
    both +k_N and −k_N. For an oblique b0, D differs between the two, so D is averaged over
    both signs there (the cross terms of (k·b)² with a Nyquist component cancel): this keeps
    the kernel Hermitian, i.e. the convolution real, instead of leaving a checkerboard error
    of order 1/n in the field."""
    nyq = [np.zeros(ka.shape, bool) for ka in k]
    for a, n in enumerate(shape):
        if n % 2 == 0:
            idx = n // 2 if a < 2 else -1
            sl = [slice(None)] * 3
            sl[a] = idx
            nyq[a][tuple(sl)] = True

    def kb2_of(s, ks):
        qs = (nyq[0][s], nyq[1], nyq[2])
        kb_regular = sum(np.where(q, 0.0, ka) * ba for ka, q, ba in zip(ks, qs, b))
        return kb_regular**2 + sum(np.where(q, ka, 0.0) ** 2 * ba**2
                                   for ka, q, ba in zip(ks, qs, b))

    return kb2_of


def _kb2_cross_tapered(k, voxel_size, b, start):
    """``(k·b)²`` of :func:`dipole_kernel` with its cross terms faded out towards each
    axis's Nyquist frequency (``cross_taper``): ``Σ b_i² k_i² + 2 Σ_{i<j} b_i b_j k̃_i k̃_j``
    with ``k̃_i = k_i w(|k_i| / k_N,i)``, ``w`` 1 up to ``start`` and a raised cosine to 0
    at 1; per slab ``s`` of the first axis, as :func:`_kb2_nyquist_averaged`."""
    kt = []
    for ka, v in zip(k, voxel_size):
        r = np.abs(ka) * (2.0 * float(v))  # |k| over the axis's Nyquist frequency 1/(2v)
        ramp = np.clip((r - start) / (1.0 - start), 0.0, 1.0)
        kt.append(ka * (0.5 + 0.5 * np.cos(np.pi * ramp)))
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3) if b[i] * b[j] != 0.0]

    def kb2_of(s, ks):
        kts = (kt[0][s], kt[1], kt[2])
        kb2 = sum(ka**2 * ba**2 for ka, ba in zip(ks, b))
        for i, j in pairs:
            kb2 = kb2 + 2.0 * b[i] * b[j] * kts[i] * kts[j]
        return kb2

    return kb2_of


def sphere_kernel(shape, voxel_size, radius_mm, dtype=np.float32, *, full=False) -> np.ndarray:
    """Spherical-mean-value (SMV) kernel: FFT of a normalised sphere of ``radius_mm``.

    The sphere is centred on voxel ``(0, 0, 0)`` with periodic wrap, so that multiplying a
    spectrum by it computes the spherical mean of each voxel's neighbourhood.

    The ball is point-symmetric, so its DFT is the separable cosine sum
    ``Σ_x ball(x) Π_a cos(2π k_a x_a / n_a)``; it is evaluated axis by axis over the ball's
    small support (three matrix products), which is exact and several times faster than a
    full-grid FFT.

    Parameters
    ----------
    shape : tuple of 3 int
        Real-space grid shape (voxels).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    radius_mm : float
        Sphere radius (mm); voxels whose centre is within it belong to the ball.
    dtype : numpy dtype
        Output float type.
    full : bool
        Return the kernel on the full ``fftn`` grid instead of the ``rfftn`` half grid.

    Returns
    -------
    S : ndarray, shape ``(n0, n1, n2 // 2 + 1)`` (or ``shape`` if ``full``)
        Real kernel with ``S(0) = 1`` (dimensionless).
    """
    shape = tuple(int(n) for n in shape)
    d = np.asarray(voxel_size, dtype=np.float64)
    nfreq = (shape[0], shape[1], shape[2] if full else shape[2] // 2 + 1)
    reach = np.floor(radius_mm / d + 1e-9).astype(int)
    if np.any(2 * reach + 1 > np.asarray(shape)):
        out = _sphere_kernel_fft(shape, d, radius_mm, dtype)
        return _mirror_full(out, shape) if full else out
    # non-negative offsets only; each offset stands for its mirror images (weights 1 or 2)
    offs = [np.arange(r + 1, dtype=np.float64) for r in reach]
    wts = [np.where(o > 0, 2.0, 1.0) for o in offs]
    r2 = (
        (offs[0][:, None, None] * d[0]) ** 2
        + (offs[1][None, :, None] * d[1]) ** 2
        + (offs[2][None, None, :] * d[2]) ** 2
    )
    ball = (r2 <= radius_mm**2 * (1 + 1e-12)).astype(np.float64)
    ball *= wts[0][:, None, None] * wts[1][None, :, None] * wts[2][None, None, :]
    ball /= ball.sum()
    cos = [
        np.cos(2 * np.pi * np.outer(np.arange(nf), o) / n)
        for nf, o, n in zip(nfreq, offs, shape)
    ]
    t = ball @ cos[2].T  # (x0, x1, k2)
    t = np.matmul(cos[1][None], t)  # (x0, k1, k2)
    out = cos[0] @ t.reshape(t.shape[0], -1)  # (k0, k1 * k2)
    return out.reshape(nfreq).astype(dtype)


def _mirror_full(half, shape):
    """Full-grid spectrum of a real, point-symmetric kernel from its ``rfftn`` half."""
    k2 = np.arange(shape[2])
    return np.ascontiguousarray(half[..., np.minimum(k2, shape[2] - k2)])


def _sphere_kernel_fft(shape, d, radius_mm, dtype):
    """Reference :func:`sphere_kernel` by a full-grid FFT (used when the ball wraps)."""
    grids = []
    for n, dx in zip(shape, d):
        c = np.arange(n, dtype=np.float64)
        c = np.where(c > n // 2, c - n, c) * dx
        grids.append(c)
    r2 = grids[0][:, None, None] ** 2 + grids[1][None, :, None] ** 2 + grids[2][None, None, :] ** 2
    ball = (r2 <= radius_mm**2 * (1 + 1e-12)).astype(np.float64)
    ball /= ball.sum()
    return sfft.rfftn(ball).real.astype(dtype)


def laplacian_kernel(shape, voxel_size, dtype=np.float32) -> np.ndarray:
    """k-space kernel of ``∇ᵀ∇`` for periodic forward differences, on an ``rfftn`` grid.

    With the forward difference ``(∇_a x)[i] = (x[i + 1] − x[i]) / h_a`` (periodic), the
    operator ``∇ᵀ∇`` (a negative discrete Laplacian) is diagonal in k-space with
    ``L(k) = Σ_a (2 − 2 cos(2π k_a h_a)) / h_a²``.

    Parameters
    ----------
    shape : tuple of 3 int
        Real-space grid shape (voxels).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    dtype : numpy dtype
        Output float type.

    Returns
    -------
    L : ndarray, shape ``(n0, n1, n2 // 2 + 1)``
        Non-negative kernel in mm⁻²; ``L(0) = 0``.

    Examples
    --------
    >>> L = laplacian_kernel((8, 8, 8), (1, 1, 2))
    >>> float(L[0, 0, 0]), float(L[4, 0, 0]), float(L[0, 0, 4])
    (0.0, 4.0, 1.0)
    """
    d = np.asarray(voxel_size, dtype=np.float64)
    k = kspace_grid(shape, d, dtype=np.float64)
    L = sum((2.0 - 2.0 * np.cos(2 * np.pi * ka * h)) / h**2 for ka, h in zip(k, d))
    return L.astype(dtype)


class PaddedBox:
    """Crop to the mask's bounding box (+ margin), zero-pad to a fast FFT shape, and back.

    Parameters
    ----------
    mask : (nx, ny, nz) ndarray of bool
        Region of interest; must not be empty.
    margin_voxels : int
        Voxels kept around the bounding box before padding (clipped to the image).
    pad_voxels : int or sequence of int
        Zero padding added on each side of the cropped box (voxels), before growing to fast
        FFT lengths with :func:`padded_shape`.

    Attributes
    ----------
    box : tuple of slice
        Bounding box (with margin) in the full image.
    shape : tuple of int
        Padded grid shape (voxels).

    Examples
    --------
    >>> m = np.zeros((40, 40, 40), bool); m[10:20, 12:30, 5:9] = True
    >>> g = PaddedBox(m, margin_voxels=1, pad_voxels=2)
    >>> x = np.random.default_rng(0).random(m.shape)
    >>> bool(np.array_equal(g.to_full(g.to_grid(x))[g.box], x[g.box]))
    True
    """

    def __init__(self, mask, margin_voxels=0, pad_voxels=0):
        self.full_shape = tuple(mask.shape)
        self.box = bounding_box(mask, int(margin_voxels))
        self.box_shape = tuple(s.stop - s.start for s in self.box)
        self.shape = padded_shape(self.box_shape, pad_voxels)

    def to_grid(self, array, dtype=None) -> np.ndarray:
        """Crop ``array`` (full image) to the box and zero-pad it to :attr:`shape`."""
        cropped = np.asarray(array)[self.box]
        if dtype is not None:
            cropped = cropped.astype(dtype, copy=False)
        return pad_to(cropped, self.shape)

    def within_image(self, axis: int) -> np.ndarray:
        """Which grid indices along ``axis`` show a voxel of the image (bool, length
        ``shape[axis]``): False for the padding that lies beyond the image's edge (the box
        sits centred in the grid, as :func:`pad_to` puts it)."""
        box, n, size = self.box[axis], self.box_shape[axis], self.shape[axis]
        image_index = box.start - (size - n) // 2 + np.arange(size)
        return (image_index >= 0) & (image_index < self.full_shape[axis])

    def to_full(self, grid_array, dtype=None) -> np.ndarray:
        """Put the central box of ``grid_array`` back into a zero full-size image."""
        out = np.zeros(self.full_shape, dtype=dtype or grid_array.dtype)
        out[self.box] = crop_from(grid_array, self.box_shape)
        return out


def rfft(x: np.ndarray) -> np.ndarray:
    """Real-to-complex 3D FFT (complex64 for float32 in); workers from
    :func:`qsmflow.qsm.threads.limit`."""
    return sfft.rfftn(x)


def irfft(X: np.ndarray, shape) -> np.ndarray:
    """Inverse of :func:`rfft` onto a real grid of ``shape``."""
    return sfft.irfftn(X, s=shape)


# --- finite differences (periodic, forward) --------------------------------------------------
# Compiled loops (numba, parallel over the first axis): each output voxel reads its neighbours
# once, which is several times faster than the equivalent chain of numpy slicing operations.


@numba.njit(parallel=True, fastmath=True, cache=True)
def _gradient_nb(x, ih0, ih1, ih2, gx, gy, gz):  # pragma: no cover - compiled
    n0, n1, n2 = x.shape
    for i in numba.prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                c = x[i, j, k]
                gx[i, j, k] = (x[ip, j, k] - c) * ih0
                gy[i, j, k] = (x[i, jp, k] - c) * ih1
                gz[i, j, k] = (x[i, j, kp] - c) * ih2


@numba.njit(parallel=True, fastmath=True, cache=True)
def _gradient_adjoint_nb(gx, gy, gz, ih0, ih1, ih2, out):  # pragma: no cover - compiled
    n0, n1, n2 = out.shape
    for i in numba.prange(n0):
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                km = k - 1 if k > 0 else n2 - 1
                out[i, j, k] = (
                    (gx[im, j, k] - gx[i, j, k]) * ih0
                    + (gy[i, jm, k] - gy[i, j, k]) * ih1
                    + (gz[i, j, km] - gz[i, j, k]) * ih2
                )


def gradient(x: np.ndarray, voxel_size) -> np.ndarray:
    """Periodic forward-difference gradient ``(x[i + 1] − x[i]) / h`` along each axis.

    Parameters
    ----------
    x : (n0, n1, n2) ndarray of float32 or float64
        Image (any unit ``u``).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).

    Returns
    -------
    g : (3, n0, n1, n2) ndarray, dtype of ``x``
        Gradient in ``u``/mm; its k-space kernel along axis ``a`` is
        ``(exp(2πi k_a h_a) − 1) / h_a`` and ``∇ᵀ∇`` is :func:`laplacian_kernel`.

    Examples
    --------
    >>> x = np.arange(4.0)[:, None, None] * np.ones((4, 2, 2))
    >>> gradient(x, (2, 1, 1))[0, :, 0, 0].tolist()
    [0.5, 0.5, 0.5, -1.5]
    """
    x = np.ascontiguousarray(x)
    ih = 1.0 / np.asarray(voxel_size, dtype=np.float64)
    g = np.empty((3,) + x.shape, dtype=x.dtype)
    _gradient_nb(x, x.dtype.type(ih[0]), x.dtype.type(ih[1]), x.dtype.type(ih[2]), *g)
    return g


def gradient_adjoint(g: np.ndarray, voxel_size) -> np.ndarray:
    """Adjoint of :func:`gradient` (a negative divergence with backward differences).

    Parameters
    ----------
    g : (3, n0, n1, n2) ndarray of float32 or float64
        Vector field (unit ``u``/mm).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).

    Returns
    -------
    out : (n0, n1, n2) ndarray, dtype of ``g``
        ``∇ᵀ g`` in ``u``/mm².

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, g = rng.random((5, 6, 7)), rng.random((3, 5, 6, 7))
    >>> bool(np.isclose(np.vdot(gradient(x, (1, 2, 3)), g),
    ...                 np.vdot(x, gradient_adjoint(g, (1, 2, 3)))))
    True
    """
    g = np.ascontiguousarray(g)
    ih = 1.0 / np.asarray(voxel_size, dtype=np.float64)
    out = np.empty(g.shape[1:], dtype=g.dtype)
    t = g.dtype.type
    _gradient_adjoint_nb(g[0], g[1], g[2], t(ih[0]), t(ih[1]), t(ih[2]), out)
    return out


def conjugate_gradient(op, rhs, x=None, *, tol=0.0, max_iter=100):
    """Conjugate gradients for a symmetric positive (semi-)definite linear ``op``.

    Parameters
    ----------
    op : callable
        ``op(p)`` applies the operator to a float32 array of ``rhs``'s shape.
    rhs : ndarray of float32
        Right-hand side (units of ``op(x)``).
    x : ndarray of float32 or None
        Starting point, updated in place; ``None`` starts from zero (no extra ``op`` call).
    tol : float
        Stop when ``‖r‖ ≤ tol · ‖rhs‖`` (dimensionless; 0 runs ``max_iter`` steps unless
        the residual vanishes).
    max_iter : int
        Maximum iterations.

    Returns
    -------
    x : ndarray of float32
        The solution estimate (same array as ``x`` when one was given and contiguous
        float32).

    Notes
    -----
    The vector updates and inner products run on the FFT worker count in force, over fixed
    chunks with float64 partial sums (:mod:`qsmflow.qsm._vector`): the iterates are bitwise
    the same for any thread count.
    """
    rhs = np.ascontiguousarray(rhs, dtype=np.float32)
    if x is None:
        x = np.zeros(rhs.shape, np.float32)
        r = rhs.copy()
    else:
        x = np.ascontiguousarray(x, dtype=np.float32)
        r = np.ascontiguousarray(rhs - op(x))
    p = r.copy()
    rr = _vector.dot(r, r)
    stop = tol**2 * _vector.dot(rhs, rhs)
    for _ in range(max_iter):
        if rr <= stop or rr == 0:
            break
        q = np.ascontiguousarray(op(p), dtype=np.float32)
        alpha = rr / _vector.dot(p, q)
        rr_new = _vector.cg_step(x, r, p, q, alpha)  # x += αp, r -= αq
        _vector.xpby(r, p, rr_new / rr)  # p ← r + βp
        rr = rr_new
    return x
