# SPDX-License-Identifier: Apache-2.0
"""The steps of a comparison run: each runs the participant level's Nipype interface.

Every function here runs one :mod:`qsmflow.interfaces` interface, exactly as
:func:`qsmflow.workflows.qsm.init_qsm_wf` configures it, in the current folder (the pydra
task's own output folder, :mod:`qsmflow.compare.engine`), and returns its output files and
the seconds it took. So the comparison reads the images with the same code, calls the
same :mod:`qsmflow.qsm` function with the same effective parameters and writes the same
provenance sidecars as the participant level: there is no second implementation, and the
default preset gives the participant level's numbers. Nothing here knows pydra.
"""
from __future__ import annotations

import os
import time


def _run(interface) -> tuple:
    """Run a Nipype interface in the current folder; ``(outputs, seconds)``."""
    t0 = time.perf_counter()
    result = interface.run(cwd=os.getcwd())
    return result.outputs, time.perf_counter() - t0


def load_megre(mag_files: list, phase_files: list, echo_times: list, b0_tesla: float,
               phase_units) -> tuple:
    """4D magnitude and phase (rad) of an acquisition (:class:`~qsmflow.interfaces.megre.
    LoadMEGRE`); ``(magnitude, phase, seconds)``."""
    from qsmflow.interfaces.megre import LoadMEGRE

    out, secs = _run(LoadMEGRE(mag_files=list(mag_files), phase_files=list(phase_files),
                               echo_times=list(echo_times), b0_tesla=b0_tesla,
                               phase_units=phase_units))
    return out.magnitude, out.phase, secs


def brain_mask(magnitude: str, config: dict) -> tuple:
    """Brain extraction (:class:`~qsmflow.interfaces.masking.BrainMask`; ``config``: its
    ``algorithm`` and ``params``); ``(mask, seconds)``."""
    from qsmflow.interfaces.masking import BrainMask

    out, secs = _run(BrainMask(in_magnitude=magnitude, **config))
    return out.out_mask, secs


def field_map(magnitude: str, phase: str, mask: str, echo_times: list, b0_tesla: float,
              config: dict) -> tuple:
    """Unwrapping and echo fit (:class:`~qsmflow.interfaces.field.EstimateField`;
    ``config``: ``unwrapping``, ``combination``); ``(total field ppm, noise Hz, seconds)``."""
    from qsmflow.interfaces.field import EstimateField

    out, secs = _run(EstimateField(in_magnitude=magnitude, in_phase=phase, in_mask=mask,
                                   echo_times=list(echo_times), b0_tesla=b0_tesla, **config))
    return out.out_field, out.out_noise, secs


def analysis_mask(magnitude: str, phase: str, mask: str, echo_times: list,
                  config: dict) -> tuple:
    """The mask background removal starts from: masking method ``'quality'`` removes the
    voxels of unreliable phase (:class:`~qsmflow.interfaces.masking.QualityMask`, options
    ``config['params']``), ``'magnitude'`` keeps the brain mask; ``(mask, seconds)``."""
    from qsmflow.interfaces.masking import QualityMask

    if config['method'] != 'quality':
        return mask, 0.0
    out, secs = _run(QualityMask(in_magnitude=magnitude, in_phase=phase, in_mask=mask,
                                 echo_times=list(echo_times), params=config['params']))
    return out.out_mask, secs


def bg_removal(total_field: str, mask: str, config: dict) -> tuple:
    """Background field removal (:class:`~qsmflow.interfaces.bgremove.RemoveBackground`);
    ``(local field ppm, its mask, seconds)``."""
    from qsmflow.interfaces.bgremove import RemoveBackground

    out, secs = _run(RemoveBackground(in_file=total_field, in_mask=mask, **config))
    return out.out_file, out.out_mask, secs


def inversion(local_field: str, mask: str, magnitude: str, noise_hz: str, b0_tesla: float,
              config: dict) -> tuple:
    """Dipole inversion (:class:`~qsmflow.interfaces.inversion.InvertDipole`; MEDI also
    gets the magnitude and the field noise, as in the participant level);
    ``(chi ppm, seconds)``."""
    from qsmflow.interfaces.inversion import InvertDipole

    extra = ({'in_magnitude': magnitude, 'in_noise_hz': noise_hz, 'b0_tesla': b0_tesla}
             if config['method'] == 'medi' else {})
    out, secs = _run(InvertDipole(in_file=local_field, in_mask=mask, **config, **extra))
    return out.out_file, secs


def reference(chi: str, mask: str, magnitude: str, echo_times: list, config: dict) -> tuple:
    """Referencing (:class:`~qsmflow.interfaces.reference.ReferenceChi`; ``'csf'`` also
    gets the magnitude and echo times); ``(referenced chi ppm, seconds)``."""
    from qsmflow.interfaces.reference import ReferenceChi

    extra = ({'in_magnitude': magnitude, 'echo_times': list(echo_times)}
             if config['method'] == 'csf' else {})
    out, secs = _run(ReferenceChi(in_file=chi, in_mask=mask, **config, **extra))
    return out.out_file, secs


def regional_tables(chimap: str, mask: str, label_sets: list) -> tuple:
    """The regional tables of one χ map, one per label set; ``(tables, seconds)``.

    Each label set is a dict: ``atlas`` (name, as the participant level's table), ``dseg``
    and ``lut`` (image and ``dseg.tsv``), ``resample`` (true for a ``--segmentations``
    image in scanner space: brought onto the χ grid by
    :class:`~qsmflow.interfaces.regions.ResampleSegmentation` first; false for labels on
    the χ grid already, such as a participant-level output's ``_atlas-<name>_dseg``),
    ``source`` (provenance for the table sidecar) and ``erode`` (``--erode-rois``). Each
    table comes from :class:`~qsmflow.interfaces.regions.RegionalStats`, as at the
    participant level; ``tables`` is a list of ``{'atlas', 'tsv', 'json'}``.
    """
    from qsmflow.interfaces.regions import RegionalStats, ResampleSegmentation

    tables, total = [], 0.0
    for i, labels in enumerate(label_sets):
        folder = os.path.join(os.getcwd(), f'labels{i}')
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        dseg = labels['dseg']
        if labels['resample']:
            dseg = ResampleSegmentation(in_file=dseg, reference=chimap).run(
                cwd=folder).outputs.out_file
        out = RegionalStats(in_file=chimap, in_mask=mask, in_dseg=dseg, in_lut=labels['lut'],
                            atlas=labels['atlas'], erode=bool(labels.get('erode')),
                            source=labels.get('source', {})).run(cwd=folder).outputs
        total += time.perf_counter() - t0
        tables.append({'atlas': labels['atlas'], 'tsv': out.out_tsv, 'json': out.out_json})
    return tables, total
