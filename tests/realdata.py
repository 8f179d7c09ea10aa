"""Helpers that hand tests the small REAL MRI data vendored under ``tests/data``.

Plain functions only (no fixtures, no tests). Provenance, licences, checksums and the
measured facts (shapes, voxel sizes, echo times, value ranges) of every file are in the
``README.md`` next to the data; the short version:

``philips_3t_head/``
    Whole head, Philips Ingenia Elition X 3 T, 3D GRE with 2 echoes (TE 2.3 / 4.6 ms),
    3 mm isotropic, 80 x 80 x 53; magnitude and phase (phase in rad, -pi..pi) as converted
    by dcm2niix. From neurolabusc/dcm_qa_philips_enh (BSD-2-Clause).
``mriresearchtools_small/``
    In-vivo 3-echo GRE crop, 51 x 51 x 41 x 3 at 0.47 x 0.47 x 1 mm; the whole crop lies
    inside the head (no background voxels). From korbinian90/MriResearchTools.jl (MIT). Echo times are not
    documented upstream (see ``MRIRESEARCHTOOLS_SMALL_TES_MS``).
``templateflow/``
    A TEMPLATEFLOW_HOME with tpl-MNI152NLin2009cAsym (res-02 T1w, byte-identical to
    templateflow's) and tpl-MNIColin27 (T1w: MRIcron's ``ch2.nii.gz``, a uint8 Colin27
    head standing in for templateflow's file, which differs).
``cit168/``
    The CIT168 subcortical atlas (Pauli et al. 2018, CC BY 4.0) in MNI152NLin2009cAsym
    space, as converted by niivue-demo-images, with left/right split labels 1..32.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

DATA = Path(__file__).parent / 'data'

PHILIPS_HEAD = DATA / 'philips_3t_head'
MRIRESEARCHTOOLS_SMALL = DATA / 'mriresearchtools_small'
TEMPLATEFLOW_HOME = DATA / 'templateflow'
CIT168 = DATA / 'cit168'

#: Echo times (ms) that MriResearchTools.jl's own tests and README pass for its
#: ``test/data/small`` images. They are NOT documented acquisition parameters; the phase
#: is consistent with equally spaced echoes (the echo-to-echo phase steps 1->2 and 2->3
#: agree to a median of 0.07 rad), nothing more is known.
MRIRESEARCHTOOLS_SMALL_TES_MS = (4.0, 8.0, 12.0)

_PHILIPS_STEM = '2001_WIP_fcMRI_Field_Mapping_cl_'

# dcm2niix keys left out of the BIDS sidecars: conversion bookkeeping, a guess of the
# BIDS name, and Philips private scaling (the images are already scaled by dcm2niix).
_DROP_KEYS = {
    'BidsGuess', 'ConversionSoftware', 'ConversionSoftwareVersion',
    'PhilipsRWVSlope', 'PhilipsRWVIntercept', 'PhilipsRescaleSlope',
    'PhilipsRescaleIntercept', 'PhilipsScaleSlope', 'UsePhilipsFloatNotDisplayScaling',
}


def philips_head_bids(dest: Path) -> Path:
    """Write a minimal valid BIDS MEGRE dataset of the vendored Philips head at ``dest``.

    Layout::

        dest/dataset_description.json
        dest/README
        dest/sub-philips/anat/sub-philips_echo-{1,2}_part-{mag,phase}_MEGRE.nii.gz (+ .json)

    The images are copied unchanged (magnitude in arbitrary units, up to about 8.6e6;
    phase in radians, -pi..pi). Each sidecar is the dcm2niix JSON of that image without
    conversion bookkeeping, plus ``Units`` ('rad' for phase, 'arbitrary' for magnitude).
    It keeps ``EchoTime`` (s), ``EchoNumber``, ``MagneticFieldStrength`` (3),
    ``Manufacturer`` ('Philips'), ``ImagingFrequency`` etc. Returns ``dest``.
    """
    dest = Path(dest)
    anat = dest / 'sub-philips' / 'anat'
    anat.mkdir(parents=True, exist_ok=True)
    description = {
        'Name': 'qsmflow test data: Philips 3T dual-echo GRE head (dcm_qa_philips_enh)',
        'BIDSVersion': '1.10.0',
        'DatasetType': 'raw',
        'License': 'BSD-2-Clause',
        'Authors': ['Sandeep Ganji (data)', 'Chris Rorden (dcm_qa_philips_enh)'],
        'ReferencesAndLinks': ['https://github.com/neurolabusc/dcm_qa_philips_enh'],
    }
    (dest / 'dataset_description.json').write_text(json.dumps(description, indent=2) + '\n')
    (dest / 'README').write_text(
        'Series 2001 "WIP fcMRI Field Mapping" of neurolabusc/dcm_qa_philips_enh '
        '(classic DICOM converted by dcm2niix), laid out as BIDS MEGRE by '
        'tests/realdata.py of qsmflow. See tests/data/philips_3t_head/README.md.\n')
    for echo in (1, 2):
        for part, suffix in (('mag', ''), ('phase', '_ph')):
            source = PHILIPS_HEAD / f'{_PHILIPS_STEM}e{echo}{suffix}'
            stem = anat / f'sub-philips_echo-{echo}_part-{part}_MEGRE'
            shutil.copyfile(source.with_name(source.name + '.nii.gz'),
                            stem.with_name(stem.name + '.nii.gz'))
            meta = json.loads(source.with_name(source.name + '.json').read_text())
            sidecar = {k: v for k, v in meta.items() if k not in _DROP_KEYS}
            sidecar['EchoNumber'] = echo
            sidecar['Units'] = 'rad' if part == 'phase' else 'arbitrary'
            stem.with_name(stem.name + '.json').write_text(json.dumps(sidecar, indent=2) + '\n')
    return dest


def mriresearchtools_small() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MriResearchTools.jl in-vivo crop: ``(mag4d, phase4d_rad, affine)``.

    Arrays are float32, shape (51, 51, 41, 3) with echoes last; voxels 0.46875 x
    0.46875 x 1 mm (the header declares no spatial unit; mm is implied by the values).
    The file stores float32 phase in [-pi, pi] with ``scl_slope`` = 1/855, so a
    NIfTI-conformant reader sees +-0.0036744; the phase returned here is the stored value
    before that slope (identical to scaled * pi / 0.0036744), i.e. radians. The
    magnitude is returned with the slope applied (arbitrary units, 3.0e-5 .. 8.0e-4).
    See ``MRIRESEARCHTOOLS_SMALL_TES_MS`` for the (assumed) echo times.
    """
    mag_img = nib.load(MRIRESEARCHTOOLS_SMALL / 'Mag.nii.gz')
    phase_img = nib.load(MRIRESEARCHTOOLS_SMALL / 'Phase.nii.gz')
    mag = np.asarray(mag_img.get_fdata(dtype=np.float32), dtype=np.float32)
    phase = np.asarray(phase_img.dataobj.get_unscaled(), dtype=np.float32)
    if np.abs(phase).max() > np.pi + 1e-5:
        raise ValueError('MriResearchTools phase is not in radians')
    return mag, phase, phase_img.affine.copy()


def templateflow_home() -> Path:
    """The vendored ``TEMPLATEFLOW_HOME`` (tpl-MNI152NLin2009cAsym res-02 T1w, tpl-MNIColin27 T1w).

    templateflow reads ``TEMPLATEFLOW_HOME`` once, when it is first imported, so set the
    environment variable before templateflow is imported (e.g. in a subprocess). The
    folder is part of the source tree: copy it before anything may write into it.
    """
    return TEMPLATEFLOW_HOME


def cit168() -> tuple[Path, dict[int, str]]:
    """The CIT168 label image and its label table: ``(path, {index: name})``.

    ``path`` is ``cit168/atlas-CIT168_desc-th50_dseg.nii.gz``: uint8 labels 1..32 (odd
    left, even right), each voxel the most likely structure where its probability is at
    least 128/255, else 0; derived from the vendored ``CIT168.nii.gz``, whose PAQD/RGBA32
    encoding ordinary readers cannot use (see ``decode_paqd``). Grid 79 x 69 x 54, 1 mm,
    RAS, origin (-39, -40, -23) mm: a crop of the 1 mm MNI152NLin2009cAsym grid.
    Names are those of ``atlas-CIT168_dseg.tsv`` (e.g. 1: 'L Putamen', 2: 'R Putamen').
    """
    with open(CIT168 / 'atlas-CIT168_dseg.tsv', newline='') as table:
        labels = {int(row['index']): row['name'] for row in csv.DictReader(table, delimiter='\t')}
    return CIT168 / 'atlas-CIT168_desc-th50_dseg.nii.gz', labels


def decode_paqd(path: Path | None = None):
    """Decode niivue's PAQD atlas encoding: ``(label1, label2, p1, p2, affine)``.

    ``label1``/``label2`` are the most and second most likely label (uint8, 0 = none);
    ``p1``/``p2`` their probabilities as float32 in [0, 1] (stored in 1/255 steps).
    Defaults to the vendored ``cit168/CIT168.nii.gz``.
    """
    img = nib.load(CIT168 / 'CIT168.nii.gz' if path is None else path)
    rgba = np.asarray(img.dataobj)
    return (rgba['R'].copy(), rgba['G'].copy(),
            rgba['B'].astype(np.float32) / 255, rgba['A'].astype(np.float32) / 255,
            img.affine.copy())
