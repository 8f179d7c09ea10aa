# SPDX-License-Identifier: Apache-2.0
"""Top-level workflow: every selected acquisition, reconstructed and stored."""
from __future__ import annotations

from nipype.pipeline import engine as pe


def init_qsmflow_wf(*, acquisitions: list, output_dir: str, bids_dir: str, pipeline: dict,
                    omp_nthreads: int = 1, regions_opts: dict | None = None,
                    device: str = 'cpu', name: str = 'qsmflow_wf') -> pe.Workflow:
    """Build the participant-level workflow for a list of acquisitions.

    Each acquisition gets its own sub-workflow (``<sub_ses_acq_run>_wf``), so that a
    failure in one leaves the others running; Nipype's plugin runs them in parallel. The
    acquisitions of a session share one template registration: each but the first is
    registered rigidly to the first and goes through its registration
    (:func:`qsmflow.workflows.registration.session_references`), so a failure of the first
    one's registration also fails the others' labels and tables.

    Parameters
    ----------
    acquisitions : list of :class:`qsmflow.bids.inputs.Acquisition`
        Checked inputs.
    output_dir, bids_dir : str
        Roots of the derivatives and raw datasets.
    pipeline : dict
        Algorithms and options per step (:attr:`qsmflow.config.PipelineConfig.steps`);
        with ``pipeline['masking']['brain_masks']`` set, each acquisition's own mask
        (``acq.brain_mask``, found by pre-flight) replaces the automatic mask; with
        ``pipeline['chi_separation']['r2_maps']`` set, each acquisition's R2 map
        (``acq.r2_map``, found by pre-flight) replaces χ-separation's scalar R2; with
        ``pipeline['clinical']`` (venography, foci, OEF) those readings are added
        (:func:`qsmflow.workflows.clinical.connect_clinical`).
    omp_nthreads : int
        Threads per node.
    device : {'cpu', 'gpu', 'auto'}
        Where the FFT-bound steps compute (``--device``, :mod:`qsmflow.qsm.device`).
    regions_opts : dict, optional
        Template registration, atlases and regional tables (see
        :func:`init_single_acquisition_wf`); None skips them.
    """
    from qsmflow.execution.staging import name_prefix
    from qsmflow.workflows.registration import registers, session_references, through_run_edges

    workflow = pe.Workflow(name=name)
    references = session_references(acquisitions) if registers(regions_opts) else {}
    acq_wfs = {}
    for acq in acquisitions:
        reference = references.get(acq.name)
        acq_wfs[acq.name] = init_single_acquisition_wf(
            acq=acq, output_dir=output_dir, bids_dir=bids_dir, pipeline=pipeline,
            omp_nthreads=omp_nthreads, regions_opts=regions_opts, device=device,
            reference_run=name_prefix(reference) if reference else None)
        workflow.add_nodes([acq_wfs[acq.name]])
    for name, reference in references.items():
        workflow.connect([(acq_wfs[reference.name], acq_wfs[name],
                           through_run_edges(regions_opts))])
    return workflow


def init_single_acquisition_wf(*, acq, output_dir: str, bids_dir: str, pipeline: dict,
                               omp_nthreads: int = 1, regions_opts: dict | None = None,
                               reference_run: str | None = None, device: str = 'cpu',
                               name: str | None = None) -> pe.Workflow:
    """Reconstruction and derivatives of one acquisition, inputs filled in.

    Parameters
    ----------
    acq : :class:`qsmflow.bids.inputs.Acquisition`
        Files, echo times (s), field strength (T), entities and the input files pre-flight
        resolved (voxel count, user brain mask, user segmentation and lookup table).
    regions_opts : dict, optional
        ``template`` (templateflow name; None skips registration), ``template_files``,
        ``atlases`` (list of atlas dicts from :func:`qsmflow.atlases.specs.resolve_atlases`),
        ``erode`` (bool): :func:`qsmflow.atlases.options.regions_options`.
    reference_run : str, optional
        The session's reference run this one is registered through (its name,
        ``sub-01_run-1``; :func:`qsmflow.workflows.registration.connect_regions`); the
        caller connects that run's workflow
        (:func:`qsmflow.workflows.registration.through_run_edges`).
    """
    from qsmflow.workflows.clinical import clinical_enabled, connect_clinical
    from qsmflow.workflows.outputs import init_qsm_derivatives_wf, qsm_outputs
    from qsmflow.workflows.qsm import init_qsm_wf

    n_voxels = int(acq.n_voxels or 2_000_000)
    workflow = pe.Workflow(name=name or f'{acq.name}_wf')
    qsm_wf = init_qsm_wf(pipeline=pipeline, n_voxels=n_voxels,
                         n_echoes=len(acq.echo_times_s), omp_nthreads=omp_nthreads,
                         device=device)
    for field, value in (('mag_files', acq.mag_files), ('phase_files', acq.phase_files),
                         ('echo_times', acq.echo_times_s), ('b0_tesla', acq.b0_tesla),
                         ('phase_units', acq.phase_units)):
        if not (acq.coil_files and field in ('mag_files', 'phase_files', 'phase_units')):
            setattr(qsm_wf.inputs.inputnode, field, value)
    if acq.coil_files:  # uncombined coils: MCPC-3D-S before everything else
        _connect_coil_combination(workflow, qsm_wf, acq, n_voxels)
    if pipeline['masking'].get('brain_masks'):
        qsm_wf.inputs.inputnode.brain_mask = acq.brain_mask
    if (pipeline.get('chi_separation') or {}).get('r2_maps'):
        qsm_wf.inputs.inputnode.r2_map = acq.r2_map
    outputs = qsm_outputs(pipeline, len(acq.echo_times_s))
    ds_wf = init_qsm_derivatives_wf(output_dir=output_dir, bids_dir=bids_dir,
                                    entities=acq.entities,
                                    source_files=acq.mag_files + acq.phase_files,
                                    outputs=outputs)
    workflow.connect([
        (qsm_wf, ds_wf, [(f'outputnode.{k}', f'inputnode.{k}') for k in outputs]),
    ])  # fmt:skip
    if clinical_enabled(pipeline):
        connect_clinical(workflow, qsm_wf, acq=acq, output_dir=output_dir, bids_dir=bids_dir,
                         pipeline=pipeline, outputs=outputs, omp_nthreads=omp_nthreads)
    if regions_opts:
        from qsmflow.workflows.registration import connect_regions
        from qsmflow.workflows.regions import table_maps

        segmentation = (acq.segmentation, acq.segmentation_lut) if acq.segmentation else None
        connect_regions(workflow, qsm_wf, acq=acq, output_dir=output_dir,
                        regions_opts=regions_opts, segmentation=segmentation,
                        omp_nthreads=omp_nthreads, maps=table_maps(outputs),
                        reference_run=reference_run)
    from qsmflow.workflows.reports import connect_reports

    connect_reports(workflow, qsm_wf, acq=acq, output_dir=output_dir, regions_opts=regions_opts,
                    omp_nthreads=omp_nthreads)
    return workflow


def _connect_coil_combination(workflow, qsm_wf, acq, n_voxels):
    """Feed ``qsm_wf`` the MCPC-3D-S combination of ``acq.coil_files`` (4D, phase in rad)."""
    from qsmflow.interfaces.coils import CombineCoils

    n_echoes = len(acq.echo_times_s)
    combine_coils = pe.Node(CombineCoils(coil_files=acq.coil_files,
                                         echo_times=acq.echo_times_s,
                                         phase_units=acq.phase_units),
                            name='combine_coils', mem_gb=0.5 + 36e-9 * n_voxels * n_echoes)
    qsm_wf.inputs.inputnode.phase_units = 'rad'
    workflow.connect([
        (combine_coils, qsm_wf, [('mag_files', 'inputnode.mag_files'),
                                 ('phase_files', 'inputnode.phase_files')]),
    ])  # fmt:skip
