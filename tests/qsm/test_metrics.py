# SPDX-License-Identifier: Apache-2.0
"""Accuracy metrics: basic properties."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm import metrics


@pytest.fixture(scope='module')
def maps():
    rng = np.random.default_rng(0)
    shape = (24, 26, 20)
    truth = ndi.gaussian_filter(rng.standard_normal(shape), 1.0) * 0.1
    mask = np.zeros(shape, bool)
    mask[3:21, 3:23, 3:17] = True
    labels = np.zeros(shape, int)
    labels[5:9, 5:9, 5:9] = 1
    labels[12:16, 14:18, 8:12] = 2
    truth[labels == 1] += 0.15
    truth[labels == 2] += 0.05
    noise = rng.standard_normal(shape) * 0.02
    return truth, mask, labels, noise


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_identical_maps(maps, dtype):
    t, m, lab, _ = maps
    t = t.astype(dtype)
    assert metrics.rmse(t, t, m) == pytest.approx(0, abs=1e-5)
    assert metrics.hfen(t, t, m) == pytest.approx(0, abs=1e-5)
    assert metrics.ssim(t, t, m) == pytest.approx(1, abs=1e-6)
    assert metrics.deep_gm_error(t, t, lab, [1, 2], m) == pytest.approx(0, abs=1e-7)


def test_offset_invariance_and_scaling(maps):
    t, m, _, noise = maps
    for a in (0.5, 2.0, 3.0):
        assert metrics.rmse(a * t + 0.7, t, m) == pytest.approx(100 * abs(a - 1), rel=1e-9)
        assert metrics.hfen(a * t + 0.7, t, m) == pytest.approx(100 * abs(a - 1), rel=1e-9)
    assert metrics.ssim(t + 0.7, t, m) == pytest.approx(1, abs=1e-9)
    assert metrics.ssim(0.5 * t, t, m) < 0.97
    # noise makes everything worse, monotonically
    r1, r2 = metrics.rmse(t + noise, t, m), metrics.rmse(t + 2 * noise, t, m)
    assert 0 < r1 < r2 and r2 == pytest.approx(2 * r1, rel=1e-9)
    assert metrics.ssim(t + 2 * noise, t, m) < metrics.ssim(t + noise, t, m) < 1
    assert metrics.hfen(t + noise, t, m) > 0
    # values outside the mask do not matter
    u = t + noise
    u2 = u.copy()
    u2[~m] = 5
    assert metrics.rmse(u2, t, m) == pytest.approx(metrics.rmse(u, t, m))


def test_hfen_is_a_band_pass_error(maps):
    t, m, _, noise = maps
    # a Laplacian-of-Gaussian (σ = 1.5 voxels) passes errors of a few voxels' scale and
    # suppresses voxel-to-voxel noise: at equal RMSE, the former has the larger HFEN
    white = noise - noise[m].mean()
    blobs = ndi.gaussian_filter(noise, 1.0)
    blobs -= blobs[m].mean()
    blobs *= np.linalg.norm(white[m]) / np.linalg.norm(blobs[m])
    assert metrics.rmse(t + blobs, t, m) == pytest.approx(metrics.rmse(t + white, t, m))
    assert metrics.hfen(t + blobs, t, m) > 2 * metrics.hfen(t + white, t, m)
    assert metrics.hfen(t + white, t, m, sigma_vox=0.7) > metrics.hfen(t + white, t, m)


def test_roi_means_and_deep_gm_error(maps):
    t, m, lab, _ = maps
    means = metrics.roi_means(t, lab, [1, 2, 9])
    assert means[0] == pytest.approx(t[lab == 1].mean())
    assert means[1] == pytest.approx(t[lab == 2].mean())
    assert np.isnan(means[2])
    # contrasts are relative to the mask mean: an offset does not count, a scaling does
    assert metrics.deep_gm_error(t + 1, t, lab, [1, 2], m) == pytest.approx(0, abs=1e-12)
    c = metrics.roi_means(t, lab, [1, 2]) - t[m].mean()
    assert metrics.deep_gm_error(2 * t, t, lab, [1, 2], m) == pytest.approx(np.mean(np.abs(c)))
    with pytest.raises(ValueError, match='no voxel'):
        metrics.deep_gm_error(t, t, lab, [1, 9], m)
    with pytest.raises(ValueError, match='labels shape'):
        metrics.roi_means(t, lab[:3], [1])


def test_streaking(maps):
    t, m, _, noise = maps
    lab = np.zeros(t.shape, int)
    lab[11:13, 12:14, 9:11] = 7
    assert metrics.streaking(t, t, lab, 7, 3.0, (1, 1, 1)) == 0
    assert metrics.streaking(t + 0.3, t, lab, 7, 3.0, (1, 1, 1)) == pytest.approx(0, abs=1e-12)
    # errors inside the calcification itself are not streaks
    inside = t + 0.5 * (lab == 7)
    assert metrics.streaking(inside, t, lab, 7, 3.0, (1, 1, 1)) == pytest.approx(0, abs=1e-12)
    # a streak through the calcification along the third axis is
    streak = t.copy()
    streak[11:13, 12:14, :] += 0.1 * np.sign(np.arange(t.shape[2]) - 9.5)
    s = metrics.streaking(streak, t, lab, 7, 3.0, (1, 1, 1))
    assert s > 0.02
    # the rim is in mm: a thinner rim along the voxel axes holds fewer voxels
    assert metrics.streaking(streak, t, lab, 7, 3.0, (1, 1, 3)) != pytest.approx(s)
    assert metrics.streaking(t + noise, t, lab, 7, 3.0, (1, 1, 1), mask=m) > 0
    with pytest.raises(ValueError, match='calc_label'):
        metrics.streaking(t, t, lab, 3, 3.0, (1, 1, 1))


def test_validation(maps):
    t, m, _, _ = maps
    with pytest.raises(ValueError, match='shape mismatch'):
        metrics.rmse(t, t[:5], m)
    with pytest.raises(ValueError, match='empty'):
        metrics.ssim(t, t, np.zeros_like(m))
    with pytest.raises(ValueError, match='constant'):
        metrics.rmse(t, np.ones_like(t), m)
    bad = t.copy()
    bad[m] = np.nan
    with pytest.raises(ValueError, match='finite'):
        metrics.hfen(bad, t, m)
