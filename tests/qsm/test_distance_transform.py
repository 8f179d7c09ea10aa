# SPDX-License-Identifier: Apache-2.0
"""The parallel Euclidean distance transform against scipy's, and across thread counts."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm import threads
from qsmflow.qsm._morphology import distance_transform, nearest_outside


@pytest.mark.parametrize('shape, vox', [((20, 30, 25), (1.0, 1.0, 1.0)),
                                        ((17, 9, 33), (0.7, 1.3, 2.0)),
                                        ((5, 40, 3), (2.5, 0.3, 1.1))])
@pytest.mark.parametrize('share', [0.5, 0.97, 0.9995])
def test_equals_scipy_on_random_masks(shape, vox, share):
    mask = np.random.default_rng(7).random(shape) < share
    mask.flat[0] = False  # at least one background voxel
    ours = distance_transform(mask, vox)
    np.testing.assert_allclose(ours, ndi.distance_transform_edt(mask, sampling=vox),
                               rtol=1e-13, atol=0)
    assert ours.dtype == np.float64 and not ours[~mask].any()


def test_thread_count_does_not_change_the_result_and_full_masks_fall_back():
    mask = np.zeros((40, 50, 30), bool)
    mask[3:37, 5:45, 2:28] = np.random.default_rng(1).random((34, 40, 26)) < 0.999
    with threads.limit(1):
        one = distance_transform(mask, (0.9, 1.0, 1.7))
    with threads.limit(2):
        two = distance_transform(mask, (0.9, 1.0, 1.7))
    assert np.array_equal(one, two) and one.max() > 5
    full = np.ones((4, 5, 6), bool)
    assert np.array_equal(distance_transform(full, 1.0), ndi.distance_transform_edt(full))


@pytest.mark.parametrize('vox', [(1.0, 1.0, 1.0), (0.7, 1.3, 2.0)])
def test_nearest_outside_gives_a_nearest_background_voxel(vox):
    mask = np.random.default_rng(3).random((17, 9, 33)) < 0.97
    mask.flat[5] = False
    flat = nearest_outside(mask, vox)
    assert flat.shape == mask.shape and flat.dtype == np.int32
    ours = np.array(np.unravel_index(flat, mask.shape))
    theirs = ndi.distance_transform_edt(mask, sampling=vox, return_distances=False,
                                        return_indices=True)
    grid = np.indices(mask.shape)

    def dist(idx):
        return np.sqrt(sum(((idx[a] - grid[a]) * vox[a]) ** 2 for a in range(3)))

    assert not mask[tuple(ours)].any()  # every index is a background voxel ...
    np.testing.assert_allclose(dist(ours), dist(theirs), rtol=1e-13)  # ... and a nearest one
