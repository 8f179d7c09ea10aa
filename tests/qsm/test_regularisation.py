# SPDX-License-Identifier: Apache-2.0
"""Data-driven TV weight: noise estimate of the local field, weight choice, reporting."""
from __future__ import annotations

import numpy as np
import pytest

from qsmflow.qsm import inversion
from qsmflow.qsm.inversion import regularisation as reg


@pytest.fixture(scope='module')
def brains(brain_factory):
    """Noise-free 2 mm and (cropped) 1 mm phantom local fields."""
    coarse = brain_factory()
    fine = brain_factory(shape=(96, 112, 80), voxel_size=(1.0, 1.0, 1.0), texture=False)
    return {2.0: coarse, 1.0: fine}


@pytest.mark.parametrize('vox', [1.0, 2.0])
@pytest.mark.parametrize('sigma', [0.004, 0.01])
def test_noise_estimate_recovers_known_sigma(brains, vox, sigma):
    b = brains[vox]
    rng = np.random.default_rng(7)
    field = (b['local'] + sigma * rng.standard_normal(b['mask'].shape)) * b['mask']
    est = reg.estimate_noise(field.astype(np.float32), b['mask'])
    for key in ('sigma_ppm', 'sigma_voxel_ppm', 'sigma_2voxel_ppm'):
        assert abs(est[key] / sigma - 1) < 0.2, (key, est)


def test_noise_estimate_sees_correlated_noise():
    """Noise averaged over neighbours hides from the finest scale, not from 2 voxels."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    white = rng.standard_normal((48, 48, 48))
    smooth = ndi.uniform_filter(white, 2, mode='wrap')
    smooth *= 0.01 / smooth.std()
    est = reg.estimate_noise(smooth, np.ones(smooth.shape, bool))
    assert est['sigma_2voxel_ppm'] > 1.5 * est['sigma_voxel_ppm']
    assert est['sigma_ppm'] == est['sigma_2voxel_ppm']


def test_weight_grows_with_noise_and_stays_in_range(brains):
    b = brains[2.0]
    rng = np.random.default_rng(1)
    lams = []
    for sigma in (0.0, 0.002, 0.004, 0.008):
        field = (b['local'] + sigma * rng.standard_normal(b['mask'].shape)) * b['mask']
        info = reg.choose_tv_weight(field.astype(np.float32), b['mask'])
        lo, hi = reg.TV_LAM_RANGE
        assert lo <= info['lam'] <= hi
        lams.append(info['lam'])
    assert lams[0] == reg.TV_LAM_RANGE[0]  # a clean field keeps the SNR-100 weight
    assert lams == sorted(lams) and lams[-1] > 2 * lams[0], lams


def test_noise_map_can_only_raise_sigma(brains):
    b = brains[2.0]
    m = b['mask']
    quiet = reg.choose_tv_weight(b['local'], m, noise_ppm=np.full(m.shape, 1e-5))
    alone = reg.choose_tv_weight(b['local'], m)
    assert quiet['lam'] == alone['lam'] and quiet['criterion'] == alone['criterion']
    loud = reg.choose_tv_weight(b['local'], m, noise_ppm=np.full(m.shape, 0.006))
    assert loud['criterion'].startswith('map') and loud['sigma_ppm'] == pytest.approx(0.006)
    assert loud['lam'] > alone['lam']
    with pytest.raises(ValueError, match='noise_ppm shape'):
        reg.choose_tv_weight(b['local'], m, noise_ppm=np.ones((3, 3, 3)))


def test_explicit_lam_bypasses_the_selection(brain_noisy):
    """An explicit lam bypasses the weight selection: the default run equals a run with the
    weight it chose, given explicitly."""
    b = brain_noisy
    m, vs = b['mask'], b['voxel_size']
    chi = inversion.tv(b['local_noisy'], m, vs, lam=5e-4, max_iter=20)
    again, info = inversion.tv(b['local_noisy'], m, vs, lam=5e-4, max_iter=20,
                               return_info=True)
    np.testing.assert_array_equal(chi, again)
    assert info['criterion'] == 'given' and info['lam'] == 5e-4
    # the default chooses from the data and says how
    auto, info = inversion.tv(b['local_noisy'], m, vs, max_iter=20, return_info=True)
    assert info['criterion'].endswith('noise-squared-over-gradient-scale')
    chosen = inversion.tv(b['local_noisy'], m, vs, lam=info['lam'], max_iter=20)
    np.testing.assert_array_equal(auto, chosen)
    assert info['lam'] > 5e-4  # 0.01 ppm of noise at 2 mm: heavier than the clean weight


def test_invert_default_chooses_from_the_field_alone(brain_noisy):
    b = brain_noisy
    m, vs = b['mask'], b['voxel_size']
    chi = inversion.invert(b['local_noisy'], m, vs)
    info = reg.choose_tv_weight(b['local_noisy'], m)
    np.testing.assert_array_equal(chi, inversion.tv(b['local_noisy'], m, vs, lam=info['lam']))


def test_invalid_inputs():
    with pytest.raises(ValueError, match='same 3D shape'):
        reg.estimate_noise(np.zeros((4, 4)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match='too small'):
        reg.estimate_noise(np.zeros((5, 5, 5)), np.ones((5, 5, 5), bool))


def test_interface_records_the_chosen_weight(tmp_path):
    """The dipole-inversion step of the sidecar carries the weight and its criterion."""
    import json

    import nibabel as nb

    from qsmflow.interfaces.inversion import InvertDipole

    rng = np.random.default_rng(3)
    field = (0.005 * rng.standard_normal((20, 20, 20))).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nb.save(nb.Nifti1Image(field, affine), tmp_path / 'field.nii.gz')
    nb.save(nb.Nifti1Image(np.ones(field.shape, np.uint8), affine), tmp_path / 'mask.nii.gz')
    for params, criterion in (({}, 'field-noise-squared-over-gradient-scale'),
                              ({'lam': 1e-3}, 'given')):
        res = InvertDipole(in_file=str(tmp_path / 'field.nii.gz'),
                           in_mask=str(tmp_path / 'mask.nii.gz'),
                           params={'max_iter': 3, **params}).run(cwd=str(tmp_path))
        side = res.outputs.out_file.replace('.nii.gz', '.json')
        steps = json.load(open(side))['QSMProcessing']
        rec = [s for s in steps if s['Step'] == 'dipole-inversion'][-1]
        assert rec['Regularisation']['criterion'] == criterion
        assert rec['Regularisation']['lam'] == pytest.approx(params.get('lam', 0.005**2 / 0.011),
                                                             rel=0.3)
        # the shell prior's weight comes from the field's noise either way
        assert rec['Regularisation']['shell_weight'] == pytest.approx(
            (0.005 / reg.TV_OUTSIDE_FIELD_PPM) ** 2, rel=0.3)
        assert rec['Regularisation']['shell_mm'] == reg.TV_SHELL_MM


def test_shell_weight_follows_the_noise_and_can_be_set_or_switched_off(brain_noisy):
    """σ²/τ² capped at 1; a given weight is used as it is; shell_mm=0 or weight 0 is the
    free outside of before (bitwise the same run), and the prior changes χ when on."""
    assert reg.choose_shell_weight(0.0) == 0.0
    assert reg.choose_shell_weight(0.5 * reg.TV_OUTSIDE_FIELD_PPM) == pytest.approx(0.25)
    assert reg.choose_shell_weight(1.0) == 1.0
    for bad in (-1e-3, float('nan')):
        with pytest.raises(ValueError, match='sigma_ppm'):
            reg.choose_shell_weight(bad)
    b = brain_noisy
    m, vs = b['mask'], b['voxel_size']
    kw = dict(lam=1e-3, max_iter=15)
    off, info = inversion.tv(b['local_noisy'], m, vs, shell_mm=0, return_info=True, **kw)
    assert info['shell_criterion'] == 'off' and info['shell_weight'] == 0
    np.testing.assert_array_equal(off, inversion.tv(b['local_noisy'], m, vs, shell_weight=0,
                                                    **kw))
    on, info = inversion.tv(b['local_noisy'], m, vs, shell_weight=0.5, return_info=True, **kw)
    assert info['shell_criterion'] == 'given' and info['shell_weight'] == 0.5
    assert np.abs(on - off)[m].max() > 1e-3
    with pytest.raises(ValueError, match='shell_mm'):
        inversion.tv(b['local_noisy'], m, vs, shell_mm=-1)



def test_noise_estimate_on_the_masks_box_equals_that_on_the_whole_grid():
    """estimate_noise works on the mask's bounding box (started at even indices): the same
    σ, bit for bit, as the 2 × 2 × 2 blocks and Haar coefficients of the whole grid."""
    from scipy import ndimage as ndi

    from qsmflow.qsm.inversion import regularisation as reg

    rng = np.random.default_rng(4)
    shape = (31, 40, 37)
    field = rng.standard_normal(shape)
    centre = np.array([15.3, 21.7, 17.1])[:, None, None, None]
    axes = np.array([9.0, 12.0, 10.0])[:, None, None, None]
    mask = (((np.indices(shape) - centre) / axes) ** 2).sum(0) < 1
    inner = ndi.binary_erosion(mask, iterations=2)
    full = np.where(mask, field, 0.0)
    s1 = reg._haar_detail_mad(full, inner)
    s2 = reg._haar_detail_mad(*reg._block_mean(full, inner)) * np.sqrt(8.0)
    est = reg.estimate_noise(field, mask)
    assert (est['sigma_voxel_ppm'], est['sigma_2voxel_ppm']) == (s1, s2)
    assert [s.start % 2 for s in reg._even_box(mask)] == [0, 0, 0]


def _haar_whole_grid(field, valid):
    """The HHH coefficients' σ as whole-grid numpy expressions (before the slabs)."""
    shape = tuple(n - 1 for n in field.shape)
    coef, inside = np.zeros(shape, np.float64), np.ones(shape, bool)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                sl = (slice(a, a + shape[0]), slice(b, b + shape[1]), slice(c, c + shape[2]))
                if (a + b + c) % 2:
                    coef -= field[sl]
                else:
                    coef += field[sl]
                inside &= valid[sl]
    if inside.sum() < reg._MIN_COEFFICIENTS:
        return float('nan')
    return float(np.median(np.abs(coef[inside])) / np.sqrt(8.0) * reg._MAD_TO_SIGMA)


@pytest.mark.parametrize('shape', [(31, 40, 37), (70, 12, 9), (66, 24, 21)])
def test_noise_estimate_by_slabs_is_the_whole_grid_expression(shape):
    """The erosion, the Haar coefficients and the 2 × 2 × 2 means made in slabs of planes
    side by side give the bits of the whole-grid expressions (NaN where too few blocks
    fit), for 1 and 3 threads, a mask touching the grid's faces and float32 or float64
    fields; the erosion is scipy's."""
    from scipy import ndimage as ndi

    from qsmflow.qsm import threads
    from qsmflow.qsm._morphology import erode_layers

    rng = np.random.default_rng(5)
    field = rng.standard_normal(shape).astype(np.float32)
    mask = ndi.uniform_filter(rng.random(shape), 5) > 0.47
    mask[:3] = True  # on the first face: erosion at the grid's edge
    inner = ndi.binary_erosion(mask, iterations=2)
    full = np.where(mask, field.astype(np.float64), 0.0)
    s = tuple(n // 2 * 2 for n in shape)
    blocks = (s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2)
    f2 = full[:s[0], :s[1], :s[2]].reshape(blocks).mean(axis=(1, 3, 5))
    v2 = inner[:s[0], :s[1], :s[2]].reshape(blocks).all(axis=(1, 3, 5))
    ref = (_haar_whole_grid(full, inner), _haar_whole_grid(f2, v2) * np.sqrt(8.0))
    for n_threads in (1, 3):
        with threads.limit(n_threads):
            for it in (1, 2, 3):
                assert np.array_equal(erode_layers(mask, it),
                                      ndi.binary_erosion(mask, iterations=it))
            mean, valid = reg._block_mean(full, inner)
            assert mean.tobytes() == f2.tobytes() and np.array_equal(valid, v2)
            for dtype in (np.float32, np.float64):
                est = reg.estimate_noise(field.astype(dtype), mask)
                np.testing.assert_equal((est['sigma_voxel_ppm'], est['sigma_2voxel_ppm']), ref)
