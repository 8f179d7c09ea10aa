# SPDX-License-Identifier: Apache-2.0
"""Registration, atlas and table options of the run configuration → workflow options."""
from __future__ import annotations

import sys
from dataclasses import asdict

from qsmflow.errors import InputError


def regions_options(regions) -> dict:
    """Workflow options (:func:`qsmflow.workflows.registration.connect_regions`) of a
    :class:`qsmflow.config.RegionsConfig`, with every template and atlas file resolved.

    A template or default atlas that cannot be fetched (offline without a prefilled
    ``TEMPLATEFLOW_HOME``) is skipped with a warning; with ``--atlases`` given explicitly
    it is an error. A custom atlas (``--atlas``...) is registered to its own template image
    and so needs no templateflow download at all. A template without a brain mask whose
    image still has skull and scalp gets one derived from it
    (:func:`qsmflow.atlases.template_masks.with_brain_mask`).

    Returns
    -------
    dict
        ``erode``, ``refine``, ``segment`` (``--segment-nuclei``) and ``fast``
        (``--fast-registration``) (bool), ``pyramid`` (``--registration-pyramid``), ``template``
        (name, or None: no registration), ``study_template`` (``--study-template``: its
        files, :func:`qsmflow.atlases.study_template.find_study_template`, or None),
        ``template_files`` (:func:`qsmflow.atlases.specs.template_files`) and ``atlases``
        (:func:`qsmflow.atlases.specs.resolve_atlas` entries, then the custom atlas).
    """
    from qsmflow.atlases.specs import custom_atlas, resolve_atlas, template_files
    from qsmflow.atlases.template_masks import with_brain_mask
    from qsmflow.atlases.templateflow import TemplateError
    from qsmflow.bids_specs import load

    out = {'erode': bool(regions.erode), 'refine': bool(regions.refine_nuclei),
           'segment': bool(regions.segment_nuclei),
           'fast': bool(regions.fast_registration),
           'pyramid': regions.registration_pyramid,
           'template': None, 'atlases': [], 'study_template': None}
    if regions.skip_registration:
        return out
    custom = regions.custom_atlas
    own = [custom_atlas(asdict(custom))] if custom is not None else []
    for entry in own:
        given = entry.get('template_mask')
        entry['template_mask'] = with_brain_mask(entry['template_image'], given,
                                                 '--atlas-template')
        if entry['template_mask'] and not given:
            entry['source']['TemplateMask'] = (f'{entry["template_mask"]} (derived by qsmflow '
                                               'from the template image: no mask was given)')
    out['atlases'] = own
    explicit = regions.atlases is not None
    names = list(regions.atlases) if explicit else list(load('atlases')['default_atlases'])
    template, res, home = regions.template, regions.template_resolution, \
        regions.templateflow_home
    try:
        files = template_files(template, res, home=home)
    except TemplateError as exc:
        if explicit:
            raise InputError(str(exc)) from None
        _warn(f'template registration and atlas tables skipped: {exc}')
        return out
    files['mask'] = with_brain_mask(files['image'], files['mask'], f'template {template}')
    out['template_files'] = files
    out['template'] = template
    if regions.study_template is not None:
        from qsmflow.atlases.study_template import find_study_template

        out['study_template'] = find_study_template(regions.study_template)
    named = []
    for name in names:
        try:
            named.append(resolve_atlas(template, name, resolution=res, home=home))
        except TemplateError as exc:
            if explicit:
                raise InputError(str(exc)) from None
            _warn(f'atlas {name} skipped: {exc}')
    out['atlases'] = named + own
    return out


def _warn(message: str) -> None:
    print(f'qsmflow: warning: {message}', file=sys.stderr)
