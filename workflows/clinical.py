# SPDX-License-Identifier: Apache-2.0
"""What clinicians read from χ: QSM venography, haemorrhage-like / calcification-like foci
and the oxygen extraction fraction (QSM-OEF), with their derivatives."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Output kinds (keys of ``bids_specs/outputs.json``) of each clinical reading.
VENOGRAPHY_OUTPUTS = ('veins', 'vesselness', 'chi_mip', 'veins_mip')
FOCI_OUTPUTS = ('foci_dseg', 'foci_tsv')
OEF_OUTPUTS = ('oef_tsv', 'oef_json')


def clinical_enabled(pipeline: dict | None) -> bool:
    """Whether ``pipeline['clinical']`` asks for any reading.

    >>> clinical_enabled({}), clinical_enabled({'clinical': {'foci': True}})
    (False, True)
    """
    opts = (pipeline or {}).get('clinical') or {}
    return any(opts.get(k) for k in ('venography', 'foci', 'oef'))


def init_clinical_wf(*, output_dir: str, entities: dict, source_files: list,
                     venography: bool = False, foci: bool = False, oef: bool = False,
                     hematocrit: float | None = None, mip_slab_mm: float | None = None,
                     has_r2star: bool = False, has_swi: bool = False,
                     segmentation: tuple | None = None, bids_dir: str = '',
                     n_voxels: int = 2_000_000, omp_nthreads: int = 1,
                     name: str = 'clinical_wf') -> pe.Workflow:
    """Build the venography, foci and OEF readings of one referenced χ map, and store them.

    The vein segmentation (:func:`qsmflow.qsm.veins.segment_veins`: multi-scale Frangi
    vesselness of χ above the local tissue, seeds grown into the bright voxels around
    them) is computed whenever one of the readings is on: foci are never seeded in veins
    and OEF is measured in them. With ``venography`` the segmentation, the vesselness and
    sliding-slab MIPs of χ and of the vesselness (thickness ``mip_slab_mm`` along the
    acquisition's slice axis) are stored. ``foci``
    (:func:`qsmflow.qsm.foci.detect_foci`) stores a label image and a table (scanner
    coordinates; mean R2* and SWI over each focus when those maps exist). ``oef``
    (:func:`qsmflow.qsm.oef.vein_oef`) stores a per-segment and per-participant table,
    haematocrit ``hematocrit`` (None: 0.40), foci excluded when detected.

    Parameters
    ----------
    output_dir, bids_dir : str
        Roots of the derivatives and raw datasets.
    entities : dict
        BIDS entities of the acquisition.
    source_files : list of str
        Raw files the outputs derive from.
    venography, foci, oef : bool
        The readings to produce.
    hematocrit : float, optional
        Haematocrit (fraction) of the OEF.
    mip_slab_mm : float, optional
        MIP slab thickness (mm); None: :data:`qsmflow.qsm.veins.DEFAULT_MIP_SLAB_MM`.
    has_r2star, has_swi : bool
        Whether ``inputnode.r2starmap`` / ``inputnode.swi`` are connected.
    segmentation : (str, str), optional
        The user's segmentation and lookup table in the scanner space (any grid): the
        region of each focus and vein segment.
    n_voxels, omp_nthreads : int
        Image size (memory estimate) and threads per node.
    name : str
        Workflow name.

    Inputs
    ------
    chimap : str
        Referenced χ in ppm.
    mask : str
        Its brain mask.
    r2starmap, swi : str
        R2* (1/s) and SWI (magnitude units) on the χ grid, when present.

    Outputs
    -------
    out_files : list of str
        Stored derivatives.
    """
    from qsmflow.interfaces.bids import DerivativesSink, FileSink
    from qsmflow.interfaces.clinical import OEF, Foci, Venography
    from qsmflow.qsm import veins as veins_mod

    gb = n_voxels * 4 / 1e9
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _desc(venography, foci, oef)
    inputnode = pe.Node(niu.IdentityInterface(fields=['chimap', 'mask', 'r2starmap', 'swi']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_files']), name='outputnode')
    venogram = pe.Node(Venography(mip_slab_mm=mip_slab_mm or veins_mod.DEFAULT_MIP_SLAB_MM,
                                  num_threads=omp_nthreads),
                       name='venography', mem_gb=gb * 30, n_procs=omp_nthreads)
    workflow.connect([(inputnode, venogram, [('chimap', 'in_file'), ('mask', 'in_mask')])])
    stored = []  # (node, field, kind, image?)
    if venography:
        stored += [(venogram, 'out_veins', 'veins', True),
                   (venogram, 'out_vesselness', 'vesselness', True),
                   (venogram, 'out_chi_mip', 'chi_mip', True),
                   (venogram, 'out_veins_mip', 'veins_mip', True)]
    focus = None
    if foci:
        focus = pe.Node(Foci(num_threads=omp_nthreads), name='foci', mem_gb=gb * 12)
        if segmentation:
            focus.inputs.in_labels, focus.inputs.in_lut = segmentation
        workflow.connect([
            (inputnode, focus, [('chimap', 'in_file'), ('mask', 'in_mask')]),
            (venogram, focus, [('out_veins', 'in_veins')]),
        ])  # fmt:skip
        if has_r2star:
            workflow.connect(inputnode, 'r2starmap', focus, 'in_r2star')
        if has_swi:
            workflow.connect(inputnode, 'swi', focus, 'in_swi')
        stored += [(focus, 'out_dseg', 'foci_dseg', True), (focus, 'out_tsv', 'foci_tsv', False)]
    if oef:
        params = {} if hematocrit is None else {'hematocrit': float(hematocrit)}
        oef_node = pe.Node(OEF(params=params), name='oef', mem_gb=gb * 12)
        if segmentation:
            oef_node.inputs.in_labels, oef_node.inputs.in_lut = segmentation
        workflow.connect([
            (inputnode, oef_node, [('chimap', 'in_file'), ('mask', 'in_mask')]),
            (venogram, oef_node, [('out_veins', 'in_veins')]),
        ])  # fmt:skip
        if focus is not None:
            workflow.connect(focus, 'out_dseg', oef_node, 'in_foci')
        stored += [(oef_node, 'out_tsv', 'oef_tsv', False),
                   (oef_node, 'out_json', 'oef_json', False)]
    merge = pe.Node(niu.Merge(max(len(stored), 1)), name='merge', run_without_submitting=True)
    for i, (node, field, kind, image) in enumerate(stored, start=1):
        sink = (DerivativesSink(base_directory=output_dir, kind=kind, entities=entities,
                                source_files=source_files, bids_dir=bids_dir) if image
                else FileSink(base_directory=output_dir, kind=kind, entities=entities))
        ds = pe.Node(sink, name=f'ds_{kind}', run_without_submitting=True, mem_gb=0.2)
        workflow.connect([(node, ds, [(field, 'in_file')]), (ds, merge, [('out_file', f'in{i}')])])
    workflow.connect(merge, 'out', outputnode, 'out_files')
    return workflow


def _desc(venography, foci, oef) -> str:
    """Methods paragraph of the clinical readings.

    >>> 'oxygen extraction' in _desc(False, False, True)
    True
    """
    parts = []
    if venography:
        parts.append('veins were segmented from the susceptibility map by multi-scale '
                     'Hessian vesselness [@frangi1998] of chi above the local tissue, and '
                     'shown in sliding-slab maximum-intensity projections')
    if foci:
        parts.append('compact paramagnetic (haemorrhage-like) and diamagnetic '
                     '(calcification-like) foci were detected by their contrast to the '
                     'surrounding tissue, size and compactness, outside the veins')
    if oef:
        parts.append('the oxygen extraction fraction was computed from the susceptibility '
                     'of veins relative to the surrounding tissue, OEF = dchi / (3.39 ppm x '
                     'Hct)')
    return ('Clinical readings: ' + '; '.join(parts) + '.') if parts else ''


def connect_clinical(workflow: pe.Workflow, qsm_wf: pe.Workflow, *, acq, output_dir: str,
                     bids_dir: str, pipeline: dict, outputs: tuple,
                     omp_nthreads: int = 1) -> None:
    """Add :func:`init_clinical_wf` for ``pipeline['clinical']`` to an acquisition's
    workflow, fed by the reconstruction ``qsm_wf`` (χ, mask, and R2*/SWI when ``outputs``
    has them)."""
    opts = pipeline.get('clinical') or {}
    has_r2star, has_swi = 'r2starmap' in outputs, 'swi' in outputs
    clinical_wf = init_clinical_wf(
        output_dir=output_dir, bids_dir=bids_dir, entities=acq.entities,
        source_files=acq.mag_files + acq.phase_files,
        venography=bool(opts.get('venography')), foci=bool(opts.get('foci')),
        oef=bool(opts.get('oef')), hematocrit=opts.get('hematocrit'),
        mip_slab_mm=opts.get('mip_slab_mm'), has_r2star=has_r2star, has_swi=has_swi,
        segmentation=((acq.segmentation, acq.segmentation_lut) if acq.segmentation
                      else None),
        n_voxels=int(acq.n_voxels or 2_000_000), omp_nthreads=omp_nthreads)
    fields = [('chimap', 'chimap'), ('mask', 'mask')]
    fields += [('r2starmap', 'r2starmap')] if has_r2star else []
    fields += [('swi', 'swi')] if has_swi else []
    workflow.connect([
        (qsm_wf, clinical_wf, [(f'outputnode.{a}', f'inputnode.{b}') for a, b in fields]),
    ])  # fmt:skip
