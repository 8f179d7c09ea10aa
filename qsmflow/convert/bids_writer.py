# SPDX-License-Identifier: Apache-2.0
"""Writing a converted acquisition as BIDS MEGRE: one file per echo and part, atomically;
and a two-echo GRE field map in the BIDS ``fmap`` form (:func:`write_fieldmap`).

Names follow the input pattern of ``bids_specs/inputs.json``
(``sub-<l>[_ses-<l>][_acq-<l>][_run-<i>]_echo-<i>_part-<mag|phase|real|imag>_MEGRE``).
Phase is written in radians (:func:`qsmflow.convert.vendor_phase.phase_to_rad`), real and
imaginary parts with GE chopping and polarity undone
(:func:`qsmflow.convert.vendor_phase.fix_complex`), magnitude byte for byte as dcm2niix
wrote it. Sidecars keep dcm2niix's acquisition facts, less the identifying ones, and say
what was done to the phase. Every file is written through :mod:`qsmflow.bids.atomic`; the
same input gives the same bytes, so a re-run is idempotent.
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmflow import __version__, bids_specs
from qsmflow.bids.atomic import replace_into, write_json, write_text
from qsmflow.convert.series import Acquisition, FieldMap
from qsmflow.convert.vendor_phase import fix_complex, phase_to_rad
from qsmflow.errors import InputError

#: Sidecar keys that identify a person, a place or a date: never written into BIDS.
IDENTIFYING_KEYS = (
    'PatientName', 'PatientID', 'PatientBirthDate', 'PatientSex', 'PatientAge',
    'PatientWeight', 'PatientSize', 'InstitutionName', 'InstitutionAddress',
    'InstitutionalDepartmentName', 'StationName', 'DeviceSerialNumber', 'StudyID',
    'StudyInstanceUID', 'SeriesInstanceUID', 'AcquisitionDateTime', 'AcquisitionDate',
    'StudyDescription', 'ProcedureStepDescription', 'ReferringPhysicianName',
    'AccessionNumber', 'BidsGuess')

BIDS_VERSION = '1.10.0'

#: BIDS field-map names (phase-difference case): ``_phasediff``, ``_magnitude1``,
#: ``_magnitude2`` in ``fmap/``.
FMAP_PATTERN = ('sub-{subject}[_ses-{session}][_acq-{acquisition}][_run-{run}]'
                '_{suffix}{extension}')


def megre_path(bids_dir, entities: dict) -> Path:
    """Path of one echo and part of a MEGRE acquisition.

    Examples
    --------
    >>> megre_path('/b', {'subject': '01', 'echo': 2, 'part': 'phase'}).as_posix()
    '/b/sub-01/anat/sub-01_echo-2_part-phase_MEGRE.nii.gz'
    >>> megre_path('/b', {'subject': '01', 'session': 'a', 'run': 2, 'echo': 1,
    ...                   'part': 'mag'}).name
    'sub-01_ses-a_run-2_echo-1_part-mag_MEGRE.nii.gz'
    """
    spec = bids_specs.load('inputs')
    ents = {**entities, 'suffix': spec['suffix'], 'extension': '.nii.gz'}
    folder = Path(bids_dir) / f'sub-{ents["subject"]}'
    if ents.get('session'):
        folder = folder / f'ses-{ents["session"]}'
    return folder / spec['datatype'] / bids_specs.build_path(spec['pattern'], ents)


def clean_sidecar(meta: dict) -> dict:
    """dcm2niix's sidecar without the identifying keys (:data:`IDENTIFYING_KEYS`)."""
    return {k: v for k, v in meta.items() if k not in IDENTIFYING_KEYS}


def _write_float(dest: Path, data: np.ndarray, like) -> Path:
    img = nb.Nifti1Image(np.asarray(data, dtype=np.float32), like.affine, like.header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    return replace_into(dest, img.to_filename)


def _load(path) -> tuple:
    try:
        img = nb.load(path)
        return img, np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:
        raise InputError(f'{path}: dcm2niix wrote an unreadable image ({type(exc).__name__}); '
                         're-export the series from the scanner') from None


def write_acquisition(acq: Acquisition, bids_dir, subject: str, session: str | None,
                      dcm2niix_version: str) -> tuple[list[Path], str]:
    """Write every echo and part of ``acq``; return the written images and the phase note.

    Raises
    ------
    InputError
        When the phase scaling cannot be told (one line naming the file and the fix).
    """
    first, second = acq.parts
    echoes = acq.echoes
    loaded = {key: _load(img.nifti) for key, img in acq.images.items()
              if key[0] != 'mag'}
    if acq.parts == ('mag', 'phase'):
        stack = np.stack([loaded[('phase', e)][1] for e in echoes], -1)
        try:
            rad, note = phase_to_rad(stack, acq.manufacturer)
        except ValueError as exc:
            path = acq.images[('phase', echoes[0])].nifti.name
            raise InputError(f'{path} (series {acq.series}): {exc}; check the phase '
                             'export of this series') from None
        data = {('phase', e): rad[..., i] for i, e in enumerate(echoes)}
    else:
        re_, im_, notes = fix_complex(
            np.stack([loaded[('real', e)][1] for e in echoes], -1),
            np.stack([loaded[('imag', e)][1] for e in echoes], -1), acq.manufacturer)
        data = {**{('real', e): re_[..., i] for i, e in enumerate(echoes)},
                **{('imag', e): im_[..., i] for i, e in enumerate(echoes)}}
        note = '; '.join(notes) or 'real/imaginary as stored'
    written = []
    base = {'subject': subject, 'session': session, 'acquisition': acq.acq_label,
            'run': acq.run}
    for e in echoes:
        for part in (first, second):
            img = acq.images[(part, e)]
            dest = megre_path(bids_dir, {**base, 'echo': e, 'part': part})
            dest.parent.mkdir(parents=True, exist_ok=True)
            if part == 'mag':
                replace_into(dest, lambda tmp, src=img.nifti: shutil.copyfile(src, tmp))
            else:
                _write_float(dest, data[(part, e)], loaded[(part, e)][0])
            meta = clean_sidecar(img.meta)
            meta.update(EchoTime=img.echo_time_s, EchoNumber=e,
                        ConversionSoftware='dcm2niix',
                        ConversionSoftwareVersion=dcm2niix_version,
                        Units='rad' if part == 'phase' else 'arbitrary')
            if part != 'mag':
                meta['PhaseConversion'] = f'qsmflow {__version__} convert: {note}'
            write_json(dest.with_name(dest.name.replace('.nii.gz', '.json')), meta)
            written.append(dest)
    return written, note


def fmap_path(bids_dir, entities: dict, suffix: str) -> Path:
    """Path of one field-map image.

    Examples
    --------
    >>> fmap_path('/b', {'subject': '01', 'session': 'a'}, 'phasediff').as_posix()
    '/b/sub-01/ses-a/fmap/sub-01_ses-a_phasediff.nii.gz'
    """
    folder = Path(bids_dir) / f'sub-{entities["subject"]}'
    if entities.get('session'):
        folder = folder / f'ses-{entities["session"]}'
    name = bids_specs.build_path(FMAP_PATTERN, {**entities, 'suffix': suffix,
                                                'extension': '.nii.gz'})
    return folder / 'fmap' / name


def write_fieldmap(fm: FieldMap, bids_dir, subject: str, session: str | None,
                   dcm2niix_version: str) -> tuple[list[Path], str]:
    """Write a field map as ``_phasediff`` (rad; sidecar ``EchoTime1``/``EchoTime2`` in s)
    and ``_magnitude1`` [``_magnitude2``]; return the written images and the phase note.

    Raises
    ------
    InputError
        When the phase scaling cannot be told.
    """
    base = {'subject': subject, 'session': session, 'acquisition': fm.acq_label,
            'run': fm.run}
    img, data = _load(fm.phasediff.nifti)
    try:
        rad, note = phase_to_rad(data, fm.manufacturer)
    except ValueError as exc:
        raise InputError(f'{fm.phasediff.nifti.name} (series {fm.phasediff.series}): {exc}; '
                         'check the phase export of this field map') from None
    dest = fmap_path(bids_dir, base, 'phasediff')
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_float(dest, rad, img)
    meta = {k: v for k, v in clean_sidecar(fm.phasediff.meta).items()
            if k not in ('EchoTime', 'EchoNumber')}
    meta.update(EchoTime1=fm.echo_times_s[0], EchoTime2=fm.echo_times_s[1], Units='rad',
                ConversionSoftware='dcm2niix', ConversionSoftwareVersion=dcm2niix_version,
                PhaseConversion=f'qsmflow {__version__} convert: {note}')
    write_json(dest.with_name(dest.name.replace('.nii.gz', '.json')), meta)
    written = [dest]
    for echo, mag in sorted(fm.magnitudes.items()):
        dest = fmap_path(bids_dir, base, f'magnitude{echo}')
        replace_into(dest, lambda tmp, src=mag.nifti: shutil.copyfile(src, tmp))
        meta = clean_sidecar(mag.meta)
        meta.update(EchoTime=mag.echo_time_s, ConversionSoftware='dcm2niix',
                    ConversionSoftwareVersion=dcm2niix_version)
        meta.pop('EchoNumber', None)
        write_json(dest.with_name(dest.name.replace('.nii.gz', '.json')), meta)
        written.append(dest)
    return written, note


def write_dataset_files(bids_dir, subject: str, dcm2niix_version: str) -> None:
    """``dataset_description.json`` (when missing), ``participants.tsv`` (row added when
    missing; other rows and columns kept) and a ``README`` (when missing)."""
    bids_dir = Path(bids_dir)
    desc = bids_dir / 'dataset_description.json'
    if not desc.exists():
        write_json(desc, {
            'Name': 'Multi-echo GRE converted from DICOM by qsmflow convert',
            'BIDSVersion': BIDS_VERSION, 'DatasetType': 'raw',
            'GeneratedBy': [{'Name': 'qsmflow', 'Version': __version__,
                             'Description': f'qsmflow convert (dcm2niix {dcm2niix_version})'}]})
    readme = bids_dir / 'README'
    if not readme.exists():
        write_text(readme, 'Multi-echo gradient-echo (MEGRE) images converted from DICOM by '
                           '"qsmflow convert" with dcm2niix; phase in radians.\nWhat was '
                           'converted and skipped: sourcedata/qsmflow_convert/*_summary.tsv\n')
    table = bids_dir / 'participants.tsv'
    rows, columns = [], ['participant_id']
    if table.exists():
        reader = csv.DictReader(io.StringIO(table.read_text()), delimiter='\t')
        columns = list(reader.fieldnames or columns)
        rows = list(reader)
    if any(r.get('participant_id') == f'sub-{subject}' for r in rows):
        return
    rows.append({'participant_id': f'sub-{subject}'})
    rows.sort(key=lambda r: r['participant_id'])
    lines = ['\t'.join(columns)] + ['\t'.join(r.get(c) or 'n/a' for c in columns) for r in rows]
    write_text(table, '\n'.join(lines) + '\n')
