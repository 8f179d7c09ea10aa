# SPDX-License-Identifier: Apache-2.0
"""One map → one DICOM series: classic MR Image Storage, one file per slice.

Classic MR Image Storage (one single-frame file per slice) is what every PACS and viewer
opens. Each file carries its slice geometry (:mod:`qsmflow.export.geometry`), the values
as 16-bit integers with ``RescaleSlope`` (``RescaleIntercept`` 0; value = stored × slope in
the map's units, also given as a ``RealWorldValueMappingSequence`` with UCUM units), the
display window (``WindowCenter``/``WindowWidth`` in the map's units,
:func:`qsmflow.export.maps.window`), ``ImageType`` ``DERIVED\\SECONDARY\\QSM\\<map>``,
and, with a reference series, its patient, study, frame of reference and a
``ReferencedSeriesSequence`` to the source images (:mod:`qsmflow.export.reference`).

UIDs are derived from the study, the map's file name and its contents, so exporting the
same map again gives the same files, and an updated map a new series.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmflow import __version__
from qsmflow.errors import InputError
from qsmflow.export import geometry, reference
from qsmflow.export.maps import FoundMap, window

MR_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.4'

#: UCUM code, meaning of the map units (bids_specs/outputs.json ``Units``).
UCUM = {'ppm': ('ppm', 'parts per million'), '1/s': ('/s', 'per second'),
        's': ('s', 'second'), 'arbitrary': ('1', 'no units')}


def load_map(found: FoundMap) -> tuple[np.ndarray, np.ndarray]:
    """(data as float64 (X, Y, Z), affine) of a map file.

    Raises
    ------
    InputError
        Unreadable or not 3D (one line, the file and the fix).
    """
    try:
        img = nb.load(found.path)
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:
        raise InputError(f'{found.path}: unreadable NIfTI ({type(exc).__name__}); re-run '
                         'qsmflow participant for this participant') from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f'{found.path}: a {data.ndim}D image; export-dicom exports 3D maps')
    return data, img.affine


def _code(value, scheme, meaning):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _series_dataset(found, ids, ref, deidentify, series_number, slope, centre_width):
    """The attributes every file of the series shares."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SpecificCharacterSet = 'ISO_IR 192'
    ds.Modality = 'MR'
    subject = f'sub-{found.entities["sub"]}'
    if ref is not None and not deidentify:
        for key, value in ref.patient_study.items():
            setattr(ds, key, value)
    elif ref is not None:
        for key in reference.DEIDENTIFIED_KEEP:
            if key in ref.patient_study:
                setattr(ds, key, ref.patient_study[key])
        ds.PatientIdentityRemoved = 'YES'
        ds.DeidentificationMethod = [f'qsmflow {__version__} export-dicom --deidentify',
                                     'patient name and ID = BIDS participant',
                                     'no birth date, sex, age, dates, accession, physician',
                                     'UIDs replaced']
        ds.DeidentificationMethodCodeSequence = [_code('113100', 'DCM',
                                                       'Basic Application Confidentiality '
                                                       'Profile')]
    for key in ('PatientName', 'PatientID'):
        if key not in ds:
            setattr(ds, key, subject)
    for key in ('PatientBirthDate', 'PatientSex', 'StudyDate', 'StudyTime',
                'ReferringPhysicianName', 'AccessionNumber'):
        if key not in ds:
            setattr(ds, key, '')
    if 'StudyID' not in ds:
        ds.StudyID = ''
    if ref is not None:
        for key, value in ref.acquisition.items():
            setattr(ds, key, value)
    ds.StudyInstanceUID = ids['study']
    ds.SeriesInstanceUID = ids['series']
    ds.FrameOfReferenceUID = ids['frame']
    ds.PositionReferenceIndicator = ''
    ds.SeriesNumber = series_number
    units = found.map.units
    ds.SeriesDescription = f'{found.map.description} ({units}) qsmflow'
    ds.ProtocolName = found.stem[:64]  # LO: 64 characters at most
    ds.Manufacturer = 'qsmflow'
    ds.SoftwareVersions = __version__
    ds.ImageType = ['DERIVED', 'SECONDARY', 'QSM', found.map.name.upper().replace('-', '_')]
    ds.DerivationDescription = f'{found.map.description} ({units}) from {found.path.name}'
    ds.ImageComments = (f'{found.map.description}: value = stored x RescaleSlope, in '
                        f'{units}')
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = 'GR', 'NONE', ''
    ds.MRAcquisitionType = '3D'
    ds.EchoTime = ds.RepetitionTime = ds.EchoTrainLength = None
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if found.map.signed else 0
    ds.RescaleSlope = f'{slope:.10g}'
    ds.RescaleIntercept = '0'
    ds.RescaleType = 'US'
    ds.WindowCenter = f'{centre_width[0]:.6g}'
    ds.WindowWidth = f'{centre_width[1]:.6g}'
    ds.WindowCenterWidthExplanation = f'{found.map.description} ({units})'
    rwv = Dataset()
    rwv.LUTExplanation = found.map.description
    rwv.LUTLabel = found.map.name
    rwv.RealWorldValueSlope = slope
    rwv.RealWorldValueIntercept = 0.0
    rwv.RealWorldValueFirstValueMapped, rwv.RealWorldValueLastValueMapped = \
        (-32768, 32767) if found.map.signed else (0, 65535)
    code, meaning = UCUM.get(units, UCUM['arbitrary'])
    rwv.MeasurementUnitsCodeSequence = [_code(code, 'UCUM', meaning)]
    ds.RealWorldValueMappingSequence = [rwv]
    return ds


def _references(ref, position, deidentify):
    from pydicom.dataset import Dataset

    items = []
    for series_uid, instances in reference.referenced_instances(ref, position).items():
        item = Dataset()
        item.SeriesInstanceUID = reference.uid_from('deid', series_uid) if deidentify \
            else series_uid
        refs = []
        for sop_class, sop_uid in instances:
            inst = Dataset()
            inst.ReferencedSOPClassUID = sop_class
            inst.ReferencedSOPInstanceUID = (reference.uid_from('deid', sop_uid)
                                             if deidentify else sop_uid)
            refs.append(inst)
        item.ReferencedInstanceSequence = refs
        items.append(item)
    return items


def series_uids(found: FoundMap, data: np.ndarray, ref, deidentify: bool) -> dict:
    """Study, frame-of-reference and series UIDs of the exported series."""
    sub, ses = found.entities['sub'], found.entities.get('ses', '')
    if ref is None:
        study = reference.uid_from('study', sub, ses)
        frame = reference.uid_from('frame', sub, ses)
    elif deidentify:
        study = reference.uid_from('deid', ref.study_uid)
        frame = reference.uid_from('deid', ref.frame_of_reference_uid or ref.study_uid)
    else:
        study = ref.study_uid
        frame = ref.frame_of_reference_uid or reference.uid_from('frame', ref.study_uid)
    digest = hashlib.sha256(np.ascontiguousarray(data, dtype=np.float64).tobytes()).hexdigest()
    return {'study': study, 'frame': frame,
            'series': reference.uid_from('series', study, found.stem, digest)}


def write_series(found: FoundMap, dest: Path, series_number: int, ref=None,
                 deidentify: bool = False) -> int:
    """Write ``found`` as a DICOM series into the folder ``dest`` (replaced as a whole:
    written beside it, then renamed); return the number of files.

    Raises
    ------
    InputError
        Unreadable map, or a grid DICOM slices cannot hold.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    data, affine = load_map(found)
    try:
        geom = geometry.slice_geometry(affine, data.shape)
        stored, slope = geometry.quantise(data, found.map.signed)
    except ValueError as exc:
        raise InputError(f'{found.path}: {exc}; export-dicom needs a map on an orthogonal '
                         'grid as qsmflow writes it') from None
    ids = series_uids(found, data, ref, deidentify)
    base = _series_dataset(found, ids, ref, deidentify, series_number, slope,
                           window(found.map, data))
    tmp = dest.with_name(f'.{dest.name}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n_slices = data.shape[2]
    for k in range(n_slices):
        ds = base.copy()
        ds.SOPInstanceUID = reference.uid_from('instance', ids['series'], k)
        ds.InstanceNumber = k + 1
        ds.ImagesInAcquisition = n_slices
        ds.ImageOrientationPatient = [f'{v:.8f}' for v in geom.orientation]
        ds.ImagePositionPatient = [f'{v:.6f}' for v in geom.positions[k]]
        normal = np.cross(geom.orientation[:3], geom.orientation[3:])
        ds.SliceLocation = f'{float(np.dot(geom.positions[k], normal)):.6f}'
        ds.PixelSpacing = [f'{v:.6f}' for v in geom.pixel_spacing_mm]
        ds.SliceThickness = ds.SpacingBetweenSlices = f'{geom.slice_spacing_mm:.6f}'
        ds.Rows, ds.Columns = geom.rows, geom.columns
        if ref is not None:
            ds.ReferencedSeriesSequence = _references(ref, geom.positions[k], deidentify)
        pixels = stored[:, :, k].T  # rows = j, columns = i
        ds.PixelData = np.ascontiguousarray(pixels).astype(
            '<i2' if found.map.signed else '<u2').tobytes()
        ds.SmallestImagePixelValue = int(pixels.min())
        ds.LargestImagePixelValue = int(pixels.max())
        ds['SmallestImagePixelValue'].VR = ds['LargestImagePixelValue'].VR = \
            'SS' if found.map.signed else 'US'
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(tmp / f'IM{k + 1:04d}.dcm', enforce_file_format=True)
    old = dest.with_name(f'.{dest.name}.old')
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return n_slices
