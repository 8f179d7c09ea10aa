# SPDX-License-Identifier: Apache-2.0
"""Spatial phase unwrapping of one 3D phase image.

Two methods:

* :func:`unwrap_romeo` — exact, quality-guided region growing in the spirit of ROMEO [1]_:
  the result differs from the input only by integer multiples of 2π per voxel.
* :func:`unwrap_laplacian` — least-squares ("Laplacian") unwrapping [2]_, [3]_: a smooth
  estimate that is fast and robust to noise but *not* congruent with the input (it differs
  from it by non-integer multiples of 2π) and not exact where the wrapped neighbour
  differences do not equal the true ones.

Both work on the bounding box of the mask and return float32 arrays with 0 outside the mask.

References
----------
.. [1] Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid opensource
   minimum spanning tree algorithm (ROMEO). Magn Reson Med 2021;85:2294–2308.
.. [2] Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric
   applications. Opt Lett 2003;28:1194–1196.
.. [3] Ghiglia DC, Romero LA. Robust two-dimensional weighted and unweighted phase
   unwrapping that uses fast transforms and iterative methods. J Opt Soc Am A
   1994;11:107–117.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qsmflow.qsm.kernels import (
    bounding_box,
    gradient,
    gradient_adjoint,
    irfft,
    laplacian_kernel,
    padded_shape,
    rfft,
)
from qsmflow.qsm._unwrap_box import _crop_pad, _uncrop, _zero_outside
from qsmflow.qsm._unwrap_components import (
    _align_components, _axis_pairs, _grow, _growing_start)
from qsmflow.qsm._validation import as_image as _as_image
from qsmflow.qsm._validation import as_mask as _as_mask
from qsmflow.qsm._validation import as_voxel_size
from qsmflow.qsm._validation import check_finite_in_mask as _check_finite_in_mask
from qsmflow.qsm import _vector
from qsmflow.qsm._vector import slabwise

TWO_PI = 2.0 * np.pi

#: Number of priority levels of the bucket queue (edge weights are quantised to 8 bits).
_N_BINS = 256

#: Defaults of the least-squares (Laplacian) solver.
DEFAULT_LAPLACIAN_MAX_ITER = 20
DEFAULT_LAPLACIAN_TOL = 3e-3


def wrap_phase(phase):
    """Wrap phase to [−π, π) (up to rounding at the ends), keeping the float dtype.

    Parameters
    ----------
    phase : ndarray or float
        Phase (rad), any shape.

    Returns
    -------
    ndarray or float
        ``phase − 2π·round(phase / 2π)`` (rad), same shape and dtype.

    Examples
    --------
    >>> w = wrap_phase(np.array([0.5, 7.0, -7.0], np.float32))
    >>> bool(np.allclose(w, [0.5, 7 - 2 * np.pi, -7 + 2 * np.pi])), w.dtype == np.float32
    (True, True)
    """
    return phase - TWO_PI * np.round(phase / TWO_PI)


# --------------------------------------------------------------------------------------
# box helpers
# --------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------
# ROMEO-like region growing
# --------------------------------------------------------------------------------------
def unwrap_romeo(
    phase: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    magnitude: np.ndarray | None = None,
    phase2: np.ndarray | None = None,
    te_ratio: float | None = None,
    seed: tuple[int, int, int] | None = None,
    align_components: bool = True,
) -> np.ndarray:
    """Exact quality-guided region-growing unwrapping (ROMEO-like).

    Every pair of face neighbours inside the mask is an edge with a reliability weight in
    [0, 1], the product of

    * phase coherence ``1 − |wrap(Δφ)| / π`` (small neighbour differences are safe);
    * with ``phase2``: gradient coherence with the second echo,
      ``max(0, 1 − |wrap(Δφ) − wrap(Δφ₂) / te_ratio| / π)``;
    * with ``magnitude``: magnitude coherence ``(min(m_i, m_j) / max(m_i, m_j))²`` and a
      magnitude weight ``min(1, min(m_i, m_j) / median(m in mask))``.

    Weights are quantised to 256 levels. Starting from ``seed``, voxels are visited in
    order of decreasing edge weight through a bucket priority queue (compiled with numba);
    each newly reached voxel ``j`` gets ``φ_j + 2π·round((u_i − φ_j) / 2π)`` with ``u_i``
    the unwrapped value of the neighbour it was reached from. Unreliable regions are
    therefore reached last, through their most reliable edge.

    Disconnected mask components (face connectivity) are grown one after the other, each
    from its best voxel. With ``align_components``, each smaller component is then shifted
    by the multiple of 2π that best continues the largest component: its phase is
    extrapolated linearly (one-sided gradient) from the nearest voxel (in mm) of the
    largest component, and the mismatch is averaged over the voxels closest to it. This
    is a heuristic that holds when the gap is narrow and the phase smooth across it;
    without it, each component keeps its own arbitrary 2π offset. Every mask voxel is
    reached (a single isolated voxel is its own seed and keeps its input value), so the
    result is finite and congruent with the input in the whole mask, whatever the mask;
    NaN/inf outside the mask are ignored. Pieces are referenced to the largest one rather
    than to each other in a chain (one distance transform for all pieces, robust to many
    tiny pieces); in :func:`~qsmflow.qsm.echoes.unwrap_echoes` the pieces of the echo
    difference are aligned this way and each voxel's echoes then follow it in time.

    Parameters
    ----------
    phase : (X, Y, Z) ndarray of float
        Wrapped phase (rad). Values need not lie in [−π, π).
    mask : (X, Y, Z) ndarray of bool
        Voxels to unwrap.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm); used to find nearest voxels when aligning components (edge
        weights are per voxel step).
    magnitude : (X, Y, Z) ndarray of float, optional
        Magnitude (arbitrary units, ≥ 0) for the magnitude weights.
    phase2 : (X, Y, Z) ndarray of float, optional
        Wrapped phase (rad) of a second echo, for the gradient-coherence weight.
    te_ratio : float, optional
        ``TE(phase2) / TE(phase)`` (dimensionless); required with ``phase2``.
    seed : tuple of 3 int, optional
        Start voxel (indices); must lie in the mask. Default: the voxel with the largest
        sum of edge weights.
    align_components : bool
        Align the 2π offsets of disconnected components (see above).

    Returns
    -------
    unwrapped : (X, Y, Z) ndarray of float32
        Unwrapped phase (rad): ``phase + 2π·k`` with integer ``k`` inside the mask, 0
        outside. Exact (equal to the truth up to one global 2π·k per component) wherever a
        path of neighbour steps smaller than π in absolute value links each voxel to the
        seed.

    Raises
    ------
    ValueError
        On wrong dimensions or shapes, non-finite values in the mask, an empty mask, a
        seed outside the mask, or ``phase2`` without a positive ``te_ratio``.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 24, dtype=np.float32)
    >>> truth = 10 * (x[:, None, None] ** 2 + x[None, :, None] + 0 * x[None, None, :])
    >>> m = np.ones(truth.shape, bool)
    >>> u = unwrap_romeo(wrap_phase(truth), m, (1, 1, 1))
    >>> k = (u - truth) / (2 * np.pi)
    >>> bool(np.allclose(k, np.round(k.flat[0]), atol=1e-4))
    True
    """
    ph = _as_image(phase, 'phase', 3)
    shape = ph.shape
    msk = _as_mask(mask, shape)
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    _check_finite_in_mask(ph, msk, 'phase')
    mag = None
    if magnitude is not None:
        mag = _as_image(magnitude, 'magnitude', 3, shape)
        _check_finite_in_mask(mag, msk, 'magnitude')
    ph2 = None
    if phase2 is not None:
        ph2 = _as_image(phase2, 'phase2', 3, shape)
        _check_finite_in_mask(ph2, msk, 'phase2')
        if te_ratio is None or not np.isfinite(te_ratio) or te_ratio <= 0:
            raise ValueError('phase2 needs a positive, finite te_ratio = TE(phase2)/TE(phase)')
    if seed is not None:
        seed = tuple(int(s) for s in seed)
        if len(seed) != 3 or not all(0 <= s < n for s, n in zip(seed, shape)):
            raise ValueError(f'seed {seed} is not a voxel index of shape {shape}')
        if not msk[seed]:
            raise ValueError(f'seed {seed} lies outside the mask')

    box = bounding_box(msk)
    mb = _crop_pad(msk, box, False)
    seed_b = None
    if seed is not None:
        seed_b = tuple(s - b.start + 1 for s, b in zip(seed, box))
    out_b = _romeo_box(
        _crop_pad(ph, box),
        mb,
        vox,
        None if mag is None else _crop_pad(mag, box),
        None if ph2 is None else _crop_pad(ph2, box),
        None if ph2 is None else float(te_ratio),
        seed_b,
        align_components,
    )
    return _uncrop(out_b, box, shape, msk)


def _wrap_in_place(d):
    """:func:`wrap_phase` of a float array, written into ``d`` (same bits); returns ``d``."""
    t = d / TWO_PI
    np.round(t, out=t)
    t *= TWO_PI
    d -= t
    return d


def _edge_weights(phase, mask, magnitude, phase2, te_ratio, mref=None):
    """Edge priority levels ``(3, N)`` uint8 and per-voxel quality ``(N,)`` float32.

    ``bins[a, v]`` is the priority level (0 best) of the edge between voxel ``v`` and
    ``v + e_a`` (flat C order); ``quality`` sums the weights of a voxel's edges. The level
    is ``round(255·(1 − w)²)``: fine steps for poor edges, where the visiting order
    matters, and coarse ones for good edges, which keeps the queue's memory access local.
    Fixed slabs of 8 planes of the first axis run side by side on the thread pool
    (:func:`~qsmflow.qsm._vector.slabwise`); a slab recomputes the weights of the edges
    that cross into it from the plane before, and adds every voxel's edge weights in the
    same order as a whole-grid pass, so the bits do not depend on the thread count.
    ``mref``: the median of ``magnitude`` in ``mask`` when the caller knows it (> 0).
    """
    shape = phase.shape
    bins = np.full((3,) + shape, _N_BINS - 1, dtype=np.uint8)
    quality = np.zeros(shape, dtype=np.float32)
    if magnitude is None:
        mref = None
    elif mref is None:
        mref = float(_vector.median(_vector.Selection(mask).gather(magnitude)))
        if not mref > 0:
            mref = max(float(magnitude[mask].max()), 1e-30)
    args = (phase, mask, magnitude, phase2, te_ratio, mref)
    n0 = shape[0]

    def slab(rows):
        s0, s1 = rows.start, rows.stop
        for a in range(3):
            if a == 0:  # edges (r, r + 1) for r in [e0, e1): those touching rows s0..s1-1
                e0, e1 = max(s0 - 1, 0), min(s1, n0 - 1)
                if e1 <= e0:
                    continue
                w = _axis_weights(0, e0, e1, *args)
                quality[s0:e1] += w[s0 - e0:]
                h0, h1 = max(s0, 1), min(s1, e1 + 1)
                quality[h0:h1] += w[h0 - 1 - e0:h1 - 1 - e0]
                own, lo = w[s0 - e0:], (slice(s0, e1),)
            else:
                w = _axis_weights(a, s0, s1, *args)
                lo, hi = _axis_pairs(a)
                lo, hi = (rows,) + lo[1:], (rows,) + hi[1:]
                quality[lo] += w
                quality[hi] += w
                own = w
            np.subtract(1, own, out=own)
            own *= own
            own *= _N_BINS - 1
            own += 0.5
            bins[a][lo] = own

    slabwise(slab, n0, 8)
    return bins.reshape(3, -1), quality.ravel()


def _axis_weights(a, r0, r1, phase, mask, magnitude, phase2, te_ratio, mref):
    """Weights (float32, in [0, 1]) of the edges ``(v, v + e_a)`` whose voxel ``v`` lies in
    the planes ``r0:r1`` of the first axis (in place, one temporary at a time: the same
    float32 operations as ``1 − |wrap_phase(Δφ)|/π`` etc., so the same bits, at half the
    peak memory)."""
    if a == 0:
        lo, hi = (slice(r0, r1),), (slice(r0 + 1, r1 + 1),)
    else:
        lo, hi = _axis_pairs(a)
        lo, hi = (slice(r0, r1),) + lo[1:], (slice(r0, r1),) + hi[1:]
    inv_pi = np.float32(1 / np.pi)
    d = _wrap_in_place(np.subtract(phase[hi], phase[lo]))
    w = np.abs(d)
    w *= inv_pi
    np.subtract(1, w, out=w)
    if phase2 is not None:
        d2 = _wrap_in_place(np.subtract(phase2[hi], phase2[lo]))
        d2 *= np.float32(1 / te_ratio)
        d -= d2
        del d2
        np.abs(d, out=d)
        d *= inv_pi
        np.subtract(1, d, out=d)
        np.maximum(d, 0, out=d)
        w *= d
    del d
    if magnitude is not None:
        m_lo = np.minimum(magnitude[hi], magnitude[lo])
        m_hi = np.maximum(magnitude[hi], magnitude[lo])
        np.maximum(m_hi, np.float32(np.finfo(np.float32).tiny), out=m_hi)
        np.divide(m_lo, m_hi, out=m_hi)
        w *= m_hi
        w *= m_hi
        del m_hi
        m_lo *= np.float32(1 / mref)
        np.minimum(m_lo, 1, out=m_lo)
        w *= m_lo
        del m_lo
    np.clip(w, 0, 1, out=w)
    w *= mask[hi] & mask[lo]
    return w


def _romeo_box(phase, mask, vox, magnitude, phase2, te_ratio, seed, align_components, *,
               mref=None, prepare=None, known=None):
    """Region growing on a box whose border voxels lie outside ``mask``.

    All arrays are 3D of one shape; returns float32 with 0 outside the mask. ``mref``:
    the median magnitude in the mask, if known (:func:`_edge_weights`); ``prepare``: work
    (a callable) for the caller, independent of the growing, run once the edge weights
    are made, beside the first growing on two or more threads (``beside`` of
    :func:`~qsmflow.qsm._unwrap_components._grow`), else before it; ``known``: a callable giving the mask's
    :func:`~qsmflow.qsm._unwrap_components._nearest_reference` (or None), for the
    component alignment.
    """
    shape = phase.shape
    phase = _zero_outside(np.ascontiguousarray(phase, dtype=np.float32), mask)
    if magnitude is not None:
        magnitude = _zero_outside(np.ascontiguousarray(magnitude, dtype=np.float32), mask)
    if phase2 is not None:
        phase2 = _zero_outside(np.ascontiguousarray(phase2, dtype=np.float32), mask)
    bins, quality = _edge_weights(phase, mask, magnitude, phase2, te_ratio, mref)
    state, first = _growing_start(mask, quality)
    if seed is not None:
        first = int(np.ravel_multi_index(seed, shape))
    pflat = phase.ravel()
    out = np.zeros(pflat.size, dtype=np.float32)
    s0, s1 = shape[1] * shape[2], shape[2]
    n_comp = _grow(pflat, state, bins, s0, s1, np.array([first], np.int64), out, 0,
                   beside=prepare)
    left = np.flatnonzero(state < 0)
    if left.size:
        # further components, each from its best voxel (rare: only for split masks)
        order = left[np.argsort(-quality[left], kind='stable')].astype(np.int64)
        n_comp = _grow(pflat, state, bins, s0, s1, order, out, n_comp)
    out = out.reshape(shape)
    if n_comp > 1 and align_components:
        _align_components(out, state.reshape(shape), n_comp, vox,
                          None if known is None else known())
    return out


# --------------------------------------------------------------------------------------
# Laplacian (least-squares) unwrapping
# --------------------------------------------------------------------------------------
def unwrap_laplacian(
    phase: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    max_iter: int = DEFAULT_LAPLACIAN_MAX_ITER,
    tol: float = DEFAULT_LAPLACIAN_TOL,
) -> np.ndarray:
    """Laplacian (least-squares) phase unwrapping inside a mask; fast but not exact.

    The Laplacian of the true phase is obtained from the wrapped phase alone through the
    identity ``∇²φ = cos φ ∇² sin φ − sin φ ∇² cos φ`` [2]_. Its discrete, exact form is
    used here: the divergence of the *wrapped* neighbour differences
    ``wrap(φ_j − φ_i)``, counted only between mask voxels (Neumann condition at the mask
    border), each axis weighted by ``1 / voxel_size²``. The Poisson equation
    ``∇²u = that`` is solved in the mask (the least-squares unwrapping of [3]_) by
    conjugate gradients preconditioned with the FFT inverse Laplacian on the zero-padded
    bounding box (:func:`~qsmflow.qsm.kernels.padded_shape`); without the iterations,
    the periodic FFT solve alone would badly underestimate gradients near the mask edge.
    Finally a constant is added so that ``u`` agrees with the input modulo 2π on average.

    The result is smooth and robust to noise, but *not exact*: it differs from the input
    by non-integer multiples of 2π, and where wrapped differences do not equal the true
    ones (steps ≥ π, residues, noise) the error is spread smoothly instead of being a
    multiple of 2π. Each disconnected mask component gets its own constant.

    Parameters
    ----------
    phase : (X, Y, Z) ndarray of float
        Wrapped phase (rad).
    mask : (X, Y, Z) ndarray of bool
        Voxels to unwrap.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    max_iter : int
        Maximum conjugate-gradient iterations.
    tol : float
        Stop when the residual norm falls below ``tol`` times the right-hand side's
        (dimensionless).

    Returns
    -------
    unwrapped : (X, Y, Z) ndarray of float32
        Smooth unwrapped phase estimate (rad), 0 outside the mask.

    Raises
    ------
    ValueError
        On wrong dimensions or shapes, non-finite phase in the mask or an empty mask.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 24, dtype=np.float32)
    >>> truth = 15 * x[:, None, None] ** 2 + 10 * x[None, None, :] + 0 * x[None, :, None]
    >>> m = np.ones(truth.shape, bool)
    >>> u = unwrap_laplacian(wrap_phase(truth), m, (1, 1, 1))
    >>> k = (u - truth) / (2 * np.pi)  # ≈ one integer, but not exactly
    >>> bool(np.abs(k - np.round(k.mean())).max() < 0.01 and np.std(k) > 0)
    True
    """
    ph = _as_image(phase, 'phase', 3)
    msk = _as_mask(mask, ph.shape)
    vox = as_voxel_size(voxel_size_mm, 'voxel_size_mm')
    _check_finite_in_mask(ph, msk, 'phase')
    if int(max_iter) < 1 or not tol > 0:
        raise ValueError('max_iter must be ≥ 1 and tol > 0')
    box = bounding_box(msk)
    mb = _crop_pad(msk, box, False)
    inv_lap = _inverse_laplacian_symbol(mb.shape, vox)
    out_b = _laplacian_box(_crop_pad(ph, box), mb, vox, inv_lap, int(max_iter), float(tol))
    return _uncrop(out_b, box, ph.shape, msk)


def _inverse_laplacian_symbol(shape, vox):
    """Return the padded grid shape and ``1 / L(k)`` of the negative Laplacian (0 at k = 0)."""
    pshape = padded_shape(shape, 1)
    lap = laplacian_kernel(pshape, vox, dtype=np.float64)
    with np.errstate(divide='ignore'):
        inv = 1.0 / lap
    inv[0, 0, 0] = 0.0
    return pshape, inv.astype(np.float32)


def _laplacian_box(phase, mask, vox, inv_lap, max_iter, tol):
    """Masked least-squares unwrapping by FFT-preconditioned CG on a box.

    ``phase`` and ``mask`` are 3D box arrays whose border voxels lie outside the mask, so
    that the periodic differences of :func:`~qsmflow.qsm.kernels.gradient` never link
    mask voxels across the box edges.
    """
    pshape, inv = inv_lap
    shape = phase.shape
    inner = tuple(slice(0, n) for n in shape)
    phase = _zero_outside(np.ascontiguousarray(phase, dtype=np.float32), mask)
    # edge masks: both ends of the forward difference inside the mask
    edges = np.empty((3,) + shape, np.float32)
    for a in range(3):
        np.logical_and(mask, np.roll(mask, -1, axis=a), out=edges[a], casting='unsafe')
    h = np.asarray(vox, np.float32).reshape(3, 1, 1, 1)

    def apply_a(u):
        # A = ∇ᵀ E ∇: the negative Laplacian with Neumann conditions at the mask border
        g = gradient(u, vox)
        g *= edges
        return gradient_adjoint(g, vox)

    big = np.zeros(pshape, np.float32)

    def precond(r):
        big[inner] = r
        z = irfft(rfft(big) * inv, pshape)[inner]
        z *= mask
        return z.astype(np.float32, copy=False)

    # right-hand side ∇ᵀ E g with g the wrapped neighbour differences (per mm)
    g = gradient(phase, vox)
    g *= h
    g = wrap_phase(g)
    g /= h
    g *= edges
    b = gradient_adjoint(g, vox)
    del g
    x = np.zeros(shape, np.float32)
    tmp = np.empty(shape, np.float32)
    r = b
    bnorm = math.sqrt(float(np.vdot(b, b)))
    if bnorm > 0:
        z = precond(r)
        p = z.copy()
        rz = float(np.vdot(r, z))
        for _ in range(max_iter):
            ap = apply_a(p)
            pap = float(np.vdot(p, ap))
            if pap <= 0:
                break
            alpha = np.float32(rz / pap)
            np.multiply(p, alpha, out=tmp)
            x += tmp
            ap *= alpha
            r -= ap
            if math.sqrt(float(np.vdot(r, r))) < tol * bnorm:
                break
            z = precond(r)
            rz_new = float(np.vdot(r, z))
            p *= np.float32(rz_new / rz)
            p += z
            rz = rz_new
    # constant making x agree with the input modulo 2π on average
    sel = mask.astype(bool)
    offset = np.angle(np.exp(1j * (phase[sel] - x[sel]).astype(np.float64)).sum())
    x += np.float32(offset)
    x[~sel] = 0
    return x
