"""The moving image of a template registration: the combined magnitude averaged to the
template's voxel size (whole blocks), its grid centred on the blocks."""
import nibabel as nb
import numpy as np

from qsmflow.interfaces.registration import template_voxel_mm, write_moving
from qsmflow.qsm.blocks import block_affine, block_factors, block_mean


def _inputs(tmp_path, shape=(13, 10, 8), vox=(1.0, 1.0, 1.0)):
    rng = np.random.default_rng(3)
    mag = rng.random(shape + (3,), dtype=np.float32) + 0.5
    mask = np.zeros(shape, np.uint8)
    mask[2:11, 2:9, 1:7] = 1
    affine = np.diag(list(vox) + [1.0])
    affine[:3, 3] = (-20.0, 7.5, 3.0)
    affine[:3, :3] = affine[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # rotated
    nb.Nifti1Image(mag, affine).to_filename(tmp_path / 'mag.nii.gz')
    nb.Nifti1Image(mask, affine).to_filename(tmp_path / 'mask.nii.gz')
    rss = np.sqrt(np.sum(mag.astype(np.float32) ** 2, axis=-1)) * mask
    return rss, affine


def test_moving_is_the_block_mean_on_the_template_grid(tmp_path):
    rss, affine = _inputs(tmp_path)
    out = write_moving(tmp_path / 'mag.nii.gz', tmp_path / 'mask.nii.gz',
                       tmp_path / 'moving.nii.gz', voxel_mm=2.0)
    img = nb.load(out)
    # 13 × 10 × 8 voxels of 1 mm → 6 × 5 × 4 blocks of 2 mm (the 13th plane dropped)
    assert img.shape == (6, 5, 4)
    assert np.allclose(img.header.get_zooms()[:3], (2.0, 2.0, 2.0))
    expected = rss[:12].reshape(6, 2, 5, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(np.asarray(img.dataobj), expected, rtol=1e-5, atol=1e-6)
    # coarse voxel (i, j, k) sits at the centre of its fine block, in world coordinates
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        fine = [np.array(ijk) * 2 + np.array(d) for d in np.ndindex(2, 2, 2)]
        centre = np.mean([affine[:3, :3] @ f + affine[:3, 3] for f in fine], axis=0)
        np.testing.assert_allclose(img.affine[:3, :3] @ ijk + img.affine[:3, 3], centre)


def test_moving_keeps_the_native_grid_when_the_template_is_not_coarser(tmp_path):
    rss, affine = _inputs(tmp_path, vox=(2.0, 2.0, 2.0))
    out = write_moving(tmp_path / 'mag.nii.gz', tmp_path / 'mask.nii.gz',
                       tmp_path / 'moving.nii.gz', voxel_mm=3.0)  # the tiny demo's case
    img = nb.load(out)
    assert img.shape == rss.shape
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), rss, rtol=1e-6)


def test_template_voxel_mm_is_the_largest_voxel_side(tmp_path):
    nb.Nifti1Image(np.zeros((4, 4, 4), np.float32),
                   np.diag([2.0, 2.0, 2.5, 1.0])).to_filename(tmp_path / 't.nii.gz')
    assert template_voxel_mm(tmp_path / 't.nii.gz') == 2.5


def test_block_helpers_on_anisotropic_and_4d_grids():
    assert block_factors((0.6, 0.6, 2.0), 2.0) == (3, 3, 1)
    a = np.random.default_rng(0).random((7, 6, 5, 2)).astype(np.float32)
    out = block_mean(a, (3, 3, 1))
    assert out.shape == (2, 2, 5, 2)
    np.testing.assert_allclose(out[1, 0, 4], a[3:6, 0:3, 4].mean(axis=(0, 1)), rtol=1e-6)
    aff = block_affine(np.diag([0.6, 0.6, 2.0, 1.0]), (3, 3, 1))
    np.testing.assert_allclose(np.diag(aff)[:3], (1.8, 1.8, 2.0))
    np.testing.assert_allclose(aff[:3, 3], (0.6, 0.6, 0.0))


def test_a_fine_template_is_registered_on_a_grid_of_about_2mm(tmp_path):
    """A 1 mm template (and its mask) becomes 2 mm block means for the registration; a 2 mm
    one is used as it is (its path: the default registrations keep every bit)."""
    from qsmflow.interfaces.registration import coarse_fixed

    rng = np.random.default_rng(1)
    tpl = rng.random((12, 10, 8)).astype(np.float32)
    mask = np.zeros(tpl.shape, np.uint8)
    mask[2:9, 2:8, 2:7] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-6.0, -5.0, -4.0)
    nb.Nifti1Image(tpl, affine).to_filename(tmp_path / 'tpl.nii.gz')
    nb.Nifti1Image(mask, affine).to_filename(tmp_path / 'mask.nii.gz')
    fixed, fixed_mask = coarse_fixed(tmp_path / 'tpl.nii.gz', tmp_path / 'mask.nii.gz',
                                     tmp_path)
    img, mimg = nb.load(fixed), nb.load(fixed_mask)
    assert img.shape == mimg.shape == (6, 5, 4)
    assert np.allclose(img.header.get_zooms()[:3], 2.0)
    np.testing.assert_allclose(np.asarray(img.dataobj),
                               tpl.reshape(6, 2, 5, 2, 4, 2).mean(axis=(1, 3, 5)), rtol=1e-6)
    np.testing.assert_allclose(img.affine, block_affine(affine, (2, 2, 2)))
    inside = mask.reshape(6, 2, 5, 2, 4, 2).mean(axis=(1, 3, 5)) >= 0.5
    assert np.array_equal(np.asarray(mimg.dataobj) > 0, inside)
    coarse = tmp_path / 'coarse'
    coarse.mkdir()
    nb.Nifti1Image(tpl, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(coarse / 'tpl.nii.gz')
    assert coarse_fixed(coarse / 'tpl.nii.gz', None, coarse) == (
        str(coarse / 'tpl.nii.gz'), None)
