# SPDX-License-Identifier: Apache-2.0
"""Check a resolved pipeline (preset + flags) before any data is read.

Every method a step names must exist and every option it sets must be a keyword option of
the ``qsmflow.qsm`` function that step calls, not one of the inputs the step supplies
itself (the data, ``b0_dir`` from the affine, ``device`` from ``--device``). A misspelt
option would otherwise fail the participant after its earlier steps had run, or, for a
step that takes no options, be silently ignored. The values are checked by the functions
themselves when the step runs (the participant then fails with their one-line reason).
"""
from __future__ import annotations

import inspect

from qsmflow.config.presets import OPTIONAL_STEPS, STEP_OPTIONS, STEPS

#: Keys each step may hold (masking's method-independent options: presets.STEP_OPTIONS).
STEP_KEYS = {
    'masking': {'method', 'params', 'quality_params', *STEP_OPTIONS['masking']},
    'unwrapping': {'method'},
    'echo_combination': {'method'},
    'bf_removal': {'method', 'params'},
    'inversion': {'method', 'params'},
    'reference': {'method'},
    'r2star': {'method', 'params'},
    'swi': {'enabled', 'params', 'minip_params'},
    'chi_separation': {'enabled', 'params', 'r2_maps'},
    'clinical': {'venography', 'foci', 'oef', 'hematocrit', 'mip_slab_mm'},
}
#: Inputs a step gives its function itself; a preset cannot set them.
_SUPPLIED = {'b0_dir', 'device', 'return_info', 'magnitude', 'noise', 'quality', 'chi_ppm',
             'r2star_hz', 'method'}


def check_pipeline(steps: dict, source: str) -> None:
    """Raise ``ValueError`` (one line naming ``source``, the preset) for an unknown step,
    key, method or option in ``steps``.

    Examples
    --------
    >>> from qsmflow.config.presets import load_preset, with_maps_options
    >>> steps = with_maps_options(load_preset('default'))
    >>> check_pipeline(steps, 'default')
    >>> steps['bf_removal']['params'] = {'erode_voxel': 1}
    >>> check_pipeline(steps, 'my.json')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: preset my.json: bf_removal 'pdf' has no option 'erode_voxel'; its options: ...
    """
    unknown = sorted(set(steps) - set(STEPS) - set(OPTIONAL_STEPS) - {'description'})
    if unknown:
        raise ValueError(f'preset {source}: unknown step(s) {", ".join(unknown)}; the steps '
                         f'are {", ".join(STEPS + OPTIONAL_STEPS)}')
    for step, allowed in STEP_KEYS.items():
        spec = steps.get(step)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise ValueError(f'preset {source}: step {step} must be a JSON object, got '
                             f'{spec!r}')
        extra = sorted(set(spec) - allowed)
        if extra:
            hint = ('; this step takes no options' if 'params' in extra
                    and 'params' not in allowed else '')
            raise ValueError(f'preset {source}: step {step} has unknown key(s) '
                             f'{", ".join(extra)}{hint}; it takes {", ".join(sorted(allowed))}')
    for step, key, func in _option_functions(steps, source):
        params = steps[step].get(key) or {}
        if not isinstance(params, dict):
            raise ValueError(f'preset {source}: {step} {key} must be a JSON object, got '
                             f'{params!r}')
        options = _options(func)
        for name in params:
            if name not in options:
                where = f"{step} {steps[step].get('method', key)!r}" if key == 'params' \
                    else f'{step} {key}'
                raise ValueError(
                    f'preset {source}: {where} has no option {name!r}; its options: '
                    f'{", ".join(options) or "none"} '
                    f'({func.__module__}.{func.__name__})')


def _options(func) -> list[str]:
    """Keyword options of ``func`` a preset may set: those with a default, less the
    inputs the step supplies."""
    return [name for name, p in inspect.signature(func).parameters.items()
            if p.default is not p.empty and name not in _SUPPLIED]


def _choose(methods, method, step, source):
    if method not in methods:
        raise ValueError(f'preset {source}: unknown {step} method {method!r}; choose one of '
                         f'{", ".join(methods)}')
    return method


def _option_functions(steps, source):
    """``(step, key, function)`` for each options dict of ``steps``; checks the methods."""
    from qsmflow.interfaces.masking import BRAIN_MASK_ALGORITHMS
    from qsmflow.qsm import bgremove, chi_separation, echoes, inversion
    from qsmflow.qsm import mask as qmask
    from qsmflow.qsm import reference, relaxometry, swi
    from qsmflow.workflows.qsm import BRAIN_ALGORITHMS, MASKING_METHODS

    masking = steps['masking']
    _choose(MASKING_METHODS, masking.get('method'), 'masking', source)
    brain = _choose(BRAIN_ALGORITHMS, masking.get('brain', BRAIN_ALGORITHMS[0]),
                    'brain-extraction', source)
    yield 'masking', 'params', BRAIN_MASK_ALGORITHMS[brain][0]
    yield 'masking', 'quality_params', qmask.quality_mask
    yield 'masking', 'strict_params', qmask.strict_mask
    _choose(echoes.UNWRAPPING_METHODS, steps['unwrapping'].get('method'), 'unwrapping', source)
    _choose(echoes.COMBINATION_METHODS, steps['echo_combination'].get('method'),
            'echo_combination', source)
    # qsmflow.qsm.reference's methods but 'region': it needs a mask only the API takes
    _choose(tuple(m for m in reference.METHODS if m != 'region'),
            steps['reference'].get('method'), 'reference', source)
    method = _choose(bgremove.METHODS, steps['bf_removal'].get('method'), 'bf_removal', source)
    yield 'bf_removal', 'params', getattr(bgremove, method)
    method = _choose(inversion.METHODS, steps['inversion'].get('method'), 'inversion', source)
    yield 'inversion', 'params', getattr(inversion, method)
    if 'r2star' in steps:
        _choose(relaxometry.METHODS, steps['r2star'].get('method'), 'r2star', source)
        yield 'r2star', 'params', relaxometry.r2star
    if 'swi' in steps:
        yield 'swi', 'params', swi.swi
        yield 'swi', 'minip_params', swi.minimum_intensity_projection
    if 'chi_separation' in steps:
        yield 'chi_separation', 'params', chi_separation.chi_separation
