# SPDX-License-Identifier: Apache-2.0
"""Visual QC of one acquisition: the QC metrics table and the reportlets."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Outputs of :func:`qsmflow.workflows.qsm.init_qsm_wf`'s ``outputnode`` the reports read.
REPORT_INPUTS = ('mask', 'total_field', 'local_field', 'field_noise', 'chimap')


def init_qsm_reports_wf(*, output_dir: str, entities: dict, registration: bool = False,
                        atlases: tuple = (), name: str = 'reports_wf') -> pe.Workflow:
    """QC metrics (``…_desc-qc_metrics.tsv`` + ``.json``) and reportlets
    (``figures/…_desc-<what>_qsm.<png|svg>``) of one acquisition.

    The metrics gather what the steps recorded in their sidecars (brain-extraction QC,
    phase-quality trimming, the regularisation weight chosen from the data, the reference)
    and measure the rest on the outputs (:mod:`qsmflow.reports.qc_table`). The reportlets
    (:mod:`qsmflow.reports.reportlets`) are assembled into ``OUT_DIR/sub-<label>.html``
    after the run (:mod:`qsmflow.reports.participant`).

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset (the staging folder during the run).
    entities : dict
        BIDS entities of the acquisition.
    registration : bool
        Whether ``in_registered``/``template``/``template_mask`` are connected.
    atlases : tuple of dict
        ``{'name', 'image', 'lut'}`` of each atlas whose native labels come in ``dsegs``,
        and ``brain``: the brain mask (or skull-stripped image) of its template, for the
        label volumes scaled by the brains' (None: not scaled).

    Inputs
    ------
    magnitude : str
        4D magnitude (a.u.).
    brain_mask : str
        Brain mask before phase-quality trimming.
    mask, total_field, local_field, field_noise, chimap : str
        The reconstruction's outputs (fields and χ in ppm).
    registered : str
        Brain-masked magnitude resampled to the template (with ``registration``).
    dsegs : list of str
        Native labels of ``atlases``, in order.
    """
    from qsmflow.interfaces.bids import FileSink
    from qsmflow.interfaces.reports import FigureSink, QCMetrics, Reportlets

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=['magnitude', 'brain_mask', *REPORT_INPUTS, 'registered', 'dsegs']),
        name='inputnode')
    qc = pe.Node(QCMetrics(), name='qc_metrics', mem_gb=1.0)
    figures = pe.Node(Reportlets(), name='reportlets', mem_gb=1.0)
    ds_qc = pe.Node(FileSink(base_directory=output_dir, kind='qc', entities=entities),
                    name='ds_qc', run_without_submitting=True)
    ds_qc_json = pe.Node(FileSink(base_directory=output_dir, kind='qc_json', entities=entities),
                         name='ds_qc_json', run_without_submitting=True)
    ds_figures = pe.Node(FigureSink(base_directory=output_dir, entities=entities),
                         name='ds_figures', run_without_submitting=True)
    common = [('magnitude', 'in_magnitude'), ('brain_mask', 'in_brain_mask'),
              ('mask', 'in_mask'), ('local_field', 'in_local_field'),
              ('field_noise', 'in_noise'), ('chimap', 'in_chimap')]
    workflow.connect([
        (inputnode, qc, common),
        (inputnode, figures, common + [('total_field', 'in_total_field')]),
        (qc, ds_qc, [('out_tsv', 'in_file')]),
        (qc, ds_qc_json, [('out_json', 'in_file')]),
        (figures, ds_figures, [('out_files', 'in_files')]),
    ])  # fmt:skip
    if registration:
        workflow.connect([
            (inputnode, qc, [('registered', 'in_registered')]),
            (inputnode, figures, [('registered', 'in_registered')]),
        ])  # fmt:skip
    if atlases:
        qc.inputs.atlas_names = [a['name'] for a in atlases]
        qc.inputs.atlas_images = [a['image'] for a in atlases]
        qc.inputs.atlas_brains = [a.get('brain') or '' for a in atlases]
        figures.inputs.in_lut = atlases[0]['lut']
        workflow.connect([
            (inputnode, qc, [('dsegs', 'in_dsegs')]),
            (inputnode, figures, [(('dsegs', _first), 'in_dseg')]),
        ])  # fmt:skip
    return workflow


def connect_reports(workflow, qsm_wf, *, acq, output_dir: str, regions_opts: dict | None,
                    omp_nthreads: int = 1) -> None:
    """Add :func:`init_qsm_reports_wf` to an acquisition's workflow, fed by ``qsm_wf`` and,
    when they are in ``workflow``, the template registration (``registration_wf``) and the
    atlas label workflows (``atlas_<name>_wf``) of :func:`qsmflow.workflows.registration.
    connect_regions`."""
    from qsmflow.interfaces.registration import ApplyTransforms
    from qsmflow.workflows.registration import template_brain

    regions_opts = regions_opts or {}
    names = set(workflow.list_node_names())
    has_reg = any(n.startswith('registration_wf.') for n in names)
    atlases = tuple({**a, 'brain': template_brain(a, regions_opts)}
                    for a in regions_opts.get('atlases') or []
                    if any(n.startswith(f'atlas_{a["name"].lower()}_wf.') for n in names))
    reports_wf = init_qsm_reports_wf(output_dir=output_dir, entities=acq.entities,
                                     registration=has_reg, atlases=atlases)
    if getattr(acq, 'polarity', None):
        reports_wf.inputs.qc_metrics.polarity = acq.polarity
    workflow.connect([
        (qsm_wf, reports_wf, [('load_megre.magnitude', 'inputnode.magnitude'),
                              ('brain_mask.out_mask', 'inputnode.brain_mask')]
         + [(f'outputnode.{k}', f'inputnode.{k}') for k in REPORT_INPUTS]),
    ])  # fmt:skip
    if has_reg:
        files = regions_opts['template_files']
        reg_wf = workflow.get_node('registration_wf')
        to_template = pe.Node(ApplyTransforms(reference=files['image'], interpolation='linear',
                                              nthreads=omp_nthreads),
                              name='magnitude_to_template', mem_gb=1.0)
        reports_wf.inputs.qc_metrics.template = files['image']
        reports_wf.inputs.reportlets.template = files['image']
        if files.get('mask'):
            reports_wf.inputs.qc_metrics.template_mask = files['mask']
            reports_wf.inputs.reportlets.template_mask = files['mask']
        workflow.connect([
            (reg_wf, to_template, [('outputnode.moving', 'in_file'),
                                   ('fwd_list.out', 'transforms')]),
            (to_template, reports_wf, [('out_file', 'inputnode.registered')]),
        ])  # fmt:skip
    if atlases:
        merge = pe.Node(niu.Merge(len(atlases)), name='report_dsegs',
                        run_without_submitting=True)
        for i, atlas in enumerate(atlases, start=1):
            workflow.connect(workflow.get_node(f'atlas_{atlas["name"].lower()}_wf'),
                             'outputnode.dseg', merge, f'in{i}')
        workflow.connect(merge, 'out', reports_wf, 'inputnode.dsegs')


def _first(items):
    """The first of a list (Nipype connection helper).

    >>> _first(['a', 'b'])
    'a'
    """
    return items[0]
