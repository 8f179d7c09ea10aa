# SPDX-License-Identifier: Apache-2.0
"""Multi-echo phase unwrapping: spatial unwrapping (ROMEO or Laplacian), then temporal
unwrapping of the later echoes and a common 2π shift."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsmflow.qsm._unwrap_box import _crop_pad
from qsmflow.qsm._unwrap_components import _nearest_reference
from qsmflow.qsm._validation import as_voxel_size
from qsmflow.qsm._vector import Selection, by_slabs, chunkwise, median
from qsmflow.qsm.echoes._common import _check_inputs, _echo_weight, _LineSums, _magnitude_ref
from qsmflow.qsm.kernels import bounding_box
from qsmflow.qsm.unwrap import (
    DEFAULT_LAPLACIAN_MAX_ITER,
    DEFAULT_LAPLACIAN_TOL,
    TWO_PI,
    _inverse_laplacian_symbol,
    _laplacian_box,
    _romeo_box,
    wrap_phase,
)

#: Spatial unwrapping methods of :func:`unwrap_echoes`.
UNWRAPPING_METHODS = ('romeo', 'laplacian')


def unwrap_echoes(
    phase: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    *,
    echo_times_s: Sequence[float],
    magnitude: np.ndarray | None = None,
    method: str = 'romeo',
) -> np.ndarray:
    """Unwrap multi-echo phase in space and time.

    ``method='romeo'`` (exact; every output differs from its input by 2π·k per voxel):

    1. The echo difference ``Δ = wrap(φ₂ − φ₁) = 2π·f·(TE₂ − TE₁)`` is free of φ₀ and has
       the fewest wraps; it is unwrapped exactly by the region growing of
       :func:`~qsmflow.qsm.unwrap.unwrap_romeo`, weighted by the magnitude
       ``m₁m₂/√(m₁² + m₂²)`` (the noise level of a phase difference) and, with ≥ 3 echoes,
       by gradient coherence with ``wrap(φ₃ − φ₁)``. Its global 2π·k is
       chosen so that the median over the mask lies in [−π, π), i.e. the median field is
       within ±1/(2(TE₂ − TE₁)) Hz of 0 — true when the scanner frequency was set on
       water.
    2. The offset ``φ₀ = wrap(φ₁ − Δ·TE₁/(TE₂ − TE₁))`` is unwrapped the same way
       (median in [−π, π)), so that each echo's phase comes out spatially continuous. The
       field alone would not need this step: a 2π jump of φ₀ shifts all echoes of a voxel
       alike and leaves the slope unchanged.
    3. Temporal unwrapping, vectorised over voxels: echo 1 is
       ``φ₁ + 2π·round((φ₀ + Δ·TE₁/(TE₂ − TE₁) − φ₁) / 2π)``, echo 2 adds Δ, and each later
       echo ``n`` is unwrapped against the prediction of a weighted line fit
       (weights ``m²``) of the echoes already unwrapped, so that noise in Δ is not
       extrapolated to late echoes and the result is temporally consistent.

    With one echo (3D ``phase`` is taken as one echo), that echo is unwrapped spatially
    (magnitude-weighted) and its global 2π·k set so that its median lies in [−π, π).

    ``method='laplacian'`` (fast, not exact): each echo is unwrapped by
    :func:`~qsmflow.qsm.unwrap.unwrap_laplacian`; echo-to-echo 2π jumps are then removed
    by shifting each echo ``n ≥ 2`` by the global 2π·k that brings its median closest to
    the prediction from the earlier echoes (echo 2: echo 1 plus ``wrap(φ₂ − φ₁)``; later
    echoes: the weighted line fit as above).

    Parameters
    ----------
    phase : (X, Y, Z, N) or (X, Y, Z) ndarray of float
        Wrapped phase of each echo (rad).
    mask : (X, Y, Z) ndarray of bool
        Voxels to unwrap.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    echo_times_s : sequence of N float
        Echo times (s), strictly increasing.
    magnitude : same shape as ``phase``, ndarray of float, optional
        Magnitude of each echo (arbitrary units, ≥ 0); used for weights.
    method : {'romeo', 'laplacian'}
        Spatial unwrapping method.

    Returns
    -------
    unwrapped : (X, Y, Z, N) ndarray of float32
        Unwrapped phase of each echo (rad); 0 outside the mask.

    Raises
    ------
    ValueError
        On wrong dimensions or shapes, non-finite values in the mask, bad echo times or an
        unknown method.

    Examples
    --------
    >>> from qsmflow.qsm.unwrap import wrap_phase
    >>> te = np.array([0.004, 0.008, 0.012])
    >>> x = np.linspace(-1, 1, 16)[:, None, None, None]
    >>> truth = 1.0 + 2 * np.pi * (200 * x) * te + 0 * np.zeros((16, 16, 16, 1))
    >>> u = unwrap_echoes(wrap_phase(truth), np.ones((16, 16, 16), bool), (1, 1, 1),
    ...                   echo_times_s=te)
    >>> bool(np.allclose(u, truth, atol=1e-4))
    True
    """
    ph, msk, te, mag, vox = _unwrap_inputs(phase, mask, voxel_size, echo_times_s, magnitude,
                                           method)
    if method == 'romeo' and ph.shape[3] > 1:
        return _romeo_voxels(ph, msk, vox, te, mag).full()
    box = bounding_box(msk)
    # echo-first, cropped, padded by one voxel, (N, X', Y', Z'): each echo cropped when
    # it is read, so that at most a few cropped echoes are held at a time
    phb = _EchoBox(ph, box)
    magb = None if mag is None else _EchoBox(mag, box)
    mb = _crop_pad(msk, box, False)
    if method == 'romeo':
        outb = _unwrap_echo_romeo(phb, mb, vox, magb)
    else:
        outb = _unwrap_echoes_laplacian(phb, mb, vox, te, magb)
    out = np.zeros(ph.shape, np.float32)
    out[box] = np.moveaxis(outb[:, 1:-1, 1:-1, 1:-1], 0, -1)  # outb is 0 outside the mask
    return out


def _unwrap_inputs(phase, mask, voxel_size, echo_times_s, magnitude, method):
    """The checked arguments of :func:`unwrap_echoes`: ``(ph, msk, te, mag, vox)``."""
    ph, msk, te, mag = _check_inputs(phase, mask, echo_times_s, magnitude)
    vox = as_voxel_size(voxel_size)
    if method not in UNWRAPPING_METHODS:
        raise ValueError(f'unknown unwrapping method {method!r}; use one of {UNWRAPPING_METHODS}')
    return ph, msk, te, mag, vox


class _EchoBox:
    """The echoes of ``arr`` (X, Y, Z, N) cropped to ``box`` and padded by one voxel
    (:func:`~qsmflow.qsm._unwrap_box._crop_pad`), as float32: ``[n]`` crops echo ``n`` anew
    (the same values as cropping the whole stack at once); ``shape`` is (N, X', Y', Z')."""

    def __init__(self, arr, box):
        self.arr, self.box = arr, box
        self.shape = (arr.shape[3],) + tuple(s.stop - s.start + 2 for s in box)

    def __getitem__(self, n):
        return _crop_pad(self.arr[..., n], self.box).astype(np.float32, copy=False)


def _global_shift(values):
    """2π·k bringing the median of ``values`` (rad) into [−π, π)."""
    return TWO_PI * np.floor(median(values) / TWO_PI + 0.5)


def _temporal_unwrap(phi, pred):
    """``phi + 2π·round((pred − phi) / 2π)`` (rad)."""
    return phi + np.float32(TWO_PI) * np.round((pred - phi) / np.float32(TWO_PI))


def _wrapped_difference(a, b):
    return wrap_phase(a - b)


def _difference_magnitude(m1, m2):
    """Noise-level magnitude ``m₁m₂/√(m₁² + m₂²)`` of a phase difference (0 where both
    vanish)."""
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.nan_to_num(m1 * m2 / np.sqrt(m1 * m1 + m2 * m2))


def _unwrap_echo_romeo(phb, mb, vox, magb):
    """One echo: ROMEO, median in [−π, π); (1, X', Y', Z')."""
    u = _romeo_box(phb[0], mb, vox, None if magb is None else magb[0], None, None, None, True)
    u[mb] -= _global_shift(u[mb])
    return u[None]


class _RomeoVoxels:
    """ROMEO echo unwrapping of ≥ 2 echoes (steps 1-3 of :func:`unwrap_echoes`), kept as
    the masked voxels: ``sel`` (:class:`~qsmflow.qsm._vector.Selection` of the mask) and
    ``unwrapped`` (N, V) float32 in the order of ``sel`` (None when not kept). Every voxel
    gets the operations of a whole-mask pass, so the same bits for any thread count."""

    def __init__(self, sel, unwrapped):
        self.sel, self.unwrapped = sel, unwrapped

    def full(self):
        """The unwrapped echoes on the grid, (X, Y, Z, N) float32, 0 outside the mask."""
        out = np.zeros(self.sel.mask.shape + self.unwrapped.shape[:1], np.float32)
        self.sel.scatter(out, self.unwrapped.T)
        return out


def _romeo_voxels(ph, msk, vox, te, mag, *, fit=None, keep=True):
    """:class:`_RomeoVoxels` of the checked echoes ``ph`` (≥ 2) and ``mag`` (or None). What
    the component alignment needs (once for both growings) is prepared on the calling
    thread while the first (serial) growing runs on the thread pool, or before it on one
    thread. The echoes are read from ``ph`` and ``mag`` chunk by chunk of the masked
    voxels (:func:`~qsmflow.qsm._vector.chunkwise`), never gathered whole: each chunk is
    unwrapped in time and handed to ``fit`` (if given) as ``fit(c, y, weights, sums)``:
    its slice ``c`` of the voxels, its unwrapped echoes ``y`` (N, len) float32, their N
    fit weights ``(m/ref)²`` of :func:`_echo_weight` (of the magnitude as float32; 1.0
    without) and the weighted line sums of echoes 1…N−1 (None for 2 echoes); ``fit.start``
    is called first with the number of masked voxels. ``keep``: keep the unwrapped voxels
    (else ``unwrapped`` is None)."""
    n_echo = ph.shape[3]
    box = bounding_box(msk)
    phb = _EchoBox(ph, box)
    magb = None if mag is None else _EchoBox(mag, box)
    mb = _crop_pad(msk, box, False)
    sel, bsel = Selection(msk), Selection(mb)
    side = {}

    # made on the calling thread while a growing runs on the pool (not on a pool thread:
    # what a pool thread allocates stays resident in its malloc arena, +40 MB at the next
    # steps' peaks; the growing allocates nothing there)
    def first_inputs():  # the first-echo median, the alignment
        side['median'] = None
        if mag is not None:
            side['median'] = float(median(sel.gather(mag[..., 0], np.float32)))
        side['known'] = _nearest_reference(mb, vox)

    dte = te[1] - te[0]
    p0 = phb[0]
    delta = by_slabs(_wrapped_difference, phb[1], p0)
    phase2 = ratio = None
    if n_echo >= 3:
        phase2 = by_slabs(_wrapped_difference, phb[2], p0)
        ratio = (te[2] - te[0]) / dte
    del p0
    mag_d = None
    if magb is not None:
        mag_d = by_slabs(_difference_magnitude, magb[0], magb[1])
    delta_u = _romeo_box(delta, mb, vox, mag_d, phase2, ratio, None, True,
                         prepare=first_inputs, known=lambda: side['known'])
    del delta, mag_d, phase2  # free before the next growing
    d = _centred(delta_u, bsel)
    bsel.scatter(delta_u, d)
    scale1 = np.float32(te[0] / dte)
    offset = by_slabs(lambda p0, du: wrap_phase(p0 - du * scale1), phb[0], delta_u)
    del delta_u
    mref = side['median'] if side['median'] is not None and side['median'] > 0 else None
    offset_u = _romeo_box(offset, mb, vox, None if magb is None else magb[0], None, None,
                          None, True, mref=mref, known=lambda: side.pop('known'))
    del offset
    side.pop('known', None)
    off = _centred(offset_u, bsel)
    del offset_u
    # temporal unwrapping of the masked voxels, vectorised, in fixed chunks, each chunk's
    # echoes and weights read from the grids (the same values as gathering them whole)
    ref = None if mag is None else (side['median'] if side['median'] > 0 else 1.0)
    flat = _flat_indices(sel)
    out = np.empty((n_echo, sel.size), np.float32) if keep else None
    if fit is not None:
        fit.start(sel.size)

    def chunk(c):
        ijk = np.unravel_index(flat[c], msk.shape)
        phase = [ph[ijk + (n,)].astype(np.float32, copy=False) for n in range(n_echo)]
        weights = ([1.0] * n_echo if mag is None else
                   [_echo_weight(mag[ijk + (n,)].astype(np.float32, copy=False), ref)
                    for n in range(n_echo)])
        del ijk
        y = out[:, c] if keep else np.empty((n_echo, c.stop - c.start), np.float32)
        y0 = _temporal_unwrap(phase[0], off[c] + d[c] * scale1)
        y[0] = y0
        y[1] = y0 + d[c]
        sums = None
        if n_echo > 2:
            sums = _unwrap_later_echoes(y, phase, te, weights)
        if fit is not None:
            fit(c, y, weights, sums)

    chunkwise(chunk, sel.size)
    return _RomeoVoxels(sel, out)


def _flat_indices(sel):
    """Flat (C-order) grid indices of ``sel``'s voxels in its order, int64, made by its
    slabs side by side."""
    mask = sel.mask
    plane = int(np.prod(mask.shape[1:]))
    flat = np.empty(sel.size, np.int64)

    def one(planes, voxels):
        flat[voxels] = np.flatnonzero(mask[planes]) + planes.start * plane

    sel.each(one)
    return flat


def _centred(u, sel):
    """``u[sel]`` less the 2π·k of :func:`_global_shift` (float32, as ``u[sel] -= …``)."""
    v = sel.gather(u)
    v -= _global_shift(v)
    return v


def _unwrap_later_echoes(out, phase, te, weights):
    """Unwrap echoes 3…N of ``out`` (N, V) in place against the weighted line through the
    earlier ones (``phase``: the wrapped echoes, ``weights`` their fit weights); returns the
    line sums of echoes 1…N−1."""
    sums = _LineSums(te.mean())
    for n in range(out.shape[0] - 1):
        if n >= 2:
            out[n] = _temporal_unwrap(phase[n], sums.predict(te[n]))
        sums.add(out[n], weights[n], te[n])
    out[-1] = _temporal_unwrap(phase[-1], sums.predict(te[-1]))
    return sums


def _unwrap_echoes_laplacian(phb, mb, vox, te, magb):
    n_echo = phb.shape[0]
    sel = mb
    inv_lap = _inverse_laplacian_symbol(mb.shape, vox)
    ref = None if magb is None else _magnitude_ref(magb[0][sel])
    sums = _LineSums(te.mean())
    out = np.zeros(phb.shape, np.float32)
    for n in range(n_echo):
        u = _laplacian_box(
            phb[n], mb, vox, inv_lap, DEFAULT_LAPLACIAN_MAX_ITER, DEFAULT_LAPLACIAN_TOL
        )[sel]
        if n == 0:
            u -= _global_shift(u)
        elif n == 1:
            u -= _global_shift(u - (out[0][sel] + wrap_phase(phb[1][sel] - phb[0][sel])))
        else:
            u -= _global_shift(u - sums.predict(te[n]))
        out[n][sel] = u
        sums.add(u, _echo_weight(None if magb is None else magb[n][sel], ref), te[n])
    return out
