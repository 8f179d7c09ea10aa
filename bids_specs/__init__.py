# SPDX-License-Identifier: Apache-2.0
"""BIDS naming patterns and metadata rules, as data.

``inputs.json`` says what qsmflow reads (suffix, parts, required metadata and the fix to
offer when it is missing); ``outputs.json`` says how every derivative is named. Code reads
these through :func:`load` and :func:`build_path`, so a naming change is a data change.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Return the parsed spec ``name`` (``'inputs'`` or ``'outputs'``)."""
    text = resources.files(__name__).joinpath(f'{name}.json').read_text()
    return json.loads(text)


def build_path(pattern: str, entities: dict) -> str:
    """Fill a BIDS path ``pattern``; bracketed parts vanish when their entity is missing.

    Examples
    --------
    >>> build_path('sub-{subject}[_ses-{session}][_desc-{desc}]_{suffix}{extension}',
    ...            {'subject': '01', 'suffix': 'Chimap', 'extension': '.nii.gz'})
    'sub-01_Chimap.nii.gz'
    >>> build_path('sub-{subject}[_run-{run}]_{suffix}', {'subject': 'a', 'run': 2,
    ...            'suffix': 'mask'})
    'sub-a_run-2_mask'
    """

    def optional(match):
        inner = match.group(1)
        keys = re.findall(r'{(\w+)}', inner)
        if all(entities.get(k) not in (None, '') for k in keys):
            return inner.format(**{k: entities[k] for k in keys})
        return ''

    filled = re.sub(r'\[([^\[\]]*)\]', optional, pattern)
    missing = [k for k in re.findall(r'{(\w+)}', filled) if entities.get(k) in (None, '')]
    if missing:
        raise ValueError(f'missing required entities {missing} for pattern {pattern!r}')
    return filled.format(**entities)


def output_name(kind: str, entities: dict, **overrides) -> str:
    """BIDS file name of derivative ``kind`` (a key of ``outputs.json``) for ``entities``.

    Examples
    --------
    >>> output_name('mask', {'subject': '01', 'run': 1})
    'sub-01_run-1_desc-brain_mask.nii.gz'
    """
    spec = load('outputs')
    out = spec['outputs'][kind]
    ents = {k: v for k, v in entities.items() if k not in ('suffix', 'extension', 'desc')}
    ents.update(suffix=out['suffix'], desc=out.get('desc'), extension=out['extension'])
    ents.update(overrides)
    return build_path(spec['pattern'], ents)


def output_path(root, kind: str, entities: dict, **overrides):
    """Path of derivative ``kind`` for ``entities`` under the dataset ``root``:
    ``root/sub-<l>[/ses-<l>]/<datatype>/<output_name>`` (the output's own ``datatype``
    folder when it names one, e.g. ``figures``; ``overrides`` as in :func:`output_name`).

    Examples
    --------
    >>> str(output_path('/out', 'mask', {'subject': '01', 'session': 'a'}))
    '/out/sub-01/ses-a/anat/sub-01_ses-a_desc-brain_mask.nii.gz'
    """
    from pathlib import Path

    folder = Path(root) / f'sub-{entities["subject"]}'
    if entities.get('session'):
        folder = folder / f'ses-{entities["session"]}'
    spec = load('outputs')
    datatype = spec['outputs'][kind].get('datatype', spec['datatype'])
    return folder / datatype / output_name(kind, entities, **overrides)
