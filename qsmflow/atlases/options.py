# SPDX-License-Identifier: Apache-2.0
"""Command-line options of registration, atlases and regional tables → workflow options."""
from __future__ import annotations

import sys
from pathlib import Path

from qsmflow.errors import InputError


def regions_options(opts) -> dict | None:
    """Workflow options (:func:`qsmflow.workflows.registration.connect_regions`) from ``opts``.

    A template or default atlas that cannot be fetched (offline without a prefilled
    ``TEMPLATEFLOW_HOME``) is skipped with a warning; with ``--atlases`` given explicitly
    it is an error. A custom atlas (``--atlas``...) is registered to its own template image
    and so needs no templateflow download at all.
    """
    from qsmflow.bids_specs import load
    from qsmflow.atlases.templateflow import TemplateError
    from qsmflow.atlases.specs import custom_atlas, resolve_atlas, template_files

    out = {'erode': bool(getattr(opts, 'erode_rois', False)), 'template': None, 'atlases': []}
    seg = getattr(opts, 'segmentations', None)
    if seg is not None:
        if not Path(seg).is_dir():
            raise InputError(f'--segmentations {seg} is not a folder')
        out['segmentations'] = str(Path(seg).absolute())
    custom = _custom_atlas(opts)
    names = getattr(opts, 'atlases', None)
    if getattr(opts, 'skip_registration', False):
        if custom is not None or names is not None:
            raise InputError('--atlas/--atlases need registration: drop --skip-registration '
                             '(or use --segmentations)')
        return out
    specs = load('atlases')
    explicit = names is not None
    if names is None:
        names = list(specs['default_atlases'])
    unknown = sorted(set(names) - set(specs['atlases']))
    if unknown:
        raise InputError(f'unknown atlas {unknown[0]!r}; known: '
                         f'{", ".join(sorted(specs["atlases"]))} (or use --atlas)')
    own = [custom_atlas(custom)] if custom is not None else []
    out['atlases'] = own
    template = getattr(opts, 'template', None) or 'MNI152NLin2009cAsym'
    res = getattr(opts, 'template_resolution', 2)
    try:
        out['template_files'] = template_files(template, res)
    except TemplateError as exc:
        if explicit:
            raise InputError(str(exc)) from None
        _warn(f'template registration and atlas tables skipped: {exc}')
        return out
    out['template'] = template
    named = []
    for name in names:
        try:
            named.append(resolve_atlas(template, name, resolution=res))
        except TemplateError as exc:
            if explicit:
                raise InputError(str(exc)) from None
            _warn(f'atlas {name} skipped: {exc}')
    out['atlases'] = named + own
    return out


def _warn(message: str) -> None:
    print(f'qsmflow: warning: {message}', file=sys.stderr)


_CUSTOM_FLAGS = {'image': '--atlas', 'lut': '--atlas-labels',
                 'template_image': '--atlas-template', 'template_mask': '--atlas-template-mask'}


def _custom_atlas(opts) -> dict | None:
    parts = {k: getattr(opts, flag[2:].replace('-', '_'), None)
             for k, flag in _CUSTOM_FLAGS.items()}
    given = [k for k, v in parts.items() if v is not None]
    if not given:
        return None
    if not {'image', 'lut', 'template_image'} <= set(given):
        raise InputError('--atlas, --atlas-labels and --atlas-template go together '
                         '(--atlas-template-mask is optional)')
    for key in given:
        if not Path(parts[key]).is_file():
            raise InputError(f'{parts[key]} ({_CUSTOM_FLAGS[key]}) not found')
    return {k: str(Path(parts[k]).absolute()) for k in given}
