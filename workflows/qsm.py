# SPDX-License-Identifier: Apache-2.0
"""Reconstruction workflow: multi-echo GRE → susceptibility map."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Masking methods: ``'magnitude'`` (brain extraction from the magnitude) and
#: ``'quality'`` (that mask minus voxels of unreliable phase, as the 2024 consensus
#: recommends).
MASKING_METHODS = ('magnitude', 'quality')
#: Brain-extraction algorithms (``pipeline['masking']['brain']``), the first the default:
#: ``'adaptive'`` (:func:`qsmflow.qsm.brain_extraction.extract_brain` on the echoes' root
#: sum of squares: scalp, skull, face and neck removed) and ``'threshold'``
#: (:func:`qsmflow.qsm.mask.brain_mask` on the first echo: threshold + morphology, which
#: keeps scalp and neck on real heads).
BRAIN_ALGORITHMS = ('adaptive', 'threshold')
#: Outputs of :func:`qsmflow.workflows.maps.init_gre_maps_wf` passed on.
MAPS_OUTPUTS = ('r2starmap', 't2starmap', 'swi', 'minip', 'chimap_para', 'chimap_dia')


def init_qsm_wf(*, pipeline: dict, n_voxels: int = 2_000_000, n_echoes: int = 5,
                omp_nthreads: int = 1, device: str = 'cpu',
                name: str = 'qsm_wf') -> pe.Workflow:
    """Build the QSM reconstruction of one multi-echo GRE acquisition.

    Magnitude and phase of every echo are read and the phase rescaled to radians; the
    brain is extracted from the magnitude (``pipeline['masking']['brain']``, see
    :data:`BRAIN_ALGORITHMS`; the mask's sidecar records its QC: volume, share near the
    head surface, and a warning when it looks like a head) and, with masking method
    ``'quality'``
    (the default preset), voxels of unreliable phase (spatial/temporal phase coherence, see
    :func:`qsmflow.qsm.mask.quality_map`) are removed from it before background removal;
    the phase of every echo is unwrapped
    and the field offset is the magnitude/TE-weighted least-squares slope of phase versus
    echo time (the echo-independent phase offset is fitted and dropped); the background
    field is removed inside the brain; the local field is inverted through the unit dipole
    kernel (B0 direction from the image affine); χ is referenced (whole-brain mean by
    default).

    ``pipeline['masking']`` may also hold:

    * ``brain_masks`` (a folder; the file itself comes through ``inputnode.brain_mask``):
      the user's mask replaces the magnitude mask everywhere (field fit included) and is
      used as it is: the phase-quality refinement of masking method ``'quality'`` is not
      applied to it (a given mask is respected; with ``two_pass`` its unreliable voxels
      are still excluded from the strict pass only).
    * ``two_pass`` (bool): the background removal and inversion run twice, on a strict
      mask (:func:`qsmflow.qsm.mask.strict_mask` of the generous mask, options
      ``strict_params``) and on the generous one; χ is the strict result where the strict
      mask holds and the generous one in its holes
      (:func:`qsmflow.qsm.inversion.combine_two_pass`). The output mask and local field
      are those of the generous pass.
    * ``brain``: the brain-extraction algorithm, one of :data:`BRAIN_ALGORITHMS`
      (default ``'adaptive'``).
    * ``params`` and ``quality_params``: options of the brain-extraction function
      (:func:`qsmflow.qsm.brain_extraction.extract_brain` or
      :func:`qsmflow.qsm.mask.brain_mask`) and of :func:`qsmflow.qsm.mask.quality_mask`.

    The same acquisition also gives R2* and T2* (fitted in the brain mask, ≥ 2 echoes), an
    SWI from the local field and its minIP (:func:`qsmflow.workflows.maps.init_gre_maps_wf`,
    options ``pipeline['r2star']``, ``pipeline['swi']`` and ``pipeline['chi_separation']``;
    ``enabled`` false in the last two leaves SWI and minIP, or χ⁺ and χ⁻, out), and the
    paramagnetic and diamagnetic parts of the dipole inversion's χ (before referencing);
    with ``pipeline['chi_separation']['r2_maps']`` (a folder) the R2 map comes through
    ``inputnode.r2_map``.

    Parameters
    ----------
    pipeline : dict
        Algorithm choice and options per step (see :mod:`qsmflow.config.presets`).
    n_voxels, n_echoes : int
        Size of the acquisition, used to estimate each node's memory (GB).
    omp_nthreads : int
        Threads a node may use (FFT workers).
    device : {'cpu', 'gpu', 'auto'}
        Where background removal and the inversion compute (``--device``,
        :mod:`qsmflow.qsm.device`; steps without a torch path stay on the CPU).
    name : str
        Workflow name.

    Inputs
    ------
    mag_files, phase_files : list of str
        Per-echo magnitude and phase NIfTI files, in echo order.
    echo_times : list of float
        Echo times in s.
    b0_tesla : float
        Main field strength in T.
    phase_units : str or None
        BIDS ``Units`` of the phase images.
    brain_mask : str
        The user's brain mask (only read when ``pipeline['masking']['brain_masks']`` is set).
    r2_map : str
        The user's R2 map in 1/s (only read when ``pipeline['chi_separation']['r2_maps']``
        is set).

    Outputs
    -------
    chimap : str
        Referenced susceptibility map in ppm.
    mask : str
        Mask of the susceptibility map (after background-removal erosion).
    total_field, local_field : str
        Total and local field in ppm of B0.
    field_noise : str
        Standard error of the total field fit in ppm of B0 (inside the brain mask of the
        fit).
    r2starmap, t2starmap : str
        R2* in 1/s and T2* in s (acquisitions of ≥ 2 echoes).
    swi, minip : str
        SWI and its minimum-intensity projection, magnitude units (SWI enabled).
    chimap_para, chimap_dia : str
        χ⁺ ≥ 0 and χ⁻ ≤ 0 in ppm, χ before referencing (≥ 2 echoes, χ-separation enabled).
    """
    from qsmflow.execution.memory import node_mem_gb
    from qsmflow.interfaces.bgremove import RemoveBackground
    from qsmflow.interfaces.field import EstimateField
    from qsmflow.interfaces.inversion import CombineTwoPass, InvertDipole
    from qsmflow.interfaces.masking import BrainMask, QualityMask, StrictMask
    from qsmflow.interfaces.megre import LoadMEGRE
    from qsmflow.interfaces.reference import ReferenceChi
    from qsmflow.workflows.maps import init_gre_maps_wf

    masking = pipeline['masking']
    if masking['method'] not in MASKING_METHODS:
        raise ValueError(f"unknown masking method {masking['method']!r}; choose one of "
                         f'{MASKING_METHODS}')
    user_mask = bool(masking.get('brain_masks'))
    two_pass = bool(masking.get('two_pass'))

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=['mag_files', 'phase_files', 'echo_times', 'b0_tesla', 'phase_units',
                'brain_mask', 'r2_map']),
        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(
        fields=['chimap', 'mask', 'total_field', 'local_field', 'field_noise', 'r2starmap',
                't2starmap', 'swi', 'minip', 'chimap_para', 'chimap_dia']),
        name='outputnode')

    load_megre = pe.Node(LoadMEGRE(), name='load_megre',
                         mem_gb=node_mem_gb('load_megre', n_voxels, n_echoes))
    brain_mask = pe.Node(BrainMask(params=masking.get('params', {}), num_threads=omp_nthreads,
                                   **_brain_algorithm(masking)),
                         name='brain_mask', n_procs=omp_nthreads,
                         mem_gb=node_mem_gb('brain_mask', n_voxels, n_echoes))
    field_fit = pe.Node(EstimateField(unwrapping=pipeline['unwrapping']['method'],
                                      combination=pipeline['echo_combination']['method'],
                                      num_threads=omp_nthreads),
                        name='field_fit', n_procs=omp_nthreads,
                        mem_gb=node_mem_gb('field_fit', n_voxels, n_echoes))
    if user_mask:
        workflow.connect(inputnode, 'brain_mask', brain_mask, 'in_mask')
    if masking['method'] == 'quality' and not user_mask:
        final_mask = pe.Node(QualityMask(params=masking.get('quality_params', {}),
                                         num_threads=omp_nthreads),
                             name='quality_mask',
                             mem_gb=node_mem_gb('quality_mask', n_voxels, n_echoes),
                             n_procs=omp_nthreads)
        workflow.connect([
            (load_megre, final_mask, [('magnitude', 'in_magnitude'), ('phase', 'in_phase'),
                                      ('echo_times', 'echo_times')]),
            (brain_mask, final_mask, [('out_mask', 'in_mask')]),
        ])  # fmt:skip
    else:
        final_mask = brain_mask

    passes = [('filled', final_mask)] if two_pass else [(None, final_mask)]
    if two_pass:
        strict = pe.Node(StrictMask(params=masking.get('strict_params', {}),
                                    num_threads=omp_nthreads),
                         name='strict_mask', n_procs=omp_nthreads,
                         mem_gb=node_mem_gb('strict_mask', n_voxels, n_echoes))
        workflow.connect([
            (load_megre, strict, [('magnitude', 'in_magnitude'), ('phase', 'in_phase'),
                                  ('echo_times', 'echo_times')]),
            (final_mask, strict, [('out_mask', 'in_mask')]),
        ])  # fmt:skip
        passes.append(('strict', strict))
    branches = {}
    for pass_name, mask_node in passes:
        suffix = '' if pass_name in (None, 'filled') else f'_{pass_name}'
        bg_removal = pe.Node(RemoveBackground(method=pipeline['bf_removal']['method'],
                                              params=pipeline['bf_removal'].get('params', {}),
                                              num_threads=omp_nthreads, device=device),
                             name=f'bg_removal{suffix}', n_procs=omp_nthreads,
                             mem_gb=node_mem_gb('bg_removal', n_voxels,
                                                method=pipeline['bf_removal']['method']))
        inversion = pe.Node(InvertDipole(method=pipeline['inversion']['method'],
                                         params=pipeline['inversion'].get('params', {}),
                                         num_threads=omp_nthreads, device=device),
                            name=f'inversion{suffix}', n_procs=omp_nthreads,
                            mem_gb=node_mem_gb('inversion', n_voxels,
                                               method=pipeline['inversion']['method']))
        if pass_name:
            bg_removal.inputs.pass_name = inversion.inputs.pass_name = pass_name
        if pipeline['inversion']['method'] == 'medi':
            workflow.connect([
                (load_megre, inversion, [('magnitude', 'in_magnitude'),
                                         ('b0_tesla', 'b0_tesla')]),
                (field_fit, inversion, [('out_noise', 'in_noise_hz')]),
            ])  # fmt:skip
        workflow.connect([
            (field_fit, bg_removal, [('out_field', 'in_file')]),
            (mask_node, bg_removal, [('out_mask', 'in_mask')]),
            (bg_removal, inversion, [('out_file', 'in_file'), ('out_mask', 'in_mask')]),
        ])  # fmt:skip
        branches[pass_name] = (bg_removal, inversion)
    bg_removal, inversion = branches['filled' if two_pass else None]
    chi_node = inversion
    if two_pass:
        bg_strict, inv_strict = branches['strict']
        chi_node = pe.Node(CombineTwoPass(num_threads=omp_nthreads), name='combine_two_pass',
                           mem_gb=node_mem_gb('combine_two_pass', n_voxels),
                           n_procs=omp_nthreads)
        workflow.connect([
            (inv_strict, chi_node, [('out_file', 'in_strict')]),
            (bg_strict, chi_node, [('out_mask', 'strict_mask')]),
            (inversion, chi_node, [('out_file', 'in_filled')]),
            (bg_removal, chi_node, [('out_mask', 'filled_mask')]),
        ])  # fmt:skip

    maps_wf = init_gre_maps_wf(r2star=pipeline.get('r2star'), swi=pipeline.get('swi'),
                               chi_separation=pipeline.get('chi_separation'),
                               n_echoes=n_echoes, n_voxels=n_voxels, omp_nthreads=omp_nthreads)
    workflow.connect([
        (load_megre, maps_wf, [('magnitude', 'inputnode.magnitude'),
                               ('echo_times', 'inputnode.echo_times'),
                               ('b0_tesla', 'inputnode.b0_tesla')]),
        (brain_mask, maps_wf, [('out_mask', 'inputnode.brain_mask')]),
        (bg_removal, maps_wf, [('out_file', 'inputnode.local_field'),
                               ('out_mask', 'inputnode.field_mask')]),
        (chi_node, maps_wf, [('out_file', 'inputnode.chi')]),
        (maps_wf, outputnode, [(f'outputnode.{k}', k) for k in MAPS_OUTPUTS]),
    ])  # fmt:skip
    if (pipeline.get('chi_separation') or {}).get('r2_maps'):
        workflow.connect(inputnode, 'r2_map', maps_wf, 'inputnode.r2_map')

    reference = pe.Node(ReferenceChi(method=pipeline['reference']['method'],
                                     num_threads=omp_nthreads),
                        name='reference', mem_gb=node_mem_gb('reference', n_voxels),
                        n_procs=omp_nthreads)
    if pipeline['reference']['method'] == 'csf':
        workflow.connect([
            (load_megre, reference, [('magnitude', 'in_magnitude'),
                                     ('echo_times', 'echo_times')]),
        ])  # fmt:skip
    workflow.connect([
        (inputnode, load_megre, [('mag_files', 'mag_files'), ('phase_files', 'phase_files'),
                                 ('echo_times', 'echo_times'), ('b0_tesla', 'b0_tesla'),
                                 ('phase_units', 'phase_units')]),
        (load_megre, brain_mask, [('magnitude', 'in_magnitude')]),
        (load_megre, field_fit, [('magnitude', 'in_magnitude'), ('phase', 'in_phase'),
                                 ('echo_times', 'echo_times'), ('b0_tesla', 'b0_tesla')]),
        (brain_mask, field_fit, [('out_mask', 'in_mask')]),
        (chi_node, reference, [('out_file', 'in_file')]),
        (bg_removal, reference, [('out_mask', 'in_mask')]),
        (reference, outputnode, [('out_file', 'chimap')]),
        (bg_removal, outputnode, [('out_mask', 'mask'), ('out_file', 'local_field')]),
        (field_fit, outputnode, [('out_field', 'total_field'), ('out_noise_ppm', 'field_noise')]),
    ])  # fmt:skip
    return workflow


def _brain_algorithm(masking: dict) -> dict:
    """``BrainMask`` input naming the brain-extraction algorithm, if the pipeline sets one.

    >>> _brain_algorithm({'method': 'quality'}), _brain_algorithm({'brain': 'threshold'})
    ({}, {'algorithm': 'threshold'})
    >>> _brain_algorithm({'brain': 'bet'})
    Traceback (most recent call last):
    ValueError: unknown brain-extraction algorithm 'bet'; choose one of ('adaptive', 'threshold')
    """
    if 'brain' not in masking:
        return {}
    if masking['brain'] not in BRAIN_ALGORITHMS:
        raise ValueError(f"unknown brain-extraction algorithm {masking['brain']!r}; choose one "
                         f'of {BRAIN_ALGORITHMS}')
    return {'algorithm': masking['brain']}
