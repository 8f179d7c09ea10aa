# SPDX-License-Identifier: Apache-2.0
"""Background field removal (V-SHARP, PDF, RESHARP) on forward-simulated fields."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm import bgremove

METHODS = [bgremove.vsharp, bgremove.pdf, bgremove.resharp, bgremove.ismv, bgremove.lbv]


@pytest.fixture(scope='module')
def sphere_scene(simulate_field):
    """Spherical mask, a small χ sphere inside, air spheres outside (2 mm voxels)."""
    n, vs = 64, (2.0, 2.0, 2.0)
    g = np.indices((n, n, n)).astype(float) - n / 2 + 0.5

    def ball(c, rad):
        return np.sqrt(((g - np.reshape(c, (3, 1, 1, 1))) ** 2).sum(0)) <= rad

    mask = ball((0, 0, 0), 26)
    chi = 0.2 * ball((3, 0, 2), 3)
    air = sum(9.4 * ball(c, 4) for c in [(0, 0, -31), (25, 20, 10), (-28, 5, -15)])
    return {
        'mask': mask, 'vs': vs, 'near': ball((3, 0, 2), 10),
        'local': simulate_field(chi, vs), 'background': simulate_field(air, vs),
        'simulate': simulate_field,
    }


@pytest.mark.parametrize('method', METHODS)
def test_recovers_local_field_of_compact_source(sphere_scene, method):
    s = sphere_scene
    total = (s['local'] + s['background']) * s['mask']
    local, used = method(total, s['mask'], s['vs'])
    near = used & s['near']
    rel = np.linalg.norm((local - s['local'])[near]) / np.linalg.norm(s['local'][near])
    assert rel < 0.05
    err = (local - s['local'])[used]
    assert np.sqrt(np.mean(err**2)) < 0.03 * s['background'][used].std()


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_removes_brain_background(brain, method, dtype):
    m, vs = brain['mask'], brain['voxel_size']
    bg = brain['background']
    local, used = method(brain['total'].astype(dtype), m, vs)
    assert local.dtype == dtype and used.dtype == bool
    assert np.all(local[~used] == 0) and not np.any(used & ~m)
    err = (local - brain['local'])[used]
    err -= err.mean()
    # background std ≈ 0.36 ppm; the residual is ~1.5 % of it (mostly edge effects)
    assert np.sqrt(np.mean(err**2)) < 0.025 * bg[used].std()
    # away from the edge the local field is recovered closely
    inner = used & (ndi.distance_transform_edt(m) > 5)
    # (iSMV and LBV take the total field on the mask boundary as background, so the
    # cortical local field there leaks into the interior: ≈ 0.85 on this phantom)
    min_corr = 0.8 if method in (bgremove.ismv, bgremove.lbv) else 0.9
    assert np.corrcoef(local[inner], brain['local'][inner])[0, 1] > min_corr
    # background-only input gives (almost) nothing
    only_bg, used_bg = method(bg, m, vs)
    resid = only_bg[used_bg] - only_bg[used_bg].mean()
    assert np.sqrt(np.mean(resid**2)) < 0.01 * bg[used_bg].std()


def test_vsharp_mask_erosion_and_radii(brain):
    m, vs = brain['mask'], brain['voxel_size']
    radii = bgremove.default_vsharp_radii_mm(vs)
    assert radii[0] == 12 and radii[-1] >= max(vs) and np.all(np.diff(radii) < 0)
    _, used = bgremove.vsharp(brain['total'], m, vs)
    # valid where a ball of the smallest radius (one 2 mm voxel: 6-neighbourhood) fits
    expected = ndi.binary_erosion(m, ndi.generate_binary_structure(3, 1))
    np.testing.assert_array_equal(used, expected)
    _, used6 = bgremove.vsharp(brain['total'], m, vs, radii_mm=(12, 6))
    assert used6.sum() < used.sum()
    assert np.all(used6 <= used)


def test_vsharp_ignores_values_outside_mask(brain):
    m, vs = brain['mask'], brain['voxel_size']
    a, _ = bgremove.vsharp(brain['total'], m, vs)
    noisy = brain['total'].copy()
    noisy[~m] = np.nan
    b, _ = bgremove.vsharp(noisy, m, vs)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_vsharp_uniform_and_linear_fields_removed():
    m = np.zeros((40, 40, 40), bool)
    m[5:35, 6:34, 8:32] = True
    i, j, k = np.indices(m.shape)
    field = 0.3 + 0.01 * i - 0.02 * k + 0.001 * (i**2 - j**2)  # harmonic
    local, used = bgremove.vsharp(field, m, (1, 1, 1), radii_mm=(6, 4, 2))
    assert np.abs(local[used]).max() < 1e-4


def test_pdf_uses_b0_direction(sphere_scene):
    """The field of a voxel-sharp air sphere through the plain k-space kernel, removed by
    PDF with that plain kernel (``cross_taper=None``): only the right B0 direction explains
    it. (A harmonic field inside the mask can be explained by outside sources for either
    direction; it is the kernel's own detail that tells them apart. The default, faded
    kernel is checked against the checkerboard below.)"""
    s = sphere_scene
    b0 = (0.0, np.sin(np.radians(30)), np.cos(np.radians(30)))
    g = np.indices(s['mask'].shape).astype(float) - 31.5
    m = np.sqrt((g**2).sum(0)) <= 24
    air = 9.4 * (np.sqrt(((g - np.reshape((0, 0, -31), (3, 1, 1, 1))) ** 2).sum(0)) <= 5)
    bg = s['simulate'](air, s['vs'], b0)

    def residual(b, **kw):
        local, _ = bgremove.pdf(bg * m, m, s['vs'], b, **kw)
        return local, np.sqrt(np.mean((local[m] - local[m].mean()) ** 2))

    (_, right), (_, wrong) = residual(b0, cross_taper=None), residual((0, 0, 1), cross_taper=None)
    # the air sphere is only 2 voxels from the mask: a hard case, a few % residual
    assert right < 0.05 * bg[m].std()
    assert wrong > 1.8 * right
    (faded, _), (faded_axial, _) = residual(b0), residual((0, 0, 1))
    assert np.abs(faded - faded_axial)[m].max() > 1e-3


def test_pdf_erodes_a_rim_of_bone_out_of_the_mask(sphere_scene):
    """A mask one voxel too generous, its rim on bone (χ −2 ppm): without erosion the rim's
    own field stays in the local field (its sources are inside the mask); ``erode_voxels=1``
    lets PDF place sources there and removes it."""
    s = sphere_scene
    g = np.indices(s['mask'].shape).astype(float) - 31.5
    r = np.sqrt((g**2).sum(0))
    brain = r <= 25
    mask = r <= 26
    bone = -2.0 * (mask & ~brain) * (g[2] > 0)  # the upper half of the rim
    total = (s['local'] + s['background'] + s['simulate'](bone, s['vs'])) * mask
    errors = {}
    for erode in (0, 1):
        local, used = bgremove.pdf(total, mask, s['vs'], erode_voxels=erode)
        np.testing.assert_array_equal(used, ndi.binary_erosion(mask, iterations=erode)
                                      if erode else mask)
        assert not local[~used].any()
        deep = used & (r <= 20)
        err = (local - s['local'])[deep]
        errors[erode] = np.sqrt(np.mean((err - err.mean()) ** 2))
    assert errors[1] < 0.25 * errors[0]
    with pytest.raises(ValueError, match='erode_voxels'):
        bgremove.pdf(total, mask, s['vs'], erode_voxels=-1)
    with pytest.raises(ValueError, match='erode_voxels'):
        bgremove.pdf(total, mask, s['vs'], erode_voxels=1.5)
    with pytest.raises(ValueError, match='empty after eroding'):
        bgremove.pdf(total, mask, s['vs'], erode_voxels=40)


def test_pdf_keeps_mask(brain):
    m = brain['mask']
    _, used = bgremove.pdf(brain['total'], m, brain['voxel_size'])
    np.testing.assert_array_equal(used, m)
    assert used is not m


@pytest.mark.parametrize('method', METHODS)
def test_input_validation(method):
    f = np.zeros((16, 16, 16), np.float32)
    m = np.zeros((16, 16, 16), bool)
    m[3:13, 3:13, 3:13] = True
    with pytest.raises(ValueError, match='does not match'):
        method(f, m[:8], (1, 1, 1))
    with pytest.raises(ValueError, match='3D'):
        method(f[0], m[0], (1, 1, 1))
    with pytest.raises(ValueError, match='empty'):
        method(f, np.zeros_like(m), (1, 1, 1))
    bad = f.copy()
    bad[8, 8, 8] = np.inf
    with pytest.raises(ValueError, match='non-finite'):
        method(bad, m, (1, 1, 1))
    with pytest.raises(ValueError, match='voxel_size'):
        method(f, m, (1, -1, 1))


def test_vsharp_option_validation():
    f = np.zeros((16, 16, 16), np.float32)
    m = np.zeros((16, 16, 16), bool)
    m[3:13, 3:13, 3:13] = True
    with pytest.raises(ValueError, match='threshold'):
        bgremove.vsharp(f, m, (1, 1, 1), threshold=0)
    with pytest.raises(ValueError, match='radii'):
        bgremove.vsharp(f, m, (1, 1, 1), radii_mm=[])
    with pytest.raises(ValueError, match='radii'):
        bgremove.vsharp(f, m, (1, 1, 1), radii_mm=[4, 0.5])
    with pytest.raises(ValueError, match='too thin'):
        bgremove.vsharp(f, m, (1, 1, 1), radii_mm=[6])
    with pytest.raises(ValueError, match='tol'):
        bgremove.pdf(f, m, (1, 1, 1), tol=0)
    with pytest.raises(ValueError, match='max_iter'):
        bgremove.pdf(f, m, (1, 1, 1), max_iter=0)


def test_resharp_erodes_by_radius_and_validates(brain):
    m, vs = brain['mask'], brain['voxel_size']
    _, small = bgremove.resharp(brain['total'], m, vs, radius_mm=max(vs))
    _, large = bgremove.resharp(brain['total'], m, vs, radius_mm=3 * max(vs))
    assert large.sum() < small.sum() <= m.sum() and not np.any(large & ~small)
    with pytest.raises(ValueError, match='radius_mm'):
        bgremove.resharp(brain['total'], m, vs, radius_mm=0.5 * min(vs))
    with pytest.raises(ValueError, match='lam'):
        bgremove.resharp(brain['total'], m, vs, lam=0)


def test_pdf_oblique_b0_leaves_no_checkerboard():
    """With B0 oblique to the grid, the plain dipole kernel's jump at the Nyquist frequency
    makes the field of PDF's voxel-sharp sources ring into the brain (a checkerboard: large
    at one voxel, gone at two). The default fade of the kernel's cross terms removes most of
    it; with B0 along a grid axis nothing changes, to the bit."""
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head
    from qsmflow.qsm.inversion.regularisation import estimate_noise

    head = make_head(size='small')
    mask, vsz = head.brain_mask, head.voxel_size_mm

    def voxel_scale_error(b0, **kw):
        _, _, truth = simulate_megre(head, [0.004], b0_dir=b0, snr=np.inf)
        local, _ = bgremove.pdf(truth['total_field_ppm'], mask, vsz, b0, **kw)
        err = local - truth['local_field_ppm']
        return local, estimate_noise(np.where(mask, err, 0), mask)['sigma_voxel_ppm']

    t = np.deg2rad(15)
    oblique = (0.0, np.sin(t), np.cos(t))
    _, plain = voxel_scale_error(oblique, cross_taper=None)
    _, faded = voxel_scale_error(oblique)
    axial, axial_err = voxel_scale_error((0, 0, 1))
    axial_plain, _ = voxel_scale_error((0, 0, 1), cross_taper=None)
    assert (axial == axial_plain).all()
    # measured 2026-12-06: plain 5.8e-4 ppm, faded 2.3e-4, axial 1.3e-4
    assert faded < 0.5 * plain and faded < 2.5 * axial_err
