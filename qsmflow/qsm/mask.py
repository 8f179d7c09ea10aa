# SPDX-License-Identifier: Apache-2.0
"""Brain masks from GRE magnitude, and phase-quality masks.

:func:`brain_mask` extracts the brain from a 3D magnitude image (threshold → opening →
largest connected component → hole filling). :func:`quality_map` scores every voxel's
phase reliability and :func:`quality_mask` removes unreliable voxels (near air–tissue
interfaces such as the sinuses) from a brain mask, as the 2024 QSM consensus recommends.
:func:`strict_mask` is the first mask of a two-pass reconstruction: every unreliable voxel
removed and *not* filled back (see :func:`qsmflow.qsm.inversion.combine_two_pass`).

Binary erosion and dilation by a ball of radius ``r`` mm are computed as an FFT
convolution with the ball (:func:`~qsmflow.qsm.kernels.sphere_kernel`), whose cost does
not grow with the radius. Connected components use face (6-) connectivity throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm.kernels import bounding_box, irfft, padded_shape, rfft, sphere_kernel

#: Radius (mm) of the morphological opening that detaches scalp joined by thin bridges.
DEFAULT_OPENING_MM = 3.0
#: Default cut-off of :func:`quality_mask` (dimensionless quality in [0, 1]).
DEFAULT_QUALITY_THRESHOLD = 0.3
#: Percentile of positive magnitudes used as the robust maximum.
ROBUST_MAX_PERCENTILE = 99.0
#: Side (mm) of the box over which phase-coherence scores are averaged.
QUALITY_WINDOW_MM = 3.0


# --------------------------------------------------------------------------------------
# input validation shared by qsmflow.qsm.{mask, unwrap, echoes}
# --------------------------------------------------------------------------------------
def _as_image(arr, name, ndim, shape=None) -> np.ndarray:
    """``arr`` as a float32/float64 array of ``ndim`` dimensions (and ``shape``)."""
    a = np.asarray(arr)
    if a.ndim not in np.atleast_1d(ndim):
        raise ValueError(f'{name} must be {ndim}-dimensional, got shape {a.shape}')
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f'{name} has shape {a.shape}, expected {tuple(shape)}')
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f'{name} must be real-valued, got dtype {a.dtype}')
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return a


def _as_mask(mask, shape) -> np.ndarray:
    """``mask`` as a non-empty bool array of ``shape``."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f'mask has shape {m.shape}, expected {tuple(shape)}')
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise ValueError(f'mask must be boolean, got dtype {m.dtype}')
        m = m != 0
    if not m.any():
        raise ValueError('mask is empty')
    return m


def _check_finite_in_mask(arr, mask, name) -> None:
    """Raise ValueError if ``arr`` (3D, or 4D over a 3D mask) is non-finite in the mask."""
    if not np.isfinite(arr).all() and not np.isfinite(arr[mask]).all():
        raise ValueError(f'{name} has non-finite values inside the mask')


def _as_voxel_size(voxel_size_mm) -> np.ndarray:
    """``voxel_size_mm`` as three positive finite floats (mm)."""
    v = np.asarray(voxel_size_mm, dtype=np.float64).ravel()
    if v.size != 3 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f'voxel_size_mm must be 3 positive numbers (mm), got {voxel_size_mm!r}')
    return v


def _as_echo_times(echo_times_s, n_echoes) -> np.ndarray:
    """Echo times as ``n_echoes`` positive, strictly increasing floats (s)."""
    t = np.asarray(echo_times_s, dtype=np.float64).ravel()
    if t.size != n_echoes:
        raise ValueError(f'{t.size} echo times for {n_echoes} echoes')
    if not np.all(np.isfinite(t)) or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError(f'echo_times_s must be positive and strictly increasing (s), got {t}')
    if t[-1] > 1.0:
        raise ValueError(f'echo times look like ms, not s: {t}')
    return t


# --------------------------------------------------------------------------------------
# morphology helpers
# --------------------------------------------------------------------------------------
def _ball_count(vox, radius_mm) -> int:
    """Count the voxels of the ball that :func:`~qsmflow.qsm.kernels.sphere_kernel` uses."""
    axes = [np.arange(-math.ceil(radius_mm / h), math.ceil(radius_mm / h) + 1) * h for h in vox]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return int(np.count_nonzero(r2 <= radius_mm**2 * (1 + 1e-12)))


def _ball_filter(mask, vox, radius_mm, erode):
    """Erosion (``erode``) or dilation of ``mask`` by a ball of ``radius_mm``, via FFT."""
    n_ball = _ball_count(vox, radius_mm)
    if n_ball <= 1:
        return mask.copy()
    pad = [math.ceil(radius_mm / h) + 1 for h in vox]
    pshape = padded_shape(mask.shape, pad)
    big = np.zeros(pshape, np.float32)
    big[tuple(slice(0, n) for n in mask.shape)] = mask
    kernel = sphere_kernel(pshape, vox, radius_mm)
    frac = irfft(rfft(big) * kernel, pshape)[tuple(slice(0, n) for n in mask.shape)]
    half = 0.5 / n_ball
    return frac > 1 - half if erode else frac > half


def _largest_component(mask) -> np.ndarray:
    """Largest face-connected component of ``mask`` (``mask`` itself if empty)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return lab > 0
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == np.argmax(counts)


def _fill_holes_axis(mask, axis=None):
    """Fill background regions not connected to the array border.

    ``axis=None`` fills 3D holes (face-connected background); an integer fills holes in
    every 2D slice across that axis.
    """
    struct = ndi.generate_binary_structure(3, 1)
    faces = [0, 1, 2]
    if axis is not None:
        keep = [slice(None)] * 3
        keep[axis] = 1
        plane = struct[tuple(keep)].copy()
        struct = np.zeros_like(struct)
        struct[tuple(keep)] = plane
        faces.remove(axis)
    lab, n = ndi.label(~mask, struct)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    for a in faces:
        outside[np.take(lab, 0, axis=a)] = True
        outside[np.take(lab, -1, axis=a)] = True
    outside[0] = True
    return mask | ~outside[lab]


def _fill_holes(mask, slicewise=True):
    """3D hole filling, then (``slicewise``) 2D filling across each of the three axes."""
    out = _fill_holes_axis(mask)
    if slicewise:
        for axis in range(3):
            out = _fill_holes_axis(out, axis)
    return out


def _otsu(values, nbins=256) -> float:
    """Otsu's threshold of a 1D sample (same unit as the values)."""
    hist, edges = np.histogram(values, bins=nbins)
    hist = hist.astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(invalid='ignore', divide='ignore'):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


# --------------------------------------------------------------------------------------
# brain mask
# --------------------------------------------------------------------------------------
def brain_mask(
    magnitude: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    threshold: float | None = None,
    fill_holes: bool = True,
    erode_mm: float = 0.0,
    opening_mm: float = DEFAULT_OPENING_MM,
) -> np.ndarray:
    """Brain mask from a 3D GRE magnitude image.

    Steps:

    1. Threshold. The robust maximum is the 99th percentile of the positive magnitudes.
       With ``threshold=None``, Otsu's threshold of the positive magnitudes (clipped at
       the robust maximum) separates background/bone from tissue; otherwise the threshold
       is ``threshold × robust maximum``.
    2. Opening by a ball of ``opening_mm``: erosion, largest connected component of the
       eroded mask, dilation back (by one voxel more, to keep the thresholded boundary),
       intersection with the thresholded mask. Scalp joined to the brain through bridges
       thinner than ``2 × opening_mm`` (or separated by the dark skull) is discarded, and
       so are thin shells that would otherwise outnumber the brain's voxels; brain
       structures thinner than that are lost too.
    3. Largest connected component.
    4. ``fill_holes``: fill cavities enclosed in 3D, then holes in every 2D slice along
       each axis. This restores dark but enclosed structures (iron-rich deep grey matter
       with strong R2* decay, vessels, ventricles at late echoes).
    5. Optional erosion by ``erode_mm``.

    Parameters
    ----------
    magnitude : (X, Y, Z) ndarray of float
        Magnitude image (arbitrary units, ≥ 0), e.g. the first echo or the root sum of
        squares over echoes.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    threshold : float in (0, 1), optional
        Threshold as a fraction of the robust maximum (dimensionless); default Otsu.
    fill_holes : bool
        Fill enclosed holes (3D and slice-wise).
    erode_mm : float
        Final erosion radius (mm); 0 for none.
    opening_mm : float
        Radius of the opening (mm); 0 for none.

    Returns
    -------
    mask : (X, Y, Z) ndarray of bool
        Brain mask.

    Raises
    ------
    ValueError
        On a non-3D or non-finite magnitude, bad voxel size or options, or when nothing
        exceeds the threshold.

    Examples
    --------
    >>> x, y, z = np.ogrid[-20:20, -20:20, -20:20]
    >>> r = np.sqrt(x**2 + y**2 + z**2)
    >>> mag = (r < 12) * (1.0 - 0.8 * (r < 3)) + (r > 15) * (r < 18)
    >>> m = brain_mask(mag.astype(np.float32), (1, 1, 1))
    >>> bool(m[20, 20, 20]), bool(m[20, 20, 36]), int(m.sum()) == int((r < 12).sum())
    (True, False, True)
    """
    mag = _as_image(magnitude, 'magnitude', 3)
    vox = _as_voxel_size(voxel_size_mm)
    if not np.isfinite(mag).all():
        raise ValueError('magnitude has non-finite values')
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f'threshold must be a fraction in (0, 1), got {threshold}')
    if not (erode_mm >= 0 and opening_mm >= 0):
        raise ValueError('erode_mm and opening_mm must be ≥ 0 (mm)')
    return _brain_mask(mag, vox, threshold, bool(fill_holes), float(erode_mm), float(opening_mm))


def _brain_mask(mag, vox, threshold, fill_holes, erode_mm, opening_mm):
    step = 2 if mag.size > 2_000_000 else 1  # the histogram needs no more than that
    sample = mag[::step, ::step, ::step]
    sample = sample[sample > 0]
    if sample.size == 0:
        raise ValueError('magnitude has no positive voxels')
    robust_max = float(np.percentile(sample, ROBUST_MAX_PERCENTILE))
    if threshold is None:
        thr = _otsu(np.minimum(sample, robust_max))
    else:
        thr = threshold * robust_max
    fg = mag > thr
    if not fg.any():
        raise ValueError(f'no voxel exceeds the magnitude threshold {thr:g}')
    box = bounding_box(fg, 1)
    sel = fg[box]
    if opening_mm > 0:
        core = _ball_filter(sel, vox, opening_mm, erode=True)
        if core.any():
            core = _largest_component(core)
            # dilate one voxel further than the erosion, to keep the thresholded boundary
            sel = sel & _ball_filter(core, vox, opening_mm + float(vox.max()), erode=False)
    sel = _largest_component(sel)
    if fill_holes:
        sel = _fill_holes(sel)
    if erode_mm > 0:
        sel = _ball_filter(sel, vox, erode_mm, erode=True)
    out = np.zeros(mag.shape, bool)
    out[box] = sel
    return out


# --------------------------------------------------------------------------------------
# phase quality
# --------------------------------------------------------------------------------------
def quality_map(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
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
    voxel_size_mm : sequence of 3 float
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
    ph = _as_image(phase, 'phase', (3, 4))
    if ph.ndim == 3:
        ph = ph[..., None]
    shape = ph.shape[:3]
    msk = _as_mask(mask, shape)
    vox = _as_voxel_size(voxel_size_mm)
    te = _as_echo_times(echo_times_s, ph.shape[3])
    _check_finite_in_mask(ph, msk, 'phase')
    mag = None
    if magnitude is not None:
        mag = _as_image(magnitude, 'magnitude', (3, 4))
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape != ph.shape:
            raise ValueError(f'magnitude has shape {mag.shape}, expected {ph.shape}')
        _check_finite_in_mask(mag, msk, 'magnitude')
    return _quality_map(ph, mag, msk, vox, te)


def _wrap(x):
    """Wrap phase (rad) to [−π, π); same as :func:`qsmflow.qsm.unwrap.wrap_phase`."""
    return x - 2 * np.pi * np.round(x / (2 * np.pi))


def _quality_map(ph, mag, msk, vox, te):
    box = bounding_box(msk, 1)
    m = msk[box]
    p = [ph[box + (n,)].astype(np.float32) for n in range(ph.shape[3])]
    size = [max(3, 2 * round(QUALITY_WINDOW_MM / (2 * h)) + 1) for h in vox]
    mf = m.astype(np.float32)
    den = ndi.uniform_filter(mf, size)

    def box_mean(score):
        with np.errstate(invalid='ignore', divide='ignore'):
            out = ndi.uniform_filter(score * mf, size) / den
        return np.clip(np.nan_to_num(out), 0, 1)

    # cos is 2π-periodic, so second differences need no wrapping: a 2π·k jump of any term
    # shifts φ₊ − 2φ + φ₋ by a multiple of 2π
    img = p[1] - p[0] if len(p) > 1 else p[0]
    cos_sum = np.zeros(m.shape, np.float32)
    count = np.zeros(m.shape, np.float32)
    for a in range(3):
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], mid[a], hi[a] = slice(None, -2), slice(1, -1), slice(2, None)
        lo, mid, hi = tuple(lo), tuple(mid), tuple(hi)
        d2 = img[hi] + img[lo]
        d2 -= 2 * img[mid]
        ok = m[lo] & m[mid] & m[hi]
        cos_sum[mid] += np.cos(d2) * ok
        count[mid] += ok
    with np.errstate(invalid='ignore', divide='ignore'):
        q = np.where(count > 0, cos_sum / count, 0).astype(np.float32)
    q = box_mean(q)
    if len(p) >= 3:
        qt = np.zeros(m.shape, np.float32)
        for n in range(2, len(p)):
            ratio = np.float32((te[n] - te[n - 1]) / (te[n - 1] - te[n - 2]))
            r = p[n] - p[n - 1]
            r -= _wrap(p[n - 1] - p[n - 2]) * ratio
            qt += np.cos(r)
        q *= box_mean(qt / np.float32(len(p) - 2))
    if mag is not None:
        m1 = mag[box + (0,)].astype(np.float32)
        ref = float(np.median(m1[m]))
        if ref > 0:
            q *= np.clip(m1 / np.float32(0.5 * ref), 0, 1)
    q = (q * m).astype(np.float32)
    out = np.zeros(msk.shape, np.float32)
    out[box] = q
    return out


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
    q = _as_image(quality, 'quality', 3)
    msk = _as_mask(mask, q.shape)
    _check_finite_in_mask(q, msk, 'quality')
    if not 0 <= threshold <= 1:
        raise ValueError(f'threshold must lie in [0, 1], got {threshold}')
    keep = msk & (q >= threshold)
    if not keep.any():
        raise ValueError(f'no mask voxel reaches the quality threshold {threshold}')
    box = bounding_box(msk, 1)
    sel = _largest_component(keep[box])
    if fill_holes:
        sel = _fill_holes(sel, slicewise=False) & msk[box]
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
    voxel_size_mm: Sequence[float],
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
    voxel_size_mm : sequence of 3 float
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
    q = _as_image(quality, 'quality', 3)
    msk = _as_mask(mask, q.shape)
    vox = _as_voxel_size(voxel_size_mm)
    _check_finite_in_mask(q, msk, 'quality')
    if not 0 <= threshold <= 1:
        raise ValueError(f'threshold must lie in [0, 1], got {threshold}')
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f'margin_mm must be ≥ 0 (mm), got {margin_mm}')
    box = bounding_box(msk, 1)
    m = msk[box]
    excluded = m & (q[box] < threshold)
    if margin_mm > 0 and excluded.any():
        excluded = _ball_filter(excluded, vox, float(margin_mm), erode=False)
    keep = m & ~excluded
    if not keep.any():
        raise ValueError(f'no mask voxel is left by the strict mask (quality threshold '
                         f'{threshold}, margin {margin_mm} mm)')
    out = np.zeros(msk.shape, bool)
    out[box] = _largest_component(keep)
    return out


#: Largest R2* (1/s) of a CSF voxel for :func:`csf_mask` (CSF ≈ 2–5 1/s at 3 T; the
#: least-relaxing tissue, cortical grey matter, ≈ 15 1/s).
DEFAULT_CSF_MAX_R2STAR_HZ = 8.0
#: Least depth (mm) below the mask surface of a :func:`csf_mask` voxel: excludes the
#: sulcal CSF at the brain surface, where the field (and χ) is least reliable.
DEFAULT_CSF_MIN_DEPTH_MM = 10.0
#: Smallest connected CSF region (mm³) kept by :func:`csf_mask`.
DEFAULT_CSF_MIN_VOLUME_MM3 = 200.0


def r2star_map(magnitude: np.ndarray, mask: np.ndarray, *, echo_times_s) -> np.ndarray:
    """R2* (1/s) by a log-linear least-squares fit of magnitude vs echo time.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) ndarray
        Multi-echo magnitude (arbitrary units), E ≥ 2.
    mask : (X, Y, Z) ndarray of bool
        Voxels to fit; 0 elsewhere.
    echo_times_s : sequence of E float
        Echo times (s).

    Returns
    -------
    r2star_hz : (X, Y, Z) ndarray of float32
        ``−slope`` of ``ln(magnitude)`` vs TE (1/s), clipped at 0; 0 outside ``mask``.

    Examples
    --------
    >>> te = np.array([0.005, 0.01, 0.02])
    >>> mag = np.exp(-20.0 * te) * np.ones((4, 4, 4, 1))
    >>> r2 = r2star_map(mag, np.ones((4, 4, 4), bool), echo_times_s=te)
    >>> bool(np.allclose(r2, 20.0, atol=1e-3))
    True
    """
    mag = _as_image(magnitude, 'magnitude', 4)
    msk = _as_mask(mask, mag.shape[:3])
    te = _as_echo_times(echo_times_s, mag.shape[3])
    if te.size < 2:
        raise ValueError('R2* needs at least 2 echoes')
    _check_finite_in_mask(mag[..., 0], msk, 'magnitude')
    logm = np.log(np.maximum(mag[msk].astype(np.float64), 1e-12))
    tc = te - te.mean()
    slope = (logm - logm.mean(axis=1, keepdims=True)) @ tc / float(tc @ tc)
    out = np.zeros(msk.shape, np.float32)
    out[msk] = np.maximum(-slope, 0)
    return out


def csf_mask(
    magnitude: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    echo_times_s: Sequence[float],
    max_r2star_hz: float = DEFAULT_CSF_MAX_R2STAR_HZ,
    min_depth_mm: float = DEFAULT_CSF_MIN_DEPTH_MM,
    min_volume_mm3: float = DEFAULT_CSF_MIN_VOLUME_MM3,
) -> np.ndarray:
    """Ventricular CSF inside the brain, from multi-echo magnitude (a reference region).

    Heuristic: CSF relaxes slowly and has the highest proton density, so a voxel is taken
    as ventricular CSF when (1) its R2* (:func:`r2star_map`) is below ``max_r2star_hz``,
    (2) its first-echo magnitude is at least the median over the mask, (3) it lies at least
    ``min_depth_mm`` below the mask surface (which keeps the ventricles and drops sulcal
    CSF, veins' surroundings and edge voxels) and (4) it belongs to a connected region of
    at least ``min_volume_mm3``. CSF's χ is close to that of water and nearly free of
    anisotropy, which is why it is a common reference; the region's purity (partial
    volume with the choroid plexus or periventricular white matter) limits its accuracy.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) ndarray
        Multi-echo magnitude (arbitrary units), E ≥ 2.
    mask : (X, Y, Z) ndarray of bool
        Brain mask.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    echo_times_s : sequence of E float
        Echo times (s).
    max_r2star_hz, min_depth_mm, min_volume_mm3 : float, optional
        Thresholds (1/s, mm, mm³); see the module constants.

    Returns
    -------
    csf : (X, Y, Z) ndarray of bool
        Ventricular CSF voxels (a subset of ``mask``).

    Raises
    ------
    ValueError
        For invalid inputs or when no voxel passes the criteria.

    Examples
    --------
    >>> te = np.array([0.005, 0.015, 0.025])
    >>> g = np.indices((40, 40, 40)) - 19.5
    >>> brain = (g ** 2).sum(0) < 18 ** 2; ventricle = (g ** 2).sum(0) < 4 ** 2
    >>> r2 = np.where(ventricle, 3.0, 20.0); m0 = np.where(ventricle, 1.0, 0.8) * brain
    >>> mag = m0[..., None] * np.exp(-r2[..., None] * te)
    >>> csf = csf_mask(mag, brain, (1, 1, 1), echo_times_s=te)
    >>> bool(csf.any()) and bool(np.all(ventricle[csf]))
    True
    """
    mag = _as_image(magnitude, 'magnitude', 4)
    msk = _as_mask(mask, mag.shape[:3])
    vox = _as_voxel_size(voxel_size_mm)
    if not msk.any():
        raise ValueError('mask is empty')
    r2 = r2star_map(mag, msk, echo_times_s=echo_times_s)
    box = bounding_box(msk, 1)
    depth = ndi.distance_transform_edt(msk[box], sampling=vox)
    first = mag[..., 0][box]
    cand = (msk[box] & (depth >= min_depth_mm) & (r2[box] < max_r2star_hz)
            & (first >= np.median(first[msk[box]])))
    lab, n = ndi.label(cand)
    if n:
        sizes = np.bincount(lab.ravel())[1:] * float(np.prod(vox))
        cand = np.isin(lab, 1 + np.nonzero(sizes >= min_volume_mm3)[0])
    if not cand.any():
        raise ValueError('no CSF found: no voxel deep in the mask has low R2* and high '
                         'magnitude (use another reference)')
    out = np.zeros(msk.shape, bool)
    out[box] = cand
    return out
