# SPDX-License-Identifier: Apache-2.0
"""Tests of qsmflow.qsm.mask: brain extraction and phase-quality masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm.mask import brain_mask, quality_map, quality_mask

VOX = (1.0, 1.0, 1.0)
TE = np.array([0.004, 0.008, 0.012, 0.016])


def _coords(shape, vox=VOX):
    return np.meshgrid(
        *((np.arange(n) - (n - 1) / 2) * h for n, h in zip(shape, vox)), indexing='ij'
    )


def _head(shape=(96, 112, 88), vox=VOX, *, bridge=False, seed=0):
    """Magnitude of a small head (mm): brain, dark nuclei, dark skull, bright scalp.

    Brain ellipsoid (semi-axes 36, 44, 32 mm, intensity ~1) with two dark deep-GM
    nuclei (0.15), a 5 mm skull of very low signal, a 4 mm scalp shell (1.1) and
    background noise. ``bridge`` adds a 2 mm wide bright rod across the skull.
    """
    x, y, z = _coords(shape, vox)
    rng = np.random.default_rng(seed)

    def level(semi, centre=(0, 0, 0)):
        return np.sqrt(
            ((x - centre[0]) / semi[0]) ** 2
            + ((y - centre[1]) / semi[1]) ** 2
            + ((z - centre[2]) / semi[2]) ** 2
        )

    brain = level((36, 44, 32)) <= 1
    skull_out = level((41, 49, 37)) <= 1  # 5 mm of skull around the brain
    head = level((45, 53, 41)) <= 1  # 4 mm of scalp
    nuclei = (level((5, 7, 5), (-12, 2, 0)) <= 1) | (level((5, 7, 5), (12, 2, 0)) <= 1)
    mag = np.where(head & ~skull_out, 1.1, 0.0)
    mag[brain] = 1.0 - 0.15 * (x[brain] / 36) ** 2
    mag[nuclei] = 0.15
    mag[skull_out & ~brain] = 0.03
    if bridge:
        rod = (np.abs(x) <= 1) & (np.abs(z) <= 1) & (y > 0) & head
        mag[rod & ~brain] = 1.0
    mag = np.abs(mag + 0.02 * rng.standard_normal(shape))
    return mag.astype(np.float32), brain, head & ~skull_out, nuclei


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope='module')
def head():
    return _head()


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_brain_mask_separates_scalp_and_keeps_dark_nuclei(head, dtype):
    mag, brain, scalp, nuclei = head
    m = brain_mask(mag.astype(dtype), VOX)
    assert m.dtype == bool and m.shape == mag.shape
    assert not np.any(m & scalp)
    assert np.all(m[nuclei])
    assert _dice(m, brain) > 0.98
    assert ndi.label(m)[1] == 1


def test_brain_mask_hole_filling_restores_nuclei(head):
    mag, brain, _, nuclei = head
    m = brain_mask(mag, VOX, fill_holes=False)
    # without hole filling the dark nuclei are holes
    assert np.count_nonzero(m[nuclei]) < 0.1 * np.count_nonzero(nuclei)


def test_brain_mask_opening_cuts_thin_bridges():
    mag, brain, scalp, nuclei = _head(bridge=True)
    m = brain_mask(mag, VOX)
    assert not np.any(m & scalp)
    assert np.all(m[nuclei]) and _dice(m, brain) > 0.98
    # without the opening the bridge joins the scalp to the brain
    m0 = brain_mask(mag, VOX, opening_mm=0)
    assert np.count_nonzero(m0 & scalp) > 0.5 * np.count_nonzero(scalp)


def test_brain_mask_explicit_threshold_and_erosion(head):
    mag, brain, scalp, _ = head
    m = brain_mask(mag, VOX, threshold=0.4)
    assert not np.any(m & scalp) and _dice(m, brain) > 0.98
    eroded = brain_mask(mag, VOX, erode_mm=3.0)
    assert np.all(m[eroded]) or np.count_nonzero(eroded & ~m) < 10
    depth = ndi.distance_transform_edt(m)
    assert not np.any(eroded & (depth <= 2))  # voxels within 2 mm of the edge are gone
    assert np.all(eroded[depth > 4.5])  # deeper voxels stay


def test_brain_mask_anisotropic_voxels():
    vox = (1.0, 1.0, 2.0)
    mag, brain, scalp, nuclei = _head((96, 112, 44), vox)
    m = brain_mask(mag, vox)
    assert not np.any(m & scalp)
    assert np.all(m[nuclei])
    assert _dice(m, brain) > 0.97


def test_brain_mask_validation(head):
    mag = head[0]
    with pytest.raises(ValueError, match='3-dimensional'):
        brain_mask(mag[..., None], VOX)
    with pytest.raises(ValueError, match='threshold'):
        brain_mask(mag, VOX, threshold=1.5)
    with pytest.raises(ValueError, match='voxel_size'):
        brain_mask(mag, (1, 0, 1))
    with pytest.raises(ValueError, match='erode_mm'):
        brain_mask(mag, VOX, erode_mm=-1)
    bad = mag.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        brain_mask(bad, VOX)
    with pytest.raises(ValueError, match='positive'):
        brain_mask(np.zeros((8, 8, 8)), VOX)


# --------------------------------------------------------------------------------------
# phase quality
# --------------------------------------------------------------------------------------
def _phase_data(shape=(48, 56, 44), *, seed=0, sigma=0.05):
    """Multi-echo phase over an ellipsoid with a 'sinus' of random phase at its edge."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing='ij')
    rng = np.random.default_rng(seed)
    mask = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 <= 1
    field = 150.0 * (x**2 - 0.7 * y + 0.5 * x * z)  # Hz
    phi0 = 1.5 * np.sin(x + y)
    phase = phi0[..., None] + 2 * np.pi * field[..., None] * TE
    phase = phase + sigma * rng.standard_normal(phase.shape)
    # sinus: a ball centred on the mask's surface, where the phase is random
    sinus = (x / 0.2) ** 2 + ((y - 0.9) / 0.2) ** 2 + ((z + 0.0) / 0.2) ** 2 <= 1
    phase[sinus] = rng.uniform(-np.pi, np.pi, (np.count_nonzero(sinus), TE.size))
    mag = np.exp(-25.0 * TE) * np.ones(phase.shape)
    mag[sinus] *= 0.3
    wrapped = np.angle(np.exp(1j * phase))
    return wrapped.astype(np.float32), mag.astype(np.float32), mask, sinus & mask


@pytest.fixture(scope='module')
def phase_data():
    return _phase_data()


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_quality_map_scores_random_phase_low(phase_data, dtype):
    ph, mag, mask, sinus = phase_data
    q = quality_map(ph.astype(dtype), mag.astype(dtype), mask, VOX, echo_times_s=TE)
    assert q.dtype == np.float32 and q.shape == mask.shape
    assert q.min() >= 0 and q.max() <= 1
    assert np.all(q[~mask] == 0)
    far = mask & ~ndi.binary_dilation(sinus, iterations=3)
    assert np.median(q[sinus]) < 0.1
    assert np.percentile(q[far], 1) > 0.7


@pytest.mark.parametrize('use_magnitude', [True, False])
def test_quality_map_from_phase_alone(phase_data, use_magnitude):
    ph, mag, mask, sinus = phase_data
    q = quality_map(ph, mag if use_magnitude else None, mask, VOX, echo_times_s=TE)
    assert np.median(q[sinus]) < 0.2
    # a single echo still has spatial coherence (the small sinus is smeared by the box)
    q1 = quality_map(ph[..., 0], None, mask, VOX, echo_times_s=TE[:1])
    assert np.median(q1[sinus]) < 0.3
    assert np.median(q1[mask & ~sinus]) > 0.9


def test_quality_mask_drops_unreliable_region(phase_data):
    ph, mag, mask, sinus = phase_data
    q = quality_map(ph, mag, mask, VOX, echo_times_s=TE)
    qm = quality_mask(q, mask)
    assert qm.dtype == bool
    assert not np.any(qm & ~mask)
    assert np.count_nonzero(qm & sinus) < 0.1 * np.count_nonzero(sinus)
    far = mask & ~ndi.binary_dilation(sinus, iterations=3)
    assert np.count_nonzero(qm & far) > 0.99 * np.count_nonzero(far)
    assert ndi.label(qm)[1] == 1
    assert np.array_equal(ndi.binary_fill_holes(qm), qm)


def test_quality_mask_fills_enclosed_holes_and_keeps_largest_component():
    mask = np.zeros((30, 30, 30), bool)
    mask[3:27, 3:27, 3:27] = True
    q = np.where(mask, 0.9, 0).astype(np.float32)
    q[15, 15, 15] = 0.0  # isolated unreliable voxel inside: filled back
    q[10:20, 10:20, 5] = 0.0  # a wall cutting off an island ...
    q[10:20, 10, 3:5] = q[10:20, 19, 3:5] = q[10, 10:20, 3:5] = q[19, 10:20, 3:5] = 0.0
    qm = quality_mask(q, mask, threshold=0.5)
    assert qm[15, 15, 15]
    assert not qm[15, 15, 4]  # ... which is not the largest component
    assert ndi.label(qm)[1] == 1


def test_quality_validation(phase_data):
    ph, mag, mask, _ = phase_data
    with pytest.raises(ValueError, match='echo times'):
        quality_map(ph, mag, mask, VOX, echo_times_s=TE[:2])
    with pytest.raises(ValueError, match='magnitude'):
        quality_map(ph, mag[..., :2], mask, VOX, echo_times_s=TE)
    q = np.ones(mask.shape, np.float32)
    with pytest.raises(ValueError, match='threshold'):
        quality_mask(q, mask, threshold=2)
    with pytest.raises(ValueError, match='reaches'):
        quality_mask(np.zeros_like(q), mask)
    with pytest.raises(ValueError, match='shape'):
        quality_mask(q, mask[1:])


@pytest.fixture(scope='module')
def small_head_megre():
    from qsmflow.phantom.bids import DEFAULT_ECHO_TIMES_S
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head

    head = make_head(size='small')
    mag, _, _ = simulate_megre(head, DEFAULT_ECHO_TIMES_S, 3.0, snr=100.0,
                               rng=np.random.default_rng(0))
    return head, mag, list(DEFAULT_ECHO_TIMES_S)


def test_r2star_map_on_phantom(small_head_megre):
    from qsmflow.qsm.mask import r2star_map

    head, mag, te = small_head_megre
    r2 = r2star_map(mag, head.brain_mask, echo_times_s=te)
    assert 2.0 < np.median(r2[head.roi('csf')]) < 10.0  # truth 4 1/s, partial volume at 2 mm
    assert np.median(r2[head.roi('globus_pallidus')]) > 3 * np.median(r2[head.roi('csf')])


def test_csf_mask_finds_ventricles_only(small_head_megre):
    from qsmflow.qsm.mask import brain_mask, csf_mask

    head, mag, te = small_head_megre
    brain = brain_mask(mag[..., 0], head.voxel_size_mm)
    csf = csf_mask(mag, brain, head.voxel_size_mm, echo_times_s=te)
    assert csf.sum() >= 50 and not np.any(csf & ~brain)
    assert np.mean(head.roi('csf')[csf]) > 0.95
    with pytest.raises(ValueError, match='no CSF'):
        csf_mask(mag, brain, head.voxel_size_mm, echo_times_s=te, max_r2star_hz=0.1)
