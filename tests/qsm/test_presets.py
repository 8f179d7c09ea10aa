# SPDX-License-Identifier: Apache-2.0
"""Shipped pipeline presets name only methods that exist."""
import pytest

from qsmflow.config.presets import STEPS, available_presets, load_preset, with_overrides
from qsmflow.qsm import bgremove, echoes, inversion, reference
from qsmflow.workflows.qsm import MASKING_METHODS


def test_presets_shipped():
    assert {'default', 'fast', 'consensus'} <= set(available_presets())


@pytest.mark.parametrize('name', available_presets())
def test_preset_methods_exist(name):
    preset = load_preset(name)
    assert all(step in preset for step in STEPS)
    assert preset['masking']['method'] in MASKING_METHODS
    assert preset['unwrapping']['method'] in echoes.UNWRAPPING_METHODS
    assert preset['echo_combination']['method'] in echoes.COMBINATION_METHODS
    assert callable(getattr(bgremove, preset['bf_removal']['method']))
    assert preset['inversion']['method'] in (None,) + inversion.METHODS
    assert preset['reference']['method'] in reference.METHODS


def test_default_preset_follows_consensus():
    preset = load_preset('default')
    assert preset['masking']['method'] == 'quality'
    assert preset['unwrapping']['method'] == 'romeo'
    assert preset['bf_removal']['method'] in ('pdf', 'vsharp', 'resharp')
    assert preset['inversion']['method'] in ('tv', 'rts')
    assert preset['reference']['method'] == 'mean'


def test_override_replaces_one_step():
    out = with_overrides(load_preset('default'), bf_removal='resharp')
    assert out['bf_removal'] == {'method': 'resharp', 'params': {}}
    assert out['inversion'] == load_preset('default')['inversion']


@pytest.mark.parametrize('name', available_presets())
def test_preset_states_two_pass(name):
    assert load_preset(name)['masking'].get('two_pass') in (True, False)


def test_masking_override_keeps_two_pass_and_user_masks(tmp_path):
    from qsmflow.config.presets import with_masking_options

    preset = with_masking_options(load_preset('default'), two_pass=True, brain_masks=tmp_path)
    out = with_overrides(preset, masking='magnitude')
    assert out['masking'] == {'method': 'magnitude', 'params': {}, 'two_pass': True,
                              'brain_masks': str(tmp_path)}
    assert with_masking_options(out, two_pass=None)['masking']['two_pass'] is True
    assert with_masking_options(out, two_pass=False)['masking']['two_pass'] is False
