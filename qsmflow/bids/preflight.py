# SPDX-License-Identifier: Apache-2.0
"""Pre-flight checks of the images of each acquisition, before any heavy computation.

Reads every file once and catches what would otherwise fail (or silently mislead) deep in
the pipeline: unreadable or truncated NIfTIs, 2D data, grids that differ between echoes,
volume counts that do not match the echo times, NaN/Inf voxels, an all-zero magnitude and
phase whose scaling cannot be told. Problems raise :class:`qsmflow.errors.InputError`
(one line naming the file and the fix); tolerable oddities become warnings on the
acquisition, among them a phase whose polarity looks inverted
(:func:`qsmflow.qsm.polarity.polarity_score`, never fatal). :func:`preflight` runs the
checks for every participant and reports.
"""
from __future__ import annotations

import numpy as np

from qsmflow import bids_specs
from qsmflow.errors import InputError
from qsmflow.bids.derivatives import check_brain_mask, check_r2_map, check_segmentation
from qsmflow.bids.inputs import Acquisition
from qsmflow.qsm.phase import infer_phase_units, phase_range

_REEXPORT = 're-export the file (e.g. with dcm2niix)'


def _load(path):
    """``(image, data)`` of a NIfTI file; unreadable or truncated files raise InputError."""
    import os

    import nibabel as nb

    if os.path.islink(path) and not os.path.exists(path):
        raise InputError(f'{path}: broken symlink, its content is not present (DataLad/'
                         'git-annex: run "datalad get" on the dataset)')
    try:
        img = nb.load(path)
    except Exception as exc:
        raise InputError(f'{path}: cannot read NIfTI header ({_short(exc)}); {_REEXPORT}') \
            from None
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f'{path}: cannot read image data, file truncated or corrupt '
                         f'({_short(exc)}); {_REEXPORT}') from None
    return img, data


def _short(exc) -> str:
    text = f'{type(exc).__name__}: {exc}'.splitlines()[0]
    return text[:160]


def _check_grid(path, img, n_volumes, ref):
    """Shape, volume count and affine of one file against the acquisition's reference."""
    shape = img.shape
    shape3 = tuple(shape[:3])
    if len(shape) < 3 or min(shape3) < 2:
        raise InputError(f'{path}: image of shape {shape} is 2D; qsmflow needs 3D volumes '
                         '(acquire or export 3D multi-echo GRE)')
    vols = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if vols != n_volumes:
        raise InputError(f'{path}: {vols} volume(s) but {n_volumes} expected from EchoTime; '
                         'give one 3D file per echo, or a 4D file with EchoTime listing every '
                         'echo')
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9 \
            or not np.all(zooms > 0):
        raise InputError(f'{path}: invalid affine or voxel size {zooms.tolist()} mm; '
                         f'{_REEXPORT}')
    if ref is None:
        return shape3, img.affine
    if shape3 != ref[0]:
        raise InputError(f'{path}: shape {shape3} differs from the first echo {ref[0]}; all '
                         'echoes and parts must share one grid')
    if not np.allclose(img.affine, ref[1], atol=1e-3):
        raise InputError(f'{path}: affine differs from the first echo; all echoes and parts '
                         'must share one grid (re-export them together)')
    return ref


def check_images(acq: Acquisition) -> dict:
    """Check every image of ``acq``; resolve its phase scaling; return a summary.

    Sets ``acq.phase_units`` to the resolved scaling (``'rad'`` or ``'arbitrary'``) and
    appends warnings to ``acq.warnings``.

    Returns
    -------
    dict
        ``shape`` (3 int, voxels), ``voxel_size_mm`` (3 float), ``n_echoes``,
        ``phase_scaling`` and ``nonfinite`` (number of NaN/Inf voxels masked).

    Raises
    ------
    InputError
        One line naming the file and the fix.
    """
    limits = bids_specs.load('inputs')['limits']
    n_echo = len(acq.echo_times_s)
    per_file = n_echo // len(acq.mag_files) if len(acq.mag_files) else 0
    real_imag = acq.complex_parts.startswith('real')
    ref, bad, img0, worst = None, None, None, None
    lo, hi, integer, any_signal = np.inf, -np.inf, True, False
    volumes = {'mag': [], 'phase': []}  # kept for the polarity check
    for path in [*acq.mag_files, *acq.phase_files]:
        img, data = _load(path)
        ref = _check_grid(path, img, per_file, ref)
        img0 = img if img0 is None else img0
        data = data.reshape(ref[0] + (-1,))
        volumes['mag' if path in acq.mag_files else 'phase'].append(data)
        finite = np.isfinite(data)
        nonfinite = ~finite.all(-1)
        bad = nonfinite if bad is None else bad | nonfinite
        if worst is None or nonfinite.sum() > worst[1]:
            worst = (path, int(nonfinite.sum()))
        if not finite.any():
            raise InputError(f'{path}: every voxel is NaN/Inf; {_REEXPORT}')
        if path in acq.mag_files:
            zero = [i for i in range(data.shape[-1])
                    if not np.any(data[..., i][finite[..., i]])]
            if zero and not real_imag:
                raise InputError(f'{path}: magnitude is all zero (volume {zero[0] + 1}); '
                                 f'{_REEXPORT}')
        if np.any(data[finite]):
            any_signal = True
        if path in acq.phase_files and not real_imag:
            p_lo, p_hi, p_int = phase_range(data)
            lo, hi, integer = min(lo, p_lo), max(hi, p_hi), integer and p_int
    if not any_signal:
        raise InputError(f'{acq.mag_files[0]}: real and imaginary parts are all zero; '
                         f'{_REEXPORT}')
    frac = float(bad.mean())
    if frac > limits['nonfinite_max_fraction']:
        raise InputError(f'{worst[0]}: {100 * frac:.0f}% of the voxels are NaN/Inf '
                         f'(in this or another echo/part); {limits["nonfinite_fix"]}')
    if bad.any():
        acq.warnings.append(f'{int(bad.sum())} NaN/Inf voxel(s) ({100 * frac:.2g}%) are masked '
                            'out (set to zero)')
    if not real_imag:
        try:
            acq.phase_units = infer_phase_units(lo, hi, integer, acq.phase_units)
        except ValueError as exc:
            raise InputError(f'{acq.phase_files[0]}: {exc}') from None
    _check_coil_grids(acq, per_file, ref)
    zooms = tuple(float(z) for z in img0.header.get_zooms()[:3])
    polarity = check_polarity(acq, np.concatenate(volumes['mag'], -1),
                              np.concatenate(volumes['phase'], -1), img0.affine)
    acq.polarity = polarity  # into the QC table (qsmflow.reports.qc_table)
    return {'shape': ref[0], 'voxel_size_mm': zooms, 'n_echoes': n_echo,
            'phase_scaling': 'real/imag' if real_imag else acq.phase_units,
            'nonfinite': int(bad.sum()), 'polarity': polarity}


def _check_coil_grids(acq: Acquisition, per_file: int, ref) -> None:
    """Headers of the other coils' files (uncombined coils; the first coil's files are
    ``acq.mag_files``/``phase_files``, checked in full) against the first coil's grid."""
    import nibabel as nb

    for mags, phases in acq.coil_files[1:]:
        for path in [*mags, *phases]:
            try:
                img = nb.load(path)
            except Exception as exc:  # nibabel raises several types for broken files
                raise InputError(f'{path}: cannot read NIfTI header ({type(exc).__name__}); '
                                 f'{_REEXPORT}') from None
            _check_grid(path, img, per_file, ref)


def check_polarity(acq: Acquisition, first, second, affine) -> dict | None:
    """Score the phase polarity (:func:`qsmflow.qsm.polarity.polarity_score`); append a
    warning to ``acq.warnings`` when it looks inverted. Never raises for the data's sake.

    ``first``/``second`` are the magnitude/phase (or real/imaginary) volumes of every echo,
    (X, Y, Z, N), as stored; the phase scaling is ``acq.phase_units``.
    """
    from qsmflow.qsm.kernels import b0_dir_from_affine
    from qsmflow.qsm.phase import complex_to_mag_phase, to_radians
    from qsmflow.qsm.polarity import INVERTED_BELOW, polarity_score

    first = np.nan_to_num(first, nan=0.0, posinf=0.0, neginf=0.0)
    second = np.nan_to_num(second, nan=0.0, posinf=0.0, neginf=0.0)
    if acq.complex_parts.startswith('real'):
        mag, phase = complex_to_mag_phase(first, second)
    else:
        mag, phase = first, to_radians(second, acq.phase_units)
    try:
        zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        result = polarity_score(phase, mag, zooms, b0_dir=b0_dir_from_affine(affine))
    except ValueError:  # e.g. no brain found: the check cannot say anything
        return None
    if result['inverted']:
        high, low = result['tail_voxels']
        acq.warnings.append(
            f'phase polarity looks inverted (quick chi map: {low} voxels far below the median, '
            f'{high} far above; score {result["score"]:+.2f} < {INVERTED_BELOW}): veins and '
            'deep grey matter would come out diamagnetic; if the phase is left-handed (e.g. '
            'GE) negate it, or convert the DICOM with "qsmflow convert"')
    return result


def describe(acq: Acquisition, summary: dict) -> str:
    """One-line pre-flight report of a checked acquisition.

    Examples
    --------
    >>> acq = Acquisition({'subject': '01', 'run': 2}, ['m'], ['p'], [0.004, 0.008], 3.0)
    >>> line = describe(acq, {'shape': (5, 6, 7), 'voxel_size_mm': (1.0, 1.0, 2.5),
    ...                       'n_echoes': 2, 'phase_scaling': 'arbitrary', 'nonfinite': 0})
    >>> line.split(', ')[:4]
    ['sub-01_run-2: 2 echoes (4', '8 ms)', '3 T', '5x6x7 voxels of 1x1x2.5 mm']
    >>> line.endswith('mag/phase (arbitrary -> rad), one 3D file per echo')
    True
    """
    ents = acq.name.replace('_', '-').split('-')
    label = '_'.join(f'{k}-{v}' for k, v in zip(ents[::2], ents[1::2]))
    tes = ', '.join(f'{1e3 * t:g}' for t in acq.echo_times_s)
    echoes = 'single echo' if summary['n_echoes'] == 1 else f'{summary["n_echoes"]} echoes'
    scaling = summary['phase_scaling']
    parts = acq.complex_parts + ('' if scaling in ('real/imag', 'rad') else
                                 f' ({scaling} -> rad)')
    layout = 'one 4D file per part' if acq.layout == '4d' else 'one 3D file per echo'
    shape = 'x'.join(str(s) for s in summary['shape'])
    vox = 'x'.join(f'{z:g}' for z in summary['voxel_size_mm'])
    line = (f'{label}: {echoes} ({tes} ms), {acq.b0_tesla:g} T, {shape} voxels of {vox} mm, '
            f'{parts}, {layout}')
    return line + ''.join(f'; WARNING: {w}' for w in acq.warnings)


def preflight(acquisitions: dict, failures: dict, log=print, brain_masks=None,
              segmentations=None, r2_maps=None) -> dict:
    """Check the images of every participant; move failing ones into ``failures``.

    Also resolves each acquisition's other input files into its record: the voxel count
    (``n_voxels``), the user's brain mask (``brain_mask``), R2 map (``r2_map``) and
    segmentation with its lookup table (``segmentation``, ``segmentation_lut``), so that a missing or unusable file
    fails its participant here, with one line, and the others run.

    Parameters
    ----------
    acquisitions : dict
        ``{subject: [Acquisition, ...]}``; failing subjects are removed in place.
    failures : dict
        ``{subject: one-line reason}``; updated in place.
    log : callable
        Receives the report, one line per acquisition.
    brain_masks : str or Path, optional
        ``--brain-masks`` folder: each acquisition must have a usable mask there.
    segmentations : str or Path, optional
        ``--segmentations`` folder: a participant's segmentation there (optional) must
        have its lookup table.
    r2_maps : str or Path, optional
        ``--r2-map`` folder: each acquisition must have a usable R2 map (1/s) there.

    Returns
    -------
    dict
        ``{subject: [report line, ...]}``.
    """
    reports = {}
    for subject, acqs in list(acquisitions.items()):
        lines = []
        try:
            for acq in acqs:
                summary = check_images(acq)
                if brain_masks:
                    acq.brain_mask = str(check_brain_mask(brain_masks, acq))
                if r2_maps:
                    acq.r2_map = str(check_r2_map(r2_maps, acq))
                if segmentations:
                    found = check_segmentation(segmentations, acq)
                    acq.segmentation, acq.segmentation_lut = found or (None, None)
                shape = summary['shape']
                acq.n_voxels = int(shape[0] * shape[1] * shape[2])
                lines.append(describe(acq, summary))
        except InputError as exc:
            failures[subject] = str(exc)
            del acquisitions[subject]
            lines.append(f'sub-{subject}: FAILED pre-flight: {exc}')
        reports[subject] = lines
        for line in lines:
            log(f'qsmflow: pre-flight {line}')
    return reports
