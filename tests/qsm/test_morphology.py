# SPDX-License-Identifier: Apache-2.0
"""Slice-wise hole filling and the largest component (compiled, threaded) against SciPy,
for any thread count."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm import threads
from qsmflow.qsm._morphology import fill_holes_axis, largest_component


def _scipy_slicewise(mask, axis):
    out = np.moveaxis(mask.copy(), axis, 0)
    for s in range(out.shape[0]):
        out[s] = ndi.binary_fill_holes(out[s])
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize('shape', [(19, 23, 17), (1, 6, 5), (4, 1, 9), (2, 2, 2)])
@pytest.mark.parametrize('density', [0.35, 0.6, 0.85])
def test_slicewise_fill_matches_scipy_for_any_thread_count(shape, density):
    mask = np.random.default_rng(7).random(shape) < density
    mask[tuple(s // 2 for s in shape)] = False  # at least one background voxel
    for axis in range(3):
        want = _scipy_slicewise(mask, axis)
        for n in (1, 3):
            with threads.limit(n):
                got = fill_holes_axis(mask, axis)
            assert got.dtype == bool and np.array_equal(got, want), (axis, n)


@pytest.mark.parametrize('shape', [(29, 23, 17), (1, 6, 5), (4, 1, 9), (2, 2, 2), (11, 9, 1)])
@pytest.mark.parametrize('density', [0.35, 0.6, 0.85, 1.0])
def test_3d_fill_matches_scipy_for_any_thread_count(shape, density):
    """The 3D fill (one labelling of the background, those off the faces filled) against
    scipy, with holes inside a shell."""
    mask = np.random.default_rng(5).random(shape) < density
    if shape[0] > 20:
        mask[2:-2, 2:-2, 2:-2] = True
        mask[3:-3, 3:-3, 3:-3] = np.random.default_rng(6).random(
            (shape[0] - 6, shape[1] - 6, shape[2] - 6)) < 0.4  # a shell enclosing holes
    want = ndi.binary_fill_holes(mask)
    for n in (1, 3):
        with threads.limit(n):
            got = fill_holes_axis(mask)
        assert got.dtype == bool and np.array_equal(got, want), n
    if shape[0] > 20:
        assert want.sum() > mask.sum()


def test_ring_hole_is_filled_in_its_slices_only():
    mask = np.zeros((5, 9, 9), bool)
    mask[1:4, 2:7, 2:7] = True
    mask[1:4, 4, 4] = False  # a hole through three slices of axis 0, open along axis 0
    assert fill_holes_axis(mask, 0)[1:4, 4, 4].all()
    assert not fill_holes_axis(mask, 1)[1:4, 4, 4].any()
    assert not fill_holes_axis(mask)[1:4, 4, 4].any()  # 3D: it opens at slices 0 and 4


def _scipy_largest(mask):
    lab, n = ndi.label(mask)
    if n <= 1:
        return lab > 0
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == np.argmax(counts)  # of equal sizes, the first label: first in C order


@pytest.mark.parametrize('shape', [(21, 18, 23), (1, 7, 5), (17, 3, 4), (2, 2, 2)])
@pytest.mark.parametrize('density', [0.1, 0.3, 0.5, 0.7])
def test_largest_component_matches_scipy_for_any_thread_count(shape, density):
    mask = np.random.default_rng(3).random(shape) < density  # sparse: many ties
    want = _scipy_largest(mask)
    for n in (1, 3):
        with threads.limit(n):
            got = largest_component(mask)
        assert got.dtype == bool and np.array_equal(got, want), n


def test_largest_component_joins_across_slabs_and_keeps_the_first_of_equals():
    mask = np.zeros((20, 4, 4), bool)
    mask[:, 0, 0] = True  # one column through every slab of the forest: 20 voxels
    mask[2:12, 3, 3] = mask[8:18, 3, 1] = True  # two of 10, the second not first in C order
    assert np.array_equal(largest_component(mask), mask & (np.arange(4)[None, :, None] == 0)
                          & (np.arange(4)[None, None, :] == 0))
    mask[:, 0, 0] = False
    assert np.array_equal(np.argwhere(largest_component(mask))[:, 0], np.arange(2, 12))
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_3d_fill_on_the_masks_box_matches_scipy():
    """The 3D fill labels only the mask's bounding box grown by one voxel: the same mask as
    scipy's for a shell well inside the grid, one on a face, one through the grid, an
    empty and a full mask."""
    shape = (30, 34, 28)
    g = np.indices(shape)
    rng = np.random.default_rng(8)
    for centre, outer in (((15, 17, 14), 9), ((3, 17, 14), 9), ((15, 17, 14), 20)):
        r2 = sum((gi - c) ** 2 for gi, c in zip(g, centre))
        mask = (r2 < outer**2) & ((r2 > 16) | (rng.random(shape) < 0.3))
        want = ndi.binary_fill_holes(mask)
        assert np.array_equal(fill_holes_axis(mask), want)
        assert want.sum() > mask.sum() or centre[0] == 3
    for mask in (np.zeros(shape, bool), np.ones(shape, bool)):
        assert np.array_equal(fill_holes_axis(mask), mask)


@pytest.mark.parametrize('erode', [True, False])
def test_ball_filter_by_slabs_is_the_whole_grid_expression(erode):
    """The ball filter's k-space product and threshold, made in slabs of planes side by
    side, give the mask of the whole-grid expressions for 1 and 3 threads."""
    import math

    from qsmflow.qsm._morphology import ball_count, ball_filter
    from qsmflow.qsm.kernels import irfft, padded_shape, rfft, sphere_kernel

    mask = ndi.uniform_filter(np.random.default_rng(9).random((30, 26, 21)), 3) > 0.5
    mask |= (((np.indices(mask.shape).T - (15, 13, 10)).T ** 2).sum(0) < 64)
    for vox, radius in (((1, 1, 1), 2.0), ((0.8, 1.0, 1.5), 4.0)):
        pshape = padded_shape(mask.shape, [math.ceil(radius / h) + 1 for h in vox])
        big = np.zeros(pshape, np.float32)
        big[tuple(slice(0, n) for n in mask.shape)] = mask
        frac = irfft(rfft(big) * sphere_kernel(pshape, vox, radius),
                     pshape)[tuple(slice(0, n) for n in mask.shape)]
        half = 0.5 / ball_count(vox, radius)
        want = frac > 1 - half if erode else frac > half
        assert 0 < want.sum() != mask.sum()
        for n_threads in (1, 3):
            with threads.limit(n_threads):
                assert np.array_equal(ball_filter(mask, vox, radius, erode), want)
