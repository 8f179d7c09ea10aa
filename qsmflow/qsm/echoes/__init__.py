# SPDX-License-Identifier: Apache-2.0
"""Multi-echo phase: unwrapping over echoes, field fit, and the Hz ↔ ppm conversion.

Model: the phase of echo ``n`` is ``φ_n = φ₀ + 2π·f·TE_n`` (mod 2π), with ``f`` the
field offset (Hz) and ``φ₀`` the echo-independent offset (rad). As the 2024 consensus
recommends, echoes are unwrapped exactly and combined by a weighted least-squares fit of
phase against TE with an intercept:

* :mod:`~qsmflow.qsm.echoes.unwrapping` — :func:`unwrap_echoes` (spatial unwrapping by
  ROMEO or the Laplacian method, :data:`UNWRAPPING_METHODS`, then temporal unwrapping).
* :mod:`~qsmflow.qsm.echoes.fit` — :func:`fit_field` (magnitude²-weighted least squares),
  :func:`fit_field_complex` (nonlinear complex fit, Gauss–Newton) and
  :func:`estimate_field` (both steps; :data:`COMBINATION_METHODS`).
* :mod:`~qsmflow.qsm.echoes.units` — fields are in Hz inside this package;
  :func:`hz_to_ppm` is the one place where they become ppm of B0 (and :func:`ppm_to_hz`
  the way back).

Phase comes first and magnitude, optional, is a keyword (``magnitude=``) everywhere.
Every public name is importable from here; ``qsmflow.qsm.echoes.<function>`` is the name
the provenance sidecars record.
"""

from qsmflow.qsm.echoes.fit import (
    COMBINATION_METHODS,
    DEFAULT_COMPLEX_FIT_ITER,
    estimate_field,
    fit_field,
    fit_field_complex,
)
from qsmflow.qsm.echoes.units import hz_to_ppm, ppm_to_hz
from qsmflow.qsm.echoes.unwrapping import UNWRAPPING_METHODS, unwrap_echoes

__all__ = [
    'COMBINATION_METHODS', 'DEFAULT_COMPLEX_FIT_ITER', 'UNWRAPPING_METHODS', 'estimate_field',
    'fit_field', 'fit_field_complex', 'hz_to_ppm', 'ppm_to_hz', 'unwrap_echoes',
]

# help(), pickling and the provenance sidecars (qsmflow.interfaces.base.step) name the
# public path, qsmflow.qsm.echoes.<function>, not the module it is defined in
for _func in (estimate_field, fit_field, fit_field_complex, hz_to_ppm, ppm_to_hz,
              unwrap_echoes):
    _func.__module__ = __name__
del _func
