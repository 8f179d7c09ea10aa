# SPDX-License-Identifier: Apache-2.0
"""Derivatives writing: BIDS names from ``bids_specs/outputs.json``, atomic copies."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Outputs of :func:`workflows.qsm.init_qsm_wf` stored in the derivatives dataset for every
#: acquisition.
QSM_OUTPUTS = ('chimap', 'mask', 'total_field', 'local_field', 'field_noise')
#: R2* and T2* maps (1/s, s), stored for acquisitions of ≥ 2 echoes.
RELAXOMETRY_OUTPUTS = ('r2starmap', 't2starmap')
#: SWI and its minIP (magnitude units), stored unless the pipeline switches SWI off.
SWI_OUTPUTS = ('swi', 'minip')
#: Paramagnetic and diamagnetic χ (ppm), stored for acquisitions of ≥ 2 echoes unless the
#: pipeline switches χ-separation off.
CHI_SEPARATION_OUTPUTS = ('chimap_para', 'chimap_dia')
#: Every output kind an acquisition can have.
ALL_OUTPUTS = QSM_OUTPUTS + RELAXOMETRY_OUTPUTS + SWI_OUTPUTS + CHI_SEPARATION_OUTPUTS


def qsm_outputs(pipeline: dict | None = None, n_echoes: int = 2) -> tuple:
    """Output kinds (keys of ``bids_specs/outputs.json``) of one acquisition.

    Examples
    --------
    >>> qsm_outputs(None, 5)[-6:]
    ('r2starmap', 't2starmap', 'swi', 'minip', 'chimap_para', 'chimap_dia')
    >>> qsm_outputs({'swi': {'enabled': False}}, 1) == QSM_OUTPUTS
    True
    >>> qsm_outputs({'chi_separation': {'enabled': False}}, 5)[-2:]
    ('swi', 'minip')
    """
    kinds = QSM_OUTPUTS
    if n_echoes >= 2:
        kinds += RELAXOMETRY_OUTPUTS
    if swi_enabled(pipeline):
        kinds += SWI_OUTPUTS
    if n_echoes >= 2 and _enabled(pipeline, 'chi_separation'):
        kinds += CHI_SEPARATION_OUTPUTS
    return kinds


def swi_enabled(pipeline: dict | None) -> bool:
    """Whether ``pipeline`` computes SWI and minIP (its ``swi.enabled``; default: yes).

    >>> swi_enabled({}), swi_enabled({'swi': {'enabled': False}})
    (True, False)
    """
    return _enabled(pipeline, 'swi')


def _enabled(pipeline: dict | None, step: str) -> bool:
    """Whether the optional ``step`` of ``pipeline`` is on (its ``enabled``; default: yes).

    >>> _enabled(None, 'chi_separation'), _enabled({'swi': {'enabled': False}}, 'swi')
    (True, False)
    """
    return bool(((pipeline or {}).get(step) or {}).get('enabled', True))


def init_qsm_derivatives_wf(*, output_dir: str, bids_dir: str, entities: dict,
                            source_files: list, outputs: tuple = QSM_OUTPUTS,
                            name: str = 'qsm_derivatives_wf') -> pe.Workflow:
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
    outputs : tuple of str
        Output kinds to store (:func:`qsm_outputs`).

    Inputs
    ------
    chimap, mask, total_field, local_field, field_noise : str
        Files from the reconstruction (χ in ppm, mask, fields in ppm, and the standard
        error of the total field in ppm from the echo-fit residuals).
    r2starmap, t2starmap : str
        R2* (1/s) and T2* (s), when in ``outputs``.
    swi, minip : str
        SWI and its minimum-intensity projection (magnitude units), when in ``outputs``.
    chimap_para, chimap_dia : str
        Paramagnetic (≥ 0) and diamagnetic (≤ 0) χ in ppm, when in ``outputs``.

    Outputs
    -------
    out_files : list of str
        Paths of the stored derivatives, in ``outputs`` order.
    """
    from qsmflow.interfaces.bids import DerivativesSink

    workflow = pe.Workflow(name=name)
    unknown = sorted(set(outputs) - set(ALL_OUTPUTS))
    if unknown:
        raise ValueError(f'unknown output kinds {unknown}; known: {ALL_OUTPUTS}')
    inputnode = pe.Node(niu.IdentityInterface(fields=list(outputs)), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_files']), name='outputnode')
    merge = pe.Node(niu.Merge(len(outputs)), name='merge', run_without_submitting=True)
    for i, kind in enumerate(outputs, start=1):
        sink = pe.Node(DerivativesSink(base_directory=output_dir, kind=kind, entities=entities,
                                       source_files=source_files, bids_dir=bids_dir),
                       name=f'ds_{kind}', run_without_submitting=True, mem_gb=0.2)
        workflow.connect([
            (inputnode, sink, [(kind, 'in_file')]),
            (sink, merge, [('out_file', f'in{i}')]),
        ])  # fmt:skip
    workflow.connect(merge, 'out', outputnode, 'out_files')
    return workflow
