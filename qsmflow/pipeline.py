# SPDX-License-Identifier: Apache-2.0
"""Pipeline presets: which algorithm runs at each step, with which options.

Presets are JSON files in ``qsmflow/data/presets`` (or any file a user gives); command-line
flags override single steps. Algorithm defaults themselves live in the signatures of the
``qsmflow.qsm`` functions, never here.
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

STEPS = ('masking', 'unwrapping', 'echo_combination', 'bf_removal', 'inversion', 'reference')


def available_presets() -> list[str]:
    """Names of the presets shipped with qsmflow."""
    folder = resources.files('qsmflow.data').joinpath('presets')
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith('.json'))


def load_preset(name_or_file: str = 'default') -> dict:
    """Load a shipped preset by name, or a user's JSON file by path.

    Raises
    ------
    ValueError
        For an unknown name, an unreadable file or a file missing a step.
    """
    path = Path(name_or_file)
    if path.suffix == '.json' or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f'cannot read preset file {path}: {exc.strerror}') from None
    elif name_or_file in available_presets():
        text = resources.files('qsmflow.data').joinpath('presets', f'{name_or_file}.json').read_text()
    else:
        raise ValueError(f'unknown preset {name_or_file!r}; choose one of '
                         f'{", ".join(available_presets())} or give a JSON file')
    try:
        preset = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'preset {name_or_file} is not valid JSON ({exc})') from None
    missing = [s for s in STEPS if s not in preset]
    if missing:
        raise ValueError(f'preset {name_or_file} lacks step(s) {", ".join(missing)}')
    return preset


def with_overrides(preset: dict, **methods) -> dict:
    """Copy of ``preset`` with the method of each named step replaced (``None`` keeps it)."""
    out = copy.deepcopy(preset)
    for step, method in methods.items():
        if method is not None:
            if step not in STEPS:
                raise ValueError(f'unknown pipeline step {step!r}')
            out[step] = {'method': method, 'params': {}}
    return out
