# SPDX-License-Identifier: Apache-2.0
"""Command-line options of registration, atlases and regional tables → workflow options."""
from __future__ import annotations

import sys
from pathlib import Path

from qsmflow.inputs import InputError


def add_arguments(parser) -> None:
    """Add the 'Registration and regional tables' argument group to ``parser``."""
    group = parser.add_argument_group('Registration and regional tables')
    group.add_argument('--template', default='MNI152NLin2009cAsym', metavar='NAME',
                       help='templateflow template to register to (default: %(default)s; '
                            'offline: prefill TEMPLATEFLOW_HOME)')
    group.add_argument('--template-resolution', type=int, default=2, metavar='RES',
                       help='templateflow resolution of the registration target '
                            '(default: %(default)s)')
    group.add_argument('--atlases', nargs='+', metavar='NAME',
                       help='atlases of bids_specs/atlases.json to tabulate '
                            '(default: MASSP20 Diedrichsen2009)')
    group.add_argument('--atlas', type=Path, metavar='PATH', help='custom atlas label image')
    group.add_argument('--atlas-labels', type=Path, metavar='TSV',
                       help='lookup table (index, name) of --atlas')
    group.add_argument('--atlas-template', type=Path, metavar='IMAGE',
                       help='template image the custom --atlas is defined on (the brain-masked '
                            'magnitude is registered to it: skull-stripped, or give '
                            '--atlas-template-mask)')
    group.add_argument('--atlas-template-mask', type=Path, metavar='MASK',
                       help='brain mask of --atlas-template, for a template with skull and scalp')
    group.add_argument('--segmentations', type=Path, metavar='DERIV_DIR',
                       help='BIDS derivatives folder with sub-<l>[/ses-<l>]/anat/*_dseg.nii[.gz] '
                            'in each participant\'s scanner space and a dseg.tsv')
    group.add_argument('--erode-rois', action='store_true',
                       help='erode every region by one voxel against partial volume')
    group.add_argument('--skip-registration', action='store_true',
                       help='no template registration (tables only from --segmentations)')


def regions_options(opts) -> dict | None:
    """Workflow options (:func:`qsmflow.workflows.registration.connect_regions`) from ``opts``.

    A template or default atlas that cannot be fetched (offline without a prefilled
    ``TEMPLATEFLOW_HOME``) is skipped with a warning; with ``--atlases`` given explicitly
    it is an error. A custom atlas (``--atlas``...) is registered to its own template image
    and so needs no templateflow download at all.
    """
    from qsmflow.bids_specs import load
    from qsmflow.templates import TemplateError
    from qsmflow.workflows.registration import custom_atlas, resolve_atlas, template_files

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
