# SPDX-License-Identifier: Apache-2.0
"""Susceptibility-weighted imaging (SWI) and minimum-intensity projection (minIP).

CLEAR-SWI style (Eckstein et al., NeuroImage 2021;237:118175), homodyne-free: the phase
weighting comes from the local field, which qsmflow has already unwrapped, fitted over
the echoes and freed of the background field, instead of a high-pass filtered phase.

* **Magnitude**: a fixed linear combination of the echoes with T2*-weights
  ``w_n ∝ TE_n · exp(−TE_n · R2*_ref)`` (the contrast-optimal weights for a small change
  of R2* around the tissue's ``R2*_ref``), normalised to sum 1, so the result is in the
  magnitude's units. One set of weights for the whole image (``R2*_ref`` the median R2*
  in the mask) keeps the T2* contrast between tissues; per-voxel weights would partly
  normalise it away. Optionally CLEAR-SWI's softplus scaling, which darkens the noise
  and dark background smoothly (``softplus=True``).
* **Phase mask**: the local field (ppm) becomes a phase at an effective echo time,
  ``φ = 2π · γ/2π · B0 · field · 1e-6 · TE_eff`` (rad), ``TE_eff = Σ w_n TE_n`` by
  default. In qsmflow's convention paramagnetic χ (veins, iron) is positive and so is
  the field inside a vein along B0: the mask attenuates positive phase,
  ``(1 − φ/π)^strength`` for ``0 < φ < π``, 0 beyond π, 1 for ``φ ≤ 0`` and outside the
  field's mask (Haacke's "positive phase mask" in this sign convention).
* **SWI** = combined magnitude × phase mask, on the whole image (outside the field's
  mask it is the combined magnitude).
* **minIP** (:func:`minimum_intensity_projection`): the minimum over a slab of the given
  thickness (mm) centred on each slice, along the acquisition's slice axis. The result
  keeps the input's grid and affine (a sliding slab, one output slice per input slice),
  so it overlays the SWI exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm._validation import (
    as_echo_times, as_image, as_mask, as_voxel_size, check_finite_in_mask, positive)
from qsmflow.qsm.kernels import GAMMA_HZ_PER_T

#: Thickness (mm) of the minIP slab: 8 mm, the low end of the clinical 8–16 mm.
DEFAULT_SLAB_MM = 8.0


def swi(
    local_field_ppm: np.ndarray,
    magnitude: np.ndarray,
    mask: np.ndarray,
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    r2star_hz: float | np.ndarray | None = None,
    phase_te_s: float | None = None,
    strength: float = 4.0,
    softplus: bool = False,
) -> dict:
    """Susceptibility-weighted image from multi-echo magnitude and the local field.

    Parameters
    ----------
    local_field_ppm : (X, Y, Z) ndarray
        Local (background-removed) field in ppm of B0, paramagnetic positive; read inside
        ``mask`` only.
    magnitude : (X, Y, Z, E) or (X, Y, Z) ndarray
        Magnitude of each echo (arbitrary units, ≥ 0).
    mask : (X, Y, Z) ndarray of bool
        Where the local field is defined (the phase mask is 1 elsewhere).
    echo_times_s : sequence of E float
        Echo times (s), strictly increasing.
    b0_tesla : float
        Main field strength (T).
    r2star_hz : float or (X, Y, Z) ndarray, optional
        Tissue R2* (1/s) of the echo weights: a number, or an R2* map whose median in
        ``mask`` is used; None: the median in ``mask`` of a log-linear fit of the
        magnitude (:func:`qsmflow.qsm.relaxometry.r2star`).
    phase_te_s : float, optional
        Echo time (s) that converts the field to phase; None: the weighted echo time
        ``Σ w_n TE_n`` of the magnitude combination.
    strength : float
        Power of the phase mask (dimensionless, > 0; 4 is the classical choice).
    softplus : bool
        Apply CLEAR-SWI's softplus scaling to the combined magnitude (offset: half the
        80th percentile of the combined magnitude in ``mask``).

    Returns
    -------
    dict
        ``swi`` (X, Y, Z) float32 in magnitude units; ``magnitude`` float32, the combined
        (and scaled) magnitude; ``phase_mask`` float32 in [0, 1]; ``echo_weights`` (list of
        E floats summing to 1); ``phase_te_s`` (s) and ``r2star_ref_hz`` (1/s), the values
        used.

    Examples
    --------
    >>> te = [0.005, 0.015, 0.025]
    >>> mag = np.ones((8, 8, 8, 3)) * np.exp(-20.0 * np.asarray(te))
    >>> field = np.zeros((8, 8, 8)); field[4, 4, :] = 0.1  # a paramagnetic vein
    >>> out = swi(field, mag, np.ones((8, 8, 8), bool), echo_times_s=te, b0_tesla=3.0)
    >>> bool(out['swi'][4, 4, 4] < 0.5 * out['swi'][1, 1, 4])
    True
    """
    field = as_image(local_field_ppm, 'local_field_ppm', 3)
    mag = as_image(magnitude, 'magnitude', (3, 4))
    mag = mag[..., None] if mag.ndim == 3 else mag
    if mag.shape[:3] != field.shape:
        raise ValueError(f'magnitude has shape {mag.shape}, local_field_ppm {field.shape}')
    msk = as_mask(mask, field.shape)
    te = as_echo_times(echo_times_s, mag.shape[3])
    b0 = positive('b0_tesla', b0_tesla)
    power = positive('strength', strength)
    check_finite_in_mask(field, msk, 'local_field_ppm')
    check_finite_in_mask(mag, msk, 'magnitude')
    r2_ref = _reference_r2star(r2star_hz, mag, msk, te)
    weights = te * np.exp(-te * r2_ref)
    weights = weights / weights.sum()
    te_eff = float(weights @ te) if phase_te_s is None else positive('phase_te_s', phase_te_s)
    combined = np.tensordot(np.nan_to_num(mag).astype(np.float64), weights, axes=([3], [0]))
    if softplus:
        combined = _softplus(combined, 0.5 * float(np.quantile(combined[msk], 0.8)))
    phase = (2.0 * np.pi * GAMMA_HZ_PER_T * b0 * 1e-6 * te_eff) * field.astype(np.float64)
    phase_mask = np.ones(field.shape)
    pos = msk & (phase > 0)
    phase_mask[pos] = np.clip(1.0 - phase[pos] / np.pi, 0.0, 1.0) ** power
    return {'swi': (combined * phase_mask).astype(np.float32),
            'magnitude': combined.astype(np.float32),
            'phase_mask': phase_mask.astype(np.float32),
            'echo_weights': [float(w) for w in weights], 'phase_te_s': te_eff,
            'r2star_ref_hz': r2_ref}


def _reference_r2star(r2star_hz, mag, msk, te) -> float:
    """Tissue R2* (1/s) of the echo weights: given, the median of a map, or fitted."""
    if r2star_hz is None:
        if te.size < 2:
            return 0.0
        from qsmflow.qsm.relaxometry import r2star

        r2star_hz = r2star(mag, msk, echo_times_s=te, method='loglinear')['r2star_hz']
    if np.ndim(r2star_hz) == 0:
        value = float(r2star_hz)
    else:
        r2 = as_image(r2star_hz, 'r2star_hz', 3, msk.shape)
        value = float(np.median(r2[msk]))
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f'r2star_hz must be a non-negative R2* (1/s), got {value!r}')
    return value


def _softplus(x, offset):
    """CLEAR-SWI's softplus scaling: ``sp(x) − sp(0)``, ``sp(x) = ln(1 + e^{f(x − o)})/f``
    with ``f = 2/o``: about ``x − o`` above the offset ``o``, smoothly 0 below it."""
    if not offset > 0:
        return x
    f = 2.0 / offset
    return (np.logaddexp(0.0, f * (x - offset)) - np.logaddexp(0.0, -f * offset)) / f


def minimum_intensity_projection(
    image: np.ndarray,
    voxel_size: Sequence[float],
    *,
    slab_mm: float = DEFAULT_SLAB_MM,
    slice_axis: int = 2,
) -> np.ndarray:
    """Minimum-intensity projection over a sliding slab (mm), on the input's grid.

    Each output voxel is the minimum of ``image`` over the ``n = max(1, round(slab_mm /
    voxel_size[slice_axis]))`` slices of a slab around it along ``slice_axis`` (centred;
    for even ``n`` one more slice on the lower side), truncated at the first and last
    slice. The output has the input's shape and grid: keep the affine.

    Parameters
    ----------
    image : (X, Y, Z) ndarray
        Image to project (e.g. SWI, magnitude units).
    voxel_size : sequence of 3 float
        Voxel spacing (mm).
    slab_mm : float
        Slab thickness (mm), > 0.
    slice_axis : int
        Array axis (0, 1 or 2) the slab extends along (see :func:`slice_axis_from_affine`).

    Returns
    -------
    (X, Y, Z) ndarray of float32
        The projection; ``≤ image`` everywhere.

    Examples
    --------
    >>> img = np.ones((4, 4, 10)); img[1, 1, 5] = 0.2  # a dark vein crossing slice 5
    >>> mip = minimum_intensity_projection(img, (1, 1, 2), slab_mm=6)  # 3 slices
    >>> (mip[1, 1, 3:8] < 0.5).tolist(), mip.shape == img.shape
    ([False, True, True, True, False], True)
    """
    img = as_image(image, 'image', 3)
    vox = as_voxel_size(voxel_size)
    slab = positive('slab_mm', slab_mm)
    if slice_axis not in (0, 1, 2):
        raise ValueError(f'slice_axis must be 0, 1 or 2, got {slice_axis!r}')
    n = max(1, int(round(slab / vox[slice_axis])))
    out = ndi.minimum_filter1d(img.astype(np.float32), n, axis=slice_axis, mode='nearest')
    return out


def slice_axis_from_affine(affine: np.ndarray, slice_dim: int | None = None) -> int:
    """The array axis an acquisition's slices are stacked along.

    The NIfTI header's ``slice_dim`` when the scanner conversion set it; otherwise the
    axis of distinctly (> 10 %) largest voxel spacing (2D-like slab acquisitions);
    otherwise the axis closest to the scanner's z (head–foot) direction, the axial slice
    direction of a 3D GRE.

    Parameters
    ----------
    affine : (4, 4) ndarray
        Voxel-to-world (mm) affine.
    slice_dim : int, optional
        ``slice_dim`` of the NIfTI header (``header.get_dim_info()[2]``), or None.

    Returns
    -------
    int
        0, 1 or 2.

    Examples
    --------
    >>> slice_axis_from_affine(np.diag([1.0, 1.0, 1.0, 1.0]))
    2
    >>> slice_axis_from_affine(np.diag([1.0, 3.0, 1.0, 1.0]))  # thick slices along y
    1
    >>> sagittal = np.array([[0, 0, 1.0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    >>> slice_axis_from_affine(sagittal), slice_axis_from_affine(sagittal, slice_dim=2)
    (1, 2)
    """
    if slice_dim is not None and slice_dim in (0, 1, 2):
        return int(slice_dim)
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.linalg.norm(a, axis=0)
    if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
        raise ValueError('affine has a zero or non-finite voxel axis')
    order = np.argsort(zooms)
    if zooms[order[2]] > 1.1 * zooms[order[1]]:
        return int(order[2])
    return int(np.argmax(np.abs(a[2]) / zooms))
