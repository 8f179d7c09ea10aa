# SPDX-License-Identifier: Apache-2.0
"""Age-normative model of regional susceptibility: χ(age) = a·(1 − exp(−age/τ)) + c.

Deep grey-matter iron, and with it χ, rises with age and saturates [1]_. With at least
:data:`MIN_N_EXPONENTIAL` participants of known age the saturating exponential is fitted
robustly (soft-L1 loss); with fewer (or when that fit fails) a straight line in age is
fitted (from :data:`MIN_N_LINEAR` participants), and below that the cohort mean and SD
are used without age adjustment. The spread used for z-scores is the robust SD of the
residuals (1.4826 × MAD, never below the ordinary SD's floor of 1e-6 ppm).

References
----------
.. [1] Hallgren B, Sourander P. The effect of age on the non-haemin iron in the human
   brain. J Neurochem 1958;3:41-51.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

#: Participants needed for the saturating-exponential fit (3 parameters + spread).
MIN_N_EXPONENTIAL = 8

#: Participants needed for the linear fallback.
MIN_N_LINEAR = 3


def saturating_exp(age_years, a_ppm: float, tau_years: float, c_ppm: float) -> np.ndarray:
    """χ (ppm) of the saturating exponential at ``age_years``.

    Examples
    --------
    >>> young, old = saturating_exp([0.0, 1e4], 0.1, 20.0, 0.05)
    >>> round(float(young), 6), round(float(old), 6)
    (0.05, 0.15)
    """
    age = np.asarray(age_years, dtype=np.float64)
    return a_ppm * (1.0 - np.exp(-age / tau_years)) + c_ppm


def fit_normative(age_years, chi_ppm, *, min_n_exponential: int = MIN_N_EXPONENTIAL,
                  min_n_linear: int = MIN_N_LINEAR) -> dict:
    """Fit the age model of one region.

    Parameters
    ----------
    age_years : (n,) array_like
        Ages (years); NaN entries are ignored.
    chi_ppm : (n,) array_like
        Regional χ (ppm); NaN entries are ignored.
    min_n_exponential, min_n_linear : int
        Participants needed for the exponential and the linear model.

    Returns
    -------
    dict
        ``model`` ('saturating_exponential', 'linear', 'mean' or 'none'), ``params``
        (a_ppm, tau_years, c_ppm; or slope_ppm_per_year, intercept_ppm; or mean_ppm),
        ``sd_ppm`` (robust residual SD), ``n`` and ``note``.

    Examples
    --------
    >>> age = np.linspace(10, 80, 30)
    >>> chi = saturating_exp(age, 0.12, 15.0, 0.04) + 0.002 * np.sin(age)
    >>> fit = fit_normative(age, chi)
    >>> fit['model'], abs(fit['params']['a_ppm'] - 0.12) < 0.01, fit['sd_ppm'] < 0.005
    ('saturating_exponential', True, True)
    >>> fit_normative([30, 40], [0.1, 0.2])['model']
    'mean'
    """
    age = np.asarray(age_years, dtype=np.float64)
    chi = np.asarray(chi_ppm, dtype=np.float64)
    ok = np.isfinite(age) & np.isfinite(chi)
    age, chi = age[ok], chi[ok]
    n = int(age.size)
    if n == 0:
        return {'model': 'none', 'params': {}, 'sd_ppm': math.nan, 'n': 0,
                'note': 'no participant with both age and a value'}
    if n >= min_n_exponential and np.ptp(age) > 0:
        fit = _fit_exponential(age, chi)
        if fit is not None:
            return {**fit, 'n': n, 'note': 'robust (soft-L1) saturating-exponential fit'}
        note = 'exponential fit failed; linear fallback'
    else:
        note = (f'fewer than {min_n_exponential} participants with age; linear fallback')
    if n >= min_n_linear and np.ptp(age) > 0:
        slope, intercept = np.polyfit(age, chi, 1)
        resid = chi - (slope * age + intercept)
        return {'model': 'linear', 'params': {'slope_ppm_per_year': float(slope),
                                              'intercept_ppm': float(intercept)},
                'sd_ppm': _robust_sd(resid, dof=n - 2), 'n': n, 'note': note}
    return {'model': 'mean', 'params': {'mean_ppm': float(chi.mean())},
            'sd_ppm': _robust_sd(chi - chi.mean(), dof=n - 1), 'n': n,
            'note': f'fewer than {min_n_linear} participants with age: cohort mean and SD, '
                    'not age-adjusted'}


def _fit_exponential(age, chi) -> dict | None:
    span = max(float(np.ptp(chi)), 1e-3)

    def resid(p):
        return saturating_exp(age, p[0], p[1], p[2]) - chi

    best = None
    for tau0 in (5.0, 15.0, 40.0, 100.0):  # several starts: τ trades off against a and c
        try:
            res = optimize.least_squares(resid, (span, tau0, float(chi.min())), loss='soft_l1',
                                         f_scale=span / 10, bounds=([-1.0, 1.0, -1.0],
                                                                    [1.0, 200.0, 1.0]))
        except (ValueError, np.linalg.LinAlgError):
            continue
        if res.success and np.all(np.isfinite(res.x)) and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        return None
    a, tau, c = (float(v) for v in best.x)
    return {'model': 'saturating_exponential',
            'params': {'a_ppm': a, 'tau_years': tau, 'c_ppm': c},
            'sd_ppm': _robust_sd(best.fun, dof=age.size - 3)}


def _robust_sd(resid, dof: int) -> float:
    resid = np.asarray(resid, dtype=np.float64)
    if dof < 1 or resid.size < 2:
        return math.nan
    mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    ols = float(np.sqrt(np.sum(resid**2) / dof))
    return max(mad if mad > 0 else ols, 1e-6)


def predict(fit: dict, age_years) -> np.ndarray:
    """Expected χ (ppm) at ``age_years`` under a fitted model (NaN for 'none')."""
    age = np.asarray(age_years, dtype=np.float64)
    p = fit['params']
    if fit['model'] == 'saturating_exponential':
        return saturating_exp(age, p['a_ppm'], p['tau_years'], p['c_ppm'])
    if fit['model'] == 'linear':
        return p['slope_ppm_per_year'] * age + p['intercept_ppm']
    if fit['model'] == 'mean':
        return np.full(age.shape, p['mean_ppm'])
    return np.full(age.shape, np.nan)


def zscores(fit: dict, age_years, chi_ppm) -> tuple[np.ndarray, np.ndarray]:
    """Age-adjusted z-scores and percentiles (0–100) of χ under ``fit``.

    Entries with unknown age (NaN) get NaN, except under the age-free 'mean' model.

    Examples
    --------
    >>> fit = {'model': 'linear', 'params': {'slope_ppm_per_year': 0.001,
    ...        'intercept_ppm': 0.0}, 'sd_ppm': 0.01}
    >>> z, pct = zscores(fit, [50.0, np.nan], [0.06, 0.05])
    >>> round(float(z[0]), 6), bool(np.isnan(z[1])), round(float(pct[0]), 1)
    (1.0, True, 84.1)
    """
    age = np.asarray(age_years, dtype=np.float64)
    chi = np.asarray(chi_ppm, dtype=np.float64)
    sd = fit.get('sd_ppm', math.nan)
    expected = predict(fit, np.where(np.isfinite(age), age, 0.0))
    z = (chi - expected) / sd if sd and np.isfinite(sd) else np.full(chi.shape, np.nan)
    if fit['model'] != 'mean':
        z = np.where(np.isfinite(age), z, np.nan)
    return z, 100.0 * stats.norm.cdf(z)
