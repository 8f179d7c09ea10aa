# SPDX-License-Identifier: Apache-2.0
"""Tissue labels of the numerical head phantom and their (age-dependent) MR properties.

Susceptibility is given in ppm (SI) relative to CSF, R2* in 1/s at 3 T and M0 as a
relative proton density (CSF = 1). Deep grey-matter iron, and with it χ and R2*, follows
the saturating law ``a · (1 − exp(−age / τ)) + c`` [1]_, with per-region constants chosen so
that a 40-year-old lands near the middle of the ranges in ``QSM_NOTES.md``.

References
----------
.. [1] Hallgren B, Sourander P. The effect of age on the non-haemin iron in the human
   brain. J Neurochem 1958;3:41-51.
"""

from __future__ import annotations

import math

#: Air relative to tissue (ppm, SI): outside the head and in the paranasal sinuses.
CHI_AIR_PPM = 9.4

#: Approximate R2* increase per ppm of iron-related χ at 3 T (1/s per ppm).
R2STAR_PER_CHI_HZ_PER_PPM = 250.0

#: Bilateral deep grey-matter nuclei (base names; labels carry ``_left``/``_right``).
DEEP_GM = (
    'caudate',
    'putamen',
    'globus_pallidus',
    'thalamus',
    'substantia_nigra',
    'red_nucleus',
    'subthalamic_nucleus',
    'dentate_nucleus',
)

_NAMES = (
    ('background', 'white_matter', 'cortex', 'csf')
    + tuple(f'{base}_{side}' for base in DEEP_GM for side in ('left', 'right'))
    + ('vein', 'calcification', 'haemorrhage', 'sinus_air', 'skull', 'scalp')
)

#: Ordered ``(index, name)`` pairs; 0 is the air around the head.
LABELS = tuple(enumerate(_NAMES))

#: Label index -> name.
LABEL_NAMES = dict(LABELS)

#: Label name -> index.
LABEL_INDEX = {name: index for index, name in LABELS}

#: Labels that are not brain tissue (everything else is inside the brain mask).
NON_BRAIN = ('background', 'sinus_air', 'skull', 'scalp')

#: Names of the brain labels (the brain mask is their union).
BRAIN_LABELS = tuple(name for name in _NAMES if name not in NON_BRAIN)

# Age law per deep-GM base name: (a ppm, tau years, c ppm, R2* at age 40 in 1/s).
_DEEP_GM_LAW = {
    'caudate': (0.070, 50.0, 0.025, 22.0),
    'putamen': (0.080, 40.0, 0.005, 30.0),
    'globus_pallidus': (0.125, 12.0, 0.040, 42.0),
    'thalamus': (0.020, 30.0, 0.000, 22.0),
    'substantia_nigra': (0.100, 20.0, 0.060, 40.0),
    'red_nucleus': (0.090, 25.0, 0.040, 35.0),
    'subthalamic_nucleus': (0.085, 25.0, 0.040, 35.0),
    'dentate_nucleus': (0.090, 30.0, 0.040, 35.0),
}

# Age-independent tissues: (chi ppm, R2* 1/s, M0 relative).
_STATIC = {
    'background': (CHI_AIR_PPM, 0.0, 0.0),
    'cortex': (0.015, 16.0, 0.80),
    'csf': (0.0, 4.0, 1.00),
    'vein': (0.40, 40.0, 0.80),
    'calcification': (-0.50, 80.0, 0.30),
    'haemorrhage': (0.80, 80.0, 0.70),
    'sinus_air': (CHI_AIR_PPM, 0.0, 0.0),
    'skull': (-2.0, 300.0, 0.05),
    'scalp': (0.0, 30.0, 0.90),
}

_M0_WM = 0.70
_M0_DEEP_GM = 0.75

#: Relaxometric constant ``Dr`` (Hz/ppm) of the χ-separation truth, at 3 T: the value of
#: Shin et al., NeuroImage 2021;240:118371 (and of :mod:`qsmflow.qsm.chi_separation`).
CHI_SEPARATION_DR_HZ_PER_PPM = 137.0

# Diamagnetic part χ⁻ (ppm) of each deep-GM nucleus (myelinated fibres crossing it, age
# independent); its paramagnetic part is χ⁺ = χ − χ⁻ (the iron). The values put the
# nuclei's R2 = R2* − Dr (χ⁺ − χ⁻) at 40 years in 10.5–17 1/s (T2 60–95 ms at 3 T).
_DEEP_GM_CHI_DIA = {
    'caudate': -0.010,
    'putamen': -0.020,
    'globus_pallidus': -0.030,
    'thalamus': -0.020,
    'substantia_nigra': -0.025,
    'red_nucleus': -0.025,
    'subthalamic_nucleus': -0.020,
    'dentate_nucleus': -0.020,
}
# χ⁻ (ppm) of the other brain tissues; white matter is all diamagnetic (no iron), blood
# products all paramagnetic, the calcification all diamagnetic.
_STATIC_CHI_DIA = {'cortex': -0.005, 'csf': 0.0, 'vein': 0.0, 'calcification': -0.50,
                   'haemorrhage': 0.0}


def _check_age(age_years: float) -> float:
    age = float(age_years)
    if not math.isfinite(age) or age < 0 or age > 120:
        raise ValueError(f'age_years must lie in [0, 120], got {age_years!r}')
    return age


def _iron_term_ppm(base: str, age_years: float) -> float:
    """Iron-related part ``a · (1 − exp(−age / τ))`` of a deep-GM χ (ppm)."""
    a, tau, _, _ = _DEEP_GM_LAW[base]
    return a * (1.0 - math.exp(-age_years / tau))


def deep_gm_chi_ppm(base: str, age_years: float) -> float:
    """χ (ppm, relative to CSF) of one deep-GM nucleus at a given age.

    Parameters
    ----------
    base : str
        Base name from :data:`DEEP_GM` (no side suffix).
    age_years : float
        Age (years).

    Returns
    -------
    float
        Susceptibility (ppm).

    Examples
    --------
    >>> deep_gm_chi_ppm('putamen', 70.0) > deep_gm_chi_ppm('putamen', 30.0)
    True
    """
    age = _check_age(age_years)
    return _iron_term_ppm(base, age) + _DEEP_GM_LAW[base][2]


def white_matter_chi_ppm(age_years: float) -> float:
    """χ of white matter (ppm): falls with myelination, rises again after ~50 years."""
    age = _check_age(age_years)
    return -0.020 - 0.010 * (1.0 - math.exp(-age / 15.0)) + 0.00012 * max(age - 50.0, 0.0)


def tissue_chi_ppm(age_years: float = 40.0) -> dict[str, float]:
    """Susceptibility of every phantom label (ppm, SI, relative to CSF).

    Parameters
    ----------
    age_years : float
        Age (years) for the deep-GM iron and white-matter laws.

    Returns
    -------
    dict
        Label name -> χ (ppm). Air (``background``, ``sinus_air``) is
        :data:`CHI_AIR_PPM`, skull is diamagnetic bone (−2 ppm).

    Examples
    --------
    >>> chi = tissue_chi_ppm(40.0)
    >>> 0.12 <= chi['globus_pallidus_left'] <= 0.20 and chi['white_matter'] < 0 < chi['vein']
    True
    """
    age = _check_age(age_years)
    out = {name: values[0] for name, values in _STATIC.items()}
    out['white_matter'] = white_matter_chi_ppm(age)
    for base in DEEP_GM:
        chi = deep_gm_chi_ppm(base, age)
        out[f'{base}_left'] = chi
        out[f'{base}_right'] = chi
    return {name: out[name] for name in _NAMES}


def tissue_r2star_hz(age_years: float = 40.0) -> dict[str, float]:
    """Transverse relaxation rate R2* of every phantom label (1/s, 3 T).

    Deep-GM R2* moves with the iron term of χ, by :data:`R2STAR_PER_CHI_HZ_PER_PPM`, around
    its value at 40 years.

    Parameters
    ----------
    age_years : float
        Age (years).

    Returns
    -------
    dict
        Label name -> R2* (1/s); 0 in air.

    Examples
    --------
    >>> r2 = tissue_r2star_hz(40.0)
    >>> r2['globus_pallidus_left'] > r2['putamen_left'] > r2['white_matter'] > r2['cortex']
    True
    """
    age = _check_age(age_years)
    out = {name: values[1] for name, values in _STATIC.items()}
    out['white_matter'] = 21.0
    for base in DEEP_GM:
        r2_40 = _DEEP_GM_LAW[base][3]
        delta = _iron_term_ppm(base, age) - _iron_term_ppm(base, 40.0)
        r2 = r2_40 + R2STAR_PER_CHI_HZ_PER_PPM * delta
        out[f'{base}_left'] = r2
        out[f'{base}_right'] = r2
    return {name: out[name] for name in _NAMES}


def tissue_m0() -> dict[str, float]:
    """Relative proton density M0 of every phantom label (dimensionless, CSF = 1).

    Examples
    --------
    >>> m0 = tissue_m0()
    >>> (m0['csf'], m0['white_matter'], m0['background'])
    (1.0, 0.7, 0.0)
    """
    out = {name: values[2] for name, values in _STATIC.items()}
    out['white_matter'] = _M0_WM
    for base in DEEP_GM:
        out[f'{base}_left'] = _M0_DEEP_GM
        out[f'{base}_right'] = _M0_DEEP_GM
    return {name: out[name] for name in _NAMES}


def tissue_chi_separation(age_years: float = 40.0, *,
                          dr_hz_per_ppm: float = CHI_SEPARATION_DR_HZ_PER_PPM
                          ) -> dict[str, tuple[float, float, float]]:
    """Paramagnetic and diamagnetic χ and the R2 they imply, for every label (3 T).

    The truth of the χ-separation model ``χ = χ⁺ + χ⁻``, ``R2* = R2 + Dr (χ⁺ − χ⁻)``
    (χ⁺ ≥ 0, χ⁻ ≤ 0): χ and R2* are those of :func:`tissue_chi_ppm` and
    :func:`tissue_r2star_hz`, unchanged; each brain tissue gets a diamagnetic part χ⁻
    (white matter: all of its χ; deep-GM nuclei: a fixed myelin-like part, the rest iron;
    the calcification: all; CSF, veins, haemorrhage: none), χ⁺ = χ − χ⁻, and R2 is what
    is left of R2*. Non-brain labels are split by the sign of χ. Where R2* is below what χ
    implies (veins, haemorrhage: 0.29 and 0.58 ppm of R2′ for 0.40 and 0.80 ppm of χ;
    air, bone) R2 is floored at 0 and the model does not hold.

    Parameters
    ----------
    age_years : float
        Age (years), as for :func:`tissue_chi_ppm`.
    dr_hz_per_ppm : float
        Relaxometric constant ``Dr`` (Hz/ppm, i.e. 1/s per ppm).

    Returns
    -------
    dict
        Label name -> ``(chi_para_ppm, chi_dia_ppm, r2_hz)``.

    Examples
    --------
    >>> split, chi = tissue_chi_separation(40.0), tissue_chi_ppm(40.0)
    >>> p, d, r2 = split['globus_pallidus_left']
    >>> p > 0 > d and abs(p + d - chi['globus_pallidus_left']) < 1e-12 and 10 < r2 < 17
    True
    >>> split['white_matter'][0], split['haemorrhage'][1]
    (0.0, 0.0)
    """
    chi, r2star = tissue_chi_ppm(age_years), tissue_r2star_hz(age_years)
    dia = dict(_STATIC_CHI_DIA)
    dia['white_matter'] = chi['white_matter']
    for base in DEEP_GM:
        dia[f'{base}_left'] = dia[f'{base}_right'] = _DEEP_GM_CHI_DIA[base]
    out = {}
    for name in _NAMES:
        chi_dia = dia[name] if name in dia else min(chi[name], 0.0)
        chi_para = chi[name] - chi_dia
        r2 = max(r2star[name] - dr_hz_per_ppm * (chi_para - chi_dia), 0.0)
        out[name] = (chi_para, chi_dia, r2)
    return out
