# SPDX-License-Identifier: Apache-2.0
"""Synthetic scanner DICOM of a phantom acquisition, in each vendor's style (tests only).

Plain functions (no fixtures, no tests). :func:`write_series` writes classic MR Image
Storage files (one file per slice, echo and part) with the tags a vendor sets and
dcm2niix reads: ``Manufacturer``, ``EchoTime`` (ms), ``EchoNumbers``, ``ImageType``,
``RescaleSlope``/``RescaleIntercept``, the geometry (``ImagePositionPatient``,
``ImageOrientationPatient`` in LPS) and, per vendor:

``siemens``
    magnitude series and a separate phase series (series number + 1); phase stored as
    unsigned 12-bit integers 0…4095 with ``RescaleSlope`` 2 and ``RescaleIntercept``
    −4096, i.e. −4096…4094 for −π…π, ``ImageType`` ``[ORIGINAL, PRIMARY, P, ND]``.
``ge``
    one series holding real and imaginary images (GE private image type
    (0043,102F) = 2/3), with the complex signal conjugated (GE's left-handed phase
    polarity) and its sign alternating from slice to slice (chopping).
``philips``
    one series holding magnitude and phase, phase stored as integers with the Philips
    private scale tags (2005,100E scale slope, 2005,1409/140A rescale intercept/slope)
    so that dcm2niix's floating-point scaling gives radians.
"""
from __future__ import annotations

import copy
import gzip
from pathlib import Path

import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0])
_MR_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.4'


def _geometry(affine):
    """IOP (6 floats), IPP per slice (function of k) and spacing, for NIfTI RAS ``affine``.

    Pixel (row r, column c) of slice k is voxel (i=c, j=r, k)."""
    a = np.asarray(affine, dtype=float)
    cols = _LPS @ a[:3, 0]
    rows = _LPS @ a[:3, 1]
    dx, dy, dz = (float(np.linalg.norm(a[:3, n])) for n in range(3))
    iop = [*(cols / dx), *(rows / dy)]

    def ipp(k):
        return _LPS @ (a[:3, :3] @ [0.0, 0.0, float(k)] + a[:3, 3])

    return iop, ipp, (dx, dy, dz)


def _base(uid, manufacturer, series_number, description, shape, spacing, *, b0_tesla):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = _MR_IMAGE_STORAGE
    ds.Modality = 'MR'
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = f'{manufacturer} synthetic'
    ds.MagneticFieldStrength = f'{b0_tesla:g}'
    ds.ImagingFrequency = f'{42.577478 * b0_tesla:.6f}'
    ds.PatientName = 'Phantom^Synthetic'
    ds.PatientID = 'phantom01'
    ds.PatientPosition = 'HFS'
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = '20240101'
    ds.StudyTime = ds.SeriesTime = '120000'
    ds.AcquisitionTime = f'1200{series_number % 60:02d}.000000'
    ds.StudyInstanceUID = f'{uid}.1'
    ds.SeriesInstanceUID = f'{uid}.2.{series_number}'
    ds.FrameOfReferenceUID = f'{uid}.3'
    ds.StudyID = '1'
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.SeriesDescription = ds.ProtocolName = description
    ds.ScanningSequence = 'GR'
    ds.SequenceVariant = 'SP'
    ds.MRAcquisitionType = '3D'
    ds.RepetitionTime = '45'
    ds.FlipAngle = '15'
    ds.SliceThickness = f'{spacing[2]:g}'
    ds.SpacingBetweenSlices = f'{spacing[2]:g}'
    ds.PixelSpacing = [f'{spacing[1]:g}', f'{spacing[0]:g}']
    ds.Rows, ds.Columns = int(shape[1]), int(shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.BitsAllocated = 16
    return ds


def _save(ds, path, compress):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    if compress:
        raw = Path(path).read_bytes()
        Path(f'{path}.gz').write_bytes(gzip.compress(raw, mtime=0))
        Path(path).unlink()


def _write_images(folder, ds0, affine, volume, echo, te_s, image_type, *, store, extra=None,
                  chop=False, compress=False, start=1):
    """One file per slice of ``volume`` (X, Y, Z) stored through ``store`` (→ uint16/int16
    array, slope, intercept, signed)."""
    iop, ipp, _ = _geometry(affine)
    data, slope, inter, signed = store(volume)
    n = start
    for k in range(volume.shape[2]):
        ds = copy.deepcopy(ds0)
        ds.SOPInstanceUID = f'{ds0.SeriesInstanceUID}.{echo}.{k + 1}.{len(image_type)}.{n}'
        ds.InstanceNumber = n
        ds.ImageType = image_type
        ds.EchoTime = f'{1e3 * te_s:.4f}'
        ds.EchoNumbers = echo
        ds.ImageOrientationPatient = [f'{v:.8f}' for v in iop]
        ds.ImagePositionPatient = [f'{v:.6f}' for v in ipp(k)]
        ds.SliceLocation = f'{ipp(k)[2]:.6f}'
        ds.RescaleSlope, ds.RescaleIntercept = f'{slope:.10g}', f'{inter:.10g}'
        ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        sl = data[:, :, k].T  # (rows = j, columns = i)
        if chop and k % 2:
            sl = -sl
        ds.PixelData = np.ascontiguousarray(sl).astype('<i2' if signed else '<u2').tobytes()
        for tag, (vr, value) in (extra or {}).items():
            ds.add_new(tag, vr, value)
        kind = '-'.join(image_type[2:])
        _save(ds, folder / f'{ds.SeriesNumber}_{echo}_{kind}_{k + 1:04d}.dcm', compress)
        n += 1
    return n


def _mag_store(peak):
    def store(vol):
        slope = peak / 30000.0
        return np.round(np.clip(vol, 0, None) / slope), slope, 0.0, False
    return store


def _siemens_phase_store(vol):
    # -pi..pi -> 0..4095 (RescaleSlope 2, RescaleIntercept -4096: -4096..4094)
    stored = np.round((np.asarray(vol) + np.pi) / (2 * np.pi) * 4096) % 4096
    return stored, 2.0, -4096.0, False


def write_series(folder, mag, phase, affine, echo_times_s, vendor, *, b0_tesla=3.0,
                 series_number=10, compress=False, uid='1.2.826.0.1.3680043.10.1234'):
    """Write one multi-echo GRE acquisition as DICOM in ``vendor``'s style.

    Parameters
    ----------
    folder : Path
        Folder to write into (created).
    mag, phase : ndarray, shape (X, Y, Z, N)
        Magnitude (arbitrary units) and phase (rad) of N echoes, right-handed convention
        (paramagnetic sources: positive field).
    affine : (4, 4) ndarray
        NIfTI RAS affine of the grid.
    echo_times_s : sequence of N float
        Echo times (s).
    vendor : {'siemens', 'ge', 'philips'}
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = mag.shape[:3]
    _, _, spacing = _geometry(affine)
    peak = float(np.percentile(mag, 99.9)) * 1.05
    man = {'siemens': 'SIEMENS', 'ge': 'GE MEDICAL SYSTEMS', 'philips': 'Philips'}[vendor]

    def base(number):
        return _base(uid, man, number, 'qsm_gre_5echo', shape, spacing, b0_tesla=b0_tesla)

    n_echo = mag.shape[3]
    if vendor == 'siemens':
        m_ds, p_ds = base(series_number), base(series_number + 1)
        for e in range(n_echo):
            te = echo_times_s[e]
            _write_images(folder, m_ds, affine, mag[..., e], e + 1, te,
                          ['ORIGINAL', 'PRIMARY', 'M', 'ND'], store=_mag_store(peak),
                          compress=compress, start=1 + e * shape[2])
            _write_images(folder, p_ds, affine, phase[..., e], e + 1, te,
                          ['ORIGINAL', 'PRIMARY', 'P', 'ND'], store=_siemens_phase_store,
                          compress=compress, start=1 + e * shape[2])
    elif vendor == 'ge':
        ds = base(series_number)
        # GE private image type: 0 magnitude, 1 phase, 2 real, 3 imaginary.
        ds.add_new(0x00430010, 'LO', 'GEMS_PARM_01')
        z = mag * np.exp(-1j * phase)  # left-handed: the stored phase is inverted
        scale = 30000.0 / peak
        store = (lambda v: (np.round(v * scale), 1.0, 0.0, True))
        n = 1
        for e in range(n_echo):
            for kind, part, vol in ((2, 'REAL', z[..., e].real), (3, 'IMAGINARY', z[..., e].imag)):
                n = _write_images(folder, ds, affine, vol, e + 1, echo_times_s[e],
                                  ['ORIGINAL', 'PRIMARY', 'OTHER', part], store=store,
                                  extra={0x0043102F: ('SS', kind)}, chop=True,
                                  compress=compress, start=n)
    elif vendor == 'philips':
        ds = base(series_number)
        ds.add_new(0x20050010, 'LO', 'Philips MR Imaging DD 001')
        n = 1
        for e in range(n_echo):
            # magnitude: scale slope 1 (floating-point value = displayed value)
            n = _write_images(folder, ds, affine, mag[..., e], e + 1, echo_times_s[e],
                              ['ORIGINAL', 'PRIMARY', 'M_FFE', 'M', 'FFE'],
                              store=_mag_store(peak), compress=compress, start=n,
                              extra={0x2005100E: ('FL', 1.0)})
            # stored 0..4095 -> display (RS*SV + RI) -> float (display / (RS * SS)) in rad
            rs, ss = 1.53455, 651.74
            ri = -np.pi * rs * ss

            def store(v, rs=rs, ri=ri):
                sv = np.round((np.asarray(v) + np.pi) * ss) % int(round(2 * np.pi * ss))
                return sv, rs, ri, False
            n = _write_images(folder, ds, affine, phase[..., e], e + 1, echo_times_s[e],
                              ['ORIGINAL', 'PRIMARY', 'P_FFE', 'P', 'FFE'], store=store,
                              extra={0x2005100E: ('FL', ss),
                                     0x20051409: ('DS', f'{ri:.6f}'),
                                     0x2005140A: ('DS', f'{rs:.6f}')},
                              compress=compress, start=n)
    else:
        raise ValueError(f'unknown vendor {vendor!r}')
    return folder


def rewrite(src, dest, *, drop_echo_numbers=False, image_type=None):
    """Copy the DICOM series in ``src`` to ``dest`` with header changes: without
    ``EchoNumbers`` (an export that leaves it out), or with one ``ImageType`` for every
    image and no GE private image type (parts that nothing in the header tells apart, which
    dcm2niix stacks in 4D)."""
    import pydicom

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).iterdir()):
        opener = gzip.open if path.name.endswith('.gz') else open
        with opener(path, 'rb') as fh:
            ds = pydicom.dcmread(fh)
        if drop_echo_numbers and 'EchoNumbers' in ds:
            del ds.EchoNumbers
        if image_type is not None:
            ds.ImageType = list(image_type)
            if 0x0043102F in ds:
                del ds[0x0043102F]
        ds.save_as(dest / path.name.removesuffix('.gz'), enforce_file_format=True)
    return dest
