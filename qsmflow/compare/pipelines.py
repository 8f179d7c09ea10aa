# SPDX-License-Identifier: Apache-2.0
"""The pipelines of a comparison: ``--pipelines`` and ``--grid`` resolved to step choices.

A pipeline is written as

* a preset name (``default``, ``consensus`` …; :func:`qsmflow.config.presets.load_preset`),
* a preset file (``my.json``),
* step overrides on the default preset, ``bf_removal=vsharp,inversion=rts``, or on another
  preset, ``consensus:inversion=tv``;

``--grid bf_removal=pdf,vsharp inversion=tv,rts`` adds the product of the listed methods
(on the default preset). Step names and their effect come from the config layer
(:func:`qsmflow.config.presets.with_overrides`: the step's ``params`` are reset, its
method-independent options kept); the methods a step accepts are the choices of its
``qsmflow … participant`` flag (``--bf-removal``, ``--inversion`` …,
:func:`qsmflow.cli.parser.build_parser`), so the comparison accepts exactly what the
participant level does.

:func:`task_configs` cuts a pipeline into the options of each task of the comparison
workflow (:mod:`qsmflow.compare.engine`): a task sees only its own step's options, so two
pipelines that agree up to a step share every task before it through pydra's cache.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from qsmflow.config.preset_checks import check_pipeline
from qsmflow.config.presets import STEPS, available_presets, load_preset, with_overrides
from qsmflow.errors import InputError

#: The preset an override without ``PRESET:`` and the ``--grid`` apply to.
BASE_PRESET = 'default'


def step_methods() -> dict:
    """``{step: (method, ...)}`` as the participant level's flags accept them.

    >>> step_methods()['bf_removal']
    ['vsharp', 'pdf', 'resharp', 'ismv', 'lbv']
    """
    from qsmflow.cli.parser import build_parser

    choices = {a.dest: a.choices for a in build_parser()._actions if a.choices}
    return {step: list(choices[step]) for step in STEPS if step in choices}


def parse_pipeline(text: str) -> tuple[str, dict]:
    """``(name, steps)`` of one ``--pipelines`` entry (see the module docstring).

    Raises
    ------
    InputError
        One line for an unknown preset, file, step or method.

    Examples
    --------
    >>> name, steps = parse_pipeline('bf_removal=vsharp,inversion=rts')
    >>> name, steps['bf_removal']['method'], steps['inversion']['method']
    ('bf_removal=vsharp,inversion=rts', 'vsharp', 'rts')
    >>> parse_pipeline('consensus:inversion=tv')[1]['bf_removal']['method']
    'vsharp'
    >>> parse_pipeline('inversion=magic')
    Traceback (most recent call last):
    qsmflow.errors.InputError: --pipelines inversion=magic: unknown inversion method 'magic'; \
choose one of tv, rts, tkd, tikhonov, medi, lsqr, ilsqr, ndi
    """
    base, overrides = text, ''
    if '=' in text:
        base, _, overrides = text.rpartition(':') if ':' in text.split('=')[0] else ('', '',
                                                                                      text)
    try:
        preset = load_preset(base or BASE_PRESET)
    except ValueError as exc:
        raise InputError(f'--pipelines {text}: {exc}') from None
    methods = {}
    for item in filter(None, overrides.split(',')):
        step, eq, method = item.partition('=')
        step, method = step.strip(), method.strip()
        if not eq or not method:
            raise InputError(f'--pipelines {text}: {item!r} is not STEP=METHOD '
                             f'(e.g. bf_removal=vsharp)')
        methods[step] = method
    steps = _with_methods(preset, methods, f'--pipelines {text}')
    try:
        check_pipeline(steps, base or BASE_PRESET)
    except ValueError as exc:
        raise InputError(f'--pipelines {text}: {exc}') from None
    if base and Path(base).suffix == '.json':
        name = Path(base).stem + (f':{overrides}' if overrides else '')
    else:
        name = text
    return name, steps


def parse_grid(items) -> list[tuple[str, dict]]:
    """The pipelines of ``--grid step=a,b …``: the product of the listed methods on the
    default preset, named ``step=a,step=c``.

    >>> [n for n, _ in parse_grid(['bf_removal=pdf,vsharp', 'inversion=tv,rts'])]
    ['bf_removal=pdf,inversion=tv', 'bf_removal=pdf,inversion=rts', \
'bf_removal=vsharp,inversion=tv', 'bf_removal=vsharp,inversion=rts']
    """
    axes = []
    for item in items:
        step, eq, methods = item.partition('=')
        values = [m.strip() for m in methods.split(',') if m.strip()]
        if not eq or not values:
            raise InputError(f'--grid {item}: write STEP=METHOD,METHOD (e.g. '
                             'bf_removal=pdf,vsharp)')
        axes.append([(step.strip(), v) for v in values])
    preset = load_preset(BASE_PRESET)
    out = []
    for combo in itertools.product(*axes):
        name = ','.join(f'{s}={m}' for s, m in combo)
        out.append((name, _with_methods(preset, dict(combo), f'--grid {" ".join(items)}')))
    return out


def resolve_pipelines(pipelines=(), grid=()) -> dict:
    """``{name: steps}`` of ``--pipelines`` then ``--grid``, in order; a pipeline whose
    steps repeat an earlier one's is dropped (it would share every task anyway).

    Raises
    ------
    InputError
        For fewer than two distinct pipelines, or an option a comparison cannot run
        (two-pass, user brain masks).
    """
    out = {}
    for name, steps in [*(parse_pipeline(p) for p in pipelines), *parse_grid(grid or ())]:
        if name in out or any(_same(steps, other) for other in out.values()):
            continue
        masking = steps['masking']
        if masking.get('two_pass') or masking.get('brain_masks'):
            raise InputError(f'pipeline {name}: two-pass reconstructions and user brain masks '
                             'are not compared; set "two_pass": false and drop "brain_masks"')
        out[name] = steps
    if len(out) < 2:
        raise InputError('give at least two different pipelines (--pipelines and/or --grid), '
                         f'e.g. --pipelines default consensus; available presets: '
                         f'{", ".join(available_presets())}')
    return out


def _same(a: dict, b: dict) -> bool:
    """Whether two pipelines run the same steps (descriptions aside)."""
    return all(a[s] == b[s] for s in STEPS)


def _with_methods(preset: dict, methods: dict, where: str) -> dict:
    known = step_methods()
    for step, method in methods.items():
        if step not in STEPS:
            raise InputError(f'{where}: unknown step {step!r}; choose one of {", ".join(STEPS)}')
        if step in known and method not in known[step]:
            raise InputError(f'{where}: unknown {step} method {method!r}; choose one of '
                             f'{", ".join(known[step])}')
    return with_overrides(preset, **methods)


def task_configs(steps: dict) -> dict:
    """The options of each task of the comparison workflow, from a pipeline's steps.

    ``brain``: brain extraction (algorithm, params); ``field``: unwrapping and echo
    combination; ``analysis_mask``: masking method and phase-quality options;
    ``bf_removal``, ``inversion``: method and params; ``reference``: method.

    >>> cfg = task_configs(load_preset('default'))
    >>> cfg['field'], cfg['reference']
    ({'unwrapping': 'romeo', 'combination': 'wls'}, {'method': 'mean'})
    """
    from qsmflow.workflows.qsm import MASKING_METHODS, _brain_algorithm

    masking = steps['masking']
    if masking['method'] not in MASKING_METHODS:
        raise InputError(f"unknown masking method {masking['method']!r}; choose one of "
                         f'{", ".join(MASKING_METHODS)}')
    try:
        brain = {'params': dict(masking.get('params', {})), **_brain_algorithm(masking)}
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return {
        'brain': brain,
        'field': {'unwrapping': steps['unwrapping']['method'],
                  'combination': steps['echo_combination']['method']},
        'analysis_mask': {'method': masking['method'],
                          'params': dict(masking.get('quality_params', {}))},
        'bf_removal': {'method': steps['bf_removal']['method'],
                       'params': dict(steps['bf_removal'].get('params', {}))},
        'inversion': {'method': steps['inversion']['method'],
                      'params': dict(steps['inversion'].get('params', {}))},
        'reference': {'method': steps['reference']['method']},
    }


def describe_steps(steps: dict) -> dict:
    """Table columns of a pipeline: ``<step>`` (method) and ``<step>_params`` (JSON: the
    method's params and the step's other options) per step of
    :data:`qsmflow.config.presets.STEPS`.

    >>> cols = describe_steps(load_preset('default'))
    >>> cols['inversion'], cols['masking_params']
    ('tv', '{"two_pass": false}')
    """
    out = {}
    for step in STEPS:
        spec = steps[step]
        out[step] = spec['method']
        params = {**spec.get('params', {}),
                  **{k: v for k, v in spec.items() if k not in ('method', 'params')}}
        out[f'{step}_params'] = json.dumps(params, sort_keys=True)
    return out
