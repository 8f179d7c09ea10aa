# SPDX-License-Identifier: Apache-2.0
"""The split qsm/ packages keep their public names, and provenance records those names."""

import importlib

import pytest

from qsmflow.interfaces.base import step

PUBLIC = {
    'qsmflow.qsm.inversion': ('tkd', 'tikhonov', 'tv', 'rts', 'medi', 'lsqr', 'ilsqr', 'ndi',
                              'combine_two_pass', 'invert'),
    'qsmflow.qsm.bgremove': ('vsharp', 'pdf', 'resharp', 'ismv', 'lbv'),
    'qsmflow.qsm.echoes': ('unwrap_echoes', 'fit_field', 'fit_field_complex', 'estimate_field',
                           'hz_to_ppm', 'ppm_to_hz'),
    'qsmflow.qsm.mask': ('brain_mask', 'quality_map', 'quality_mask', 'strict_mask',
                         'r2star_map', 'csf_mask'),
}


@pytest.mark.parametrize('module, name', [(m, n) for m, names in PUBLIC.items() for n in names])
def test_public_functions_record_their_public_path(module, name):
    func = getattr(importlib.import_module(module), name)
    assert callable(func)
    assert step('x', func)['Algorithm'] == f'{module}.{name}'


def test_inversion_methods_are_the_package_functions():
    from qsmflow.qsm import inversion

    assert inversion.DEFAULT_METHOD in inversion.METHODS
    assert len(inversion.METHODS) == 8
    for name in inversion.METHODS:
        assert getattr(inversion, name).__module__ == 'qsmflow.qsm.inversion'
        assert f':func:`{name}`' in inversion.__doc__


def test_bgremove_methods_are_documented():
    from qsmflow.qsm import bgremove

    assert len(bgremove.METHODS) == 5
    for name in bgremove.METHODS:
        assert f':func:`{name}`' in bgremove.__doc__


def test_phase_comes_before_magnitude():
    """Every public function of qsm/ that takes both takes the phase first."""
    import inspect

    from qsmflow.qsm import echoes, inversion, mask

    funcs = [mask.quality_map, echoes.unwrap_echoes, echoes.fit_field, echoes.fit_field_complex,
             echoes.estimate_field, inversion.ndi]
    for func in funcs:
        names = list(inspect.signature(func).parameters)
        first = next(n for n in names if n in ('phase', 'phase_unwrapped', 'local_field'))
        assert names.index(first) < names.index('magnitude'), func.__name__
