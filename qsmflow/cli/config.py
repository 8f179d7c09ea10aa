# SPDX-License-Identifier: Apache-2.0
"""Parsed command line → :class:`qsmflow.config.RunConfig`, validated once.

Every check of the invocation that needs no input data happens here (a bad preset, a
folder that is not one, an unknown atlas, a custom atlas with a missing part, invalid
``--plugin-args``) and raises :class:`qsmflow.errors.InputError` (one line; the command
line exits with code 2). The parser (:mod:`qsmflow.cli.parser`) is the only other place
that knows the flags.
"""
from __future__ import annotations

import os
from pathlib import Path

from qsmflow.config import (
    CustomAtlas, EngineConfig, MapsConfig, MasksConfig, PathsConfig, PipelineConfig,
    RegionsConfig, RunConfig, SelectionConfig)
from qsmflow.errors import InputError


def config_from_args(opts) -> RunConfig:
    """The run configuration of ``qsmflow BIDS_DIR OUT_DIR participant|group`` options.

    The group level reads only the paths; its other sections keep their defaults.
    """
    if opts.analysis_level == 'group':
        out_dir = Path(opts.output_dir).expanduser().absolute()
        bids_dir = Path(opts.bids_dir).expanduser().absolute()
        work_dir = _work_dir(opts.work_dir, out_dir)
        if not opts.build_study_template:
            return RunConfig(paths=PathsConfig(bids_dir, out_dir, work_dir),
                             analysis_level='group')
        return RunConfig(paths=PathsConfig(bids_dir, out_dir, work_dir),
                         analysis_level='group', selection=selection_from_args(opts),
                         regions=regions_from_args(opts), engine=engine_from_args(opts))
    from qsmflow.bids.inputs import check_dirs

    bids_dir, out_dir = check_dirs(opts.bids_dir, opts.output_dir)
    pipeline = pipeline_from_args(opts, masks_from_args(opts))
    masking = pipeline.steps['masking']
    masks = MasksConfig(brain_masks=_path(masking.get('brain_masks')),
                        two_pass=bool(masking.get('two_pass', False)))
    slab = pipeline.steps['swi']['minip_params'].get('slab_mm')
    chisep = pipeline.steps['chi_separation']
    r2_hz = chisep['params'].get('r2_hz')
    maps = MapsConfig(r2star_method=pipeline.steps['r2star']['method'],
                      swi=pipeline.steps['swi']['enabled'],
                      minip_slab_mm=None if slab is None else float(slab),
                      chi_separation=chisep['enabled'],
                      r2_hz=None if r2_hz is None else float(r2_hz),
                      r2_maps=_path(chisep.get('r2_maps')))
    return RunConfig(
        paths=PathsConfig(bids_dir, out_dir, _work_dir(opts.work_dir, out_dir)),
        analysis_level='participant',
        selection=selection_from_args(opts),
        pipeline=pipeline,
        masks=masks,
        maps=maps,
        regions=regions_from_args(opts),
        engine=engine_from_args(opts))


def _path(value) -> Path | None:
    return Path(value) if value else None


def _work_dir(work_dir, out_dir: Path) -> Path:
    return (Path(work_dir) if work_dir else out_dir.parent / 'work').expanduser().absolute()


def selection_from_args(opts) -> SelectionConfig:
    """``--participant-label``, ``--session-label``, ``--bids-filter-file``,
    ``--field-strength`` and ``--skip-bids-validation``."""
    from qsmflow.bids.inputs import clean_labels, load_bids_filters

    filter_file = opts.bids_filter_file
    return SelectionConfig(
        participant_labels=tuple(clean_labels(opts.participant_label, 'sub-')),
        session_labels=tuple(clean_labels(opts.session_label, 'ses-')),
        bids_filter_file=Path(filter_file).expanduser().absolute() if filter_file else None,
        bids_filters=load_bids_filters(filter_file) if filter_file else None,
        field_strength=opts.field_strength,
        skip_bids_validation=bool(opts.skip_bids_validation))


def masks_from_args(opts) -> MasksConfig:
    """``--brain-masks`` (must be a folder) and ``--two-pass``/``--no-two-pass`` as given
    (None: not given; :func:`config_from_args` then stores what the preset says)."""
    masks = opts.brain_masks
    if masks is not None:
        if not Path(masks).expanduser().is_dir():
            raise InputError(f'--brain-masks {masks} is not a folder; give a BIDS '
                             'derivatives folder with sub-<label>/anat/*_desc-brain_mask.nii.gz')
        masks = Path(masks).expanduser().absolute()
    return MasksConfig(brain_masks=masks, two_pass=opts.two_pass)


def pipeline_from_args(opts, masks: MasksConfig) -> PipelineConfig:
    """``--preset`` resolved with the step overrides, the masking options and the maps
    options (``--r2star-method``, ``--swi``/``--no-swi``, ``--minip-slab-mm``,
    ``--chi-separation``/``--no-chi-separation``, ``--r2-hz``, ``--r2-map``) and the
    clinical readings (``--venography``, ``--foci``, ``--oef``, ``--hematocrit``,
    ``--mip-slab-mm``)."""
    from qsmflow.config.preset_checks import check_pipeline
    from qsmflow.config.presets import (
        load_preset, with_clinical_options, with_maps_options, with_masking_options,
        with_overrides)

    try:
        steps = with_overrides(
            load_preset(opts.preset), unwrapping=opts.unwrapping, bf_removal=opts.bf_removal,
            inversion=opts.inversion, reference=opts.reference, masking=opts.masking,
            echo_combination=opts.echo_combination)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    r2_maps = opts.r2_map
    if r2_maps is not None:
        if not Path(r2_maps).expanduser().is_dir():
            raise InputError(f'--r2-map {r2_maps} is not a folder; give a BIDS derivatives '
                             'folder with sub-<label>/anat/*_R2map.nii.gz (R2 in 1/s)')
        r2_maps = Path(r2_maps).expanduser().absolute()
    steps = with_masking_options(steps, two_pass=masks.two_pass,
                                 brain_masks=masks.brain_masks, brain=opts.brain_extraction)
    try:
        steps = with_maps_options(steps, r2star_method=opts.r2star_method,
                                  swi=opts.swi,
                                  minip_slab_mm=opts.minip_slab_mm,
                                  chi_separation=opts.chi_separation, r2_hz=opts.r2_hz,
                                  r2_maps=r2_maps)
        steps = with_clinical_options(steps, venography=opts.venography, foci=opts.foci,
                                      oef=opts.oef, hematocrit=opts.hematocrit,
                                      mip_slab_mm=opts.mip_slab_mm)
        check_pipeline(steps, opts.preset)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return PipelineConfig(preset=str(opts.preset), steps=steps)


_CUSTOM_FLAGS = {'image': '--atlas', 'lut': '--atlas-labels',
                 'template_image': '--atlas-template', 'template_mask': '--atlas-template-mask'}


def regions_from_args(opts, *, templateflow_home=None) -> RegionsConfig:
    """Registration, atlas and table options; ``templateflow_home`` defaults to
    ``$TEMPLATEFLOW_HOME`` (None when unset: templateflow's own default).

    Checks what needs no download: the segmentations folder, the custom atlas's files and
    that atlas names are known; whether templates and atlases can be fetched is decided
    when the run resolves them (:func:`qsmflow.atlases.options.regions_options`).
    """
    from qsmflow.bids_specs import load

    seg = opts.segmentations
    if seg is not None:
        if not Path(seg).is_dir():
            raise InputError(f'--segmentations {seg} is not a folder')
        seg = Path(seg).absolute()
    custom = _custom_atlas(opts)
    names = tuple(opts.atlases) if opts.atlases is not None else None
    study = opts.study_template
    if study is not None:
        from qsmflow.atlases.study_template import find_study_template

        study = Path(find_study_template(study)['image']).parent
        if opts.skip_registration:
            raise InputError('--study-template needs registration: drop --skip-registration')
    if opts.study_template_iterations < 1:
        raise InputError('--study-template-iterations must be at least 1')
    if opts.skip_registration and (custom is not None or names is not None):
        raise InputError('--atlas/--atlases need registration: drop --skip-registration '
                         '(or use --segmentations)')
    if names is not None:
        known = load('atlases')['atlases']
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise InputError(f'unknown atlas {unknown[0]!r}; known: '
                             f'{", ".join(sorted(known))} (or use --atlas)')
    if templateflow_home is None:
        templateflow_home = os.environ.get('TEMPLATEFLOW_HOME') or None
    return RegionsConfig(
        template=opts.template or 'MNI152NLin2009cAsym',
        template_resolution=opts.template_resolution, atlases=names, custom_atlas=custom,
        segmentations=seg, erode=bool(opts.erode_rois),
        refine_nuclei=bool(opts.refine_nuclei),
        segment_nuclei=bool(opts.segment_nuclei),
        fast_registration=bool(opts.fast_registration),
        registration_pyramid=opts.registration_pyramid,
        skip_registration=bool(opts.skip_registration),
        templateflow_home=Path(templateflow_home) if templateflow_home else None,
        study_template=study, build_study_template=bool(opts.build_study_template),
        study_template_iterations=int(opts.study_template_iterations))


def _custom_atlas(opts) -> CustomAtlas | None:
    from qsmflow.atlases.specs import check_custom_atlas

    parts = {'image': opts.atlas, 'lut': opts.atlas_labels,
             'template_image': opts.atlas_template, 'template_mask': opts.atlas_template_mask}
    given = [k for k, v in parts.items() if v is not None]
    if not given:
        return None
    if not {'image', 'lut', 'template_image'} <= set(given):
        raise InputError('--atlas, --atlas-labels and --atlas-template go together '
                         '(--atlas-template-mask is optional)')
    for key in given:
        if not Path(parts[key]).is_file():
            raise InputError(f'{parts[key]} ({_CUSTOM_FLAGS[key]}) not found')
    check_custom_atlas(parts['image'], parts['lut'])
    return CustomAtlas(**{k: Path(parts[k]).absolute() for k in given})


def _device(name: str) -> str:
    """``--device``, checked here (``gpu`` without CUDA is a one-line error before any work)."""
    from qsmflow.qsm.device import resolve

    try:
        resolve(name)
    except ValueError as err:
        raise InputError(str(err)) from None
    return name


def engine_from_args(opts) -> EngineConfig:
    """``--nprocs``, ``--omp-nthreads``, ``--device``, ``--mem-gb``, ``--plugin`` and
    ``--plugin-args``."""
    from qsmflow.execution.engines import load_plugin_args

    return EngineConfig(
        nprocs=opts.nprocs, omp_nthreads=opts.omp_nthreads or opts.nprocs,
        device=_device(opts.device), mem_gb=opts.mem_gb,
        plugin=opts.plugin or ('linear' if opts.nprocs == 1 else 'multiproc'),
        plugin_args=load_plugin_args(opts.plugin_args))
