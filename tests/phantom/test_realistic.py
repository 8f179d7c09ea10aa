# SPDX-License-Identifier: Apache-2.0
"""Tests of the realistic head phantom: the properties that make it hard like a real head."""

import json
import time

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsmflow.phantom import bids, head, realistic, tissues
from qsmflow.phantom.geometry import Capsule
from qsmflow.phantom.qc import mask_qc
from qsmflow.qsm.kernels import b0_dir_from_affine
from qsmflow.qsm.mask import brain_mask

TES_S = bids.DEFAULT_ECHO_TIMES_S


def _simulate(size, *, snr=realistic.DEFAULT_REALISTIC_SNR, oblique_deg=0.0, **kwargs):
    ph = realistic.realistic_head(size=size)
    b0 = b0_dir_from_affine(bids.oblique_affine(ph.shape, ph.voxel_size_mm, oblique_deg))
    mag, phase, truth = realistic.simulate_realistic_megre(ph, TES_S, 3.0, b0, snr=snr, rng=0,
                                                           **kwargs)
    return ph, mag, phase, truth


@pytest.fixture(scope='module')
def small():
    return _simulate('small')


def _near_air(ph, distance_mm):
    """Tissue voxels within ``distance_mm`` of an internal air cavity, and the cavities."""
    air = ph.roi('sinus_air')
    depth = ndimage.distance_transform_edt(~air, sampling=ph.voxel_size_mm)
    return ph.head_mask & ~air & (depth <= distance_mm), air


# --- anatomy and truth ------------------------------------------------------------------------


def test_labels_and_truth_consistent(small):
    ph = small[0]
    assert isinstance(ph, head.HeadPhantom) and ph.shape == (72, 88, 72)
    assert ph.labels.dtype == np.int16 and ph.brain_mask.dtype == bool
    for arr in (ph.chi_ppm, ph.m0, ph.r2star_hz, ph.brain_chi_ppm, ph.fat_fraction):
        assert arr.dtype == np.float32 and arr.shape == ph.shape
    counts = np.bincount(ph.labels.ravel(), minlength=len(realistic.REALISTIC_LABELS))
    missing = [n for (_, n), c in zip(realistic.REALISTIC_LABELS, counts) if c == 0]
    assert not missing
    assert realistic.REALISTIC_LABELS[:len(head.LABELS)] == head.LABELS
    brain_ids = [tissues.LABEL_INDEX[n] for n in tissues.BRAIN_LABELS]
    np.testing.assert_array_equal(ph.brain_mask, np.isin(ph.labels, brain_ids))
    np.testing.assert_array_equal(ph.head_mask, ph.labels != 0)
    assert np.all(ph.brain_chi_ppm[~ph.brain_mask] == 0)
    assert not np.any(ph.brain_mask & ~ph.head_mask)
    # The brain is the default phantom's: same nuclei (a few voxels may go to new veins).
    ref = head.make_head(size='small')
    for base in head.DEEP_GM:
        n_real, n_ref = ph.roi(base).sum(), ref.roi(base).sum()
        assert abs(int(n_real) - int(n_ref)) <= 0.05 * n_ref, base
    chi = tissues.tissue_chi_ppm(40.0)
    core = ndimage.binary_erosion(ph.roi('putamen_left'))
    np.testing.assert_allclose(ph.brain_chi_ppm[core], chi['putamen_left'], rtol=1e-6)
    brain_ml = ph.brain_mask.sum() * np.prod(ph.voxel_size_mm) / 1000
    assert 700 < brain_ml < 1000
    # Truth of the head: fat where fat is, no fat in the brain.
    assert np.all(ph.fat_fraction[ph.brain_mask] == 0)
    assert np.median(ph.fat_fraction[ph.roi('fat')]) == pytest.approx(0.9)


def test_veins_of_several_sizes_and_calcifications(small):
    ph = small[0]
    items = realistic.realistic_anatomy()
    radii = {s.radius_mm for lab, s, _ in items
             if lab == tissues.LABEL_INDEX['vein'] and isinstance(s, Capsule)}
    assert min(radii) <= 1.0 and max(radii) >= 3.0 and len(radii) >= 5
    chi = ph.brain_chi_ppm
    assert 0.3 <= realistic.realistic_tissues()['vein'][0] <= 0.45
    assert np.percentile(chi[ph.roi('vein')], 90) == pytest.approx(0.40, abs=1e-6)
    calc, n_calc = ndimage.label(ph.roi('calcification'))
    assert n_calc >= 2 and chi[calc > 0].min() < -0.2


def test_ear_canals_open_to_the_outside(small):
    """The ear canals' air reaches the air around the head (they are no closed cavities)."""
    ph = small[0]
    air = ph.labels == 0
    both = air | ph.roi('sinus_air')
    lab, _ = ndimage.label(both)
    outside = lab[0, 0, 0]
    connected = (lab == outside) & ph.roi('sinus_air')
    left, right = connected[: ph.shape[0] // 2].any(), connected[ph.shape[0] // 2:].any()
    assert left and right


# --- magnitude: why thresholds fail ------------------------------------------------------------


def test_scalp_as_bright_as_brain_on_first_echo(small):
    ph, mag, _, _ = small
    m1 = mag[..., 0]
    brain = float(np.median(m1[ph.brain_mask]))
    fat = float(np.median(m1[ph.roi('fat')]))
    scalp = float(np.median(m1[ph.roi('fat') | ph.roi('scalp')]))
    assert fat >= 1.3 * brain  # measured 1.04 vs 0.66 (2 mm), 1.05 vs 0.66 (1 mm)
    assert scalp >= brain
    assert 0.8 * brain < float(np.median(m1[ph.roi('muscle')])) < 1.2 * brain
    assert float(np.median(m1[ph.roi('skull')])) < 0.1 * brain  # cortical bone: T2* 0.5 ms


def test_magnitude_threshold_mask_swallows_the_scalp(small):
    """qsmflow.qsm.mask.brain_mask (defaults) keeps scalp, skull and neck, as on real heads."""
    ph, mag, _, _ = small
    mask = brain_mask(mag[..., 0], ph.voxel_size_mm)
    got = mask_qc(mask, ph.head_mask, ph.voxel_size_mm)
    true = mask_qc(ph.brain_mask, ph.head_mask, ph.voxel_size_mm)
    assert true['near_surface_share'] == 0.0
    assert got['near_surface_share'] > 0.25  # measured 0.33
    assert got['volume_ml'] > 1.8 * true['volume_ml']  # measured 1715 vs 801 mL
    assert mask[ph.roi('fat') | ph.roi('scalp')].mean() > 0.9  # measured 0.98
    assert mask[ph.roi('spinal_cord')].mean() > 0.9


# --- fields ---------------------------------------------------------------------------------


def test_air_tissue_field_strong_near_cavities(small):
    ph, _, _, truth = small
    near, air = _near_air(ph, 5.0)
    background = np.abs(truth['background_field_ppm'])
    assert background[near].max() > 2.0  # measured 2.9 ppm (2 mm), 4.7 ppm (1 mm)
    cavities, n = ndimage.label(air)
    assert n >= 7  # frontal, ethmoid, sphenoid, 2 ear canals, 2 mastoids
    depth = [ndimage.distance_transform_edt(cavities != i, sampling=ph.voxel_size_mm)
             for i in range(1, n + 1)]
    for d in depth:
        assert background[ph.head_mask & (cavities == 0) & (d <= 5)].max() > 1.0
    near_brain = ph.brain_mask & _near_air(ph, 10.0)[0]
    assert background[near_brain].max() > 0.5  # measured 0.7 ppm (2 mm), 1.5 ppm (1 mm)


def test_oblique_b0_changes_the_field():
    ph, _, _, straight = _simulate('tiny', snr=np.inf)
    _, _, _, tilted = _simulate('tiny', snr=np.inf, oblique_deg=20.0)
    diff = np.abs(tilted['total_field_ppm'] - straight['total_field_ppm'])[ph.head_mask]
    assert diff.max() > 0.5
    assert abs(np.degrees(np.arccos(tilted['b0_dir'][2])) - 20.0) < 1e-6


def test_fat_shift_only_in_fat():
    ph, mag, phase, truth = _simulate('tiny', snr=np.inf)
    _, mag0, phase0, _ = _simulate('tiny', snr=np.inf, fat_shift_ppm=0.0)
    water = ph.fat_fraction == 0
    for a, b in ((mag, mag0), (phase, phase0)):
        np.testing.assert_array_equal(a[water], b[water])
    fat = ph.fat_fraction > 0.5
    dphi = np.angle(np.exp(1j * (phase[..., 1] - phase0[..., 1])))[fat]
    assert np.median(np.abs(dphi)) > 0.5
    # without the shift and noise the phase is the field's, as in simulate_megre
    model = truth['phase_offset_rad'] + 2 * np.pi * TES_S[1] * truth['field_hz']
    err = np.angle(np.exp(1j * (phase0[..., 1] - model)))
    assert np.abs(err).max() < 1e-3


# --- noise ---------------------------------------------------------------------------------


@pytest.mark.parametrize('snr', [realistic.DEFAULT_REALISTIC_SNR, 20.0])
def test_noise_level_matches_snr(snr):
    ph, mag, phase, truth = _simulate('small', snr=snr)
    outside = ndimage.distance_transform_edt(~ph.head_mask, sampling=ph.voxel_size_mm) > 5
    z = mag[..., 0][outside] * np.exp(1j * phase[..., 0][outside])
    sigma = np.sqrt(0.5 * (z.real.var() + z.imag.var()))
    assert sigma == pytest.approx(truth['noise_sigma'], rel=0.02)
    measured = float(mag[..., 0][ph.brain_mask].mean()) / sigma
    assert measured == pytest.approx(snr, rel=0.03)


# --- 1 mm, BIDS ---------------------------------------------------------------------------------


@pytest.mark.slow  # the 1 mm realistic head and its MEGRE simulation
def test_full_resolution_fast_and_hard():
    t0 = time.perf_counter()
    ph, mag, _, truth = _simulate('full')
    seconds = time.perf_counter() - t0  # measured 6-8 s on 2 shared cores
    assert ph.shape == (144, 176, 144) and seconds < 60
    m1 = mag[..., 0]
    assert np.median(m1[ph.roi('fat')]) >= 1.3 * np.median(m1[ph.brain_mask])
    assert np.median(m1[ph.roi('marrow')]) > 0.7 * np.median(m1[ph.brain_mask])
    got = mask_qc(brain_mask(m1, ph.voxel_size_mm), ph.head_mask, ph.voxel_size_mm)
    assert got['near_surface_share'] > 0.25  # measured 0.34
    assert got['volume_ml'] > 1.8 * ph.brain_mask.sum() / 1000  # measured 1724 vs 809 mL
    near, _ = _near_air(ph, 5.0)
    assert np.abs(truth['background_field_ppm'][near]).max() > 3.0  # measured 4.7 ppm


def test_write_dataset_realistic(tmp_path):
    rows = [{'participant_id': '01', 'age': 40, 'sex': 'F'}]
    out = bids.write_dataset(tmp_path / 'raw', tmp_path / 'truth', rows, size='tiny',
                             echo_times_s=TES_S[:3], variant='realistic', oblique_deg=10.0)
    paths = out['participants']['01']
    head_mask = np.asarray(nb.load(paths['head_mask']).dataobj) > 0
    brain = np.asarray(nb.load(paths['mask']).dataobj) > 0
    labels = np.asarray(nb.load(paths['dseg']).dataobj)
    assert brain.sum() > 0 and not np.any(brain & ~head_mask)
    np.testing.assert_array_equal(head_mask, labels != 0)
    fat = np.asarray(nb.load(paths['fat_fraction']).dataobj)
    assert fat.max() == pytest.approx(0.9, rel=1e-6)
    assert np.mean(fat[brain] > 0) < 0.01  # partial volume at the brain's edge only (3 mm)
    tsv = paths['dseg_tsv'].read_text()
    assert '\tfat\n' in tsv and '\tspinal_cord\n' in tsv
    assert (tmp_path / 'truth' / 'dseg.tsv').read_text() == tsv
    meta = json.loads(paths['mag'][0].with_name(
        paths['mag'][0].name.replace('.nii.gz', '.json')).read_text())
    assert 'realistic' in meta['ManufacturersModelName']
    # default SNR of the variant: 35
    mag = np.asarray(nb.load(paths['mag'][0]).dataobj)
    ph = realistic.realistic_head(size='tiny')
    air = ndimage.distance_transform_edt(~ph.head_mask, sampling=ph.voxel_size_mm) > 6
    sigma = mag[air].mean() / np.sqrt(np.pi / 2)  # Rayleigh
    assert mag[brain].mean() / sigma == pytest.approx(35.0, rel=0.1)
    with pytest.raises(ValueError, match='variant'):
        bids.write_dataset(tmp_path / 'r2', tmp_path / 't2', rows, size='tiny', variant='nope')


def test_mask_qc_measures():
    shape = (40, 40, 40)
    head_mask = np.zeros(shape, bool)
    head_mask[4:36, 4:36, 4:36] = True
    core = np.zeros(shape, bool)
    core[16:24, 16:24, 16:24] = True
    q = mask_qc(core, head_mask, (1.0, 1.0, 1.0))
    assert q == {'near_surface_share': 0.0, 'volume_ml': 0.512, 'head_volume_ml': 32.768}
    # anisotropic voxels: 2 mm along x puts the core within 10 mm of the x faces
    assert mask_qc(core, head_mask, (2.0, 1.0, 1.0))['near_surface_share'] == 0.0
    # 3 mm voxels: the outer 3 layers (depth 3, 6, 9 mm) of the 32³ cube
    share = mask_qc(head_mask, head_mask, (3.0, 3.0, 3.0))['near_surface_share']
    assert share == pytest.approx(1 - 26**3 / 32**3)
    shell = head_mask & ~ndimage.binary_erosion(head_mask, iterations=3)
    assert mask_qc(shell, head_mask, 1.0)['near_surface_share'] == 1.0
    assert np.isnan(mask_qc(np.zeros(shape, bool), head_mask, 1.0)['near_surface_share'])
    with pytest.raises(ValueError):
        mask_qc(core[:-1], head_mask, 1.0)
