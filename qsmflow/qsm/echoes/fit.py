# SPDX-License-Identifier: Apache-2.0
"""Field from multi-echo phase: weighted least-squares fit of unwrapped phase against TE
(:func:`fit_field`), nonlinear complex fit (:func:`fit_field_complex`), and the whole
estimate from wrapped phase (:func:`estimate_field`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsmflow.qsm._vector import chunkwise, slabwise
from qsmflow.qsm.echoes._common import _check_inputs, _echo_weight, _LineSums, _magnitude_ref
from qsmflow.qsm.echoes.units import _ppm_per_hz, hz_to_ppm
from qsmflow.qsm.echoes.unwrapping import _romeo_voxels, _unwrap_inputs, unwrap_echoes
from qsmflow.qsm.unwrap import TWO_PI


def fit_field(
    phase_unwrapped: np.ndarray,
    mask: np.ndarray,
    *,
    echo_times_s: Sequence[float],
    magnitude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares fit of unwrapped phase against TE, with an intercept.

    Model ``φ_n = φ₀ + 2π·f·TE_n + ε_n``. Weights ``w_n = m_n²`` (magnitude squared;
    uniform without magnitude): at high SNR the phase noise variance is ``σ²/m_n²``, so
    these are the inverse-variance (best linear unbiased) weights for this model. The
    leverage of late echoes, which the consensus's TE-weighting expresses, is already in
    the design matrix (regressor TE); weighting ``m²·TE²`` is the optimum only for averaging
    per-echo frequencies ``φ_n/TE_n`` without an intercept. Closed form, per voxel:

    ``f = Σ w (TE − T̄)(φ − Φ̄) / (2π·Σ w (TE − T̄)²)``, ``φ₀ = Φ̄ − 2π·f·T̄``,

    with ``T̄``, ``Φ̄`` the weighted means. ``noise_hz`` is the standard error of ``f``:
    ``s / (2π·√(Σ w (TE − T̄)²))`` with ``s² = Σ w r² / (N − 2)`` from the residuals ``r``
    (weights normalised to 1 at the median first-echo magnitude), so it grows where the
    phase does not evolve linearly. With N = 2 there are no residual degrees of freedom
    and ``s`` is set to 1 rad, and with N = 1 the field is ``φ₁/(2π·TE₁)``, ``φ₀ = 0``
    (not estimable) and ``noise_hz = 1/(2π·TE₁·√w)``, again for 1 rad of noise: then
    ``noise_hz`` is only a relative reliability map (weights still follow magnitude).

    Parameters
    ----------
    phase_unwrapped : (X, Y, Z, N) or (X, Y, Z) ndarray of float
        Phase of each echo (rad), unwrapped in space and time.
    mask : (X, Y, Z) ndarray of bool
        Voxels to fit.
    echo_times_s : sequence of N float
        Echo times (s), strictly increasing.
    magnitude : same shape as ``phase_unwrapped``, ndarray of float, optional
        Magnitude of each echo (arbitrary units, ≥ 0).

    Returns
    -------
    field_hz : (X, Y, Z) ndarray of float32
        Field offset (Hz); 0 outside the mask.
    phase_offset_rad : (X, Y, Z) ndarray of float32
        Echo-independent phase φ₀ (rad); 0 outside the mask (and everywhere for N = 1).
    noise_hz : (X, Y, Z) ndarray of float32
        Standard error of the field (Hz); 0 outside the mask.

    Raises
    ------
    ValueError
        On wrong dimensions or shapes, non-finite values in the mask or bad echo times.

    Examples
    --------
    >>> te = np.array([0.005, 0.010, 0.015, 0.020])
    >>> phi = 0.3 + 2 * np.pi * 42.0 * te * np.ones((2, 2, 2, 1))
    >>> f, p0, sd = fit_field(phi, np.ones((2, 2, 2), bool), echo_times_s=te)
    >>> bool(np.allclose(f, 42.0, atol=1e-3) and np.allclose(p0, 0.3, atol=1e-4))
    True
    """
    ph, msk, te, mag = _check_inputs(phase_unwrapped, mask, echo_times_s, magnitude)
    return _fit_field(ph, msk, te, mag)


def _fit_field(ph, msk, te, mag):
    idx = np.flatnonzero(msk)
    # the masked fit's work arrays are freed (on its return) before the full-size outputs
    fitted = _fit_masked(ph, idx, te, mag)
    outs = []
    for v in fitted:
        o = np.zeros(msk.shape, np.float32)
        o.reshape(-1)[idx] = v
        outs.append(o)
    return tuple(outs)


def _gather_echoes(arr, idx):
    """``arr`` (X, Y, Z, N) at the flat voxel indices ``idx``, echo-first: (N, V); the
    echoes are gathered side by side on the thread pool (plain copies: the same bits)."""
    flat = arr.reshape(-1, arr.shape[3])
    out = np.empty((arr.shape[3], idx.size), arr.dtype)

    def one(echoes):
        out[echoes.start] = flat[idx, echoes.start]

    slabwise(one, arr.shape[3], 1)
    return out


def _fit_masked(ph, idx, te, mag):
    """:func:`fit_field` of the voxels ``idx`` (flat indices): ``(field, offset, noise)``
    as (V,) arrays."""
    n_echo = ph.shape[3]
    # (N, V): each echo's masked voxels, contiguous, gathered echo by echo (no (V, N) copy)
    y = _gather_echoes(ph, idx)
    m = None if mag is None else _gather_echoes(mag, idx)
    ref = None if m is None else _magnitude_ref(m[0])
    weights = [_echo_weight(None if m is None else m[n], ref) for n in range(n_echo)]
    if n_echo == 1:
        field = y[0] / (TWO_PI * te[0])
        offset = np.zeros_like(field)
        noise = 1.0 / (TWO_PI * te[0] * np.sqrt(weights[0]))
        return field, offset, noise
    return _fit_lines(y, weights, te, m is not None)


def _fit_lines(y, weights, te, weighted, sums=None):
    """``(field, offset, noise)`` of :func:`fit_field` from the N ≥ 2 echoes ``y`` (N, V)
    and their ``weights`` (``weighted``: not all 1.0); ``sums``: the :class:`_LineSums` of
    the first echoes when they were added already (they are added on)."""
    n_echo = len(y)
    if sums is None:
        sums = _LineSums(te.mean())
    for n in range(len(sums.terms), n_echo):
        sums.add(y[n], weights[n], te[n])
    a_c, slope = sums.fit()
    stt = sums.centred_stt()  # Σ w (TE − T̄)²
    if n_echo > 2:
        rss = np.zeros_like(slope)
        for n in range(n_echo):
            r = y[n] - a_c
            r -= slope * np.float32(te[n] - sums.t_c)
            r *= r
            if weighted:
                r *= weights[n]
            rss += r
        s2 = rss / (n_echo - 2)
    else:
        s2 = 1.0
    field = slope / np.float32(TWO_PI)
    offset = a_c - slope * np.float32(sums.t_c)
    noise = np.sqrt(s2 / stt) / np.float32(TWO_PI)
    return field, offset, noise


class _ChunkFit:
    """:func:`fit_field` of ROMEO's unwrapped voxels chunk by chunk, as
    :func:`~qsmflow.qsm.echoes.unwrapping._romeo_voxels` unwraps them (from its weights and
    line sums, the same numbers fit_field computes from the unwrapped grid): ``out`` (3, V)
    float32, the field, offset and noise of the masked voxels in their order."""

    def __init__(self, te):
        self.te, self.out = te, None

    def start(self, size):
        self.out = np.empty((3, size), np.float32)

    def __call__(self, c, y, weights, sums):
        weighted = not isinstance(weights[0], float)
        for o, v in zip(self.out, _fit_lines(y, weights, self.te, weighted, sums)):
            o[c] = v  # v is one number for 2 echoes without magnitude


def _scatter_fit(sel, out):
    """``(field, offset, noise)`` (X, Y, Z) float32 of the (3, V) ``out`` of the voxels of
    ``sel``, 0 outside the mask."""
    fitted = np.zeros((3,) + sel.mask.shape, np.float32)
    for f, v in zip(fitted, out):
        sel.scatter(f, v)
    return tuple(fitted)


#: Echo-combination methods of :func:`estimate_field`.
COMBINATION_METHODS = ('wls', 'nlcomplex')

#: Gauss–Newton iterations of :func:`fit_field_complex`.
DEFAULT_COMPLEX_FIT_ITER = 5


def fit_field_complex(
    phase: np.ndarray,
    mask: np.ndarray,
    *,
    echo_times_s: Sequence[float],
    magnitude: np.ndarray | None = None,
    init_hz: np.ndarray | None = None,
    init_offset_rad: np.ndarray | None = None,
    max_iter: int = DEFAULT_COMPLEX_FIT_ITER,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonlinear fit of the complex signal ``m_n e^{iφ_n}`` by Gauss–Newton.

    Minimises ``Σ_n |m_n e^{iφ_n} − m_n e^{i(φ₀ + 2π f TE_n)}|² = Σ_n 2 m_n² (1 − cos r_n)``
    with ``r_n = wrap(φ_n − φ₀ − 2π f TE_n)`` over ``(φ₀, f)`` per voxel [1]_. The
    Gauss–Newton step is the magnitude²-weighted least-squares line through ``sin r_n``
    (the same normal matrix as :func:`fit_field`), so each iteration costs one weighted
    line fit. Works on *wrapped* phase: large residuals (a wrong wrap, a noisy echo) count
    through ``1 − cos r`` (bounded) instead of ``r²``. Needs a start within about π/2 of
    the solution at every echo, normally :func:`fit_field` on the unwrapped phase.

    Parameters
    ----------
    phase : (X, Y, Z, N) ndarray of float
        Phase of each echo (rad; wrapped or unwrapped).
    mask : (X, Y, Z) ndarray of bool
        Voxels to fit.
    echo_times_s : sequence of N float
        Echo times (s), N ≥ 2.
    magnitude : (X, Y, Z, N) ndarray of float, optional
        Magnitude of each echo (arbitrary units); uniform weights without it.
    init_hz, init_offset_rad : (X, Y, Z) ndarray of float, optional
        Starting field (Hz) and phase offset φ₀ (rad); default 0.
    max_iter : int, optional
        Gauss–Newton iterations (default :data:`DEFAULT_COMPLEX_FIT_ITER`).

    Returns
    -------
    field_hz : (X, Y, Z) ndarray of float32
        Field offset ``f`` (Hz), 0 outside the mask.
    phase_offset_rad : (X, Y, Z) ndarray of float32
        ``φ₀`` (rad).
    noise_hz : (X, Y, Z) ndarray of float32
        Standard error of ``f`` (Hz) from the final residuals, as in :func:`fit_field`.

    References
    ----------
    .. [1] Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear formulation
       of the magnetic field to source relationship for robust quantitative susceptibility
       mapping. Magn Reson Med 2013;69:467-476. doi:10.1002/mrm.24272

    Examples
    --------
    >>> te = np.array([0.004, 0.012, 0.020])
    >>> phi = np.angle(np.exp(1j * (0.5 + 2 * np.pi * 60.0 * te))) * np.ones((4, 4, 4, 1))
    >>> f, p0, _ = fit_field_complex(phi, np.ones((4, 4, 4), bool), echo_times_s=te,
    ...                              init_hz=np.full((4, 4, 4), 55.0))
    >>> bool(np.allclose(f, 60.0, atol=1e-3)) and bool(np.allclose(p0, 0.5, atol=1e-3))
    True
    """
    ph, msk, te, mag = _check_inputs(phase, mask, echo_times_s, magnitude)
    if te.size < 2:
        raise ValueError('the complex fit needs at least 2 echoes')
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f'max_iter must be a non-negative integer, got {max_iter!r}')
    starts = []
    for name, arr in (('init_hz', init_hz), ('init_offset_rad', init_offset_rad)):
        if arr is None:
            starts.append(np.zeros(msk.shape, np.float32))
            continue
        arr = np.asarray(arr, np.float32)
        if arr.shape != msk.shape:
            raise ValueError(f'{name} shape {arr.shape} does not match mask shape {msk.shape}')
        if not np.all(np.isfinite(arr[msk])):
            raise ValueError(f'{name} has non-finite values in the mask')
        starts.append(arr)
    return _fit_field_complex(ph, msk, te, mag, starts[0], starts[1], int(max_iter))


def _fit_field_complex(ph, msk, te, mag, f0, p0, max_iter):
    """Gauss–Newton on the masked voxels, packed as a (V, 1, 1, N) stack."""
    idx = np.flatnonzero(msk)
    n_echo = ph.shape[3]
    y = ph.reshape(-1, n_echo)[idx].reshape(-1, 1, 1, n_echo).astype(np.float32)
    m = None if mag is None else mag.reshape(-1, n_echo)[idx].reshape(y.shape)
    ones = np.ones(y.shape[:3], bool)
    f = f0.reshape(-1)[idx].reshape(ones.shape).astype(np.float32)
    p = p0.reshape(-1)[idx].reshape(ones.shape).astype(np.float32)
    omega = (TWO_PI * te).astype(np.float32)
    two_pi = np.float32(TWO_PI)

    def wrapped_residual():
        r = y - p[..., None] - f[..., None] * omega
        r -= two_pi * np.round(r / two_pi)
        return r

    for _ in range(max_iter):
        df, dp, _ = _fit_field(np.sin(wrapped_residual()), ones, te, m)
        f += df
        p += dp
    # final: the line through model + wrapped residual (same standard error as fit_field)
    fitted = _fit_field(p[..., None] + f[..., None] * omega + wrapped_residual(), ones, te, m)
    outs = []
    for v in fitted:
        o = np.zeros(msk.shape, np.float32)
        o.reshape(-1)[idx] = v.reshape(-1)
        outs.append(o)
    return tuple(outs)


def estimate_field(
    phase: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    magnitude: np.ndarray | None = None,
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    unwrapping: str = 'romeo',
    combination: str = 'wls',
    return_unwrapped: bool = True,
) -> dict[str, np.ndarray]:
    """Total field from multi-echo GRE: :func:`unwrap_echoes` then :func:`fit_field`.

    With ``combination='nlcomplex'`` the weighted least-squares fit is refined by the
    nonlinear complex fit :func:`fit_field_complex` on the wrapped phase.

    Parameters
    ----------
    phase : (X, Y, Z, N) or (X, Y, Z) ndarray of float
        Wrapped phase of each echo (rad).
    mask : (X, Y, Z) ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    magnitude : same shape as ``phase``, ndarray of float, optional
        Magnitude of each echo (arbitrary units, ≥ 0): weights of the unwrapping and fit.
        An input, not an option: it is not recorded among the provenance parameters.
    echo_times_s : sequence of N float
        Echo times (s), strictly increasing.
    b0_tesla : float
        Main field strength (T).
    unwrapping : {'romeo', 'laplacian'}
        Spatial unwrapping method.
    combination : {'wls', 'nlcomplex'}
        Echo combination: magnitude²-weighted least squares on the unwrapped phase
        (default) or that followed by the nonlinear complex fit.
    return_unwrapped : bool, optional
        Also return the unwrapped echoes (default True). False spares the
        (X, Y, Z, N) float32 grid (4 bytes per voxel and echo) where it is not used.

    Returns
    -------
    dict
        ``field_hz`` (X, Y, Z) float32 field offset (Hz); ``field_ppm`` the same in ppm
        of B0; ``phase_offset_rad`` (X, Y, Z) float32 φ₀ (rad); ``noise_hz`` (X, Y, Z)
        float32 standard error of the field (Hz); ``unwrapped`` (X, Y, Z, N) float32
        unwrapped phase (rad; only with ``return_unwrapped``). All 0 outside the mask.

    Examples
    --------
    >>> te = np.array([0.002, 0.003, 0.004])
    >>> phi = np.angle(np.exp(2j * np.pi * 127.73 * te)) * np.ones((8, 8, 8, 1))
    >>> r = estimate_field(phi, np.ones((8, 8, 8), bool), (1, 1, 1), echo_times_s=te,
    ...                    b0_tesla=3.0)
    >>> bool(np.allclose(r['field_ppm'], 1.0, atol=1e-4))
    True
    """
    _ppm_per_hz(b0_tesla)  # validate before the work
    if combination not in COMBINATION_METHODS:
        raise ValueError(f'unknown echo combination {combination!r}; use one of '
                         f'{COMBINATION_METHODS}')
    ph, msk, te, mag, vox = _unwrap_inputs(phase, mask, voxel_size, echo_times_s, magnitude,
                                           unwrapping)
    if unwrapping == 'romeo' and ph.shape[3] > 1 and (mag is None or mag.dtype == np.float32):
        # the fit continues from the unwrapping's masked voxels, weights and line sums
        # (the same numbers fit_field computes from the unwrapped grid)
        # (each chunk fitted as it is unwrapped: no line sums or weights are kept, and
        # without return_unwrapped no unwrapped voxels either)
        fitter = _ChunkFit(te)
        voxels = _romeo_voxels(ph, msk, vox, te, mag, fit=fitter, keep=return_unwrapped)
        # the unwrapped grid is built before the fitted grids, its voxels dropped first
        unwrapped = voxels.full() if return_unwrapped else None
        sel = voxels.sel
        del voxels
        field_hz, offset, noise = _scatter_fit(sel, fitter.out)
        del fitter
    else:
        unwrapped = unwrap_echoes(ph, msk, vox, echo_times_s=te, magnitude=mag,
                                  method=unwrapping)
        field_hz, offset, noise = fit_field(unwrapped, msk, echo_times_s=te, magnitude=mag)
        if not return_unwrapped:
            unwrapped = None
    if combination == 'nlcomplex' and np.ndim(phase) == 4 and np.shape(phase)[3] > 1:
        field_hz, offset, noise = fit_field_complex(
            phase, mask, echo_times_s=echo_times_s, magnitude=magnitude, init_hz=field_hz,
            init_offset_rad=offset)
    out = {
        'field_hz': field_hz,
        'field_ppm': hz_to_ppm(field_hz, b0_tesla),
        'phase_offset_rad': offset,
        'noise_hz': noise,
    }
    if return_unwrapped:
        out['unwrapped'] = unwrapped
    return out
