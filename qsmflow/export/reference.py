# SPDX-License-Identifier: Apache-2.0
"""The source DICOM series an exported map links to, and de-identification.

:func:`read_reference` reads the headers (no pixels) of every DICOM file below
``--reference-series`` (plain or ``.dcm.gz``): the patient and study it belongs to, its
frame of reference and its instances with their slice positions. The exported series join
that study (same ``StudyInstanceUID``, patient and ``FrameOfReferenceUID``) and point back
at the source images through ``ReferencedSeriesSequence``.

De-identification (``--deidentify``) follows the DICOM basic profile for what qsmflow
writes: the exported files only ever hold the attributes listed here; with it, the patient
name and ID become the BIDS participant (``sub-<label>``), birth date, sex, age, accession
number, referring physician and study description are left out, dates are emptied, and
every UID taken from the source (study, frame of reference, referenced series and
instances) is replaced by a new one derived from it (:func:`uid_from`), so the links
between the exported series stay consistent.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsmflow.errors import InputError

#: Patient and study attributes copied from the reference series (unless de-identified).
PATIENT_STUDY = ('PatientName', 'PatientID', 'IssuerOfPatientID', 'PatientBirthDate',
                 'PatientSex', 'PatientAge', 'StudyDate', 'StudyTime', 'StudyID',
                 'AccessionNumber', 'ReferringPhysicianName', 'StudyDescription')
#: Kept when de-identifying (PatientName/PatientID are replaced, dates emptied).
DEIDENTIFIED_KEEP = ('StudyID',)
#: Attributes emptied (Type 2) when de-identifying.
DEIDENTIFIED_EMPTY = ('StudyDate', 'StudyTime', 'AccessionNumber', 'ReferringPhysicianName',
                      'PatientBirthDate', 'PatientSex')
#: Acquisition facts copied from the reference series into every exported series.
ACQUISITION = ('PatientPosition', 'MagneticFieldStrength', 'BodyPartExamined')


def uid_from(*sources: str) -> str:
    """A DICOM UID derived deterministically from ``sources`` (pydicom's UID root).

    Examples
    --------
    >>> uid_from('a', 'b') == uid_from('a', 'b') != uid_from('a', 'c')
    True
    """
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=['qsmflow', *map(str, sources)]))


@dataclass
class Reference:
    """The facts of the reference series."""

    folder: Path
    patient_study: dict                 # PATIENT_STUDY attributes present
    acquisition: dict                   # ACQUISITION attributes present
    study_uid: str
    frame_of_reference_uid: str | None
    series_number: int
    normal: np.ndarray | None           # slice normal (LPS) of the first file
    # SeriesInstanceUID -> list of (SOPClassUID, SOPInstanceUID, position along normal or None)
    series: dict = field(default_factory=dict)


def _read_header(path):
    import pydicom

    opener = gzip.open if str(path).endswith('.gz') else open
    with opener(path, 'rb') as fh:
        return pydicom.dcmread(fh, stop_before_pixels=True)


def _slice_position(ds):
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    except (AttributeError, TypeError, ValueError):
        return None, None
    normal = np.cross(iop[:3], iop[3:])
    return normal, float(ipp @ normal)


def read_reference(folder) -> Reference:
    """Read the reference series below ``folder``.

    Raises
    ------
    InputError
        When the folder holds no DICOM files or more than one study (one line, the fix).
    """
    from qsmflow.convert.dcm2niix import dicom_kind

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f'{folder}: --reference-series is not a folder; give the folder of '
                         'the source DICOM series')
    headers = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if dicom_kind(path) is not None:
                try:
                    headers.append(_read_header(path))
                except Exception as exc:  # pydicom raises many kinds on broken files
                    raise InputError(f'{path}: unreadable DICOM ({type(exc).__name__}); '
                                     'remove it from --reference-series') from None
    if not headers:
        raise InputError(f'{folder}: no DICOM files found for --reference-series; give the '
                         'folder of the source DICOM series')
    studies = sorted({str(ds.get('StudyInstanceUID', '')) for ds in headers})
    if len(studies) != 1 or not studies[0]:
        raise InputError(f'{folder}: --reference-series holds {len(studies)} studies; give '
                         'the folder of one series (or of one study)')
    first = headers[0]
    series: dict = {}
    for ds in headers:
        _, position = _slice_position(ds)
        series.setdefault(str(ds.SeriesInstanceUID), []).append(
            (str(ds.SOPClassUID), str(ds.SOPInstanceUID), position))
    frames = sorted({str(ds.get('FrameOfReferenceUID', '')) for ds in headers} - {''})
    return Reference(
        folder,
        {k: first.get(k) for k in PATIENT_STUDY if k in first},
        {k: first.get(k) for k in ACQUISITION if k in first},
        studies[0], frames[0] if len(frames) == 1 else None,
        min(int(ds.get('SeriesNumber', 0) or 0) for ds in headers),
        _slice_position(first)[0], series)


def referenced_instances(ref: Reference, position_lps, tol_mm: float = 0.01) -> dict:
    """``{series UID: [(SOP class, SOP instance), …]}``: per reference series, the instances
    in the plane of the exported slice at ``position_lps`` (its ImagePositionPatient), or
    the first instance when none is (a series on another grid, one multi-frame file)."""
    position = None if ref.normal is None else float(np.dot(position_lps, ref.normal))
    out = {}
    for uid, items in ref.series.items():
        here = [(c, i) for c, i, p in items
                if None not in (p, position) and abs(p - position) <= tol_mm]
        out[uid] = here or [items[0][:2]]
    return out


def check_geometry(ref: Reference, orientation, positions_lps, tol_mm: float = 0.01) -> str | None:
    """Why a map's slices do not lie in the reference series' planes, or None.

    A map reconstructed from the reference series has the same slice orientation and every
    slice in a plane of a reference image. Reference series without per-image geometry
    (multi-frame files) are not checked.
    """
    planes = sorted({p for items in ref.series.values() for _, _, p in items if p is not None})
    if ref.normal is None or not planes:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(float(np.dot(normal, ref.normal))) < np.cos(np.deg2rad(0.5)):
        return 'its slices are not parallel to the reference images'
    heights = [float(np.dot(pos, ref.normal)) for pos in positions_lps]
    planes = np.asarray(planes)
    off = sum(np.abs(planes - h).min() > tol_mm for h in heights)
    if off:
        return f'{off} of its {len(heights)} slices lie in no plane of the reference images'
    return None
