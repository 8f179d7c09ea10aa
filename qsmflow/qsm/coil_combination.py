# SPDX-License-Identifier: Apache-2.0
"""Phase-offset-corrected combination of uncombined (per-coil) multi-echo GRE data.

MCPC-3D-S [1]_ (the ASPIRE family): each receive coil adds its own, spatially varying
phase offset θ_c to every echo. A plain complex sum of the coils then mixes offsets that
differ between coils, which gives open-ended phase fringes (phase singularities) and
signal cancellation where the coils disagree. MCPC-3D-S estimates θ_c from the first two
echoes and removes it before the magnitude-weighted complex sum:

1. ``ΔΦ = arg Σ_c z_c(TE1)* · z_c(TE2)`` — the Hermitian inner product over coils gives
   the phase accrued between TE1 and TE2 (free of coil offsets);
2. ``ΔΦ`` is unwrapped exactly (:func:`~qsmflow.qsm.unwrap.unwrap_romeo`);
3. per coil, ``θ_c = arg z_c(TE1) − TE1 / (TE2 − TE1) · ΔΦ``;
4. ``θ_c`` is smoothed as a complex quantity (Gaussian of ``smoothing_sigma_mm`` on the
   real and imaginary parts of ``|z_c(TE1)|·exp(iθ_c)``, voxel-size aware);
5. every echo: ``Σ_c |z_c| · exp(i(φ_c − θ_c))`` gives the combined phase, the
   root-sum-of-squares ``sqrt(Σ_c |z_c|²)`` the combined magnitude.

The combined phase is thus ``ω·TE_n`` (the field's phase), with the echo-independent
offset removed.

References
----------
.. [1] Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient combination
   of multi-channel phase data from multi-echo acquisitions (ASPIRE). Magn Reson Med
   2018;79:2996–3006.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._validation import as_voxel_size
from qsmflow.qsm.unwrap import unwrap_romeo, wrap_phase

#: Gaussian σ (mm) of the smoothing of each coil's phase offset (complex).
DEFAULT_SMOOTHING_SIGMA_MM = 4.0
#: The two echoes (0-based) that estimate the offsets.
DEFAULT_REFERENCE_ECHOES = (0, 1)

CoilLoader = Callable[[int], tuple[np.ndarray, np.ndarray]]


def combine_coils_mcpc3ds(
    load_coil: CoilLoader,
    n_coils: int,
    voxel_size_mm: Sequence[float],
    *,
    echo_times_s: Sequence[float],
    mask: np.ndarray | None = None,
    smoothing_sigma_mm: float = DEFAULT_SMOOTHING_SIGMA_MM,
    reference_echoes: tuple[int, int] = DEFAULT_REFERENCE_ECHOES,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-coil multi-echo magnitude and phase with MCPC-3D-S.

    Coils are streamed: ``load_coil(c)`` is called twice per coil (once for the inner
    product of the reference echoes, once for the combination) and its arrays are
    dropped before the next coil is loaded. Peak memory, with V voxels and E echoes: the
    accumulators (complex sum E·V complex64, sum of squares E·V float32: 12 bytes per
    voxel and echo), one coil's input (magnitude + phase float32: 8) and its complex
    temporaries (two E·V complex64: 16), plus a few V-sized images — about 36·E·V bytes,
    independent of the number of coils (never coils × echoes in memory).

    Parameters
    ----------
    load_coil : callable
        ``load_coil(c) -> (magnitude, phase_rad)`` for coil ``c`` in ``range(n_coils)``,
        each of shape (X, Y, Z, E): magnitude (arbitrary units, ≥ 0) and phase (rad).
    n_coils : int
        Number of coils (≥ 1).
    voxel_size_mm : sequence of 3 float
        Voxel size (mm), for the unwrapping and the smoothing.
    echo_times_s : sequence of E float
        Echo times (s), increasing.
    mask : (X, Y, Z) ndarray of bool, optional
        Where ΔΦ is unwrapped (default: every voxel). Outside it, ΔΦ keeps its wrapped
        value (the offsets there are only as good as the wrapped estimate).
    smoothing_sigma_mm : float
        Gaussian σ (mm) of the complex offset smoothing; 0 disables it.
    reference_echoes : (int, int)
        The two echoes (0-based) whose inner product gives ΔΦ.

    Returns
    -------
    magnitude : (X, Y, Z, E) ndarray of float32
        Root-sum-of-squares magnitude.
    phase_rad : (X, Y, Z, E) ndarray of float32
        Combined phase (rad), wrapped to [−π, π), coil offsets removed.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> te = (0.005, 0.010)
    >>> field = np.linspace(0, 1, 8)[:, None, None] * np.ones((8, 8, 8))  # rad per 5 ms
    >>> offs = [rng.uniform(-3, 3) + np.zeros((8, 8, 8)) for _ in range(3)]
    >>> def load(c):
    ...     ph = np.stack([field * t / 0.005 + offs[c] for t in te], -1)
    ...     return np.ones(ph.shape, np.float32), wrap_phase(ph)
    >>> mag, ph = combine_coils_mcpc3ds(load, 3, (1, 1, 1), echo_times_s=te)
    >>> bool(np.allclose(ph[..., 0], field, atol=1e-4)), round(float(mag.max()), 3)
    (True, 1.732)
    """
    te_s = np.asarray(echo_times_s, dtype=np.float64)
    e1, e2 = reference_echoes
    if n_coils < 1:
        raise ValueError('at least one coil is needed')
    if te_s.ndim != 1 or te_s.size < 2 or not np.all(np.diff(te_s) > 0):
        raise ValueError('MCPC-3D-S needs at least two increasing echo times (s)')
    if not (0 <= e1 < e2 < te_s.size):
        raise ValueError(f'reference echoes {reference_echoes} are not two distinct echoes '
                         f'in increasing order among {te_s.size}')
    vox = as_voxel_size(voxel_size_mm)

    inner = None  # Σ_c z_c(TE1)* z_c(TE2)
    for c in range(n_coils):
        mag, phase = _checked(load_coil(c), c, te_s.size, inner)
        z1 = _complex(mag[..., e1], phase[..., e1])
        z2 = _complex(mag[..., e2], phase[..., e2])
        term = np.conj(z1) * z2
        inner = term if inner is None else inner + term
    delta = np.angle(inner).astype(np.float32)
    del inner
    unwrap_mask = np.ones(delta.shape, bool) if mask is None else np.asarray(mask, bool)
    if unwrap_mask.shape != delta.shape:
        raise ValueError(f'mask shape {unwrap_mask.shape} differs from the images '
                         f'{delta.shape}')
    delta_unwrapped = unwrap_romeo(delta, unwrap_mask, vox)
    delta = np.where(unwrap_mask, delta_unwrapped, delta).astype(np.float32)
    del delta_unwrapped
    rate = te_s[e1] / (te_s[e2] - te_s[e1])
    sigma_vox = [smoothing_sigma_mm / v for v in vox]

    csum = None
    sumsq = None
    for c in range(n_coils):
        mag, phase = _checked(load_coil(c), c, te_s.size, delta)
        offset = (mag[..., e1] * np.exp(1j * (phase[..., e1] - rate * delta))
                  ).astype(np.complex64)
        if smoothing_sigma_mm > 0:
            offset = (ndi.gaussian_filter(offset.real, sigma_vox)
                      + 1j * ndi.gaussian_filter(offset.imag, sigma_vox)).astype(np.complex64)
        rotation = np.exp(-1j * np.angle(offset)).astype(np.complex64)[..., None]
        del offset
        term = _complex(mag, phase) * rotation * mag  # magnitude-weighted
        if csum is None:
            csum, sumsq = term, np.square(mag, dtype=np.float32)
        else:
            csum += term
            sumsq += np.square(mag, dtype=np.float32)
        del term, rotation, mag, phase
    out_phase = wrap_phase(np.angle(csum)).astype(np.float32)
    return np.sqrt(sumsq, dtype=np.float32), out_phase


def combine_coils_naive(load_coil: CoilLoader, n_coils: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain complex sum of the coils (no offset correction), the baseline MCPC-3D-S fixes.

    Parameters and shapes as :func:`combine_coils_mcpc3ds`; returns the magnitude of the
    complex sum (not the root-sum-of-squares) and its phase (rad), (X, Y, Z, E) float32.
    """
    total = None
    for c in range(n_coils):
        mag, phase = _checked(load_coil(c), c, None, total)
        z = _complex(mag, phase)
        total = z if total is None else total + z
    return np.abs(total).astype(np.float32), np.angle(total).astype(np.float32)


def _complex(mag, phase):
    return (np.asarray(mag, np.float32) * np.exp(1j * np.asarray(phase, np.float32))
            ).astype(np.complex64)


def _checked(pair, coil, n_echoes, like):
    mag, phase = (np.asarray(a, np.float32) for a in pair)
    if mag.shape != phase.shape or mag.ndim != 4:
        raise ValueError(f'coil {coil}: magnitude {mag.shape} and phase {phase.shape} must '
                         'both be (X, Y, Z, echoes)')
    if n_echoes is not None and mag.shape[-1] != n_echoes:
        raise ValueError(f'coil {coil}: {mag.shape[-1]} echoes, expected {n_echoes}')
    if like is not None and mag.shape[:3] != like.shape[:3]:
        raise ValueError(f'coil {coil}: grid {mag.shape[:3]} differs from coil 0 '
                         f'{like.shape[:3]}')
    return mag, phase
