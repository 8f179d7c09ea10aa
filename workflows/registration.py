# SPDX-License-Identifier: Apache-2.0
"""Template registration, atlas labels in native space and the regional tables."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Default registration template (templateflow identifier).
DEFAULT_TEMPLATE = 'MNI152NLin2009cAsym'


def template_files(template: str, resolution: int | None = 2) -> dict:
    """T1w image and brain mask of a templateflow template (fetched through the API)."""
    from qsmflow import templates

    res = {'resolution': resolution} if resolution else {}
    out = {'image': str(templates.get(template, suffix='T1w', extension='.nii.gz', **res))}
    try:
        out['mask'] = str(templates.get(template, suffix='mask', desc='brain',
                                        extension='.nii.gz', **res))
    except templates.TemplateError:
        out['mask'] = None
    return out


def resolve_atlases(template: str, names, *, custom: dict | None = None,
                    resolution: int | None = 2) -> list[dict]:
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

    Returns
    -------
    list of dict
        One entry per atlas (:func:`resolve_atlas`), then the custom atlas
        (:func:`custom_atlas`).

    Raises
    ------
    qsmflow.templates.TemplateError
        When a file cannot be found or downloaded.
    """
    out = [resolve_atlas(template, name, resolution=resolution) for name in names]
    if custom:
        out.append(custom_atlas(custom))
    return out


def resolve_atlas(template: str, name: str, *, resolution: int | None = 2) -> dict:
    """Files of one atlas of ``bids_specs/atlases.json`` and the way to the native grid.

    Returns
    -------
    dict
        ``name``, ``image``, ``lut``, ``source`` (provenance for the sidecars) and ``via``:
        None when the atlas lives in ``template``, else ``{'name', 'moving', 'to', 'fixed'}``:
        the atlas's own template image (``moving``) registered once to ``template``'s T1w
        (``fixed``) and cached (:func:`cached_template_transform`).
    """
    from qsmflow import bids_specs, templates

    spec = bids_specs.load('atlases')['atlases'][name]
    entry = {'name': name, 'image': str(templates.get(spec['template'], **spec['query'])),
             'lut': str(templates.get(spec['template'], **spec['lut_query'])),
             'source': {'TemplateflowQuery': spec['query']}, 'via': None}
    if spec['template'] != template:
        moving = templates.get(spec['template'], **spec.get('template_query', {
            'suffix': 'T1w', 'extension': '.nii.gz'}))
        entry['via'] = {'name': spec['template'], 'moving': str(moving), 'to': template,
                        'fixed': template_files(template, resolution)['image']}
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


def precompute_template_transforms(template: str = DEFAULT_TEMPLATE, names=None, *,
                                   resolution: int | None = 2, nthreads: int = 1) -> list:
    """Fill the transform cache for the atlases that live in another template (SUIT).

    For containers and offline machines: run once after prefilling ``TEMPLATEFLOW_HOME``
    so that participant runs read the template-to-template transforms from the cache.

    Returns
    -------
    list of (str, str)
        ``(warp, affine)`` paths, one pair per such atlas.
    """
    from qsmflow import bids_specs

    names = names or bids_specs.load('atlases')['default_atlases']
    out = []
    for atlas in resolve_atlases(template, names, resolution=resolution):
        if atlas['via']:
            via = atlas['via']
            out.append(cached_template_transform(via['moving'], via['fixed'], via['name'],
                                                 nthreads, to=via['to']))
    return out


def connect_regions(workflow, qsm_wf, *, acq, output_dir: str, regions_opts: dict,
                    omp_nthreads: int = 1) -> None:
    """Add registration, atlas labels and regional tables of one acquisition to ``workflow``.

    Parameters
    ----------
    workflow, qsm_wf : Workflow
        The acquisition workflow and its reconstruction sub-workflow.
    acq : :class:`qsmflow.inputs.Acquisition`
        The acquisition (entities).
    output_dir : str
        Root of the derivatives dataset.
    regions_opts : dict
        ``segmentations`` (folder or None), ``template`` (name, or None: no registration to
        a template), ``template_files`` (:func:`template_files`), ``atlases``
        (:func:`resolve_atlases`; a custom atlas with its own ``template_image`` is
        processed even without ``template``), ``erode`` (bool).
    """
    from qsmflow.workflows.regions import (
        find_segmentation, init_regions_wf, init_segmentation_regions_wf)

    erode = bool(regions_opts.get('erode'))
    if regions_opts.get('segmentations'):
        found = find_segmentation(regions_opts['segmentations'], acq.entities)
        if found:
            seg_wf = init_segmentation_regions_wf(
                segmentation=found[0], lut=found[1], output_dir=output_dir,
                entities=acq.entities, erode=erode)
            workflow.connect([(qsm_wf, seg_wf, [('outputnode.chimap', 'inputnode.chimap'),
                                                ('outputnode.mask', 'inputnode.mask')])])
    reg_wf = None
    if regions_opts.get('template'):
        reg_wf = init_registration_wf(
            template=regions_opts['template'],
            template_image=regions_opts['template_files']['image'],
            template_mask=regions_opts['template_files'].get('mask'), output_dir=output_dir,
            entities=acq.entities, omp_nthreads=omp_nthreads)
        workflow.connect([(qsm_wf, reg_wf, [('load_megre.magnitude', 'inputnode.magnitude'),
                                            ('brain_mask.out_mask', 'inputnode.mask'),
                                            ('outputnode.chimap', 'inputnode.chimap')])])
    for atlas in regions_opts.get('atlases') or []:
        own = bool(atlas.get('template_image'))
        if not own and reg_wf is None:
            continue  # reached through the template registration, which is off
        labels_wf = init_atlas_labels_wf(atlas=atlas, omp_nthreads=omp_nthreads,
                                         name=f'atlas_{atlas["name"].lower()}_wf')
        regions_wf = init_regions_wf(atlas=atlas['name'], output_dir=output_dir,
                                     entities=acq.entities, erode=erode, source=atlas['source'],
                                     name=f'regions_{atlas["name"].lower()}_wf')
        regions_wf.inputs.inputnode.lut = atlas['lut']
        workflow.connect([
            (qsm_wf, labels_wf, [('load_megre.magnitude', 'inputnode.magnitude'),
                                 ('brain_mask.out_mask', 'inputnode.mask'),
                                 ('outputnode.chimap', 'inputnode.chimap')]),
            (qsm_wf, regions_wf, [('outputnode.chimap', 'inputnode.chimap'),
                                  ('outputnode.mask', 'inputnode.mask')]),
            (labels_wf, regions_wf, [('outputnode.dseg', 'inputnode.dseg')]),
        ])  # fmt:skip
        if not own:
            workflow.connect([(reg_wf, labels_wf, [
                ('outputnode.affine', 'inputnode.affine'),
                ('outputnode.inverse_warp', 'inputnode.inverse_warp')])])


def init_registration_wf(*, template: str, template_image: str, template_mask: str | None,
                         output_dir: str, entities: dict, omp_nthreads: int = 1,
                         name: str = 'registration_wf') -> pe.Workflow:
    """Register the combined magnitude to a template; store transforms and the χ map there.

    The moving image is the root-sum-of-squares magnitude over echoes inside the brain
    mask; antspyx runs rigid, then affine (Mattes mutual information), then SyN. The
    forward (native → template) affine and warp, the inverse warp and the χ map resampled
    to the template (``space-<template>_Chimap``, linear) are stored.

    Parameters
    ----------
    template : str
        Template identifier (the ``space``/``to`` label).
    template_image, template_mask : str
        Template T1w image and brain mask (None: unmasked).
    output_dir : str
        Root of the derivatives dataset.
    entities : dict
        BIDS entities of the acquisition.
    omp_nthreads : int
        ITK threads.
    name : str
        Workflow name.

    Inputs
    ------
    magnitude : str
        4D multi-echo magnitude (a.u.).
    mask : str
        Brain mask of the magnitude (before the background-removal erosion, so that it
        matches the template's brain mask).
    chimap : str
        χ map (ppm).

    Outputs
    -------
    affine, warp, inverse_warp : str
        Transforms native → template (ITK affine, displacement fields in mm).
    """
    from qsmflow.interfaces.bids import DerivativesSink
    from qsmflow.interfaces.regions import FileSink
    from qsmflow.interfaces.registration import ApplyTransforms, RegisterToTemplate

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (f'The combined magnitude was registered to the {template} template '
                         'with antspyx (rigid, affine, SyN).')
    inputnode = pe.Node(niu.IdentityInterface(fields=['magnitude', 'mask', 'chimap']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['affine', 'warp', 'inverse_warp']),
                         name='outputnode')
    register = pe.Node(RegisterToTemplate(template=template_image, nthreads=omp_nthreads),
                       name='register', n_procs=omp_nthreads, mem_gb=2.0)
    if template_mask:
        register.inputs.template_mask = template_mask
    fwd_list = pe.Node(niu.Merge(2), name='fwd_list', run_without_submitting=True)
    chi_std = pe.Node(ApplyTransforms(
        reference=template_image, interpolation='linear',
        meta={'SpatialReference': Path(template_image).absolute().as_uri()}),
        name='chi_std', mem_gb=1.0)
    ds_chi_std = pe.Node(DerivativesSink(base_directory=output_dir, kind='chimap_std',
                                         entities={**entities, 'space': template}),
                         name='ds_chi_std', run_without_submitting=True)
    fwd = {**entities, 'from': 'MEGRE', 'to': template, 'mode': 'image'}
    inv = {**entities, 'from': template, 'to': 'MEGRE', 'mode': 'image'}
    sinks = {key: pe.Node(FileSink(base_directory=output_dir, kind=kind, entities=ents),
                          name=f'ds_{key}', run_without_submitting=True)
             for key, kind, ents in (('affine', 'xfm_affine', fwd), ('warp', 'xfm_warp', fwd),
                                     ('inverse_warp', 'xfm_warp', inv))}
    workflow.connect([
        (inputnode, register, [('magnitude', 'in_magnitude'), ('mask', 'in_mask')]),
        (register, fwd_list, [('warp', 'in1'), ('affine', 'in2')]),
        (inputnode, chi_std, [('chimap', 'in_file')]),
        (fwd_list, chi_std, [('out', 'transforms')]),
        (chi_std, ds_chi_std, [('out_file', 'in_file')]),
        (register, outputnode, [('affine', 'affine'), ('warp', 'warp'),
                                ('inverse_warp', 'inverse_warp')]),
    ] + [(register, sink, [(key, 'in_file')]) for key, sink in sinks.items()])  # fmt:skip
    return workflow


def init_atlas_labels_wf(*, atlas: dict, omp_nthreads: int = 1,
                         name: str = 'atlas_labels_wf') -> pe.Workflow:
    """Bring an atlas's labels onto the native χ grid (generic-label interpolation).

    Atlases in the registration template use the inverse of the subject's transform; an
    atlas in another template (SUIT) is first mapped through a template-to-template
    transform computed once with antspyx and cached; a custom atlas is registered to its
    own template image. The labels' sidecar names the atlas, its template, citation and
    licence (:func:`qsmflow.interfaces.regions.atlas_metadata`).

    Inputs
    ------
    affine, inverse_warp : str
        Subject transforms (native → registration template).
    magnitude, mask, chimap : str
        For custom atlases (their own registration) and the output grid (χ).

    Outputs
    -------
    dseg : str
        Atlas labels on the χ grid.
    """
    from qsmflow.interfaces.regions import atlas_metadata
    from qsmflow.interfaces.registration import ApplyTransforms, RegisterToTemplate

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=['affine', 'inverse_warp', 'magnitude', 'mask', 'chimap']), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['dseg']), name='outputnode')
    meta = {'Atlas': atlas_metadata(atlas['name'], atlas.get('source'))}
    to_native = pe.Node(ApplyTransforms(in_file=atlas['image'], interpolation='genericLabel',
                                        meta=meta), name='to_native', mem_gb=1.0)
    if atlas.get('template_image'):
        own = pe.Node(RegisterToTemplate(template=atlas['template_image'],
                                         nthreads=omp_nthreads), name='register_own',
                      n_procs=omp_nthreads, mem_gb=2.0)
        if atlas.get('template_mask'):
            own.inputs.template_mask = atlas['template_mask']
        xfms = pe.Node(niu.Merge(2), name='xfms', run_without_submitting=True)
        workflow.connect([
            (inputnode, own, [('magnitude', 'in_magnitude'), ('mask', 'in_mask')]),
            (own, xfms, [('affine', 'in1'), ('inverse_warp', 'in2')]),
        ])  # fmt:skip
        to_native.inputs.invert = [True, False]
    else:
        # Transforms next to the χ grid first: native ← template, then template ← SUIT.
        xfms = pe.Node(niu.Merge(4 if atlas.get('via') else 2), name='xfms',
                       run_without_submitting=True)
        workflow.connect([(inputnode, xfms, [('affine', 'in1'), ('inverse_warp', 'in2')])])
        to_native.inputs.invert = [True, False]
        if atlas.get('via'):
            via = atlas['via']
            cached = pe.Node(niu.Function(function=_template_transform_node,
                                          input_names=['moving', 'fixed', 'name', 'to',
                                                       'nthreads'],
                                          output_names=['warp', 'affine']),
                             name='template_to_template', n_procs=omp_nthreads, mem_gb=2.0)
            cached.inputs.moving = via['moving']
            cached.inputs.fixed = via['fixed']
            cached.inputs.name = via['name']
            cached.inputs.to = via.get('to') or _template_name(via['fixed'])
            cached.inputs.nthreads = omp_nthreads
            workflow.connect([(cached, xfms, [('warp', 'in3'), ('affine', 'in4')])])
            to_native.inputs.invert = [True, False, False, False]
    workflow.connect([
        (inputnode, to_native, [('chimap', 'reference')]),
        (xfms, to_native, [('out', 'transforms')]),
        (to_native, outputnode, [('out_file', 'dseg')]),
    ])  # fmt:skip
    return workflow


def _template_transform_node(moving, fixed, name, to, nthreads):
    """Nipype Function-node body of :func:`cached_template_transform`."""
    from qsmflow.workflows.registration import cached_template_transform

    return cached_template_transform(moving, fixed, name, nthreads, to=to)


#: Version of the template-to-template registration recipe; part of the cache key, so a
#: change of method invalidates transforms cached by earlier versions.
TEMPLATE_XFM_VERSION = 1


def transform_cache() -> Path:
    """Folder of the cached template-to-template transforms.

    ``$QSMFLOW_CACHE/xfm``, by default ``~/.cache/qsmflow/xfm``.
    """
    import os

    root = os.environ.get('QSMFLOW_CACHE') or '~/.cache/qsmflow'
    return Path(root).expanduser() / 'xfm'


def template_transform_key(moving, fixed, name: str, to: str | None = None) -> str:
    """Cache key of a template-to-template transform.

    ``from-<name>_to-<to>_<digest>``, where the digest covers the contents of both images,
    the registration settings and :data:`TEMPLATE_XFM_VERSION` (a re-downloaded identical
    template reuses the transform; a changed template or recipe does not).
    """
    import hashlib
    import json

    digest = hashlib.sha256()
    digest.update(json.dumps({'version': TEMPLATE_XFM_VERSION, **_reproducibility(),
                              'settings': _registration_settings()},
                             sort_keys=True, default=str).encode())
    for path in (moving, fixed):
        with open(path, 'rb') as fobj:
            for block in iter(lambda: fobj.read(1 << 20), b''):
                digest.update(block)
    label = re.sub(r'[^0-9a-zA-Z]', '', to or _template_name(fixed))
    return f'from-{re.sub(r"[^0-9a-zA-Z]", "", name)}_to-{label}_{digest.hexdigest()[:16]}'


def cached_template_transform(moving, fixed, name, nthreads=1, *, to=None):
    """Template-to-template transform (e.g. SUIT T1w → MNI T1w), computed once and cached.

    The two templates share a world space only approximately (SUIT is a cerebellar crop in
    MNI-like coordinates), so the registration starts from the identity, not from the
    centres of mass, then runs rigid, affine and SyN (the subject registration's settings).
    The result lives in :func:`transform_cache` under :func:`template_transform_key`, with
    a JSON record of how it was made; concurrent runs wait on a file lock instead of
    computing it twice.

    Parameters
    ----------
    moving, fixed : str
        T1w images of the atlas's template (moving) and of the registration template.
    name : str
        Identifier of the moving template (``SUIT``).
    nthreads : int
        ITK threads.
    to : str, optional
        Identifier of the fixed template (default: from its ``tpl-<id>`` file name).

    Returns
    -------
    (str, str)
        Paths of the warp (.nii.gz) and affine (.mat), to be applied in this order with
        ``fixed`` as the reference (they map ``moving`` onto ``fixed``).
    """
    import json
    import os
    import shutil
    import tempfile

    cache = transform_cache()
    key = template_transform_key(moving, fixed, name, to)
    warp, affine = cache / f'{key}_warp.nii.gz', cache / f'{key}_affine.mat'
    if warp.exists() and affine.exists():
        return str(warp), str(affine)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f'.{key}.lock'):
        if warp.exists() and affine.exists():  # computed by a concurrent run meanwhile
            return str(warp), str(affine)
        with tempfile.TemporaryDirectory(dir=cache, prefix=f'.{key}.') as tmp:
            out = register_templates(fixed, moving, tmp, nthreads=nthreads)
            record = {'From': name, 'To': to or _template_name(fixed),
                      'Moving': str(moving), 'Fixed': str(fixed),
                      'Software': f'antspyx {out["version"]}',
                      'Method': 'identity start, rigid, affine (Mattes MI), SyN',
                      'Settings': _registration_settings(), **_reproducibility(),
                      'Version': TEMPLATE_XFM_VERSION}
            rec = Path(tmp) / 'record.json'
            rec.write_text(json.dumps(record, indent=2, default=str) + '\n')
            for src, dest in ((out['affine'], affine), (out['warp'], warp),
                              (rec, cache / f'{key}.json')):
                part = dest.with_name(f'.{dest.name}.tmp{os.getpid()}')
                shutil.copyfile(src, part)
                os.replace(part, dest)
    return str(warp), str(affine)


def register_templates(fixed, moving, out_dir, *, nthreads: int = 1) -> dict:
    """Register one template's T1w to another's, starting from the identity (antspyx).

    The subject registration's settings and reproducibility (fixed seed and thread count,
    a fresh process: :func:`qsmflow.interfaces.registration.register`), except for the
    identity start. Returns ``warp`` (.nii.gz) and ``affine`` (.mat) paths in ``out_dir``
    (moving → fixed) and the antspyx ``version``.
    """
    from qsmflow.interfaces.registration import register

    out = register(fixed, moving, out_dir, nthreads=nthreads,
                   settings=_registration_settings())
    return {k: out[k] for k in ('warp', 'affine', 'version')}


def _registration_settings() -> dict:
    """``ants.registration`` arguments of the template-to-template step."""
    from qsmflow.interfaces.registration import REGISTRATION

    return {**REGISTRATION, 'initial_transform': 'Identity'}


def _reproducibility() -> dict:
    """ANTs seed and registration thread count (the result depends on both)."""
    from qsmflow.interfaces import registration

    return {'RandomSeed': getattr(registration, 'RANDOM_SEED', None),
            'Threads': getattr(registration, 'REGISTRATION_THREADS', None)}


def _template_name(path) -> str:
    """Template identifier from a templateflow file name (``tpl-<id>_…``), else the stem."""
    name = Path(path).name
    match = re.match(r'tpl-([0-9a-zA-Z]+)', name)
    return match.group(1) if match else re.sub(r'\.nii(\.gz)?$', '', name)


@contextmanager
def _locked(path):
    """Exclusive advisory lock on ``path`` (POSIX ``flock``; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, 'a') as fobj:
        fcntl.flock(fobj, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fobj, fcntl.LOCK_UN)
