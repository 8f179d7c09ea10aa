# SPDX-License-Identifier: Apache-2.0
"""Template registration, atlas labels in native space and the regional tables."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe


def connect_regions(workflow, qsm_wf, *, acq, output_dir: str, regions_opts: dict,
                    segmentation: tuple | None = None, omp_nthreads: int = 1,
                    maps=(), reference_run: str | None = None) -> None:
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
        (bool: ``--segment-nuclei``, :func:`qsmflow.workflows.regions.init_regions_wf`),
        ``fast`` (bool: ``--fast-registration``), ``pyramid`` (``--registration-pyramid``:
        a key of :data:`qsmflow.interfaces.registration.PYRAMIDS`).
    segmentation : (str, str), optional
        The user's segmentation image and lookup table in the acquisition's scanner space
        (found by pre-flight), or None.
    omp_nthreads : int
        ITK threads.
    maps : sequence of str
        Outputs of ``qsm_wf`` the tables average per region
        (:func:`qsmflow.workflows.regions.table_maps`: R2*, χ⁺, χ⁻ where computed).
    reference_run : str, optional
        Name (``sub-01_run-1``) of the session's reference run when this acquisition is
        registered through it (:func:`session_references`): its magnitude is registered
        rigidly to that run's (node ``register_to_run``) and the rigid transform composed
        with that run's registrations; the parent workflow connects the reference run's
        outputs (:func:`through_run_edges`).
    """
    from qsmflow.workflows.regions import (
        init_regions_wf, init_segmentation_regions_wf, table_maps)

    erode = bool(regions_opts.get('erode'))
    refine = bool(regions_opts.get('refine'))
    fast = bool(regions_opts.get('fast'))
    pyramid = regions_opts.get('pyramid') or 'default'
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
    to_run = None
    if reference_run:
        from qsmflow.interfaces.run_registration import RegisterToRun

        to_run = pe.Node(RegisterToRun(nthreads=omp_nthreads, fast=fast),
                         name='register_to_run', n_procs=omp_nthreads, mem_gb=1.0)
        workflow.connect([(qsm_wf, to_run, [('load_megre.magnitude', 'in_magnitude'),
                                            ('brain_mask.out_mask', 'in_mask')])])
    reg_wf = None
    if regions_opts.get('template'):
        reg_wf = init_registration_wf(
            template=regions_opts['template'],
            template_image=regions_opts['template_files']['image'],
            template_mask=regions_opts['template_files'].get('mask'), output_dir=output_dir,
            entities=acq.entities, omp_nthreads=omp_nthreads, fast=fast, study=study,
            pyramid=pyramid, through_run=reference_run)
        if to_run is not None:
            workflow.connect([(to_run, reg_wf, [('rigid', 'inputnode.rigid'),
                                                ('moving', 'inputnode.moving')])])
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
                                         pyramid=pyramid, through_run=reference_run,
                                         name=_atlas_wf_name(atlas))
        if reference_run and own and not study:
            workflow.connect([(to_run, labels_wf, [('rigid', 'inputnode.rigid')])])
        regions_wf = init_regions_wf(atlas=atlas['name'], output_dir=output_dir,
                                     entities=acq.entities, erode=erode, source=atlas['source'],
                                     maps=maps, refined=refined,
                                     segment=bool(regions_opts.get('segment')),
                                     atlas_files=(atlas['image'], template_brain(
                                         atlas, regions_opts)),
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


def template_brain(atlas: dict, regions_opts: dict) -> str | None:
    """Brain mask (else the image, skull-stripped) of the template an atlas lives in, for
    the labels' volume guard rail."""
    if atlas.get('template_image'):
        return atlas.get('template_mask') or atlas['template_image']
    files = regions_opts.get('template_files') or {}
    return files.get('mask') or files.get('image')


#: Transforms of a registration (native → template), as the workflows pass them on.
STUDY_XFMS = ('affine', 'warp', 'inverse_warp')


def registers(regions_opts: dict | None) -> bool:
    """Whether ``regions_opts`` (:func:`connect_regions`) register the magnitude to a
    template: the registration template's or a custom atlas's own."""
    return bool(regions_opts) and bool(
        regions_opts.get('template')
        or any(a.get('template_image') for a in regions_opts.get('atlases') or []))


def session_references(acquisitions) -> dict:
    """The reference run of every other run of a session: ``{acq.name: reference
    Acquisition}`` for the acquisitions registered through another one.

    A session's acquisitions (same subject and session, any ``acq``/``rec``/``run``) share
    one template registration, that of the first in sorted order (``acq``, ``rec``, then
    ``run`` by number); a session with a single acquisition has none.

    >>> from types import SimpleNamespace as A
    >>> acqs = [A(name=f'r{r}', entities={'subject': '01', 'run': r}) for r in ('10', '2')]
    >>> {k: v.name for k, v in session_references(acqs).items()}
    {'r10': 'r2'}
    """
    def order(acq):
        ents = acq.entities
        run = str(ents.get('run') or '')
        return (ents.get('acquisition') or '', ents.get('reconstruction') or '',
                int(run) if run.isdigit() else -1, run)

    sessions = {}
    for acq in acquisitions:
        sessions.setdefault((acq.entities['subject'], acq.entities.get('session')),
                            []).append(acq)
    refs = {}
    for runs in sessions.values():
        first, *others = sorted(runs, key=order)
        refs.update({acq.name: first for acq in others})
    return refs


def through_run_edges(regions_opts: dict) -> list:
    """Connections from the reference run's acquisition workflow to that of a run
    registered through it (:func:`connect_regions` with ``reference_run``), as
    ``(source, destination)`` pairs of the two workflows' nodes (``workflow.connect``)."""
    edges = [('qsm_wf.load_megre.magnitude', 'register_to_run.reference_magnitude'),
             ('qsm_wf.brain_mask.out_mask', 'register_to_run.reference_mask')]
    study = regions_opts.get('study_template')
    if regions_opts.get('template'):
        keys = [*STUDY_XFMS, *((f'study_{k}' for k in STUDY_XFMS) if study else ())]
        edges += [(f'registration_wf.outputnode.{k}', f'registration_wf.inputnode.reference_{k}')
                  for k in keys]
    for atlas in regions_opts.get('atlases') or []:
        if atlas.get('template_image') and not study:
            name = _atlas_wf_name(atlas)
            edges += [(f'{name}.outputnode.{k}', f'{name}.inputnode.reference_{k}')
                      for k in STUDY_XFMS]
    return edges


def _atlas_wf_name(atlas: dict) -> str:
    """Name of an atlas's labels workflow in the acquisition workflow.

    >>> _atlas_wf_name({'name': 'MASSP20'})
    'atlas_massp20_wf'
    """
    return f'atlas_{atlas["name"].lower()}_wf'


def init_registration_wf(*, template: str, template_image: str, template_mask: str | None,
                         output_dir: str, entities: dict, omp_nthreads: int = 1,
                         fast: bool = False, study: dict | None = None,
                         pyramid: str = 'default', through_run: str | None = None,
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
    pyramid : str
        Registration settings, a key of :data:`qsmflow.interfaces.registration.PYRAMIDS`
        (``--registration-pyramid``; recorded in the sidecar when not ``'default'``).
    through_run : str, optional
        Name of the session's reference run this run goes through: no registration here;
        the rigid transform to that run (input ``rigid``) is composed with its transforms
        (inputs ``reference_*``; :class:`qsmflow.interfaces.run_registration.ThroughRun`),
        recorded in the sidecar (``RegistrationThroughRun``).
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
    rigid, moving, reference_affine, reference_warp, reference_inverse_warp : str
        With ``through_run``: the rigid transform to the reference run, this run's moving
        image and the reference run's transforms (and ``reference_study_*`` with ``study``).

    Outputs
    -------
    affine, warp, inverse_warp : str
        Transforms native → template (ITK affine, displacement fields in mm).
    study_affine, study_warp, study_inverse_warp : str
        With ``study``: the transforms native → study template.
    moving : str
        The moving image: brain-masked combined magnitude (a.u.).
    """
    from qsmflow.interfaces.bids import DerivativesSink, FileSink
    from qsmflow.interfaces.registration import ApplyTransforms

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (_through_run_desc(through_run, template) if through_run else
                         f'The combined magnitude was registered to the {template} template '
                         'with antspyx (rigid, affine, SyN).')
    if study:
        workflow.__desc__ += (' It went through a study template of the cohort (built from '
                              'the participants\' first pass, registered once to '
                              f'{template}).')
    out_keys = [*STUDY_XFMS, *((f'study_{k}' for k in STUDY_XFMS) if study else ())]
    inputnode = pe.Node(niu.IdentityInterface(fields=['magnitude', 'mask', 'chimap', *(
        ['rigid', 'moving', *(f'reference_{k}' for k in out_keys)] if through_run else [])]),
        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=[*out_keys, 'moving']),
                         name='outputnode')
    if through_run:
        xfms = _through_run_node(workflow, inputnode, 'through_run')
        workflow.connect([(inputnode, outputnode, [('moving', 'moving')])])
        if study:
            study_xfms = _through_run_node(workflow, inputnode, 'through_run_study', 'study_')
            workflow.connect([(study_xfms, outputnode, [(k, f'study_{k}') for k in STUDY_XFMS])])
    else:
        xfms = register = _register_node(study['image'] if study else template_image,
                                         study['mask'] if study else template_mask,
                                         omp_nthreads, fast, pyramid, 'register')
        workflow.connect([
            (inputnode, register, [('magnitude', 'in_magnitude'), ('mask', 'in_mask')]),
            (register, outputnode, [('moving', 'moving')]),
        ])  # fmt:skip
        if study:
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
              **_registration_record(fast, omp_nthreads, pyramid, through_run),
              **_study_record(study)}),
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
        (xfms, fwd_list, [('warp', 'in1'), ('affine', 'in2')]),
        (inputnode, chi_std, [('chimap', 'in_file')]),
        (fwd_list, chi_std, [('out', 'transforms')]),
        (chi_std, ds_chi_std, [('out_file', 'in_file')]),
        (xfms, outputnode, [(k, k) for k in STUDY_XFMS]),
    ] + [(xfms, sink, [(key, 'in_file')]) for key, sink in sinks.items()])  # fmt:skip
    return workflow


def init_atlas_labels_wf(*, atlas: dict, omp_nthreads: int = 1, refine: bool = False,
                         fast: bool = False, study: dict | None = None,
                         pyramid: str = 'default', through_run: str | None = None,
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
    (:class:`qsmflow.interfaces.refinement.RefineNuclei`) and the labels come through
    both registrations; the labels of the magnitude registration alone are kept as
    ``dseg_atlas``. With ``fast`` (``--fast-registration``) the registrations run on all
    ``omp_nthreads`` threads, not bitwise reproducibly; the labels' sidecar says so.
    With ``study`` (``--study-template``) a custom atlas is reached through the subject's
    registration to the study template (inputs ``study_*``) and the study template's own
    registration to the atlas's template, instead of a registration of its own; the labels'
    sidecar names the study template. ``pyramid`` (``--registration-pyramid``) sets the
    custom atlas's own registration. With ``through_run`` (the session's reference run, see
    :func:`connect_regions`) a custom atlas comes through the rigid transform to that run
    (input ``rigid``) and that run's registration to the atlas's template (inputs
    ``reference_*``) instead of a registration of its own; the labels' sidecar names the
    run (``RegistrationThroughRun``), whichever way the atlas is reached.

    Inputs
    ------
    affine, warp, inverse_warp : str
        Subject transforms (native → registration template).
    study_affine, study_warp, study_inverse_warp : str
        With ``study``: subject transforms native → study template.
    magnitude, mask, chimap : str
        For custom atlases (their own registration) and the output grid (χ).
    rigid, reference_affine, reference_warp, reference_inverse_warp : str
        With ``through_run``, a custom atlas: the rigid transform to the reference run and
        that run's transforms to the atlas's template (its outputs ``affine``...).

    Outputs
    -------
    dseg : str
        Atlas labels on the χ grid (refined with ``refine``).
    dseg_atlas : str
        With ``refine``: the labels of the magnitude registration alone.
    affine, warp, inverse_warp : str
        A custom atlas without ``study``: the transforms native → the atlas's template.
    """
    from qsmflow.interfaces.regions import atlas_metadata
    from qsmflow.atlases.transforms import template_name
    from qsmflow.interfaces.refinement import RefineNuclei
    from qsmflow.interfaces.registration import ApplyTransforms

    workflow = pe.Workflow(name=name)
    own_xfms = bool(atlas.get('template_image')) and not study
    through = own_xfms and bool(through_run)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=['affine', 'warp', 'inverse_warp', 'magnitude', 'mask', 'chimap',
                *((f'study_{k}' for k in STUDY_XFMS) if study else ()),
                *(['rigid', *(f'reference_{k}' for k in STUDY_XFMS)] if through else ())]),
        name='inputnode')
    refine = bool(refine) and not atlas.get('via')
    outputnode = pe.Node(niu.IdentityInterface(
        fields=[*(['dseg', 'dseg_atlas'] if refine else ['dseg']),
                *(STUDY_XFMS if own_xfms else ())]), name='outputnode')
    meta = {'Atlas': atlas_metadata(atlas['name'], atlas.get('source')),
            **_registration_record(fast, omp_nthreads, pyramid, through_run),
            **_study_record(study)}
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
        if through:
            own = _through_run_node(workflow, inputnode, 'through_run')
        else:
            own = _register_node(atlas['template_image'], atlas.get('template_mask'),
                                 omp_nthreads, fast, pyramid, 'register_own')
            workflow.connect([(inputnode, own, [('magnitude', 'in_magnitude'),
                                                ('mask', 'in_mask')])])
        xfms = pe.Node(niu.Merge(2), name='xfms', run_without_submitting=True)
        workflow.connect([
            (own, xfms, [('affine', 'in1'), ('inverse_warp', 'in2')]),
            (own, outputnode, [(k, k) for k in STUDY_XFMS]),
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


def _registration_record(fast: bool, omp_nthreads: int, pyramid: str = 'default',
                         through_run: str | None = None) -> dict:
    """Sidecar entries of a registration run otherwise than by default: on every thread
    (``--fast-registration``), with another pyramid (``--registration-pyramid``), through
    the session's reference run (none for the default).

    >>> _registration_record(False, 4)
    {}
    >>> _registration_record(True, 4, 'quick')
    {'RegistrationThreads': 4, 'RegistrationBitwiseReproducible': False, \
'RegistrationPyramid': 'quick'}
    """
    from qsmflow.interfaces.registration import RIGID_TO_RUN, registration_threads

    record = {}
    if fast:
        record.update(RegistrationThreads=registration_threads(omp_nthreads, True),
                      RegistrationBitwiseReproducible=False)
    if pyramid != 'default':
        record['RegistrationPyramid'] = pyramid
    if through_run:
        record['RegistrationThroughRun'] = {
            'Run': through_run,
            'Method': "rigid registration (antspyx, Mattes mutual information) of this run's "
                      "brain-masked magnitude to that run's, composed with that run's "
                      'registration',
            'Settings': {k: list(v) if isinstance(v, tuple) else v
                         for k, v in RIGID_TO_RUN.items()}}
    return record


def _register_node(template: str, template_mask: str | None, omp_nthreads: int, fast: bool,
                   pyramid: str, name: str) -> pe.Node:
    """A :class:`~qsmflow.interfaces.registration.RegisterToTemplate` node."""
    from qsmflow.interfaces.registration import RegisterToTemplate

    node = pe.Node(RegisterToTemplate(template=template, nthreads=omp_nthreads, fast=fast,
                                      pyramid=pyramid),
                   name=name, n_procs=omp_nthreads, mem_gb=2.0)
    if template_mask:
        node.inputs.template_mask = template_mask
    return node


def _through_run_node(workflow, inputnode, name: str, prefix: str = '') -> pe.Node:
    """A :class:`~qsmflow.interfaces.run_registration.ThroughRun` node fed from
    ``inputnode``'s ``rigid`` and ``reference_<prefix><transform>`` fields."""
    from qsmflow.interfaces.run_registration import ThroughRun

    node = pe.Node(ThroughRun(), name=name, mem_gb=0.2)
    workflow.connect([(inputnode, node, [('rigid', 'rigid'), *(
        (f'reference_{prefix}{k}', k) for k in STUDY_XFMS)])])
    return node


def _through_run_desc(through_run: str, template: str) -> str:
    """Methods text of a run registered through its session's reference run."""
    return (f'The combined magnitude was registered rigidly to that of {through_run} (antspyx, '
            'Mattes mutual information), whose registration to the '
            f'{template} template (rigid, affine, SyN) it then followed.')


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


