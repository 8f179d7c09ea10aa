# SPDX-License-Identifier: Apache-2.0
"""Template registration, atlas labels in native space and the regional tables."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe


def connect_regions(workflow, qsm_wf, *, acq, output_dir: str, regions_opts: dict,
                    segmentation: tuple | None = None, omp_nthreads: int = 1,
                    maps=()) -> None:
    """Add registration, atlas labels and regional tables of one acquisition to ``workflow``.

    Parameters
    ----------
    workflow, qsm_wf : Workflow
        The acquisition workflow and its reconstruction sub-workflow.
    acq : :class:`qsmflow.bids.inputs.Acquisition`
        The acquisition (entities).
    output_dir : str
        Root of the derivatives dataset.
    regions_opts : dict
        ``template`` (name, or None: no registration to a template), ``template_files``
        (:func:`qsmflow.atlases.specs.template_files`), ``atlases``
        (:func:`qsmflow.atlases.specs.resolve_atlases`; a custom atlas with its own
        ``template_image`` is processed even without ``template``), ``erode`` (bool),
        ``refine`` (bool: χ-driven refinement of the atlas labels around the nuclei, see
        :func:`init_atlas_labels_wf`), ``study_template`` (``--study-template``: the files
        of :func:`qsmflow.atlases.study_template.find_study_template`, or None), ``segment``
        (bool: ``--segment-nuclei``, :func:`qsmflow.workflows.regions.init_regions_wf`).
    segmentation : (str, str), optional
        The user's segmentation image and lookup table in the acquisition's scanner space
        (found by pre-flight), or None.
    omp_nthreads : int
        ITK threads.
    maps : sequence of str
        Outputs of ``qsm_wf`` the tables average per region
        (:func:`qsmflow.workflows.regions.table_maps`: R2*, χ⁺, χ⁻ where computed).
    """
    from qsmflow.workflows.regions import (
        init_regions_wf, init_segmentation_regions_wf, table_maps)

    erode = bool(regions_opts.get('erode'))
    refine = bool(regions_opts.get('refine'))
    fast = bool(regions_opts.get('fast'))
    study = regions_opts.get('study_template')
    maps = table_maps(maps)
    fields = ('chimap', 'mask', *maps)

    def to_tables():  # a new list per connection: Nipype edits an edge's list when flattening
        return [(f'outputnode.{f}', f'inputnode.{f}') for f in fields]

    if segmentation:
        seg_wf = init_segmentation_regions_wf(
            segmentation=segmentation[0], lut=segmentation[1], output_dir=output_dir,
            entities=acq.entities, erode=erode, maps=maps)
        workflow.connect([(qsm_wf, seg_wf, to_tables())])
    reg_wf = None
    if regions_opts.get('template'):
        reg_wf = init_registration_wf(
            template=regions_opts['template'],
            template_image=regions_opts['template_files']['image'],
            template_mask=regions_opts['template_files'].get('mask'), output_dir=output_dir,
            entities=acq.entities, omp_nthreads=omp_nthreads, fast=fast, study=study)
        # the study template was built from the magnitudes inside the final brain mask
        mask = 'outputnode.mask' if study else 'brain_mask.out_mask'
        workflow.connect([(qsm_wf, reg_wf, [('load_megre.magnitude', 'inputnode.magnitude'),
                                            (mask, 'inputnode.mask'),
                                            ('outputnode.chimap', 'inputnode.chimap')])])
    for atlas in regions_opts.get('atlases') or []:
        own = bool(atlas.get('template_image'))
        if reg_wf is None and (study or not own):
            continue  # reached through the template registration, which is off
        refined = refine and not atlas.get('via')
        labels_wf = init_atlas_labels_wf(atlas=atlas, omp_nthreads=omp_nthreads,
                                         refine=refined, fast=fast, study=study,
                                         name=f'atlas_{atlas["name"].lower()}_wf')
        regions_wf = init_regions_wf(atlas=atlas['name'], output_dir=output_dir,
                                     entities=acq.entities, erode=erode, source=atlas['source'],
                                     maps=maps, refined=refined,
                                     segment=bool(regions_opts.get('segment')),
                                     name=f'regions_{atlas["name"].lower()}_wf')
        regions_wf.inputs.inputnode.lut = atlas['lut']
        workflow.connect([
            (qsm_wf, labels_wf, [('load_megre.magnitude', 'inputnode.magnitude'),
                                 ('brain_mask.out_mask', 'inputnode.mask'),
                                 ('outputnode.chimap', 'inputnode.chimap')]),
            (qsm_wf, regions_wf, to_tables()),
            (labels_wf, regions_wf, [('outputnode.dseg', 'inputnode.dseg')]),
        ])  # fmt:skip
        if refined:
            workflow.connect([(labels_wf, regions_wf, [
                ('outputnode.dseg_atlas', 'inputnode.dseg_atlas')])])
        if not own:
            workflow.connect([(reg_wf, labels_wf, [
                ('outputnode.affine', 'inputnode.affine'), ('outputnode.warp', 'inputnode.warp'),
                ('outputnode.inverse_warp', 'inputnode.inverse_warp')])])
        elif study:
            workflow.connect([(reg_wf, labels_wf, [
                (f'outputnode.study_{k}', f'inputnode.study_{k}') for k in STUDY_XFMS])])


#: Transforms of a registration (native → template), as the workflows pass them on.
STUDY_XFMS = ('affine', 'warp', 'inverse_warp')


def init_registration_wf(*, template: str, template_image: str, template_mask: str | None,
                         output_dir: str, entities: dict, omp_nthreads: int = 1,
                         fast: bool = False, study: dict | None = None,
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
    fast : bool
        Register on all ``omp_nthreads`` threads (``--fast-registration``; not bitwise
        reproducible; recorded in the sidecar of the χ map in template space).
    study : dict, optional
        ``--study-template`` (:func:`qsmflow.atlases.study_template.find_study_template`):
        the magnitude is registered to the study template instead, and that registration
        composed with the study template's own (cached) registration to ``template``
        (:class:`qsmflow.interfaces.study_template.ThroughStudyTemplate`); the stored
        transforms are the composed ones, the sidecar of the χ map names the study template.
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
    study_affine, study_warp, study_inverse_warp : str
        With ``study``: the transforms native → study template.
    """
    from qsmflow.interfaces.bids import DerivativesSink, FileSink
    from qsmflow.interfaces.registration import ApplyTransforms, RegisterToTemplate

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (f'The combined magnitude was registered to the {template} template '
                         'with antspyx (rigid, affine, SyN).')
    inputnode = pe.Node(niu.IdentityInterface(fields=['magnitude', 'mask', 'chimap']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(
        fields=[*STUDY_XFMS, *(f'study_{k}' for k in STUDY_XFMS)] if study
        else list(STUDY_XFMS)),
        name='outputnode')
    register = pe.Node(RegisterToTemplate(
        template=study['image'] if study else template_image, nthreads=omp_nthreads,
        fast=fast), name='register', n_procs=omp_nthreads, mem_gb=2.0)
    fixed_mask = study['mask'] if study else template_mask
    if fixed_mask:
        register.inputs.template_mask = fixed_mask
    xfms = register
    if study:
        workflow.__desc__ += (' It went through a study template of the cohort (built from '
                              'the participants\' first pass, registered once to '
                              f'{template}).')
        xfms = _through_study_node(study, template_image, template_mask, template,
                                   omp_nthreads)
        workflow.connect([
            (register, xfms, [(k, k) for k in STUDY_XFMS]),
            (register, outputnode, [(k, f'study_{k}') for k in STUDY_XFMS]),
        ])  # fmt:skip
    fwd_list = pe.Node(niu.Merge(2), name='fwd_list', run_without_submitting=True)
    chi_std = pe.Node(ApplyTransforms(
        reference=template_image, interpolation='linear',
        meta={'SpatialReference': Path(template_image).absolute().as_uri(),
              **_fast_record(fast, omp_nthreads), **_study_record(study)}),
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
        (xfms, fwd_list, [('warp', 'in1'), ('affine', 'in2')]),
        (inputnode, chi_std, [('chimap', 'in_file')]),
        (fwd_list, chi_std, [('out', 'transforms')]),
        (chi_std, ds_chi_std, [('out_file', 'in_file')]),
        (xfms, outputnode, [(k, k) for k in STUDY_XFMS]),
    ] + [(xfms, sink, [(key, 'in_file')]) for key, sink in sinks.items()])  # fmt:skip
    return workflow


def init_atlas_labels_wf(*, atlas: dict, omp_nthreads: int = 1, refine: bool = False,
                         fast: bool = False, study: dict | None = None,
                         name: str = 'atlas_labels_wf') -> pe.Workflow:
    """Bring an atlas's labels onto the native χ grid (generic-label interpolation).

    Atlases in the registration template use the inverse of the subject's transform; an
    atlas in another template (SUIT) is first mapped through a template-to-template
    transform computed once with antspyx and cached; a custom atlas is registered to its
    own template image. The labels' sidecar names the atlas, its template, citation and
    licence (:func:`qsmflow.interfaces.regions.atlas_metadata`).

    With ``refine`` (and an atlas in the registration template or a custom atlas; an atlas
    reached through another template is not refined), the χ map is registered once more
    to the atlas's χ-contrast prior around the iron-rich nuclei
    (:class:`qsmflow.interfaces.registration.RefineNuclei`) and the labels come through
    both registrations; the labels of the magnitude registration alone are kept as
    ``dseg_atlas``. With ``fast`` (``--fast-registration``) the registrations run on all
    ``omp_nthreads`` threads, not bitwise reproducibly; the labels' sidecar says so.
    With ``study`` (``--study-template``) a custom atlas is reached through the subject's
    registration to the study template (inputs ``study_*``) and the study template's own
    registration to the atlas's template, instead of a registration of its own; the labels'
    sidecar names the study template.

    Inputs
    ------
    affine, warp, inverse_warp : str
        Subject transforms (native → registration template).
    study_affine, study_warp, study_inverse_warp : str
        With ``study``: subject transforms native → study template.
    magnitude, mask, chimap : str
        For custom atlases (their own registration) and the output grid (χ).

    Outputs
    -------
    dseg : str
        Atlas labels on the χ grid (refined with ``refine``).
    dseg_atlas : str
        With ``refine``: the labels of the magnitude registration alone.
    """
    from qsmflow.interfaces.regions import atlas_metadata
    from qsmflow.atlases.transforms import template_name
    from qsmflow.interfaces.registration import (
        ApplyTransforms, RefineNuclei, RegisterToTemplate)

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=['affine', 'warp', 'inverse_warp', 'magnitude', 'mask', 'chimap',
                *((f'study_{k}' for k in STUDY_XFMS) if study else ())]),
        name='inputnode')
    refine = bool(refine) and not atlas.get('via')
    outputnode = pe.Node(niu.IdentityInterface(
        fields=['dseg', 'dseg_atlas'] if refine else ['dseg']), name='outputnode')
    meta = {'Atlas': atlas_metadata(atlas['name'], atlas.get('source')),
            **_fast_record(fast, omp_nthreads), **_study_record(study)}
    to_native = pe.Node(ApplyTransforms(in_file=atlas['image'], interpolation='genericLabel',
                                        meta=meta), name='to_native', mem_gb=1.0)
    if atlas.get('template_image') and study:
        own = _through_study_node(study, atlas['template_image'], atlas.get('template_mask'),
                                  atlas['name'], omp_nthreads)
        xfms = pe.Node(niu.Merge(2), name='xfms', run_without_submitting=True)
        workflow.connect([
            (inputnode, own, [(f'study_{k}', k) for k in STUDY_XFMS]),
            (own, xfms, [('affine', 'in1'), ('inverse_warp', 'in2')]),
        ])  # fmt:skip
        to_native.inputs.invert = [True, False]
        transforms = (own, STUDY_XFMS)
    elif atlas.get('template_image'):
        own = pe.Node(RegisterToTemplate(template=atlas['template_image'],
                                         nthreads=omp_nthreads, fast=fast),
                      name='register_own',
                      n_procs=omp_nthreads, mem_gb=2.0)
        if atlas.get('template_mask'):
            own.inputs.template_mask = atlas['template_mask']
        xfms = pe.Node(niu.Merge(2), name='xfms', run_without_submitting=True)
        workflow.connect([
            (inputnode, own, [('magnitude', 'in_magnitude'), ('mask', 'in_mask')]),
            (own, xfms, [('affine', 'in1'), ('inverse_warp', 'in2')]),
        ])  # fmt:skip
        to_native.inputs.invert = [True, False]
        transforms = (own, ('affine', 'warp', 'inverse_warp'))
    else:
        # Transforms next to the χ grid first: native ← template, then template ← SUIT.
        xfms = pe.Node(niu.Merge(4 if atlas.get('via') else 2), name='xfms',
                       run_without_submitting=True)
        workflow.connect([(inputnode, xfms, [('affine', 'in1'), ('inverse_warp', 'in2')])])
        to_native.inputs.invert = [True, False]
        transforms = (inputnode, ('affine', 'warp', 'inverse_warp'))
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
            cached.inputs.to = via.get('to') or template_name(via['fixed'])
            cached.inputs.nthreads = omp_nthreads
            workflow.connect([(cached, xfms, [('warp', 'in3'), ('affine', 'in4')])])
            to_native.inputs.invert = [True, False, False, False]
    workflow.connect([
        (inputnode, to_native, [('chimap', 'reference')]),
        (xfms, to_native, [('out', 'transforms')]),
        (to_native, outputnode, [('out_file', 'dseg_atlas' if refine else 'dseg')]),
    ])  # fmt:skip
    if refine:
        workflow.__desc__ = (
            'Around the iron-rich nuclei the atlas registration was refined with a second, '
            'χ-driven SyN registration (antspyx, local cross-correlation) of the '
            'susceptibility map to a χ-contrast image of the atlas nuclei.')
        node, names = transforms
        refiner = pe.Node(RefineNuclei(atlas=atlas['image'], lut=atlas['lut'], meta=meta,
                                       nthreads=omp_nthreads, fast=fast),
                          name='refine_nuclei',
                          n_procs=omp_nthreads, mem_gb=2.0)
        to_refined = pe.Node(ApplyTransforms(in_file=atlas['image'],
                                             interpolation='genericLabel'),
                             name='to_native_refined', mem_gb=1.0)
        workflow.connect([
            (node, refiner, [(n, n) for n in names]),
            (inputnode, refiner, [('chimap', 'in_chimap')]),
            (inputnode, to_refined, [('chimap', 'reference')]),
            (refiner, to_refined, [('transforms', 'transforms'), ('invert', 'invert'),
                                   ('meta', 'meta')]),
            (to_refined, outputnode, [('out_file', 'dseg')]),
        ])  # fmt:skip
    return workflow


def _fast_record(fast: bool, omp_nthreads: int) -> dict:
    """Sidecar entries of a ``--fast-registration`` run (none otherwise)."""
    from qsmflow.interfaces.registration import registration_threads

    if not fast:
        return {}
    return {'RegistrationThreads': registration_threads(omp_nthreads, True),
            'RegistrationBitwiseReproducible': False}


def _through_study_node(study: dict, target: str, target_mask: str | None, target_name: str,
                        omp_nthreads: int) -> pe.Node:
    """Node composing native → study template with study template → ``target``."""
    from qsmflow.interfaces.study_template import ThroughStudyTemplate

    node = pe.Node(ThroughStudyTemplate(study_template=study['image'], target=target,
                                        target_name=target_name, nthreads=omp_nthreads),
                   name='through_study_template', n_procs=omp_nthreads, mem_gb=2.0)
    if target_mask:
        node.inputs.target_mask = target_mask
    return node


def _study_record(study: dict | None) -> dict:
    """Sidecar entry of a run through a study template (none otherwise)."""
    if not study:
        return {}
    return {'StudyTemplate': {'Image': str(study['image']),
                              'Sources': list(study.get('meta', {}).get('Sources', []))}}


def _template_transform_node(moving, fixed, name, to, nthreads):
    """Nipype Function-node body of :func:`cached_template_transform`."""
    from qsmflow.atlases.transforms import cached_template_transform

    return cached_template_transform(moving, fixed, name, nthreads, to=to)


