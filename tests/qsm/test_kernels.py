# SPDX-License-Identifier: Apache-2.0
"""Dipole/SMV/Laplacian kernels, finite differences, padding helpers, B0 direction."""

import numpy as np
import pytest
from scipy import fft as sfft

from qsmflow.qsm import kernels as K


def _rot(axis, deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


# --- dipole kernel ------------------------------------------------------------------------------


def test_dipole_kernel_values_and_range():
    shape = (32, 30, 28)
    D = K.dipole_kernel(shape, (1.0, 1.2, 0.9))
    assert D.shape == (32, 30, 15) and D.dtype == np.float32
    assert D[0, 0, 0] == 0
    assert D.min() >= -2 / 3 - 1e-6 and D.max() <= 1 / 3 + 1e-6
    assert D[0, 0, 3] == pytest.approx(-2 / 3)  # k ∥ B0
    assert D[5, 0, 0] == pytest.approx(1 / 3) and D[0, 7, 0] == pytest.approx(1 / 3)
    # magic angle: D = 0 where (k·b)²/|k|² = 1/3
    k0, k1, k2 = K.kspace_grid(shape, (1.0, 1.2, 0.9), dtype=np.float64)
    with np.errstate(invalid='ignore'):
        ref = 1 / 3 - k2**2 / (k0**2 + k1**2 + k2**2)
    ref[0, 0, 0] = 0
    np.testing.assert_allclose(D, ref, atol=1e-6)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dipole_kernel_tilted_b0(dtype):
    shape = (24, 24, 24)
    b0 = _rot(0, 30) @ np.array([0, 0, 1.0])
    D = K.dipole_kernel(shape, (1, 1, 1), b0, dtype=dtype)
    assert D.dtype == dtype
    k = K.kspace_grid(shape, (1, 1, 1), dtype=np.float64)
    kb = k[0] * b0[0] + k[1] * b0[1] + k[2] * b0[2]
    with np.errstate(invalid='ignore'):
        ref = 1 / 3 - kb**2 / (k[0] ** 2 + k[1] ** 2 + k[2] ** 2)
    ref[0, 0, 0] = 0
    inner = (slice(0, 12), slice(0, 12), slice(0, 12))  # away from the Nyquist planes
    np.testing.assert_allclose(D[inner], ref[inner], atol=1e-6)
    # not the axial kernel, and un-normalised b0 gives the same kernel
    assert np.abs(D - K.dipole_kernel(shape, (1, 1, 1), dtype=dtype)).max() > 0.1
    np.testing.assert_allclose(D, K.dipole_kernel(shape, (1, 1, 1), 3 * b0, dtype=dtype))



@pytest.mark.parametrize('shape, voxel_size', [((24, 22, 20), (1, 1, 1)),
                                               ((21, 16, 18), (1.0, 1.2, 2.0))])
def test_dipole_kernel_cross_taper(shape, voxel_size):
    """The faded kernel equals the plain one wherever every |k_i| ≤ 0.8 k_N (and everywhere
    for a B0 along a grid axis); at an axis's Nyquist frequency its cross terms are gone, so
    +k_N and −k_N agree: the kernel is smooth across the periodic grid's wrap."""
    b0 = _rot(0, 20) @ _rot(1, 10) @ np.array([0, 0, 1.0])
    plain = K.dipole_kernel(shape, voxel_size, b0, dtype=np.float64)
    faded = K.dipole_kernel(shape, voxel_size, b0, dtype=np.float64, cross_taper=0.8)
    k = np.broadcast_arrays(*K.kspace_grid(shape, voxel_size, dtype=np.float64))
    r = [np.abs(ka) * 2 * v for ka, v in zip(k, voxel_size)]  # |k_i| / k_N,i
    low = (r[0] <= 0.8) & (r[1] <= 0.8) & (r[2] <= 0.8)
    np.testing.assert_allclose(faded[low], plain[low], rtol=0, atol=1e-12)
    assert np.abs(faded - plain)[~low].max() > 0.05
    with np.errstate(invalid='ignore', divide='ignore'):  # the diagonal terms only at k_N
        diag = 1 / 3 - sum((ka * ba) ** 2 for ka, ba in zip(k, b0)) / sum(ka**2 for ka in k)
    at_nyq = sum((ri == 1).astype(int) for ri in r) >= 2  # every cross term has a k_N factor
    assert at_nyq.any()
    np.testing.assert_allclose(faded[at_nyq], diag[at_nyq], atol=1e-12)
    for b in ((0, 0, 1), (0, 1, 0), (1, 0, 0)):
        assert (K.dipole_kernel(shape, voxel_size, b, cross_taper=0.8)
                == K.dipole_kernel(shape, voxel_size, b)).all()
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match='cross_taper'):
            K.dipole_kernel(shape, voxel_size, b0, cross_taper=bad)


def _dipole_whole_grid(shape, voxel_size, b0, dtype):
    """The dipole kernel as one whole-grid numpy expression (before the slabs)."""
    b = np.asarray(b0, dtype=np.float64)
    b = b / np.linalg.norm(b)
    k = K.kspace_grid(shape, voxel_size, dtype=np.float64)
    nyq = [np.zeros(ka.shape, bool) for ka in k]
    for a, n in enumerate(shape):
        if n % 2 == 0:
            sl = [slice(None)] * 3
            sl[a] = n // 2 if a < 2 else -1
            nyq[a][tuple(sl)] = True
    kb_regular = sum(np.where(q, 0.0, ka) * ba for ka, q, ba in zip(k, nyq, b))
    kb2 = kb_regular**2 + sum(np.where(q, ka, 0.0) ** 2 * ba**2 for ka, q, ba in zip(k, nyq, b))
    with np.errstate(invalid='ignore', divide='ignore'):
        D = 1.0 / 3.0 - kb2 / (k[0] ** 2 + k[1] ** 2 + k[2] ** 2)
    D[0, 0, 0] = 0.0
    return D.astype(dtype)


@pytest.mark.parametrize('shape', [(20, 18, 16), (17, 9, 13), (1, 2, 3), (30, 1, 5)])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dipole_kernel_by_slabs_is_the_whole_grid_expression(shape, dtype):
    """The kernel's slabs of planes (side by side on the thread pool) give the bits of the
    whole-grid expression, for 1 and 3 threads, tilted b0 and anisotropic voxels."""
    from qsmflow.qsm import threads

    for vox, b0 in (((1, 1, 1), (0, 0, 1)), ((0.7, 1.2, 2.0), (0.1, -0.3, 0.95))):
        ref = _dipole_whole_grid(shape, vox, b0, dtype)
        for n_threads in (1, 3):
            with threads.limit(n_threads):
                D = K.dipole_kernel(shape, vox, b0, dtype=dtype)
            assert D.dtype == ref.dtype and D.shape == ref.shape
            assert D.tobytes() == ref.tobytes()

def _sphere_field(shape, voxel_size, radius_mm, b0):
    """Field of a uniformly magnetised sphere (Δχ = 1), simulated and analytic."""
    vs = np.asarray(voxel_size, float)
    x = [(np.arange(n) - n // 2) * h for n, h in zip(shape, vs)]
    X = np.meshgrid(*x, indexing='ij')
    r = np.sqrt(sum(c**2 for c in X))
    chi = (r <= radius_mm).astype(np.float64)
    big = K.padded_shape(shape, [n // 2 for n in shape])
    D = K.dipole_kernel(big, vs, b0, dtype=np.float64)
    field = K.crop_from(K.irfft(K.rfft(K.pad_to(chi, big)) * D, big), shape)
    # analytic: Δχ/3 · (a/r)³ · (3cos²θ − 1) outside, 0 inside; a from the voxel volume
    a = (3 * chi.sum() * vs.prod() / (4 * np.pi)) ** (1 / 3)
    b = np.asarray(b0, float) / np.linalg.norm(b0)
    with np.errstate(invalid='ignore', divide='ignore'):
        cos2 = (sum(c * bi for c, bi in zip(X, b)) / r) ** 2
        analytic = np.where(r > a, (a / r) ** 3 * (3 * cos2 - 1) / 3, 0.0)
    return field, analytic, r, a


@pytest.mark.parametrize(
    'voxel_size, b0, max_rel',
    [((1, 1, 1), (0, 0, 1), 0.03), ((1, 1, 1.5), (0, 0, 1), 0.04),
     ((1, 1, 1), (0.5, 0.3, 1.0), 0.2), ((1, 1.2, 1), (0, 0.36, 1.0), 0.2)],
)
def test_sphere_field_matches_analytic(voxel_size, b0, max_rel):
    field, analytic, r, a = _sphere_field((64, 64, 64), voxel_size, 7.0, b0)
    outside = (r > 1.6 * a) & (r < 3 * a)
    peak = np.abs(analytic[outside]).max()
    err = np.abs(field - analytic)[outside]
    # the voxelised sphere is not a sphere: staircase (multipole) errors are largest close
    # to it and, for an oblique B0, along lattice diagonals
    assert err.max() < max_rel * peak
    assert np.sqrt(np.mean(err**2)) < 0.025 * peak
    # Lorentz-corrected: ≈ 0 inside, compared with the 2/3 peak at the surface
    inside = r < 0.6 * a
    assert np.abs(field[inside]).max() < 0.03
    if len(set(voxel_size)) == 1:
        # cubic symmetry: 0 at the centre, also for an oblique B0 (needs the kernel to be
        # consistent at the Nyquist frequencies, else a checkerboard error appears)
        assert abs(field[tuple(np.array(field.shape) // 2)]) < 1e-3
    # the positive lobes point along B0 (and the pattern is not the axial one when tilted)
    b = np.asarray(b0, float) / np.linalg.norm(b0)
    c = np.array(field.shape) // 2
    p = np.round(c + 2 * a * b / np.asarray(voxel_size)).astype(int)
    assert field[tuple(p)] > 0.5 * (2 / 3) / 8
    if b[2] < 0.999:
        _, axial, *_ = _sphere_field((64, 64, 64), voxel_size, 7.0, (0, 0, 1))
        assert np.sqrt(np.mean((field - axial)[outside] ** 2)) > 0.1 * peak


# --- SMV and Laplacian kernels ------------------------------------------------------------------


@pytest.mark.parametrize('full', [False, True])
@pytest.mark.parametrize(
    'shape, voxel_size, radius',
    [((20, 24, 17), (1.1, 0.9, 2.0), 4.5), ((33, 35, 21), (1, 1, 1), 1.0),
     ((16, 16, 16), (1, 1, 1), 9.0)],
)
def test_sphere_kernel_is_fft_of_ball(shape, voxel_size, radius, full):
    d = np.asarray(voxel_size, float)
    c = [np.where(np.arange(n) > n // 2, np.arange(n) - n, np.arange(n)) * h
         for n, h in zip(shape, d)]
    r2 = c[0][:, None, None] ** 2 + c[1][None, :, None] ** 2 + c[2][None, None, :] ** 2
    ball = (r2 <= radius**2 + 1e-9).astype(float)
    ball /= ball.sum()
    ref = (sfft.fftn(ball) if full else sfft.rfftn(ball)).real
    S = K.sphere_kernel(shape, voxel_size, radius, dtype=np.float64, full=full)
    assert S.shape == ref.shape
    np.testing.assert_allclose(S, ref, atol=1e-12)
    assert S[0, 0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_laplacian_kernel_matches_gradient_operators(dtype):
    shape, vs = (12, 10, 8), (1.0, 2.0, 0.5)
    delta = np.zeros(shape, dtype)
    delta[0, 0, 0] = 1
    lap = K.gradient_adjoint(K.gradient(delta, vs), vs)
    assert lap.dtype == dtype
    np.testing.assert_allclose(K.laplacian_kernel(shape, vs), sfft.rfftn(lap).real,
                               atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_gradient_and_adjoint(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 6, 5)).astype(dtype)
    g = rng.standard_normal((3, 7, 6, 5)).astype(dtype)
    vs = (1.0, 2.0, 0.5)
    gx = K.gradient(x, vs)
    assert gx.dtype == dtype and gx.shape == (3, 7, 6, 5)
    np.testing.assert_allclose(gx[1], (np.roll(x, -1, axis=1) - x) / 2.0, rtol=1e-5)
    lhs, rhs = np.vdot(gx, g), np.vdot(x, K.gradient_adjoint(g, vs))
    assert lhs == pytest.approx(rhs, rel=1e-4 if dtype == np.float32 else 1e-12)
    # gradient of a constant is zero
    assert np.abs(K.gradient(np.ones((4, 4, 4), dtype), vs)).max() == 0


# --- padding helpers ----------------------------------------------------------------------------


def test_padded_box_roundtrip_and_fast_shape():
    mask = np.zeros((50, 60, 40), bool)
    mask[10:30, 5:50, 3:37] = True
    box = K.PaddedBox(mask, margin_voxels=2, pad_voxels=3)
    assert box.box == (slice(8, 32), slice(3, 52), slice(1, 39))
    assert all(s >= n + 6 for s, n in zip(box.shape, box.box_shape))
    assert box.shape == K.padded_shape(box.box_shape, 3)
    x = np.random.default_rng(1).random(mask.shape).astype(np.float32)
    g = box.to_grid(x)
    assert g.shape == box.shape and g.dtype == np.float32
    assert g.sum() == pytest.approx(x[box.box].sum(), rel=1e-5)
    back = box.to_full(g)
    np.testing.assert_array_equal(back[box.box], x[box.box])
    assert back[~np.pad(np.ones(box.box_shape, bool), [(s.start, n - s.stop) for s, n in
                                                       zip(box.box, mask.shape)])].sum() == 0


def test_check_field_mask_errors():
    f = np.zeros((4, 4, 4), np.float32)
    m = np.ones((4, 4, 4), bool)
    out = K.check_field_mask(f, m, (1, 1, 2), (0, 0, 2))
    assert out[0].dtype == np.float32 and np.allclose(out[3], (0, 0, 1))
    assert K.check_field_mask(f.astype(int), m, (1, 1, 1))[0].dtype == np.float32
    with pytest.raises(ValueError, match='3D'):
        K.check_field_mask(f[0], m[0], (1, 1, 1))
    with pytest.raises(ValueError, match='does not match'):
        K.check_field_mask(f, m[:3], (1, 1, 1))
    with pytest.raises(ValueError, match='empty'):
        K.check_field_mask(f, ~m, (1, 1, 1))
    bad = f.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        K.check_field_mask(bad, m, (1, 1, 1))
    m2 = m.copy()
    m2[1, 1, 1] = False
    K.check_field_mask(bad, m2, (1, 1, 1))  # NaN outside the mask is fine
    with pytest.raises(ValueError, match='voxel_size'):
        K.check_field_mask(f, m, (1, 0, 1))
    with pytest.raises(ValueError, match='b0_dir'):
        K.check_field_mask(f, m, (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match='real'):
        K.check_field_mask(f.astype(complex), m, (1, 1, 1))


# --- B0 direction -------------------------------------------------------------------------------


@pytest.mark.parametrize('zooms', [(1, 1, 1), (0.8, 0.8, 2.5)])
@pytest.mark.parametrize('axis, deg', [(0, 0), (0, 20), (1, -35), (2, 50), (0, 90)])
def test_b0_dir_from_rotated_affine(zooms, axis, deg):
    rot = _rot(axis, deg)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(zooms)
    aff[:3, 3] = (10, -20, 30)
    b = K.b0_dir_from_affine(aff)
    np.testing.assert_allclose(b, rot.T @ [0, 0, 1], atol=1e-12)
    assert np.linalg.norm(b) == pytest.approx(1)
    # the voxel axis along b maps to world z
    np.testing.assert_allclose(rot @ b, [0, 0, 1], atol=1e-12)


def test_b0_dir_from_affine_flips_and_errors():
    np.testing.assert_allclose(K.b0_dir_from_affine(np.diag([-1.0, -1, 1, 1])), [0, 0, 1])
    np.testing.assert_allclose(K.b0_dir_from_affine(np.diag([1.0, 1, -2, 1])), [0, 0, -1])
    # sagittal slab: voxel axis 0 is world z
    aff = np.array([[0, 0, 1.0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(K.b0_dir_from_affine(aff), [1, 0, 0])
    with pytest.raises(ValueError):
        K.b0_dir_from_affine(np.diag([1.0, 0, 1, 1]))
