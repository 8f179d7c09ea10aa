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
                       help='template image the custom --atlas is defined on')
    group.add_argument('--segmentations', type=Path, metavar='DERIV_DIR',
                       help='BIDS derivatives folder with sub-<l>[/ses-<l>]/anat/*_dseg.nii[.gz] '
                            'in each participant\'s scanner space and a dseg.tsv')
    group.add_argument('--erode-rois', action='store_true',
                       help='erode every region by one voxel against partial volume')
    group.add_argument('--skip-registration', action='store_true',
                       help='no template registration (tables only from --segmentations)')


def regions_options(opts) -> dict | None:
    """Workflow options (:func:`qsmflow.workflows.registration.connect_regions`) from ``opts``.

    A template that cannot be fetched (offline without a prefilled ``TEMPLATEFLOW_HOME``)
    skips registration with a warning, unless atlases were asked for explicitly.
    """
    from qsmflow.bids_specs import load
    from qsmflow.templates import TemplateError
    from qsmflow.workflows.registration import resolve_atlases, template_files

    out = {'erode': bool(getattr(opts, 'erode_rois', False)), 'template': None}
    seg = getattr(opts, 'segmentations', None)
    if seg is not None:
        if not Path(seg).is_dir():
            raise InputError(f'--segmentations {seg} is not a folder')
        out['segmentations'] = str(Path(seg).absolute())
    custom = _custom_atlas(opts)
    if getattr(opts, 'skip_registration', False):
        return out
    template = getattr(opts, 'template', None) or 'MNI152NLin2009cAsym'
    names = getattr(opts, 'atlases', None)
    explicit = names is not None or custom is not None
    if names is None:
        names = [n for n in load('atlases')['default_atlases']]
    unknown = sorted(set(names) - set(load('atlases')['atlases']))
    if unknown:
        raise InputError(f'unknown atlas {unknown[0]!r}; known: '
                         f'{", ".join(sorted(load("atlases")["atlases"]))} (or use --atlas)')
    res = getattr(opts, 'template_resolution', 2)
    try:
        out['template_files'] = template_files(template, res)
        out['atlases'] = resolve_atlases(template, names, custom=custom, resolution=res)
    except TemplateError as exc:
        if explicit:
            raise InputError(str(exc)) from None
        print(f'qsmflow: warning: template registration and atlas tables skipped: {exc}',
              file=sys.stderr)
        return out
    out['template'] = template
    return out


def _custom_atlas(opts) -> dict | None:
    parts = {k: getattr(opts, f'atlas{s}', None)
             for k, s in (('image', ''), ('lut', '_labels'), ('template_image', '_template'))}
    given = [k for k, v in parts.items() if v is not None]
    if not given:
        return None
    if len(given) != 3:
        raise InputError('--atlas, --atlas-labels and --atlas-template go together')
    for key, path in parts.items():
        if not Path(path).is_file():
            raise InputError(f'{path} (--atlas{"" if key == "image" else "-" + key}) not found')
    return {k: str(Path(v).absolute()) for k, v in parts.items()}
