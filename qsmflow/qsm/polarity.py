# SPDX-License-Identifier: Apache-2.0
"""Is the phase's polarity plausible? A quick χ map and the sign of its tails.

Paramagnetic sources dominate the extremes of a brain χ map: veins (+0.3…0.5 ppm) and
iron-rich deep grey matter (+0.1…0.2 ppm) stand out further above the median than white
matter (−0.02…−0.05 ppm) falls below it, so a brain's χ histogram has more voxels far
above its median than far below. Every step below is linear in the complex signal's
phase, so with the polarity inverted (a left-handed vendor convention, a sign lost in
conversion) χ and the score change sign exactly.

:func:`polarity_score`, about a second at 1 mm:

1. the images are block-averaged to voxels of about 2 mm (:data:`WORKING_VOXEL_MM`);
2. field proxy: the phase difference of the last and the first echo (one echo: its
   phase), in rad, from the block average of ``sqrt(m_last m_first) exp(i (φ_last −
   φ_first))``;
3. brain mask: :func:`qsmflow.qsm.brain_extraction.extract_brain` on the
   root-sum-of-squares magnitude (a magnitude threshold when it finds no brain, e.g. a
   crop inside the head);
4. Laplacian unwrapping, SHARP at one radius (4 mm, at least two working voxels), TKD;
5. the tail asymmetry of χ 6 mm inside SHARP's mask: with ``n+`` voxels more than three
   robust standard deviations (1.4826 MAD) above the median and ``n−`` as far below,
   ``score = (n+ − n−) / (n+ + n−)`` in [−1, 1], positive for the right-handed polarity
   qsmflow expects.

A plausibility check, not a proof: the score was tuned on the vendored real data and the
phantoms (0.11–0.73 there in the correct polarity, README "Phase polarity check"), and
only a clearly negative one (< :data:`INVERTED_BELOW`) is reported as inverted.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from qsmflow.qsm.bgremove import vsharp
from qsmflow.qsm.blocks import block_factors, block_mean
from qsmflow.qsm.brain_extraction import extract_brain
from qsmflow.qsm.inversion.direct import tkd
from qsmflow.qsm.unwrap import unwrap_laplacian

#: Scores below this value mean "polarity looks inverted".
INVERTED_BELOW = -0.05
#: Tails: voxels further than this many robust standard deviations (1.4826 MAD) from the
#: median χ.
TAIL_SD = 3.0
#: Voxel size (mm) the check works at: finer grids are block-averaged (complex signal).
WORKING_VOXEL_MM = 2.0
#: Radius (mm) of the single-radius SHARP background removal.
SHARP_RADIUS_MM = 4.0
#: Margin (mm) dropped inside SHARP's mask before counting (edge artefacts); not dropped
#: when fewer than 100 voxels would be left (a small crop).
ERODE_MM = 6.0
#: Head mask: magnitude above this fraction of its 99th percentile.
MASK_FRACTION = 0.15

#: Fewest voxels along each axis of the working grid for a score: a smaller image (a test
#: volume, a single slice) has no brain to extract and gets score 0, not inverted.
MIN_WORKING_SHAPE = 8


def _head_mask(magnitude):
    mag = np.asarray(magnitude, dtype=np.float32)
    cut = MASK_FRACTION * float(np.percentile(mag, 99))
    mask = mag > cut
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndi.binary_fill_holes(mask)


def _working_grid(phase, mag, voxel_size_mm):
    """(field proxy in rad, root-sum-of-squares magnitude, voxel size) on voxels of about
    :data:`WORKING_VOXEL_MM` (whole blocks; complex and magnitude averages)."""
    vox = np.asarray(voxel_size_mm, dtype=float)
    factors = np.asarray(block_factors(vox, WORKING_VOXEL_MM))
    rss = np.sqrt(np.sum(np.square(mag, dtype=np.float32), axis=-1))
    last = -1 if phase.shape[-1] >= 2 else 0
    # one echo: its phase; several: the phase of z_last * conj(z_first)
    z = (mag[..., last] * mag[..., 0]) ** 0.5 * np.exp(1j * (phase[..., last] - phase[..., 0]
                                                              if last else phase[..., 0]))
    if np.any(factors > 1):
        z, rss = block_mean(z, factors), block_mean(rss, factors)
    return (np.angle(z).astype(np.float32), rss.astype(np.float32),
            tuple(float(v) for v in vox * factors))


def polarity_score(phase_rad: np.ndarray, magnitude: np.ndarray, voxel_size_mm, *,
                   b0_dir=(0.0, 0.0, 1.0)) -> dict:
    """Tail asymmetry of a quick χ map: > 0 for right-handed phase polarity.

    Parameters
    ----------
    phase_rad : ndarray, shape (X, Y, Z[, N])
        Phase of N echoes in rad (any wrapping).
    magnitude : ndarray, same shape
        Magnitude (arbitrary units).
    voxel_size_mm : sequence of 3 float
        Voxel size (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel index axes.

    Returns
    -------
    dict
        ``score`` (float in [−1, 1]), ``inverted`` (bool: score < INVERTED_BELOW),
        ``n_voxels`` (voxels the score was computed on; fewer than 100: score 0, not
        inverted), ``tail_voxels`` (above, below), ``working_voxel_mm``.
    """
    phase = np.asarray(phase_rad, dtype=np.float32)
    mag = np.asarray(magnitude, dtype=np.float32)
    if phase.ndim == 3:
        phase, mag = phase[..., None], mag[..., None]
    proxy, rss, vox = _working_grid(phase, mag, voxel_size_mm)
    if min(proxy.shape) < MIN_WORKING_SHAPE:
        return _undetermined(np.zeros(proxy.shape, bool))
    mask = extract_brain(rss, vox)
    if mask.sum() < 1000:
        mask = _head_mask(rss)
    unwrapped = unwrap_laplacian(proxy, mask, vox)
    radius = max(SHARP_RADIUS_MM, 2 * max(vox))
    local, inner = vsharp(unwrapped, mask, vox, b0_dir, radii_mm=[radius])
    if inner.sum() < 100:
        return _undetermined(inner)
    chi = tkd(local, inner, vox, b0_dir)
    core = ndi.binary_erosion(inner, iterations=max(1, int(round(ERODE_MM / min(vox)))))
    values = chi[core if core.sum() >= 100 else inner]
    median = float(np.median(values))
    sd = 1.4826 * float(np.median(np.abs(values - median)))
    high = int(np.sum(values > median + TAIL_SD * sd))
    low = int(np.sum(values < median - TAIL_SD * sd))
    score = (high - low) / (high + low) if high + low else 0.0
    return {'score': round(float(score), 4), 'inverted': bool(score < INVERTED_BELOW),
            'n_voxels': int(values.size), 'tail_voxels': (high, low),
            'working_voxel_mm': tuple(round(float(v), 3) for v in vox)}


def _undetermined(inner):
    return {'score': 0.0, 'inverted': False, 'n_voxels': int(inner.sum()),
            'tail_voxels': (0, 0), 'working_voxel_mm': None}
