# SPDX-License-Identifier: Apache-2.0
"""Multi-echo phase: unwrapping over echoes, field fit, and the Hz ↔ ppm conversion.

Model: the phase of echo ``n`` is ``φ_n = φ₀ + 2π·f·TE_n`` (mod 2π), with ``f`` the
field offset (Hz) and ``φ₀`` the echo-independent offset (rad). As the 2024 consensus
recommends, echoes are unwrapped exactly (:func:`unwrap_echoes`) and combined by a
weighted least-squares fit of phase against TE with an intercept (:func:`fit_field`).
Fields are in Hz inside this module; :func:`hz_to_ppm` is the one place where they
become ppm of B0 (and :func:`ppm_to_hz` the way back).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsmflow.qsm.kernels import GAMMA_HZ_PER_T, bounding_box
from qsmflow.qsm._validation import as_echo_times as _as_echo_times
from qsmflow.qsm._validation import as_image as _as_image
from qsmflow.qsm._validation import as_mask as _as_mask
from qsmflow.qsm._validation import as_voxel_size as _as_voxel_size
from qsmflow.qsm._validation import check_finite_in_mask as _check_finite_in_mask
from qsmflow.qsm.unwrap import (
    DEFAULT_LAPLACIAN_MAX_ITER,
    DEFAULT_LAPLACIAN_TOL,
    TWO_PI,
    _crop_pad,
    _inverse_laplacian_symbol,
    _laplacian_box,
    _romeo_box,
    wrap_phase,
)

UNWRAPPING_METHODS = ('romeo', 'laplacian')


# --------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------
def hz_to_ppm(field_hz, b0_tesla: float):
    """Convert a field offset from Hz to ppm of the main field.

    ``field_ppm = field_hz / (γ/2π · B0) · 1e6`` with γ/2π =
    :data:`~qsmflow.qsm.kernels.GAMMA_HZ_PER_T`.

    Parameters
    ----------
    field_hz : float or ndarray, any shape
        Field offset (Hz).
    b0_tesla : float
        Main field strength (T), > 0.

    Returns
    -------
    float or ndarray, same shape (and float dtype) as ``field_hz``
        Field offset (ppm).

    Examples
    --------
    >>> round(hz_to_ppm(127.73, 3.0), 4)
    1.0
    """
    return field_hz * _ppm_per_hz(b0_tesla)


def ppm_to_hz(field_ppm, b0_tesla: float):
    """Convert a field offset from ppm of the main field to Hz (inverse of :func:`hz_to_ppm`).

    Parameters
    ----------
    field_ppm : float or ndarray, any shape
        Field offset (ppm).
    b0_tesla : float
        Main field strength (T), > 0.

    Returns
    -------
    float or ndarray, same shape (and float dtype) as ``field_ppm``
        Field offset (Hz).

    Examples
    --------
    >>> round(ppm_to_hz(1.0, 7.0), 2)
    298.04
    """
    return field_ppm / _ppm_per_hz(b0_tesla)


def _ppm_per_hz(b0_tesla) -> float:
    b0 = float(b0_tesla)
    if not np.isfinite(b0) or b0 <= 0:
        raise ValueError(f'b0_tesla must be a positive field strength (T), got {b0_tesla!r}')
    return 1e6 / (GAMMA_HZ_PER_T * b0)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _as_echo_stack(arr, name, shape=None):
    """``arr`` as a 4D ``(X, Y, Z, N)`` float array (3D input: one echo)."""
    a = _as_image(arr, name, (3, 4))
    if a.ndim == 3:
        a = a[..., None]
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f'{name} has shape {a.shape}, expected {tuple(shape)}')
    return a


def _check_inputs(phase, mask, echo_times_s, magnitude):
    ph = _as_echo_stack(phase, 'phase')
    msk = _as_mask(mask, ph.shape[:3])
    te = _as_echo_times(echo_times_s, ph.shape[3])
    _check_finite_in_mask(ph, msk, 'phase')
    mag = None
    if magnitude is not None:
        mag = _as_echo_stack(magnitude, 'magnitude', ph.shape)
        _check_finite_in_mask(mag, msk, 'magnitude')
        if mag.min() < 0 and mag[msk].min() < 0:
            raise ValueError('magnitude has negative values inside the mask')
    return ph, msk, te, mag


# --------------------------------------------------------------------------------------
# multi-echo unwrapping
# --------------------------------------------------------------------------------------
def unwrap_echoes(
    phase: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
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
    voxel_size_mm : sequence of 3 float
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
    >>> te = np.array([0.004, 0.008, 0.012])
    >>> x = np.linspace(-1, 1, 16)[:, None, None, None]
    >>> truth = 1.0 + 2 * np.pi * (200 * x) * te + 0 * np.zeros((16, 16, 16, 1))
    >>> u = unwrap_echoes(wrap_phase(truth), np.ones((16, 16, 16), bool), (1, 1, 1),
    ...                   echo_times_s=te)
    >>> bool(np.allclose(u, truth, atol=1e-4))
    True
    """
    ph, msk, te, mag = _check_inputs(phase, mask, echo_times_s, magnitude)
    vox = _as_voxel_size(voxel_size_mm)
    if method not in UNWRAPPING_METHODS:
        raise ValueError(f'unknown unwrapping method {method!r}; use one of {UNWRAPPING_METHODS}')
    box = bounding_box(msk)
    # echo-first, cropped, padded by one voxel: (N, X', Y', Z'), contiguous per echo
    phb = _crop_pad(np.moveaxis(ph, -1, 0), box).astype(np.float32, copy=False)
    magb = None
    if mag is not None:
        magb = _crop_pad(np.moveaxis(mag, -1, 0), box).astype(np.float32, copy=False)
    mb = _crop_pad(msk, box, False)
    if method == 'romeo':
        outb = _unwrap_echoes_romeo(phb, mb, vox, te, magb)
    else:
        outb = _unwrap_echoes_laplacian(phb, mb, vox, te, magb)
    out = np.zeros(ph.shape, np.float32)
    out[box] = np.moveaxis(outb[:, 1:-1, 1:-1, 1:-1], 0, -1)  # outb is 0 outside the mask
    return out


def _global_shift(values):
    """2π·k bringing the median of ``values`` (rad) into [−π, π)."""
    return TWO_PI * np.floor(np.median(values) / TWO_PI + 0.5)


class _LineSums:
    """Running weighted sums for per-voxel line fits ``y = a + b·(t − t_c)``.

    Vectorised over voxels, float32. Sums are well conditioned without float64: TE is
    centred on a fixed ``t_c`` (s) and each voxel's phase on its first added value, so
    the summed phases stay within the phase range covered by the echoes (≲ 10² rad).
    """

    def __init__(self, t_c):
        self.t_c = float(t_c)
        self.y_ref = None
        self.s = self.st = self.stt = self.sy = self.sty = np.float32(0)

    def add(self, y, w, t):
        """Add one echo: phase ``y`` (V,) rad, weight ``w`` (V,) or 1.0, TE ``t`` (s)."""
        if self.y_ref is None:
            self.y_ref = y.astype(np.float32, copy=True)
        dt = np.float32(float(t) - self.t_c)
        wy = y - self.y_ref
        if not (isinstance(w, float) and w == 1.0):
            wy *= w
        self.s = self.s + w
        self.st = self.st + w * dt
        self.stt = self.stt + w * (dt * dt)
        self.sy = self.sy + wy
        self.sty = self.sty + wy * dt

    def fit(self):
        """Intercept at ``t_c`` (rad) and slope (rad/s) of the weighted lines, (V,) each."""
        det = self.s * self.stt - self.st * self.st
        slope = (self.s * self.sty - self.st * self.sy) / det
        intercept = (self.sy - slope * self.st) / self.s
        intercept += self.y_ref
        return intercept, slope

    def predict(self, t):
        """Value of the fitted lines at TE ``t`` (s), (V,) float32 (rad)."""
        a, b = self.fit()
        a += b * np.float32(float(t) - self.t_c)
        return a


def _echo_weight(mag_n, ref):
    """Fit weight ``(m/ref)²`` of one echo (dimensionless), or 1.0 without magnitude."""
    if mag_n is None:
        return 1.0
    w = mag_n * np.float32(1 / ref)
    w *= w
    w += np.float32(1e-12)  # never a zero total weight
    return w


def _magnitude_ref(mag0):
    """Median first-echo magnitude used to normalise weights (arbitrary units)."""
    ref = float(np.median(mag0))
    return ref if ref > 0 else 1.0


def _temporal_unwrap(phi, pred):
    """``phi + 2π·round((pred − phi) / 2π)`` (rad)."""
    return phi + np.float32(TWO_PI) * np.round((pred - phi) / np.float32(TWO_PI))


def _unwrap_echoes_romeo(phb, mb, vox, te, magb):
    n_echo = phb.shape[0]
    sel = mb
    if n_echo == 1:
        u = _romeo_box(phb[0], mb, vox, None if magb is None else magb[0], None, None, None, True)
        u[sel] -= _global_shift(u[sel])
        return u[None]
    dte = te[1] - te[0]
    delta = wrap_phase(phb[1] - phb[0])
    mag_d = None
    if magb is not None:
        m1, m2 = magb[0], magb[1]
        with np.errstate(invalid='ignore', divide='ignore'):
            mag_d = np.nan_to_num(m1 * m2 / np.sqrt(m1 * m1 + m2 * m2))
    phase2 = ratio = None
    if n_echo >= 3:
        phase2 = wrap_phase(phb[2] - phb[0])
        ratio = (te[2] - te[0]) / dte
    delta_u = _romeo_box(delta, mb, vox, mag_d, phase2, ratio, None, True)
    delta_u[sel] -= _global_shift(delta_u[sel])
    scale1 = np.float32(te[0] / dte)
    offset = wrap_phase(phb[0] - delta_u * scale1)
    offset_u = _romeo_box(
        offset, mb, vox, None if magb is None else magb[0], None, None, None, True
    )
    offset_u[sel] -= _global_shift(offset_u[sel])
    # temporal unwrapping of the masked voxels, vectorised
    out = np.zeros(phb.shape, np.float32)
    d = delta_u[sel]
    y0 = _temporal_unwrap(phb[0][sel], offset_u[sel] + d * scale1)
    out[0][sel] = y0
    out[1][sel] = y0 + d
    if n_echo > 2:
        _unwrap_later_echoes(out, phb, sel, te, magb)
    return out


def _unwrap_later_echoes(out, phb, sel, te, magb):
    """Unwrap echoes 3…N in place against the weighted line through the earlier ones."""
    ref = None if magb is None else _magnitude_ref(magb[0][sel])
    sums = _LineSums(te.mean())
    for n in range(out.shape[0]):
        if n >= 2:
            out[n][sel] = _temporal_unwrap(phb[n][sel], sums.predict(te[n]))
        if n < out.shape[0] - 1:
            sums.add(out[n][sel], _echo_weight(None if magb is None else magb[n][sel], ref), te[n])


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


# --------------------------------------------------------------------------------------
# field fit
# --------------------------------------------------------------------------------------
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
    n_echo = ph.shape[3]
    idx = np.flatnonzero(msk)
    # (N, V): each echo's masked voxels, contiguous
    y = ph.reshape(-1, n_echo)[idx].T.copy()
    m = None if mag is None else mag.reshape(-1, n_echo)[idx].T.copy()
    ref = None if m is None else _magnitude_ref(m[0])
    weights = [_echo_weight(None if m is None else m[n], ref) for n in range(n_echo)]
    if n_echo == 1:
        field = y[0] / (TWO_PI * te[0])
        offset = np.zeros_like(field)
        noise = 1.0 / (TWO_PI * te[0] * np.sqrt(weights[0]))
    else:
        sums = _LineSums(te.mean())
        for n in range(n_echo):
            sums.add(y[n], weights[n], te[n])
        a_c, slope = sums.fit()
        stt = sums.stt - sums.st * sums.st / sums.s  # Σ w (TE − T̄)²
        if n_echo > 2:
            rss = np.zeros_like(slope)
            for n in range(n_echo):
                r = y[n] - a_c
                r -= slope * np.float32(te[n] - sums.t_c)
                r *= r
                if m is not None:
                    r *= weights[n]
                rss += r
            s2 = rss / (n_echo - 2)
        else:
            s2 = 1.0
        field = slope / np.float32(TWO_PI)
        offset = a_c - slope * np.float32(sums.t_c)
        noise = np.sqrt(s2 / stt) / np.float32(TWO_PI)
    outs = []
    for v in (field, offset, noise):
        o = np.zeros(msk.shape, np.float32)
        o.reshape(-1)[idx] = v
        outs.append(o)
    return tuple(outs)


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


# --------------------------------------------------------------------------------------
# convenience
# --------------------------------------------------------------------------------------
def estimate_field(
    magnitude: np.ndarray | None,
    phase: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    unwrapping: str = 'romeo',
    combination: str = 'wls',
) -> dict[str, np.ndarray]:
    """Total field from multi-echo GRE: :func:`unwrap_echoes` then :func:`fit_field`.

    With ``combination='nlcomplex'`` the weighted least-squares fit is refined by the
    nonlinear complex fit :func:`fit_field_complex` on the wrapped phase.

    Parameters
    ----------
    magnitude : (X, Y, Z, N) or (X, Y, Z) ndarray of float, or None
        Magnitude of each echo (arbitrary units, ≥ 0).
    phase : same shape as ``magnitude``, ndarray of float
        Wrapped phase of each echo (rad).
    mask : (X, Y, Z) ndarray of bool
        Brain mask.
    voxel_size_mm : sequence of 3 float
        Voxel spacing (mm).
    echo_times_s : sequence of N float
        Echo times (s), strictly increasing.
    b0_tesla : float
        Main field strength (T).
    unwrapping : {'romeo', 'laplacian'}
        Spatial unwrapping method.
    combination : {'wls', 'nlcomplex'}
        Echo combination: magnitude²-weighted least squares on the unwrapped phase
        (default) or that followed by the nonlinear complex fit.

    Returns
    -------
    dict
        ``field_hz`` (X, Y, Z) float32 field offset (Hz); ``field_ppm`` the same in ppm
        of B0; ``phase_offset_rad`` (X, Y, Z) float32 φ₀ (rad); ``noise_hz`` (X, Y, Z)
        float32 standard error of the field (Hz); ``unwrapped`` (X, Y, Z, N) float32
        unwrapped phase (rad). All 0 outside the mask.

    Examples
    --------
    >>> te = np.array([0.002, 0.003, 0.004])
    >>> phi = np.angle(np.exp(2j * np.pi * 127.73 * te)) * np.ones((8, 8, 8, 1))
    >>> r = estimate_field(None, phi, np.ones((8, 8, 8), bool), (1, 1, 1),
    ...                    echo_times_s=te, b0_tesla=3.0)
    >>> bool(np.allclose(r['field_ppm'], 1.0, atol=1e-4))
    True
    """
    _ppm_per_hz(b0_tesla)  # validate before the work
    if combination not in COMBINATION_METHODS:
        raise ValueError(f'unknown echo combination {combination!r}; use one of '
                         f'{COMBINATION_METHODS}')
    unwrapped = unwrap_echoes(
        phase,
        mask,
        voxel_size_mm,
        echo_times_s=echo_times_s,
        magnitude=magnitude,
        method=unwrapping,
    )
    field_hz, offset, noise = fit_field(
        unwrapped, mask, echo_times_s=echo_times_s, magnitude=magnitude
    )
    if combination == 'nlcomplex' and np.ndim(phase) == 4 and np.shape(phase)[3] > 1:
        field_hz, offset, noise = fit_field_complex(
            phase, mask, echo_times_s=echo_times_s, magnitude=magnitude, init_hz=field_hz,
            init_offset_rad=offset)
    return {
        'field_hz': field_hz,
        'field_ppm': hz_to_ppm(field_hz, b0_tesla),
        'phase_offset_rad': offset,
        'noise_hz': noise,
        'unwrapped': unwrapped,
    }
