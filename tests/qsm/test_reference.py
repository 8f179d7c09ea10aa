# SPDX-License-Identifier: Apache-2.0
"""Susceptibility referencing."""

import numpy as np
import pytest

from qsmflow.qsm.reference import reference


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    chi = rng.normal(0.05, 0.02, (10, 12, 8))
    mask = np.zeros(chi.shape, bool)
    mask[1:9, 2:10, 1:7] = True
    csf = np.zeros(chi.shape, bool)
    csf[3:5, 4:6, 2:4] = True
    chi[csf] = -0.01
    chi[~mask] = 7.0  # garbage outside the mask must not matter
    return chi, mask, csf


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_mean(scene, dtype):
    chi, mask, _ = scene
    out, value = reference(chi.astype(dtype), mask)
    assert out.dtype == dtype and isinstance(value, float)
    assert value == pytest.approx(chi[mask].mean(), rel=1e-6)
    assert abs(out[mask].mean()) < 1e-6
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(out[mask], chi[mask] - value, atol=1e-6)


def test_region(scene):
    chi, mask, csf = scene
    out, value = reference(chi, mask, method='region', ref_mask=csf)
    assert value == pytest.approx(-0.01)
    np.testing.assert_allclose(out[csf], 0, atol=1e-12)
    assert np.all(out[~mask] == 0)
    # only the part of the reference region inside the brain mask counts
    csf_out = csf.copy()
    csf_out[0] = True
    _, value2 = reference(chi, mask, method='region', ref_mask=csf_out)
    assert value2 == pytest.approx(-0.01)


def test_none(scene):
    chi, mask, _ = scene
    out, value = reference(chi, mask, method='none')
    assert value == 0.0
    np.testing.assert_array_equal(out[mask], chi[mask])
    assert np.all(out[~mask] == 0)
    assert out is not chi


def test_errors(scene):
    chi, mask, csf = scene
    with pytest.raises(ValueError, match='unknown reference method'):
        reference(chi, mask, method='median')
    with pytest.raises(ValueError, match='needs ref_mask'):
        reference(chi, mask, method='region')
    with pytest.raises(ValueError, match='overlap'):
        reference(chi, mask, method='region', ref_mask=~mask)
    with pytest.raises(ValueError, match='ref_mask shape'):
        reference(chi, mask, method='region', ref_mask=csf[:5])
    with pytest.raises(ValueError, match='only used'):
        reference(chi, mask, method='mean', ref_mask=csf)
    with pytest.raises(ValueError, match='empty'):
        reference(chi, np.zeros_like(mask))
    with pytest.raises(ValueError, match='does not match'):
        reference(chi, mask[:5])
    bad = chi.copy()
    bad[mask] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        reference(bad, mask)


def test_csf_method_uses_the_given_region(scene):
    chi, mask, csf = scene
    out_csf, v_csf = reference(chi, mask, method='csf', ref_mask=csf)
    out_reg, v_reg = reference(chi, mask, method='region', ref_mask=csf)
    assert v_csf == v_reg and np.array_equal(out_csf, out_reg)
    with pytest.raises(ValueError, match='needs ref_mask'):
        reference(chi, mask, method='csf')
