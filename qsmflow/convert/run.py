# SPDX-License-Identifier: Apache-2.0
"""``qsmflow convert``: DICOM folder → BIDS multi-echo GRE, end to end.

Stages the DICOM files and runs dcm2niix in a staging folder inside the BIDS output
(:mod:`qsmflow.convert.dcm2niix`), finds the multi-echo GRE acquisitions among the results
and the two-echo GRE field maps (:mod:`qsmflow.convert.series`), writes them (field maps
in the BIDS ``fmap`` form) with the vendors' phase conventions applied
(:mod:`qsmflow.convert.bids_writer`) and the summary table (:mod:`qsmflow.convert.summary`).
Nothing is written outside the BIDS folder; the staging folder is removed at the end.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from qsmflow.convert import bids_writer, dcm2niix, series, summary
from qsmflow.errors import InputError

_LABEL = re.compile(r'[0-9a-zA-Z]+')


def _label(value, flag) -> str | None:
    if value is None:
        return None
    label = str(value).removeprefix('sub-').removeprefix('ses-')
    if not _LABEL.fullmatch(label):
        raise InputError(f'{flag} {value!r}: a BIDS label has letters and digits only '
                         '(e.g. 01 or pre)')
    return label


def _patient_label(images, dicom_dir) -> str | None:
    """A participant label from the DICOM PatientID (letters and digits kept).

    Raises InputError when the folder holds more than one patient."""
    ids = sorted({str(img.meta.get('PatientID', '')) for img in images} - {''})
    if len(ids) > 1:
        raise InputError(f'{dicom_dir}: DICOM of {len(ids)} patients ({", ".join(ids[:3])}); '
                         "convert one patient's folder at a time")
    label = re.sub(r'[^0-9a-zA-Z]', '', ids[0]) if ids else ''
    return label or None


def convert_dicom(dicom_dir, bids_dir, participant_label=None, session_label=None,
                  log=print) -> dict:
    """Convert the multi-echo GRE series below ``dicom_dir`` into the BIDS folder ``bids_dir``.

    Parameters
    ----------
    dicom_dir : str or Path
        Folder tree of classic or enhanced DICOM (``.dcm``, any name, or ``.dcm.gz``).
    bids_dir : str or Path
        BIDS dataset to create or add to.
    participant_label : str, optional
        Participant label (default: the DICOM PatientID, letters and digits).
    session_label : str, optional
        Session label (default: no session).
    log : callable
        Receives the summary lines.

    Returns
    -------
    dict
        ``subject``, ``session``, ``rows`` (summary rows), ``files`` (written images),
        ``summary`` (path of the table).

    Raises
    ------
    InputError
        Bad folders or labels, no DICOM, dcm2niix failing, unreadable phase scaling.
    """
    dicom_dir, bids_dir = Path(dicom_dir), Path(bids_dir)
    if not dicom_dir.is_dir():
        raise InputError(f'{dicom_dir}: not a folder; give the folder that holds the DICOM '
                         'files')
    if dicom_dir.resolve().is_relative_to(bids_dir.resolve()):
        raise InputError(f'{bids_dir}: the BIDS output must not contain the DICOM folder '
                         f'{dicom_dir}; choose another BIDS_DIR')
    subject = _label(participant_label, '--participant-label')
    session = _label(session_label, '--session-label')
    work = bids_dir / 'sourcedata' / 'qsmflow_convert' / f'.staging-{os.getpid()}'
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f'{bids_dir}: cannot write there ({exc.strerror}); choose a '
                         'writable BIDS_DIR') from None
    try:
        n = dcm2niix.stage_dicom(dicom_dir, work / 'dicom', skip=[bids_dir])
        if n == 0:
            raise InputError(f'{dicom_dir}: no DICOM files found (looked for DICOM Part 10 '
                             'files, plain or .gz); give the folder of the exported series')
        version = dcm2niix.dcm2niix_version()
        dcm2niix.run_dcm2niix(work / 'dicom', work / 'nifti')
        images, skipped = series.read_images(work / 'nifti')
        patient = _patient_label(images, dicom_dir)
        subject = subject or patient
        if subject is None:
            raise InputError(f'{dicom_dir}: the DICOM files have no PatientID; pass '
                             '--participant-label')
        fieldmaps, images, more = series.find_fieldmaps(images)
        skipped += more
        found, more = series.find_acquisitions(images)
        skipped += more
        rows, files = [], []
        for acq in found:
            written, note = bids_writer.write_acquisition(acq, bids_dir, subject, session,
                                                          version)
            files += written
            rows.append(summary.converted_row(acq, written, note))
        for fm in fieldmaps:
            written, note = bids_writer.write_fieldmap(fm, bids_dir, subject, session, version)
            files += written
            rows.append(summary.fieldmap_row(fm, written, note))
        rows += [summary.skipped_row(s) for s in skipped]
        if found or fieldmaps:
            bids_writer.write_dataset_files(bids_dir, subject, version)
        table = summary.write_summary(summary.summary_path(bids_dir, subject, session), rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in summary.format_rows(rows):
        log(f'qsmflow convert: {line}')
    return {'subject': subject, 'session': session, 'rows': rows, 'files': files,
            'summary': table, 'dicom_files': n}
