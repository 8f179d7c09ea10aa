# SPDX-License-Identifier: Apache-2.0
"""Tests of the numerical head phantom, the forward model and the BIDS writer."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsmflow import __version__
from qsmflow.phantom import bids, forward, head, tissues
from qsmflow.qsm.echoes import ppm_to_hz
from qsmflow.qsm.kernels import b0_dir_from_affine, irfft, rfft, sphere_kernel

TES_S = (0.004, 0.012, 0.020)


@pytest.fixture(scope='module')
def tiny():
    return head.make_head(size='tiny')


@pytest.fixture(scope='module')
def small():
    return head.make_head(size='small')


# --- anatomy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('size', 'shape', 'min_nucleus'),
    [('tiny', (48, 58, 48), 3), ('small', (72, 88, 72), 8), ('full', (144, 176, 144), 100)],
)
def test_grid_and_labels(size, shape, min_nucleus):
    ph = head.make_head(size=size)
    assert ph.shape == shape
    assert ph.labels.dtype == np.int16 and ph.brain_mask.dtype == bool
    for arr in (ph.chi_ppm, ph.m0, ph.r2star_hz, ph.brain_chi_ppm):
        assert arr.dtype == np.float32 and arr.shape == shape
    voxel_ml = np.prod(ph.voxel_size_mm) / 1000.0
    counts = np.bincount(ph.labels.ravel(), minlength=len(head.LABELS))
    assert np.all(counts > 0), [n for (i, n), c in zip(head.LABELS, counts) if c == 0]
    for base in head.DEEP_GM:
        for side in ('left', 'right'):
            assert counts[tissues.LABEL_INDEX[f'{base}_{side}']] >= min_nucleus, base
    volume = {n: c * voxel_ml for (_, n), c in zip(head.LABELS, counts)}
    brain_ml = sum(volume[n] for n in tissues.BRAIN_LABELS)
    assert 700 < brain_ml < 1400
    assert 1.5 < volume['putamen_left'] < 6 and 0.5 < volume['globus_pallidus_left'] < 2.5
    assert 0.05 < volume['red_nucleus_left'] < 0.4 and 0.2 < volume['dentate_nucleus_left'] < 1
    # At least 8 mm of air between the head and every face of the grid.
    box = [np.flatnonzero(np.any(ph.labels > 0, axis=tuple(a for a in range(3) if a != ax)))
           for ax in range(3)]
    for b, n, d in zip(box, shape, ph.voxel_size_mm):
        assert b[0] * d >= 8 and (n - 1 - b[-1]) * d >= 8
    # Brain = every label but air, skull and scalp.
    non_brain = [tissues.LABEL_INDEX[n] for n in tissues.NON_BRAIN]
    np.testing.assert_array_equal(ph.brain_mask, ~np.isin(ph.labels, non_brain))


def test_label_table():
    names = [n for _, n in head.LABELS]
    assert [i for i, _ in head.LABELS] == list(range(len(names)))
    assert names[0] == 'background' and names[-1] == 'scalp'
    assert len(names) == 26 and 'subthalamic_nucleus_right' in names
    assert head.DEEP_GM[0] == 'caudate' and len(head.DEEP_GM) == 8


def test_volumes_agree_across_resolutions(tiny, small):
    full = head.make_head(size='full')
    for name in ('putamen_left', 'thalamus_right', 'substantia_nigra_left', 'white_matter'):
        ref = full.roi(name).sum() * np.prod(full.voxel_size_mm)
        for ph in (small, tiny):
            vol = ph.roi(name).sum() * np.prod(ph.voxel_size_mm)
            assert vol == pytest.approx(ref, rel=0.35), (name, ph.shape)


def test_left_right_on_correct_side(small):
    affine = bids.oblique_affine(small.shape, small.voxel_size_mm, 15.0)
    for base in head.DEEP_GM:
        x = {}
        for side in ('left', 'right'):
            ijk = np.argwhere(small.roi(f'{base}_{side}')).mean(axis=0)
            x[side] = (affine[:3, :3] @ ijk + affine[:3, 3])[0]
        assert x['left'] < -3 < 3 < x['right'], base


def test_midline_structures_symmetric(small):
    mirrored = small.labels[::-1]
    left = small.roi('putamen_left')
    np.testing.assert_array_equal(left, mirrored == tissues.LABEL_INDEX['putamen_right'])


# --- tissue values ----------------------------------------------------------------------------


def test_chi_within_table_ranges_at_40():
    chi = head.tissue_chi_ppm(40.0)
    table = {
        'white_matter': (-0.03, -0.02), 'cortex': (0.01, 0.02), 'caudate': (0.05, 0.08),
        'putamen': (0.03, 0.08), 'globus_pallidus': (0.12, 0.20), 'thalamus': (0.0, 0.03),
        'substantia_nigra': (0.10, 0.20), 'red_nucleus': (0.08, 0.15),
        'subthalamic_nucleus': (0.08, 0.15), 'dentate_nucleus': (0.08, 0.15),
        'vein': (0.3, 0.45), 'calcification': (-1.0, -0.2), 'haemorrhage': (0.3, 1.5),
    }
    for name, (lo, hi) in table.items():
        key = f'{name}_left' if name in head.DEEP_GM else name
        assert lo <= chi[key] <= hi, name
    assert chi['csf'] == 0.0 and chi['background'] == chi['sinus_air'] == pytest.approx(9.4)
    assert chi['skull'] == pytest.approx(-2.0, abs=0.5) and chi['scalp'] == 0.0


def test_age_law():
    young, mid, old = (head.tissue_chi_ppm(a) for a in (20.0, 40.0, 75.0))
    for base in head.DEEP_GM:
        assert young[f'{base}_left'] < mid[f'{base}_left'] < old[f'{base}_left'], base
    # Pallidum saturates early, putamen and caudate keep rising.
    gp = old['globus_pallidus_left'] - mid['globus_pallidus_left']
    assert gp < 0.3 * (old['putamen_left'] - mid['putamen_left'])
    assert gp < 0.3 * (old['caudate_left'] - mid['caudate_left'])
    assert tissues.deep_gm_chi_ppm('putamen', 0.0) < young['putamen_left']
    r2_young, r2_old = tissues.tissue_r2star_hz(20.0), tissues.tissue_r2star_hz(75.0)
    assert r2_old['putamen_left'] > r2_young['putamen_left'] + 3
    m0 = tissues.tissue_m0()
    assert m0['csf'] > m0['cortex'] > m0['white_matter'] > m0['skull'] > m0['background'] == 0
    with pytest.raises(ValueError):
        head.tissue_chi_ppm(-1.0)


def test_phantom_values_follow_age():
    young = head.make_head(size='tiny', age_years=20.0)
    old = head.make_head(size='tiny', age_years=75.0)
    np.testing.assert_array_equal(young.labels, old.labels)
    for name in ('globus_pallidus_left', 'putamen_right'):
        roi = young.roi(name)
        expected = head.tissue_chi_ppm(75.0)[name]
        assert np.isclose(old.chi_ppm[roi], expected, atol=1e-6).mean() > 0.1  # pure voxels
        assert np.median(old.chi_ppm[roi]) > np.median(young.chi_ppm[roi])
        assert np.median(old.r2star_hz[roi]) > np.median(young.r2star_hz[roi])


def test_brain_chi_is_zero_outside_brain(tiny):
    assert np.all(tiny.brain_chi_ppm[~tiny.brain_mask] == 0)
    assert np.all(tiny.chi_ppm[tiny.labels == 0] <= tissues.CHI_AIR_PPM + 1e-5)
    inner = ndimage.binary_erosion(tiny.brain_mask, iterations=2)
    np.testing.assert_allclose(tiny.brain_chi_ppm[inner], tiny.chi_ppm[inner], atol=1e-6)


# --- forward model ------------------------------------------------------------------------


def _sphere(n, radius_vox, blur_vox):
    """Partial-volume sphere, lightly blurred (still spherically symmetric)."""
    ax = np.arange(n) - (n - 1) / 2.0
    r = np.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    chi = np.clip(radius_vox + 0.5 - r, 0.0, 1.0)
    return ndimage.gaussian_filter(chi, blur_vox), r


@pytest.mark.parametrize('b0_dir', [(0, 0, 1), (0.15, 0.45, 0.88)])
@pytest.mark.parametrize('voxel_mm', [1.0, 1.5])
def test_sphere_field_matches_analytic(b0_dir, voxel_mm):
    dchi = 0.5
    sphere, r_vox = _sphere(64, 9.0, 0.8)
    field = forward.field_from_chi(dchi * sphere, voxel_mm, b0_dir)
    assert field.dtype == np.float32 and field.shape == sphere.shape
    ax = np.arange(64) - 31.5
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    cos = (ax[:, None, None] * b[0] + ax[None, :, None] * b[1] + ax[None, None, :] * b[2]) / r_vox
    a_eff = (3 * sphere.sum() / (4 * np.pi)) ** (1 / 3)  # equivalent radius (voxels)
    scale = dchi / 3 * (a_eff / r_vox) ** 3
    outside = (r_vox > 1.5 * a_eff) & (r_vox < 2.5 * a_eff)
    err = np.abs(field - scale * (3 * cos**2 - 1))[outside] / scale[outside]
    assert err.max() < 0.04
    # Lorentz-corrected: no field inside a uniformly magnetised sphere.
    assert np.abs(field[r_vox < 0.6 * a_eff]).max() < 0.01 * dchi


def test_field_linear_and_pad_independent():
    rng = np.random.default_rng(1)
    chi = ndimage.gaussian_filter(rng.standard_normal((24, 20, 16)), 2).astype(np.float32)
    f1 = forward.field_from_chi(chi, (1.0, 1.2, 2.0))
    f2 = forward.field_from_chi(2 * chi, (1.0, 1.2, 2.0))
    np.testing.assert_allclose(f2, 2 * f1, atol=1e-6)
    f3 = forward.field_from_chi(chi, (1.0, 1.2, 2.0), pad_factor=1.0)
    assert np.abs(f3 - f1).max() < 0.02 * np.abs(f1).max()
    with pytest.raises(ValueError):
        forward.field_from_chi(chi[0], 1.0)


@pytest.mark.parametrize('b0_dir', [(0, 0, 1), (0, np.sin(0.3), np.cos(0.3))])
def test_noise_free_phase_and_decay(tiny, b0_dir):
    mag, phase, truth = forward.simulate_megre(tiny, TES_S, 3.0, b0_dir, snr=np.inf)
    assert mag.shape == phase.shape == tiny.shape + (3,)
    assert mag.dtype == phase.dtype == np.float32
    assert phase.min() >= -np.pi and phase.max() < np.pi
    f_hz = ppm_to_hz(truth['total_field_ppm'].astype(np.float64), 3.0)
    np.testing.assert_allclose(f_hz, truth['field_hz'], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        truth['total_field_ppm'], truth['local_field_ppm'] + truth['background_field_ppm'],
        atol=1e-5)
    phi0 = truth['phase_offset_rad']
    assert 1.0 < np.ptp(phi0) < 10.0
    for n, te in enumerate(TES_S):
        expected = phi0 + 2 * np.pi * truth['field_hz'].astype(np.float64) * te
        diff = np.angle(np.exp(1j * (phase[..., n] - expected)))
        assert np.abs(diff).max() < 1e-4
    # Magnitude is M0 · exp(−TE · R2*): check the echo ratio in the putamen.
    roi = tiny.roi('putamen') & (tiny.m0 > 0)
    ratio = mag[..., 2][roi] / mag[..., 0][roi]
    np.testing.assert_allclose(ratio, np.exp(-(TES_S[2] - TES_S[0]) * tiny.r2star_hz[roi]),
                               rtol=1e-4)
    assert np.all(mag[..., 1][tiny.brain_mask] < mag[..., 0][tiny.brain_mask])
    air = ndimage.binary_erosion(tiny.labels == 0)
    assert np.all(mag[..., 0][air] == 0)


@pytest.mark.parametrize(('b0_dir', 'tol'), [((0, 0, 1), 0.03), ((0, 0.3, 0.95), 0.1)])
def test_local_field_and_harmonic_background(tiny, b0_dir, tol):
    _, _, truth = forward.simulate_megre(tiny, TES_S, 3.0, b0_dir, snr=np.inf,
                                         phase_offset=False)
    np.testing.assert_allclose(
        truth['local_field_ppm'], forward.field_from_chi(tiny.brain_chi_ppm, 3.0, b0_dir),
        atol=1e-6)
    assert np.all(truth['phase_offset_rad'] == 0)
    assert np.ptp(truth['background_field_ppm'][tiny.brain_mask]) > 0.5  # strong background
    # The background is harmonic inside the brain: a SHARP high-pass (δ − SMV) removes it.
    radius_mm = 6.0
    inner = ndimage.binary_erosion(tiny.brain_mask, iterations=2)
    smv = sphere_kernel(tiny.shape, tiny.voxel_size_mm, radius_mm)

    def high_pass(f):
        return (f - irfft(rfft(f.astype(np.float64)) * smv, f.shape))[inner]

    bg = high_pass(truth['background_field_ppm'])
    local = high_pass(truth['local_field_ppm'])
    assert np.sqrt(np.mean(bg**2)) < tol * np.sqrt(np.mean(local**2))


def test_noise_level_and_seed(small):
    mag, phase, truth = forward.simulate_megre(small, TES_S[:1], snr=50.0, rng=3)
    sigma = truth['noise_sigma']
    brain = small.brain_mask
    s1 = np.mean(small.m0[brain] * np.exp(-TES_S[0] * small.r2star_hz[brain]))
    assert s1 / sigma == pytest.approx(50.0)
    air = ndimage.binary_erosion(small.labels == 0, iterations=2)  # Rayleigh noise only
    assert mag[..., 0][air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)
    again = forward.simulate_megre(small, TES_S[:1], snr=50.0, rng=3)
    np.testing.assert_array_equal(again[1], phase)
    other = forward.simulate_megre(small, TES_S[:1], snr=50.0, rng=4)
    assert not np.array_equal(other[1], phase)


def test_simulate_rejects_bad_input(tiny):
    with pytest.raises(ValueError):
        forward.simulate_megre(tiny, [], snr=np.inf)
    with pytest.raises(ValueError):
        forward.simulate_megre(tiny, TES_S, snr=0.0)


# --- BIDS ---------------------------------------------------------------------------------


@pytest.mark.parametrize('axis', ['x', 'y', 'z'])
def test_oblique_affine(axis):
    shape, vox = (10, 12, 8), (2.0, 2.0, 2.5)
    aff = bids.oblique_affine(shape, vox, 15.0, axis)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), vox)
    centre = aff @ np.r_[(np.asarray(shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)
    b = b0_dir_from_affine(aff)
    expected = 0.0 if axis == 'z' else 15.0
    assert np.degrees(np.arccos(b[2])) == pytest.approx(expected)
    plain = bids.oblique_affine(shape, vox)
    np.testing.assert_allclose(plain[:3, :3], np.diag(vox))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('phantom')
    participants = [{'participant_id': '01', 'age': 25, 'sex': 'F'},
                    {'participant_id': 'sub-02', 'age': 70, 'sex': 'M', 'group': 'old'}]
    out = bids.write_dataset(root / 'raw', root / 'truth', participants, size='tiny',
                             echo_times_s=TES_S, oblique_deg=15.0, snr=80.0, seed=5)
    return root, out


def test_write_dataset_files(dataset):
    root, out = dataset
    raw, truth = root / 'raw', root / 'truth'
    assert out['bids_dir'] == raw.resolve() and out['truth_dir'] == truth.resolve()
    desc = json.loads((raw / 'dataset_description.json').read_text())
    assert desc['BIDSVersion'] == '1.10.0' and desc['DatasetType'] == 'raw'
    assert desc['License'] == 'CC0' and desc['Name']
    assert (raw / 'README').read_text().strip()
    rows = [line.split('\t') for line in (raw / 'participants.tsv').read_text().splitlines()]
    assert rows[0][:3] == ['participant_id', 'age', 'sex']
    assert [r[0] for r in rows[1:]] == ['sub-01', 'sub-02']
    assert rows[1][1:3] == ['25', 'F'] and rows[2][1:3] == ['70', 'M']
    columns = json.loads((raw / 'participants.json').read_text())
    assert columns['age']['Units'] == 'year' and set(columns['sex']['Levels']) == {'F', 'M'}

    for sub in ('sub-01', 'sub-02'):
        anat = raw / sub / 'anat'
        names = sorted(p.name for p in anat.iterdir())
        assert len(names) == 4 * len(TES_S)
        for n, te in enumerate(TES_S, start=1):
            for part, units in (('mag', 'arbitrary'), ('phase', 'rad')):
                stem = anat / f'{sub}_echo-{n}_part-{part}_MEGRE'
                meta = json.loads(stem.with_suffix('.json').read_text())
                assert meta['EchoTime'] == te and meta['Units'] == units
                assert meta['MagneticFieldStrength'] == 3.0
                assert meta['Manufacturer'] == 'qsmflow-phantom'
                assert meta['RepetitionTime'] > max(TES_S) and 0 < meta['FlipAngle'] < 90
                img = nb.load(f'{stem}.nii.gz')
                assert img.shape == (48, 58, 48) and img.get_data_dtype() == np.float32
                b0 = b0_dir_from_affine(img.affine)
                assert np.degrees(np.arccos(b0[2])) == pytest.approx(15.0)
                if part == 'phase':
                    data = np.asanyarray(img.dataobj)
                    assert data.min() >= -np.pi and data.max() < np.pi
        tanat = truth / sub / 'anat'
        for name in ('Chimap', 'R2starmap', 'desc-phantom_dseg', 'desc-brain_mask',
                     'desc-local_fieldmap', 'desc-total_fieldmap'):
            assert (tanat / f'{sub}_{name}.nii.gz').is_file(), name
            assert 'SkullStripped' in json.loads((tanat / f'{sub}_{name}.json').read_text())
        chi_meta = json.loads((tanat / f'{sub}_Chimap.json').read_text())
        assert chi_meta['Units'] == 'ppm' and chi_meta['SkullStripped'] is True
        dseg_rows = (tanat / f'{sub}_desc-phantom_dseg.tsv').read_text().splitlines()
        assert dseg_rows[0] == 'index\tname' and dseg_rows[1] == '0\tbackground'
        assert len(dseg_rows) == len(head.LABELS) + 1
    assert (truth / 'dseg.tsv').is_file() and (truth / '.bidsignore').is_file()
    tdesc = json.loads((truth / 'dataset_description.json').read_text())
    assert tdesc['DatasetType'] == 'derivative'
    assert tdesc['GeneratedBy'][0]['Version'] == __version__


def test_write_dataset_truth_content(dataset):
    root, out = dataset
    paths = out['participants']['02']
    chi = nb.load(paths['chimap']).get_fdata()
    dseg = np.asanyarray(nb.load(paths['dseg']).dataobj)
    mask = np.asanyarray(nb.load(paths['mask']).dataobj).astype(bool)
    assert np.all(chi[~mask] == 0)
    gp = dseg == tissues.LABEL_INDEX['globus_pallidus_right']
    expected = head.tissue_chi_ppm(70)['globus_pallidus_right']
    assert chi[gp].max() == pytest.approx(expected, abs=1e-6)  # pure (non-PV) voxels
    young = nb.load(out['participants']['01']['chimap']).get_fdata()
    assert np.median(young[gp]) < np.median(chi[gp])
    # Noise seeds differ between participants, and the B0 direction is the affine's.
    mag1 = nb.load(out['participants']['01']['mag'][0]).get_fdata()
    mag2 = nb.load(paths['mag'][0]).get_fdata()
    assert not np.allclose(mag1[dseg == 0], mag2[dseg == 0])
    np.testing.assert_allclose(paths['b0_dir'], [0, np.sin(np.radians(15)),
                                                 np.cos(np.radians(15))], atol=1e-12)


def test_write_dataset_rejects_nested_truth(tmp_path):
    with pytest.raises(ValueError, match='separate'):
        bids.write_dataset(tmp_path / 'raw', tmp_path / 'raw' / 'derivatives' / 'truth',
                           [{'participant_id': '01', 'age': 30, 'sex': 'F'}], size='tiny')
    with pytest.raises(ValueError):
        bids.write_dataset(tmp_path / 'raw', tmp_path / 'truth',
                           [{'participant_id': 'a_b', 'age': 30, 'sex': 'F'}], size='tiny')


def _validator():
    local = Path(sys.executable).parent / 'bids-validator-deno'
    return str(local) if local.is_file() else shutil.which('bids-validator-deno')


def test_bids_validator_accepts(dataset):
    exe = _validator()
    if exe is None:
        pytest.skip('bids-validator-deno is not installed')
    root, _ = dataset
    for name in ('raw', 'truth'):
        proc = subprocess.run([exe, str(root / name), '--format', 'json'],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, proc.stdout[-3000:], proc.stderr[-3000:])
        issues = json.loads(proc.stdout)['issues']['issues']
        assert not [i for i in issues if i.get('severity') == 'error'], name
