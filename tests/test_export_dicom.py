# SPDX-License-Identifier: Apache-2.0
"""``qsmflow export-dicom``: maps → DICOM series that read back in pydicom and dcm2niix with
the NIfTI's geometry and values, linked to the real Philips source series
(tests/data/dicom_philips_gre), de-identified on request."""
from __future__ import annotations

import gzip
import warnings
import hashlib
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pydicom
import pytest

from qsmflow.convert.dcm2niix import run_dcm2niix
from qsmflow.export import geometry
from qsmflow.export.run import export_dicom
from tests import realdata

PHILIPS_CLASSIC = realdata.DATA / 'dicom_philips_gre' / 'classic'
PHILIPS_GRID = realdata.PHILIPS_HEAD / '2001_WIP_fcMRI_Field_Mapping_cl_e1.nii.gz'
#: An oblique grid with the i axis pointing left (dcm2niix writes it in another voxel order).
_TILT = np.deg2rad(12.0)
OBLIQUE_LAS = np.array([[-2.0, 0, 0, 60], [0, 2.5 * np.cos(_TILT), -3 * np.sin(_TILT), -40],
                        [0, 2.5 * np.sin(_TILT), 3 * np.cos(_TILT), -20], [0, 0, 0, 1]])


def _maps(out, affine, shape, subject='01'):
    """χ, R2* and SWI maps as qsmflow names them, with realistic value ranges."""
    rng = np.random.default_rng(1)
    anat = out / f'sub-{subject}' / 'anat'
    anat.mkdir(parents=True)
    inside = np.zeros(shape, bool)
    inside[2:-2, 2:-2, 1:-1] = True
    chi = np.where(inside, rng.normal(0, 0.08, shape), 0.0)
    r2 = np.where(inside, rng.uniform(10, 60, shape), 0.0)
    swi = rng.uniform(0, 1500, shape)
    maps = {'Chimap': chi, 'R2starmap': r2, 'desc-swi_swi': swi}
    for suffix, data in maps.items():
        nb.save(nb.Nifti1Image(data.astype(np.float32), affine),
                anat / f'sub-{subject}_{suffix}.nii.gz')
    # not exported: a template-space map and a mask
    nb.save(nb.Nifti1Image(chi.astype(np.float32), affine),
            anat / f'sub-{subject}_space-MNI152NLin2009cAsym_Chimap.nii.gz')
    nb.save(nb.Nifti1Image(inside.astype(np.uint8), affine),
            anat / f'sub-{subject}_desc-brain_mask.nii.gz')
    return {k: np.asarray(v, np.float32).astype(np.float64) for k, v in maps.items()}


def _series(folder):
    return [pydicom.dcmread(p) for p in sorted(Path(folder).glob('IM*.dcm'))]


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Maps on the Philips grid and on an oblique LAS grid, exported; the Philips ones
    linked to the Philips DICOM, and again de-identified."""
    root = tmp_path_factory.mktemp('export')
    grid = nb.load(PHILIPS_GRID)
    cases = {'philips': (grid.affine, grid.shape[:3]), 'oblique': (OBLIQUE_LAS, (30, 24, 18))}
    out = {}
    warnings.simplefilter('error', UserWarning)  # pydicom: values too long for their VR
    for name, (affine, shape) in cases.items():
        maps = _maps(root / name / 'qsm', affine, shape)
        ref = PHILIPS_CLASSIC if name == 'philips' else None
        export_dicom(root / name / 'qsm', root / name / 'dicom', ref, log=lambda _: None)
        out[name] = (root / name, affine, maps)
    export_dicom(root / 'philips' / 'qsm', root / 'deid', PHILIPS_CLASSIC, deidentify=True,
                 log=lambda _: None)
    return out, root / 'deid'


@pytest.mark.parametrize('case', ['philips', 'oblique'])
def test_series_read_back_in_pydicom(exported, case):
    """One MR Image Storage file per slice; stored × slope = the map within slope / 2;
    geometry of each slice = the affine's; the documented window and units."""
    folder, affine, maps = exported[0][case]
    names = sorted(p.name for p in (folder / 'dicom').iterdir())
    assert names == ['sub-01_Chimap', 'sub-01_R2starmap', 'sub-01_desc-swi_swi']
    for stem, suffix in zip(names, ('Chimap', 'R2starmap', 'desc-swi_swi')):
        files = _series(folder / 'dicom' / stem)
        data = maps[suffix]
        assert len(files) == data.shape[2]
        assert len({ds.SeriesInstanceUID for ds in files}) == 1
        assert len({ds.SOPInstanceUID for ds in files}) == len(files)
        first = files[0]
        assert first.SOPClassUID == '1.2.840.10008.5.1.4.1.1.4' and first.Modality == 'MR'
        assert list(first.ImageType[:2]) == ['DERIVED', 'SECONDARY']
        slope = float(first.RescaleSlope)
        assert float(first.RescaleIntercept) == 0
        units = first.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
        if suffix == 'Chimap':
            assert (float(first.WindowCenter), float(first.WindowWidth)) == (0.0, 0.4)
            assert units.CodeValue == 'ppm' and slope in (1e-5, 2e-5)
            assert first.PixelRepresentation == 1
        elif suffix == 'R2starmap':
            assert (float(first.WindowCenter), float(first.WindowWidth)) == (50.0, 100.0)
            assert units.CodeValue == '/s' and first.PixelRepresentation == 0
        else:
            assert 0 < float(first.WindowCenter) < 1500 and units.CodeValue == '1'
        back = np.stack([ds.pixel_array.T * float(ds.RescaleSlope) for ds in files], -1)
        assert np.abs(back - data).max() <= 0.5 * slope * (1 + 1e-9)
        iop = np.array(first.ImageOrientationPatient, float)
        lps = geometry.RAS_TO_LPS
        assert np.allclose(iop[:3], lps @ affine[:3, 0] / np.linalg.norm(affine[:3, 0]))
        for k in (0, len(files) - 1):
            centre = lps @ (affine @ [0, 0, k, 1])[:3]
            assert np.allclose(np.array(files[k].ImagePositionPatient, float), centre,
                               atol=1e-5)


@pytest.mark.parametrize('case', ['philips', 'oblique'])
def test_dcm2niix_reads_the_niftis_geometry(exported, case, tmp_path):
    """dcm2niix converts every exported series back to the map's grid: same affine (after
    dcm2niix's own choice of voxel order, a permutation/flip: no resampling) within
    1e-3 mm and the same values within half a quantisation step."""
    folder, affine, maps = exported[0][case]
    sidecars = run_dcm2niix(folder / 'dicom', tmp_path)
    assert len(sidecars) == 3
    by_protocol = {json.loads(s.read_text())['ProtocolName']: s for s in sidecars}
    for suffix, data in maps.items():
        sidecar = by_protocol[f'sub-01_{suffix}']
        img = nb.load(sidecar.with_name(sidecar.name[:-5] + '.nii.gz'))
        turn = nb.orientations.ornt_transform(nb.io_orientation(img.affine),
                                              nb.io_orientation(affine))
        img = img.as_reoriented(turn)
        if case == 'philips':  # dcm2niix's own grid: no reordering at all
            assert (turn[:, 0] == [0, 1, 2]).all() and (turn[:, 1] == 1).all()
        assert img.shape == data.shape
        assert np.abs(img.affine - affine).max() < 1e-3
        slope = geometry.quantise(data, suffix == 'Chimap')[1]
        # half a step, plus float32 rounding of the NIfTI scl_slope
        tol = 0.5 * slope + 1e-6 * np.abs(data).max()
        assert np.abs(np.asarray(img.dataobj, np.float64) - data).max() <= tol


def _headers(folder):
    out = []
    for p in sorted(Path(folder).glob('*.dcm.gz')):
        with gzip.open(p) as fh:
            out.append(pydicom.dcmread(fh, stop_before_pixels=True))
    return out


def test_series_join_the_reference_study(exported):
    """Same patient, study and frame of reference as the source; each slice refers to the
    source images in its plane (2 echoes × mag/phase of one series)."""
    folder = exported[0]['philips'][0]
    source = _headers(PHILIPS_CLASSIC)
    src = source[0]
    files = _series(folder / 'dicom' / 'sub-01_Chimap')
    for ds in (files[0], files[-1]):
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.SeriesNumber == 100 * int(src.SeriesNumber) + 1
        (item,) = ds.ReferencedSeriesSequence
        assert item.SeriesInstanceUID == src.SeriesInstanceUID
        refs = {r.ReferencedSOPInstanceUID for r in item.ReferencedInstanceSequence}
        assert len(refs) == 4
        here = [s for s in source if s.SOPInstanceUID in refs]
        iop = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        plane = float(np.array(ds.ImagePositionPatient, float) @ normal)
        assert len(here) == 4 and all(
            abs(np.array(s.ImagePositionPatient, float) @ normal - plane) < 0.01 for s in here)


def test_deidentified_series_hold_nothing_of_the_patient(exported):
    src = _headers(PHILIPS_CLASSIC)[0]
    secrets = {str(src.PatientName), str(src.PatientID), str(src.PatientBirthDate),
               str(src.StudyInstanceUID), str(src.FrameOfReferenceUID),
               str(src.SeriesInstanceUID), str(src.StudyDate)}
    for folder in sorted(exported[1].iterdir()):
        files = _series(folder)
        ds = files[0]
        assert ds.PatientIdentityRemoved == 'YES' and ds.PatientID == 'sub-01'
        assert len({f.StudyInstanceUID for f in files}) == 1
        text = ' '.join(str(el.value) for f in files[:3] for el in f.iterall()
                        if el.VR not in ('OB', 'OW'))
        assert not [s for s in secrets if s in text]
    studies = {_series(f)[0].StudyInstanceUID for f in exported[1].iterdir()}
    assert len(studies) == 1


def test_export_is_idempotent_and_selects_maps(exported, tmp_path, run_cli):
    """The CLI: --maps picks maps; a second run writes the same bytes."""
    folder = exported[0]['oblique'][0]
    args = ('export-dicom', folder / 'qsm', tmp_path / 'd', '--maps', 'chi', 'r2star')
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    first = _tree(tmp_path / 'd')
    assert sorted({k.split('/')[0] for k in first}) == ['sub-01_Chimap', 'sub-01_R2starmap']
    assert run_cli(*args).returncode == 0 and _tree(tmp_path / 'd') == first
    assert first == {k: v for k, v in _tree(folder / 'dicom').items() if 'swi' not in k}


@pytest.mark.parametrize('case', ['missing', 'empty', 'inside', 'two_subjects', 'bad_ref',
                                  'other_grid', 'shifted'])
def test_export_errors_are_one_line(tmp_path, run_cli, case):
    qsm = tmp_path / 'qsm'
    shifted = nb.load(PHILIPS_GRID).affine.copy()
    shifted[2, 3] += 1.5  # half a 3 mm slice along z: between the reference's planes
    grids = {'other_grid': OBLIQUE_LAS, 'shifted': shifted}
    if case in ('inside', 'two_subjects', 'bad_ref', 'other_grid', 'shifted'):
        for sub in ('01', '02') if case == 'two_subjects' else ('01',):
            _maps(qsm, grids.get(case, np.eye(4)), (6, 6, 4), sub)
    else:
        qsm.mkdir()
    args = {'missing': (tmp_path / 'nope', tmp_path / 'd'),
            'empty': (qsm, tmp_path / 'd'),
            'inside': (qsm, qsm / 'dicom'),
            'two_subjects': (qsm, tmp_path / 'd', '--reference-series', PHILIPS_CLASSIC),
            'bad_ref': (qsm, tmp_path / 'd', '--reference-series', qsm),
            'other_grid': (qsm, tmp_path / 'd', '--reference-series', PHILIPS_CLASSIC),
            'shifted': (qsm, tmp_path / 'd', '--reference-series', PHILIPS_CLASSIC)}[case]
    res = run_cli('export-dicom', *args)
    assert res.returncode == 2, res.stdout
    assert res.stderr.startswith('qsmflow: error: ') and res.stderr.count('\n') == 1
    assert {'missing': 'not a folder', 'empty': 'no native', 'inside': 'must not lie inside',
            'two_subjects': '--participant-label', 'bad_ref': 'no DICOM files',
            'other_grid': 'not parallel to the reference images',
            'shifted': '4 of its 4 slices lie in no plane'}[case] in res.stderr
    assert not (tmp_path / 'd').exists()
