# SPDX-License-Identifier: Apache-2.0
"""Phase-quality maps and the masks built from them.

:func:`quality_map` scores every voxel's phase reliability and :func:`quality_mask` removes
unreliable voxels (near air–tissue interfaces such as the sinuses) from a brain mask, as the
2024 QSM consensus recommends. :func:`strict_mask` is the first mask of a two-pass
reconstruction: every unreliable voxel removed and *not* filled back (see
:func:`qsmflow.qsm.inversion.combine_two_pass`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm import _morphology as morph
from qsmflow.qsm._validation import (
    as_echo_times,
    as_image,
    as_mask,
    as_voxel_size,
    check_finite_in_mask,
    fraction,
)
from qsmflow.qsm._vector import Selection, by_slabs, median, slabwise
from qsmflow.qsm.kernels import bounding_box

#: Default cut-off of :func:`quality_mask` (dimensionless quality in [0, 1]).
DEFAULT_QUALITY_THRESHOLD = 0.3
#: Side (mm) of the box over which phase-coherence scores are averaged.
QUALITY_WINDOW_MM = 3.0


def quality_map(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    *,
    echo_times_s: Sequence[float],
) -> np.ndarray:
    """Per-voxel phase reliability in [0, 1], from coherence in space and time.

    ``q = q_space · q_time · q_mag``, each factor in [0, 1]:

    * ``q_space``: spatial phase coherence. With ≥ 2 echoes it is computed on the echo
      difference ``wrap(φ₂ − φ₁)`` (free of the echo-independent offset φ₀), else on φ₁.
      For every axis the wrapped second difference ``d₂ = wrap(wrap(φ₊ − φ) − wrap(φ − φ₋))``
      is ≈ 0 for any smooth phase however steep, and uniformly random for noise; ``q_space``
      is the mean of ``cos d₂`` over the axes and over a box of about
      ``QUALITY_WINDOW_MM`` (mask voxels only), clipped at 0.
    * ``q_time`` (≥ 3 echoes, else 1): temporal linearity, the box mean of
      ``cos r_n`` with ``r_n = wrap(Δ_n − Δ_{n−1}·(TE_n − TE_{n−1}) / (TE_{n−1} − TE_{n−2}))``,
      ``Δ_n = φ_n − φ_{n−1}``, averaged over echoes 3…N, clipped at 0 (the phase of a
      voxel must evolve linearly with TE).
    * ``q_mag`` (with magnitude, else 1): ``min(1, m₁ / (0.5·median(m₁ in mask)))`` with
      ``m₁`` the first-echo magnitude (signal voids have unreliable phase).

    Parameters
    ----------
    phase : (X, Y, Z, N) or (X, Y, Z) ndarray of float
        Wrapped phase of each echo (rad).
    magnitude : same shape as ``phase``, ndarray of float, or None
        Magnitude (arbitrary units).
    mask : (X, Y, Z) ndarray of bool
        Voxels to score.
    voxel_size : sequence of 3 float
        Voxel spacing (mm); sets the averaging box.
    echo_times_s : sequence of N float
        Echo times (s), strictly increasing.

    Returns
    -------
    quality : (X, Y, Z) ndarray of float32
        Reliability in [0, 1] (dimensionless); 0 outside the mask.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.linspace(-1, 1, 20)[:, None, None, None]
    >>> te = np.array([0.005, 0.010, 0.015])
    >>> ph = np.angle(np.exp(2j * np.pi * 300 * x * te)) * np.ones((20, 20, 20, 3))
    >>> ph[:5] = rng.uniform(-np.pi, np.pi, ph[:5].shape)
    >>> q = quality_map(ph, None, np.ones((20, 20, 20), bool), (1, 1, 1), echo_times_s=te)
    >>> bool(q[12:].min() > 0.9 and q[:3].max() < 0.3)
    True
    """
    ph = as_image(phase, 'phase', (3, 4))
    if ph.ndim == 3:
        ph = ph[..., None]
    shape = ph.shape[:3]
    msk = as_mask(mask, shape)
    vox = as_voxel_size(voxel_size)
    te = as_echo_times(echo_times_s, ph.shape[3])
    check_finite_in_mask(ph, msk, 'phase')
    mag = None
    if magnitude is not None:
        mag = as_image(magnitude, 'magnitude', (3, 4))
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape != ph.shape:
            raise ValueError(f'magnitude has shape {mag.shape}, expected {ph.shape}')
        check_finite_in_mask(mag, msk, 'magnitude')
    return _quality_map(ph, mag, msk, vox, te)


def _wrap(x):
    """Wrap phase (rad) to [−π, π); same as :func:`qsmflow.qsm.unwrap.wrap_phase`."""
    return x - 2 * np.pi * np.round(x / (2 * np.pi))


def _box_filter(img, size):
    """:func:`scipy.ndimage.uniform_filter` ``(img, size)`` of a 3D float32 array (sizes
    ≥ 2): the same one-axis passes in the same order, each in slabs across another axis
    side by side on the thread pool (the lines are independent: the same bits)."""
    out = np.empty_like(img)
    ndi_pass = ndi.uniform_filter1d
    slabwise(lambda s: ndi_pass(img[:, s], size[0], 0, out[:, s]), img.shape[1], 8)
    for axis in (1, 2):
        slabwise(lambda s: ndi_pass(out[s], size[axis], axis, out[s]), img.shape[0], 8)
    return out


def _curvature_slab(img, m, cos_sum, count, rows):
    """Add ``cos`` of the second differences of ``img`` along each axis, and the count of
    the in-mask triples, at the centre voxels in the planes ``rows`` of the first axis
    (their neighbours may lie in the planes either side); each voxel gets its three axes
    in order, as a whole-grid pass, so slabs side by side give the same bits."""
    n0 = img.shape[0]
    for a in range(3):
        c0, c1 = rows.start, rows.stop  # centre planes
        if a == 0:
            c0, c1 = max(c0, 1), min(c1, n0 - 1)
            if c1 <= c0:
                continue
        step = int(a == 0)  # the neighbours' planes: the centre's, or one either side
        lo = [slice(c0 - step, c1 - step), slice(None), slice(None)]
        mid = [slice(c0, c1), slice(None), slice(None)]
        hi = [slice(c0 + step, c1 + step), slice(None), slice(None)]
        if a:
            lo[a], mid[a], hi[a] = slice(None, -2), slice(1, -1), slice(2, None)
        lo, mid, hi = tuple(lo), tuple(mid), tuple(hi)
        d2 = img[hi] + img[lo]
        d2 -= 2 * img[mid]
        ok = m[lo] & m[mid] & m[hi]
        np.cos(d2, out=d2)
        d2 *= ok
        cos_sum[mid] += d2
        del d2
        count[mid] += ok


def _quality_map(ph, mag, msk, vox, te):
    box = bounding_box(msk, 1)
    m = msk[box]
    n_echo = ph.shape[3]

    def echo(n, rows=slice(None)):  # echoes are cropped when needed, not all held at once
        return ph[box + (n,)][rows].astype(np.float32)

    size = [max(3, 2 * round(QUALITY_WINDOW_MM / (2 * h)) + 1) for h in vox]
    # the element-wise passes run in slabs of planes side by side (by_slabs): the same bits
    mf = by_slabs(_as_float32, m)
    den = _box_filter(mf, size)

    def box_mean(score):
        return by_slabs(_unit_ratio, _box_filter(by_slabs(np.multiply, score, mf), size), den)

    # cos is 2π-periodic, so second differences need no wrapping: a 2π·k jump of any term
    # shifts φ₊ − 2φ + φ₋ by a multiple of 2π
    img = (by_slabs(_float32_difference, ph[box + (1,)], ph[box + (0,)]) if n_echo > 1
           else echo(0))
    cos_sum = np.zeros(m.shape, np.float32)
    count = np.zeros(m.shape, np.float32)
    slabwise(lambda rows: _curvature_slab(img, m, cos_sum, count, rows), m.shape[0], 8)
    del img
    q = by_slabs(_mean_where_counted, cos_sum, count)
    del cos_sum, count
    q = box_mean(q)
    if n_echo >= 3:
        qt = np.zeros(m.shape, np.float32)

        def temporal(rows):  # voxel-wise: slabs of planes side by side, the same bits
            p2, p1 = echo(0, rows), echo(1, rows)  # echoes n - 2 and n - 1
            for n in range(2, n_echo):
                ratio = np.float32((te[n] - te[n - 1]) / (te[n - 1] - te[n - 2]))
                p0 = echo(n, rows)
                r = p0 - p1
                r -= _wrap(p1 - p2) * ratio
                qt[rows] += np.cos(r)
                p2, p1 = p1, p0

        slabwise(temporal, m.shape[0], 8)
        n_terms = np.float32(n_echo - 2)
        _scale(q, box_mean(by_slabs(lambda a: a / n_terms, qt)))
    if mag is not None:
        m1 = by_slabs(_as_float32, mag[box + (0,)])
        ref = float(median(Selection(m).gather(m1)))
        if ref > 0:
            half = np.float32(0.5 * ref)
            _scale(q, by_slabs(lambda a: np.clip(a / half, 0, 1), m1))
    out = np.zeros(msk.shape, np.float32)
    inner = out[box]

    def put(rows):  # (q · m) as float32, into the box of the output
        np.multiply(q[rows], m[rows], out=inner[rows])

    slabwise(put, q.shape[0])
    return out


def _scale(q, factor):
    """``q *= factor`` (float32, in place) by slabs side by side."""
    def one(rows):
        q[rows] *= factor[rows]

    slabwise(one, q.shape[0])


def _as_float32(a):
    return a.astype(np.float32)


def _float32_difference(a, b):
    return a.astype(np.float32) - b.astype(np.float32)


def _unit_ratio(a, b):
    """``a / b`` clipped to [0, 1], 0 where undefined."""
    with np.errstate(invalid='ignore', divide='ignore'):
        out = a / b
    return np.clip(np.nan_to_num(out), 0, 1)


def _mean_where_counted(total, count):
    """``total / count`` where ``count > 0``, else 0 (float32)."""
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(count > 0, total / count, 0).astype(np.float32)


def quality_mask(
    quality: np.ndarray,
    mask: np.ndarray,
    *,
    threshold: float = DEFAULT_QUALITY_THRESHOLD,
    fill_holes: bool = True,
) -> np.ndarray:
    """Remove unreliable voxels from a mask, keeping it connected and without holes.

    ``mask ∧ (quality ≥ threshold)`` → largest face-connected component → (``fill_holes``)
    3D hole filling, restricted to ``mask``. Unreliable regions open to the mask's border
    (sinus, ear canals) are removed; unreliable islands enclosed in reliable tissue are
    filled back, since background removal needs a hole-free mask. Slice-wise filling is
    not used here: it would refill notches at the poles of the mask, where a slice cuts
    through the notch inside the mask's cross-section.

    Parameters
    ----------
    quality : (X, Y, Z) ndarray of float
        Reliability in [0, 1] (dimensionless), e.g. from :func:`quality_map`.
    mask : (X, Y, Z) ndarray of bool
        Brain mask.
    threshold : float in [0, 1]
        Minimum quality kept (dimensionless).
    fill_holes : bool
        Fill enclosed (3D) holes.

    Returns
    -------
    mask : (X, Y, Z) ndarray of bool
        Reliable part of ``mask``.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite quality, a threshold outside [0, 1], or when no
        voxel of the mask reaches the threshold.

    Examples
    --------
    >>> q = np.ones((10, 10, 10), np.float32); q[:, :, :3] = 0.1
    >>> m = quality_mask(q, np.ones(q.shape, bool))
    >>> int(m.sum()), bool(m[:, :, 3:].all())
    (700, True)
    """
    q = as_image(quality, 'quality', 3)
    msk = as_mask(mask, q.shape)
    check_finite_in_mask(q, msk, 'quality')
    fraction('threshold', threshold, closed=True)
    keep = msk & (q >= threshold)
    if not keep.any():
        raise ValueError(f'no mask voxel reaches the quality threshold {threshold}')
    box = bounding_box(msk, 1)
    sel = morph.largest_component(keep[box])
    if fill_holes:
        sel = morph.fill_holes(sel, slicewise=False) & msk[box]
    out = np.zeros(msk.shape, bool)
    out[box] = sel
    return out


#: Default cut-off of :func:`strict_mask` (dimensionless quality in [0, 1]): half-coherent
#: phase. Stricter than :data:`DEFAULT_QUALITY_THRESHOLD`, which only trims what cannot be
#: used at all; on the 1 mm phantom (SNR 40–100) brain tissue scores 0.97–1.0, veins
#: 0.2–1.0, the calcification 0.53–0.6 and the haemorrhage 0.7–0.78.
DEFAULT_STRICT_QUALITY_THRESHOLD = 0.5
#: Default margin (mm) by which :func:`strict_mask` grows every excluded region.
DEFAULT_STRICT_MARGIN_MM = 1.0


def strict_mask(
    quality: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    *,
    threshold: float = DEFAULT_STRICT_QUALITY_THRESHOLD,
    margin_mm: float = DEFAULT_STRICT_MARGIN_MM,
) -> np.ndarray:
    """Strict mask of a two-pass reconstruction: ``mask`` minus every unreliable voxel.

    Unlike :func:`quality_mask`, unreliable regions enclosed in reliable tissue (vessels,
    calcifications, haemorrhages: strong sources whose phase is incoherent) are *not*
    filled back: they become holes, which background removal then treats as outside the
    brain (their field is removed as background) and the inversion does not fit, so their
    streaks do not spread into the tissue around them. Steps: ``mask ∧ (quality ≥
    threshold)``; every excluded voxel of ``mask`` is grown by a ball of ``margin_mm``
    (so that a strong source is excluded whole, with the partial-volume rim whose
    quality lies just above the threshold: a source left half in the mask is
    reconstructed worse than one fully in or fully out); the largest face-connected
    component is kept. χ in the excluded voxels comes from the reconstruction on
    ``mask`` (:func:`qsmflow.qsm.inversion.combine_two_pass`).

    Parameters
    ----------
    quality : (X, Y, Z) ndarray of float
        Phase reliability in [0, 1] (dimensionless), e.g. from :func:`quality_map`.
    mask : (X, Y, Z) ndarray of bool
        The generous (hole-free) mask of the second pass.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    threshold : float in [0, 1]
        Minimum quality kept (dimensionless), default
        :data:`DEFAULT_STRICT_QUALITY_THRESHOLD`.
    margin_mm : float
        Growth (mm) of the excluded regions; 0 for none. Default
        :data:`DEFAULT_STRICT_MARGIN_MM`.

    Returns
    -------
    strict : (X, Y, Z) ndarray of bool
        A subset of ``mask``.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite quality, a threshold outside [0, 1], a negative
        margin, or when nothing of the mask is left.

    Examples
    --------
    >>> q = np.ones((20, 20, 20), np.float32); q[9:11, 9:11, 9:11] = 0.1
    >>> m = np.zeros(q.shape, bool); m[2:18, 2:18, 2:18] = True
    >>> s = strict_mask(q, m, (1, 1, 1), margin_mm=0)
    >>> int(m.sum() - s.sum()), bool(s[10, 10, 10]), bool(s[5, 5, 5])
    (8, False, True)
    >>> int(m.sum() - strict_mask(q, m, (1, 1, 1), margin_mm=1).sum())
    32
    """
    q = as_image(quality, 'quality', 3)
    msk = as_mask(mask, q.shape)
    vox = as_voxel_size(voxel_size)
    check_finite_in_mask(q, msk, 'quality')
    fraction('threshold', threshold, closed=True)
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f'margin_mm must be ≥ 0 (mm), got {margin_mm}')
    box = bounding_box(msk, 1)
    m = msk[box]
    excluded = m & (q[box] < threshold)
    if margin_mm > 0 and excluded.any():
        excluded = morph.ball_filter(excluded, vox, float(margin_mm), erode=False)
    keep = m & ~excluded
    if not keep.any():
        raise ValueError(f'no mask voxel is left by the strict mask (quality threshold '
                         f'{threshold}, margin {margin_mm} mm)')
    out = np.zeros(msk.shape, bool)
    out[box] = morph.largest_component(keep)
    return out
