# SPDX-License-Identifier: Apache-2.0
"""Age-normative model: exponential fit, fallbacks, z-scores with missing ages."""
from __future__ import annotations

import numpy as np
import pytest

from qsmflow.group import normative


def test_exponential_fit_recovers_law_and_resists_outlier():
    rng = np.random.default_rng(0)
    age = np.linspace(8, 85, 40)
    chi = normative.saturating_exp(age, 0.125, 12.0, 0.04) + rng.normal(0, 0.004, age.size)
    chi[5] += 0.2  # one gross outlier
    fit = normative.fit_normative(age, chi)
    assert fit['model'] == 'saturating_exponential'
    assert fit['params']['a_ppm'] == pytest.approx(0.125, abs=0.01)
    assert fit['params']['tau_years'] == pytest.approx(12.0, rel=0.3)
    assert fit['sd_ppm'] == pytest.approx(0.004, rel=0.4)
    z, pct = normative.zscores(fit, age, chi)
    assert z[5] > 10 and pct[5] > 99.9
    assert abs(np.median(z)) < 0.5


@pytest.mark.parametrize('n,model', [(7, 'linear'), (3, 'linear'), (2, 'mean'), (0, 'none')])
def test_fallbacks(n, model):
    age = np.linspace(20, 80, n)
    fit = normative.fit_normative(age, 0.001 * age)
    assert fit['model'] == model
    assert fit['note']


def test_missing_age_gives_empty_z():
    age = np.array([20, 30, 40, 50, np.nan])
    chi = np.array([0.02, 0.03, 0.04, 0.05, 0.04])
    fit = normative.fit_normative(age, chi)
    assert fit['n'] == 4
    z, pct = normative.zscores(fit, age, chi)
    assert np.isfinite(z[:4]).all() and np.isnan(z[4]) and np.isnan(pct[4])
