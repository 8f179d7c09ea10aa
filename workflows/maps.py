# SPDX-License-Identifier: Apache-2.0
"""The other maps of one multi-echo GRE: R2*/T2*, SWI and its minIP, χ-separation."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe


def init_gre_maps_wf(*, r2star: dict | None = None, swi: dict | None = None,
                     chi_separation: dict | None = None, n_echoes: int = 5, n_voxels: int = 2_000_000, omp_nthreads: int = 1,
                     name: str = 'gre_maps_wf') -> pe.Workflow:
    """Build the R2*/T2*, SWI and minIP maps of one acquisition.

    R2* (1/s) is a mono-exponential fit of the echo magnitudes inside the brain mask
    (:func:`qsmflow.qsm.relaxometry.r2star`: ARLO by default, noise floor handled, clipped
    and flagged where unreliable), T2* = 1/R2* (s). The SWI
    (:func:`qsmflow.qsm.swi.swi`) multiplies a T2*-weighted combination of the echo
    magnitudes (weights ``TE·exp(−TE·R2*)`` at the median R2* of the brain) with a
    positive-phase mask made from the local field (ppm; paramagnetic veins dark). The
    minIP (:func:`qsmflow.qsm.swi.minimum_intensity_projection`) is the minimum of the SWI
    over a sliding slab (mm) along the acquisition's slice axis, on the SWI's grid.
    χ-separation (:func:`qsmflow.qsm.chi_separation.chi_separation`) splits the dipole
    inversion's χ (ppm, before referencing) into paramagnetic χ⁺ ≥ 0 and diamagnetic
    χ⁻ ≤ 0 with R2′ = R2* − R2 = Dr (χ⁺ − χ⁻) (needs the R2* map, so ≥ 2 echoes).

    Parameters
    ----------
    r2star : dict, optional
        ``method`` (None: the function's default) and ``params`` of the R2* fit.
    swi : dict, optional
        ``enabled`` (default True), ``params`` (options of :func:`qsmflow.qsm.swi.swi`)
        and ``minip_params`` (options of the projection, e.g. ``slab_mm``).
    chi_separation : dict, optional
        ``enabled`` (default True) and ``params`` (options of
        :func:`qsmflow.qsm.chi_separation.chi_separation`, e.g. ``r2_hz`` in 1/s) and
        ``r2_maps`` (the ``--r2-map`` folder: the acquisition's R2 map, through
        ``inputnode.r2_map``, replaces ``r2_hz``).
    n_echoes, n_voxels : int
        Size of the acquisition (memory estimates; R2* needs ≥ 2 echoes).
    omp_nthreads : int
        Threads a node may use.
    name : str
        Workflow name.

    Inputs
    ------
    magnitude : str
        4D magnitude (x, y, z, echo), arbitrary units.
    echo_times : list of float
        Echo times in s.
    b0_tesla : float
        Main field strength in T.
    brain_mask : str
        Brain mask the R2* is fitted in.
    local_field, field_mask : str
        Local field in ppm of B0 and its mask.
    chi : str
        χ in ppm from the dipole inversion, before referencing.
    r2_map : str
        The user's spin-echo R2 map in 1/s, any grid of the scanner space (read only with
        ``chi_separation['r2_maps']``).

    Outputs
    -------
    r2starmap, t2starmap : str
        R2* in 1/s and T2* in s (with ≥ 2 echoes).
    swi, minip : str
        SWI and its minIP, magnitude units (when ``swi['enabled']``).
    chimap_para, chimap_dia : str
        χ⁺ ≥ 0 and χ⁻ ≤ 0 in ppm (≥ 2 echoes and ``chi_separation['enabled']``).
    """
    from qsmflow.interfaces.maps import SWI, ChiSeparation, MinIP, R2StarMap

    r2star, swi, chisep = r2star or {}, swi or {}, chi_separation or {}
    gb_img = n_voxels * 4 / 1e9
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=['magnitude', 'echo_times', 'b0_tesla', 'brain_mask', 'local_field',
                'field_mask', 'chi', 'r2_map']), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(
        fields=['r2starmap', 't2starmap', 'swi', 'minip', 'chimap_para', 'chimap_dia']),
        name='outputnode')
    relaxometry = None
    if n_echoes >= 2:
        relaxometry = pe.Node(R2StarMap(method=r2star.get('method'),
                                        params=r2star.get('params', {}),
                                        num_threads=omp_nthreads),
                              name='relaxometry', mem_gb=gb_img * n_echoes * 8,
                              n_procs=omp_nthreads)
        workflow.connect([
            (inputnode, relaxometry, [('magnitude', 'in_magnitude'),
                                      ('brain_mask', 'in_mask'),
                                      ('echo_times', 'echo_times')]),
            (relaxometry, outputnode, [('out_r2star', 'r2starmap'),
                                       ('out_t2star', 't2starmap')]),
        ])  # fmt:skip
    if relaxometry is not None and chisep.get('enabled', True):
        chi_sep = pe.Node(ChiSeparation(params=chisep.get('params', {}),
                                        num_threads=omp_nthreads),
                          name='chi_separation', mem_gb=gb_img * 30, n_procs=omp_nthreads)
        workflow.connect([
            (inputnode, chi_sep, [('local_field', 'in_field'), ('field_mask', 'in_mask'),
                                  ('chi', 'in_chi'), ('b0_tesla', 'b0_tesla')]),
            (relaxometry, chi_sep, [('out_r2star', 'in_r2star')]),
            (chi_sep, outputnode, [('out_para', 'chimap_para'), ('out_dia', 'chimap_dia')]),
        ])  # fmt:skip
        if chisep.get('r2_maps'):
            workflow.connect(inputnode, 'r2_map', chi_sep, 'in_r2')
    if swi.get('enabled', True):
        swi_node = pe.Node(SWI(params=swi.get('params', {}), num_threads=omp_nthreads),
                           name='swi', mem_gb=gb_img * n_echoes * 4, n_procs=omp_nthreads)
        minip = pe.Node(MinIP(params=swi.get('minip_params', {}), num_threads=omp_nthreads),
                        name='minip', mem_gb=gb_img * 4, n_procs=omp_nthreads)
        if relaxometry is not None:
            workflow.connect(relaxometry, 'out_r2star', swi_node, 'in_r2star')
        workflow.connect([
            (inputnode, swi_node, [('local_field', 'in_field'), ('field_mask', 'in_field_mask'),
                                   ('magnitude', 'in_magnitude'),
                                   ('echo_times', 'echo_times'), ('b0_tesla', 'b0_tesla')]),
            (inputnode, minip, [('magnitude', 'in_reference')]),
            (swi_node, minip, [('out_swi', 'in_file')]),
            (swi_node, outputnode, [('out_swi', 'swi')]),
            (minip, outputnode, [('out_file', 'minip')]),
        ])  # fmt:skip
    return workflow
