# SPDX-License-Identifier: Apache-2.0
"""SWI and minIP (qsmflow.qsm.swi): venous contrast on the phantom, the phase mask's sign
and scale, the echo weights, and the projection's geometry."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.phantom.bids import DEFAULT_ECHO_TIMES_S as TES
from qsmflow.qsm import swi as swi_module
from qsmflow.qsm.swi import minimum_intensity_projection, slice_axis_from_affine, swi


@pytest.fixture(scope='module')
def phantom_swi():
    """SWI of the 2 mm demo head (SNR 100) from its true local field in the brain."""
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head
    from qsmflow.qsm.relaxometry import r2star

    head = make_head(size='small')
    mag, _, truth = simulate_megre(head, TES, snr=100, rng=5)
    brain = head.brain_mask
    local = np.where(brain, truth['local_field_ppm'], 0).astype(np.float32)
    r2 = r2star(mag, brain, echo_times_s=TES)['r2star_hz']
    out = swi(local, mag, brain, echo_times_s=TES, b0_tesla=3.0, r2star_hz=r2)
    return head, out


def _vein_and_surroundings(head):
    from qsmflow.phantom.tissues import LABEL_INDEX

    vein = head.labels == LABEL_INDEX['vein']
    shell = (ndi.binary_dilation(vein, iterations=3) & ~ndi.binary_dilation(vein, iterations=1)
             & head.brain_mask & ~vein)
    return vein, shell


def test_veins_are_darker_than_their_surroundings(phantom_swi):
    """Vein voxels: SWI ≤ 0.6 × the tissue 2–6 mm around them (measured 0.49), and the
    phase mask adds contrast to the T2*-weighted magnitude alone (measured 0.66)."""
    head, out = phantom_swi
    vein, shell = _vein_and_surroundings(head)
    assert vein.sum() > 500 and shell.sum() > 1000
    ratio_swi = out['swi'][vein].mean() / out['swi'][shell].mean()
    ratio_mag = out['magnitude'][vein].mean() / out['magnitude'][shell].mean()
    assert ratio_swi <= 0.6, ratio_swi
    assert ratio_swi <= ratio_mag - 0.1, (ratio_swi, ratio_mag)
    assert out['phase_mask'][vein].mean() < out['phase_mask'][shell].mean() - 0.1


def test_iron_rich_pallidum_is_darker_than_white_matter(phantom_swi):
    from qsmflow.phantom.tissues import LABEL_INDEX

    head, out = phantom_swi
    gp = np.isin(head.labels, [LABEL_INDEX['globus_pallidus_left'],
                               LABEL_INDEX['globus_pallidus_right']])
    wm = head.labels == LABEL_INDEX['white_matter']
    assert out['swi'][gp].mean() < 0.9 * out['swi'][wm].mean()


def test_swi_outputs_and_echo_weights(phantom_swi):
    head, out = phantom_swi
    weights = np.asarray(out['echo_weights'])
    assert weights.shape == (len(TES),) and abs(weights.sum() - 1) < 1e-12
    assert np.all(np.diff(weights) > 0)  # TE·exp(−TE·R2*) rises up to TE = 1/R2* ≈ 48 ms
    assert 15.0 < out['r2star_ref_hz'] < 30.0  # the brain's median R2*
    assert TES[0] < out['phase_te_s'] < TES[-1]
    for key in ('swi', 'magnitude', 'phase_mask'):
        assert out[key].dtype == np.float32 and out[key].shape == head.shape
    assert out['phase_mask'].min() >= 0 and out['phase_mask'].max() <= 1
    assert np.all(out['phase_mask'][~head.brain_mask] == 1)
    np.testing.assert_array_equal(out['swi'][~head.brain_mask],
                                  out['magnitude'][~head.brain_mask])


def test_phase_mask_sign_and_scale():
    """Positive (paramagnetic) field is attenuated as (1 − φ/π)^n, negative field is not;
    φ = π at the chosen echo time blanks the voxel."""
    te, b0 = 0.02, 3.0
    ppm_pi = 0.5 / (42.577478e6 * b0 * 1e-6 * te)  # field giving φ = π at te
    field = np.zeros((5, 5, 5))
    field[1, 1, 1], field[2, 2, 2], field[3, 3, 3] = ppm_pi, ppm_pi / 2, -ppm_pi
    mag = np.ones((5, 5, 5, 2))
    out = swi(field, mag, np.ones((5, 5, 5), bool), echo_times_s=[0.01, 0.03], b0_tesla=b0,
              r2star_hz=0.0, phase_te_s=te, strength=2.0)
    assert out['phase_mask'][1, 1, 1] == pytest.approx(0.0, abs=1e-6)
    assert out['phase_mask'][2, 2, 2] == pytest.approx(0.25, rel=1e-5)
    assert out['phase_mask'][3, 3, 3] == 1.0 and out['phase_mask'][0, 0, 0] == 1.0
    np.testing.assert_allclose(out['magnitude'], 1.0, rtol=1e-6)  # weights sum to 1


def test_single_echo_and_softplus():
    rng = np.random.default_rng(0)
    mag = rng.uniform(0, 10, (6, 6, 6))
    field = np.zeros((6, 6, 6))
    plain = swi(field, mag, np.ones((6, 6, 6), bool), echo_times_s=[0.02], b0_tesla=3.0)
    np.testing.assert_allclose(plain['swi'], mag, rtol=1e-6)
    assert plain['phase_te_s'] == pytest.approx(0.02)
    soft = swi(field, mag, np.ones((6, 6, 6), bool), echo_times_s=[0.02], b0_tesla=3.0,
               softplus=True)
    assert soft['swi'].min() >= 0
    order = np.argsort(mag.ravel())
    assert np.all(np.diff(soft['swi'].ravel()[order]) >= -1e-6)  # monotone
    assert (soft['swi'] < mag).all()  # darkens, most at the dark end
    low = mag < np.quantile(mag, 0.2)
    assert (soft['swi'][low] / mag[low]).mean() < (soft['swi'][~low] / mag[~low]).mean()


def test_minip_keeps_the_grid_and_takes_the_slab_minimum():
    rng = np.random.default_rng(3)
    image = rng.uniform(1, 2, (6, 7, 20)).astype(np.float32)
    mip = minimum_intensity_projection(image, (1.0, 1.0, 2.0), slab_mm=8.0)  # 4 slices
    assert mip.shape == image.shape and mip.dtype == np.float32
    assert np.all(mip <= image)
    # slab of slice k: k-2 .. k+1 (even count: one more below), truncated at the edges
    np.testing.assert_array_equal(mip[..., 10], image[..., 8:12].min(axis=-1))
    np.testing.assert_array_equal(mip[..., 0], image[..., 0:2].min(axis=-1))
    np.testing.assert_array_equal(mip[..., 19], image[..., 17:20].min(axis=-1))
    along_x = minimum_intensity_projection(image, (1.0, 1.0, 2.0), slab_mm=3.0, slice_axis=0)
    np.testing.assert_array_equal(along_x[2], image[1:4].min(axis=0))
    same = minimum_intensity_projection(image, (1.0, 1.0, 2.0), slab_mm=1.0)
    np.testing.assert_array_equal(same, image)  # slab thinner than a slice


def test_slice_axis():
    assert slice_axis_from_affine(np.diag([0.9, 0.9, 2.5, 1.0])) == 2
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert slice_axis_from_affine(coronal) == 1  # array axis 1 runs head-foot
    assert slice_axis_from_affine(coronal, slice_dim=0) == 0
    with pytest.raises(ValueError, match='voxel axis'):
        slice_axis_from_affine(np.diag([1.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize('call, message', [
    (lambda: swi(np.zeros((4, 4, 4)), np.ones((4, 4, 5, 2)), np.ones((4, 4, 4)),
                 echo_times_s=[0.01, 0.02], b0_tesla=3.0), 'shape'),
    (lambda: swi(np.zeros((4, 4, 4)), np.ones((4, 4, 4, 2)), np.ones((4, 4, 4)),
                 echo_times_s=[0.01, 0.02], b0_tesla=0.0), 'b0_tesla'),
    (lambda: swi(np.zeros((4, 4, 4)), np.ones((4, 4, 4, 2)), np.ones((4, 4, 4)),
                 echo_times_s=[0.01, 0.02], b0_tesla=3.0, strength=-1), 'strength'),
    (lambda: swi(np.zeros((4, 4, 4)), np.ones((4, 4, 4, 2)), np.ones((4, 4, 4)),
                 echo_times_s=[0.01, 0.02], b0_tesla=3.0, r2star_hz=-3.0), 'r2star_hz'),
    (lambda: minimum_intensity_projection(np.ones((4, 4, 4)), (1, 1, 1), slab_mm=0),
     'slab_mm'),
    (lambda: minimum_intensity_projection(np.ones((4, 4, 4)), (1, 1, 1), slice_axis=3),
     'slice_axis'),
])
def test_bad_inputs_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_doctests():
    assert doctest.testmod(swi_module).failed == 0
