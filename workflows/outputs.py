# SPDX-License-Identifier: Apache-2.0
"""Derivatives writing: BIDS names from ``bids_specs/outputs.json``, atomic copies."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Outputs of :func:`workflows.qsm.init_qsm_wf` stored in the derivatives dataset.
QSM_OUTPUTS = ('chimap', 'mask', 'total_field', 'local_field', 'field_noise')


def init_qsm_derivatives_wf(*, output_dir: str, bids_dir: str, entities: dict,
                            source_files: list, name: str = 'qsm_derivatives_wf') -> pe.Workflow:
    """Store the reconstruction outputs of one acquisition under their BIDS names.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset.
    bids_dir : str
        Root of the raw dataset (``Sources`` are written relative to it).
    entities : dict
        BIDS entities of the acquisition (subject, session, acquisition, run...).
    source_files : list of str
        Raw files the outputs derive from.

    Inputs
    ------
    chimap, mask, total_field, local_field, field_noise : str
        Files from the reconstruction (χ in ppm, mask, fields in ppm, and the standard
        error of the total field in ppm from the echo-fit residuals).

    Outputs
    -------
    out_files : list of str
        Paths of the stored derivatives, in :data:`QSM_OUTPUTS` order.
    """
    from qsmflow.interfaces.bids import DerivativesSink

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(QSM_OUTPUTS)), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_files']), name='outputnode')
    merge = pe.Node(niu.Merge(len(QSM_OUTPUTS)), name='merge', run_without_submitting=True)
    for i, kind in enumerate(QSM_OUTPUTS, start=1):
        sink = pe.Node(DerivativesSink(base_directory=output_dir, kind=kind, entities=entities,
                                       source_files=source_files, bids_dir=bids_dir),
                       name=f'ds_{kind}', run_without_submitting=True, mem_gb=0.2)
        workflow.connect([
            (inputnode, sink, [(kind, 'in_file')]),
            (sink, merge, [('out_file', f'in{i}')]),
        ])  # fmt:skip
    workflow.connect(merge, 'out', outputnode, 'out_files')
    return workflow
