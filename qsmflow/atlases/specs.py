# SPDX-License-Identifier: Apache-2.0
"""Templates and atlases as files: templateflow queries of ``bids_specs/atlases.json``,
user atlases, and how each atlas reaches the registration template."""
from __future__ import annotations

from pathlib import Path


#: Default registration template (templateflow identifier).
DEFAULT_TEMPLATE = 'MNI152NLin2009cAsym'


def template_files(template: str, resolution: int | None = 2, *, home=None) -> dict:
    """T1w image and brain mask of a templateflow template (fetched through the API from
    the templateflow folder ``home``, default ``$TEMPLATEFLOW_HOME``)."""
    from qsmflow.atlases import templateflow as templates

    res = {'resolution': resolution} if resolution else {}
    out = {'image': str(templates.get(template, home=home, suffix='T1w', extension='.nii.gz',
                                      **res))}
    try:
        out['mask'] = str(templates.get(template, home=home, suffix='mask', desc='brain',
                                        extension='.nii.gz', **res))
    except templates.TemplateError:
        out['mask'] = None
    return out


def resolve_atlases(template: str, names, *, custom: dict | None = None,
                    resolution: int | None = 2, home=None) -> list[dict]:
    """Atlas files (templateflow queries of ``bids_specs/atlases.json``) and how to reach them.

    Parameters
    ----------
    template : str
        Registration template (templateflow identifier).
    names : list of str
        Atlas names (keys of ``atlases.json``).
    custom : dict, optional
        ``{'image', 'lut', 'template_image'}`` of a user atlas (``--atlas``...).
    resolution : int, optional
        Template resolution used as registration target when an atlas lives in another
        template (SUIT → ``template``).
    home : str or Path, optional
        templateflow folder (default: ``$TEMPLATEFLOW_HOME``).

    Returns
    -------
    list of dict
        One entry per atlas (:func:`resolve_atlas`), then the custom atlas
        (:func:`custom_atlas`).

    Raises
    ------
    qsmflow.atlases.templateflow.TemplateError
        When a file cannot be found or downloaded.
    """
    out = [resolve_atlas(template, name, resolution=resolution, home=home) for name in names]
    if custom:
        out.append(custom_atlas(custom))
    return out


def resolve_atlas(template: str, name: str, *, resolution: int | None = 2,
                  home=None) -> dict:
    """Files of one atlas of ``bids_specs/atlases.json`` and the way to the native grid.

    Returns
    -------
    dict
        ``name``, ``image``, ``lut``, ``source`` (provenance for the sidecars) and ``via``:
        None when the atlas lives in ``template``, else ``{'name', 'moving', 'to', 'fixed'}``:
        the atlas's own template image (``moving``) registered once to ``template``'s T1w
        (``fixed``) and cached (:func:`cached_template_transform`).
    """
    from qsmflow import bids_specs
    from qsmflow.atlases import templateflow as templates

    spec = bids_specs.load('atlases')['atlases'][name]
    entry = {'name': name,
             'image': str(templates.get(spec['template'], home=home, **spec['query'])),
             'lut': str(templates.get(spec['template'], home=home, **spec['lut_query'])),
             'source': {'TemplateflowQuery': spec['query']}, 'via': None}
    if spec['template'] != template:
        moving = templates.get(spec['template'], home=home, **spec.get('template_query', {
            'suffix': 'T1w', 'extension': '.nii.gz'}))
        entry['via'] = {'name': spec['template'], 'moving': str(moving), 'to': template,
                        'fixed': template_files(template, resolution, home=home)['image']}
        entry['source']['TemplateToTemplate'] = (
            f'{spec["template"]} T1w registered to {template} T1w with antspyx (identity '
            'start, rigid, affine, SyN), computed once and cached')
    return entry


def custom_atlas(custom: dict) -> dict:
    """Entry of a user atlas (``--atlas PATH --atlas-labels TSV --atlas-template IMAGE``).

    The labels are registered to their own template image (``template_image``, masked by
    the optional ``template_mask``), not to the registration template.
    """
    image, lut, tpl = (str(Path(custom[k]).absolute()) for k in ('image', 'lut',
                                                               'template_image'))
    entry = {'name': 'custom', 'image': image, 'lut': lut, 'template_image': tpl, 'via': None,
             'source': {'Description': 'user atlas (--atlas, --atlas-labels, --atlas-template)',
                        'Template': tpl, 'Atlas': image, 'LookupTable': lut}}
    if custom.get('template_mask'):
        entry['template_mask'] = str(Path(custom['template_mask']).absolute())
        entry['source']['TemplateMask'] = entry['template_mask']
    return entry


def check_custom_atlas(image, lut) -> None:
    """Check a user atlas before any work: the lookup table is a BIDS ``dseg.tsv`` (columns
    ``index`` and ``name``) and the label image holds at least one of its labels.

    Raises
    ------
    qsmflow.errors.InputError
        One line naming the file and what it should be.
    """
    import nibabel as nb
    import numpy as np

    from qsmflow.errors import InputError
    from qsmflow.interfaces.regions import read_lut

    try:
        names = read_lut(lut)
    except (ValueError, KeyError, TypeError, OSError):
        raise InputError(f'{lut} (--atlas-labels): not a BIDS dseg.tsv; give a tab-separated '
                         'table with the columns "index" (label value) and "name"') from None
    try:
        img = nb.load(image)
        values = np.unique(np.rint(np.asarray(img.dataobj, dtype=np.float64)))
    except Exception as exc:  # nibabel raises several types for a file that is no image
        raise InputError(f'{image} (--atlas): cannot read it as an image ({exc})') from None
    if not set(int(v) for v in values) & (set(names) - {0}):
        shown = ', '.join(str(int(v)) for v in values[:8]) + (' …' if len(values) > 8 else '')
        raise InputError(f'{image} (--atlas) holds none of the {len(names)} labels of {lut} '
                         f'(--atlas-labels; its values: {shown}): give the table of this image')
