# SPDX-License-Identifier: Apache-2.0
"""Write anatomy-phantom subjects (:mod:`qsmflow.phantom.anatomy`) as a BIDS MEGRE dataset.

Raw data (``sub-XX/anat/sub-XX_echo-<n>_part-<mag|phase>_MEGRE.nii.gz`` + sidecars,
``participants.tsv`` with ages), the ground truth as a derivatives dataset (χ, nuclei and
tissue segmentations with their TSVs, brain mask, total and local field, the deformation
as JSON) and the atlas triple for qsmflow's ``--atlas PATH --atlas-labels TSV
--atlas-template IMAGE [--atlas-template-mask MASK]``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nb
import numpy as np

from .anatomy import (
    TISSUE_LABELS,
    TemplateAnatomy,
    simulate_anatomy_megre,
    subject_phantom,
    template_anatomy,
)
from .deformation import random_deformation

__all__ = ['ATLAS_NAME', 'DEFAULT_ECHO_TIMES_S', 'write_anatomy_dataset', 'write_atlas']

#: Echo times (s) of the simulated acquisition: 5 echoes, TE1 4.5 ms, ΔTE 5 ms.
DEFAULT_ECHO_TIMES_S = (0.0045, 0.0095, 0.0145, 0.0195, 0.0245)

#: Name of the atlas files :func:`write_anatomy_dataset` writes.
ATLAS_NAME = 'CIT168Dentate'


def _nifti(path: Path, data, affine, sidecar: dict | None = None) -> Path:
    img = nb.Nifti1Image(np.asarray(data), affine)
    img.header.set_xyzt_units('mm', 'sec')
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.to_filename(path)
    if sidecar is not None:
        path.with_name(path.name.replace('.nii.gz', '.json')).write_text(
            json.dumps(sidecar, indent=2) + '\n')
    return path


def _lut_tsv(names: dict) -> str:
    return 'index\tname\n' + ''.join(f'{i}\t{n}\n' for i, n in sorted(names.items()))


def write_atlas(atlas_dir, anatomy: TemplateAnatomy, template_t1w) -> dict:
    """Write the atlas triple for ``--atlas/--atlas-labels/--atlas-template[-mask]``.

    The labels (CIT168 1..32 + dentate 33/34) on the 1 mm template grid cropped to the
    labels (+ 5 mm), their TSV, a copy of the template T1w and its brain mask
    (:func:`template_brain_mask`, on the template's grid). Returns the paths as
    ``atlas``, ``labels``, ``template``, ``template_mask``.
    """
    atlas_dir = Path(atlas_dir)
    atlas_dir.mkdir(parents=True, exist_ok=True)
    idx = np.argwhere(anatomy.labels > 0)
    lo, hi = np.maximum(idx.min(0) - 5, 0), idx.max(0) + 6
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = anatomy.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo
    out = {'atlas': _nifti(atlas_dir / f'atlas-{ATLAS_NAME}_dseg.nii.gz',
                           anatomy.labels[box].astype(np.int16), affine)}
    out['labels'] = atlas_dir / f'atlas-{ATLAS_NAME}_dseg.tsv'
    out['labels'].write_text(_lut_tsv(anatomy.label_names))
    out['template'] = atlas_dir / Path(str(template_t1w)).name
    if not out['template'].exists():
        shutil.copyfile(template_t1w, out['template'])
    mask, mask_affine = anatomy.template_mask_2mm
    out['template_mask'] = _nifti(atlas_dir / 'template_desc-brain_mask.nii.gz',
                                  mask.astype(np.uint8), mask_affine)
    (atlas_dir / 'README').write_text(
        'CIT168 subcortical atlas (Pauli et al. 2018, CC BY 4.0) labels 1..32 and an\n'
        'approximate dentate nucleus (33/34: ellipsoidal shells at MNI (+-14, -56, -35) mm,\n'
        'not the SUIT atlas) in MNI152NLin2009cAsym space; the template T1w (MNI/McGill\n'
        'licence) and a brain mask derived from it by qsmflow.phantom.anatomy.\n')
    return out


def write_anatomy_dataset(bids_dir, truth_dir, *, template_t1w, cit168_dseg, cit168_tsv,
                          n_subjects: int = 2, voxel_size_mm: float = 1.0, seed: int = 0,
                          snr: float = 100.0, echo_times_s=DEFAULT_ECHO_TIMES_S,
                          b0_tesla: float = 3.0, tilt_deg: float = 0.0, ages=None,
                          chi_jitter: float = 0.05, deformation_options: dict | None = None,
                          atlas_dir=None, head_model: str = 'template') -> dict:
    """Simulate and write a BIDS MEGRE dataset of anatomy phantoms, its truth and atlas.

    Subject ``i`` (``sub-01``, ``sub-02``, …) gets its own deformation
    (:func:`random_deformation`), χ jitter and noise, all from ``(seed, i)``.

    Parameters
    ----------
    bids_dir, truth_dir : str or Path
        Raw dataset and ground-truth derivatives (separate folders).
    template_t1w, cit168_dseg, cit168_tsv : str or Path
        See :func:`template_anatomy`.
    n_subjects : int
    voxel_size_mm : float
        Native isotropic voxel size (mm), 1 or 2.
    seed : int
    snr : float
        Mean brain magnitude at TE1 over the noise σ.
    echo_times_s : sequence of float
    b0_tesla : float
    tilt_deg : float
        Slab tilt about x (degrees): B0 is oblique in voxel axes.
    ages : sequence of float, optional
        Ages (years) for participants.tsv; default seeded in 20–70.
    chi_jitter : float
        Relative per-subject SD of each nucleus's χ.
    deformation_options : dict, optional
        Keyword arguments of :func:`random_deformation`.
    atlas_dir : str or Path, optional
        Where :func:`write_atlas` writes; default ``truth_dir / 'atlas'``.
    head_model : str
        Tissues outside the brain (:data:`~qsmflow.phantom.anatomy.HEAD_MODELS`).

    Returns
    -------
    dict
        ``bids_dir``, ``truth_dir``, ``atlas`` (dict of paths), ``participants``
        (label → dict of truth paths and the deformation), ``seconds_per_subject``.
    """
    bids_dir, truth_dir = Path(bids_dir), Path(truth_dir)
    atlas_dir = truth_dir / 'atlas' if atlas_dir is None else Path(atlas_dir)
    anatomy = template_anatomy(str(template_t1w), str(cit168_dseg), str(cit168_tsv),
                               head_model)
    tes = tuple(float(t) for t in echo_times_s)
    root = np.random.SeedSequence(int(seed))
    if ages is None:
        ages = np.round(np.random.default_rng(root.spawn(1)[0]).uniform(20, 70, n_subjects))
    for d in (bids_dir, truth_dir):
        d.mkdir(parents=True, exist_ok=True)
    (bids_dir / 'dataset_description.json').write_text(json.dumps({
        'Name': 'qsmflow anatomy phantom (MNI152NLin2009cAsym + CIT168, multi-echo GRE)',
        'BIDSVersion': '1.10.0', 'DatasetType': 'raw', 'License': 'CC0',
        'Authors': ['qsmflow developers']}, indent=2) + '\n')
    (bids_dir / 'README').write_text(
        'Simulated multi-echo GRE of the MNI152NLin2009cAsym head with CIT168 nuclei, one\n'
        'known smooth deformation per participant (qsmflow.phantom.anatomy).\n')
    rows = ['participant_id\tage\tsex'] + [
        f'sub-{i + 1:02d}\t{float(a):g}\t{"FM"[i % 2]}' for i, a in enumerate(ages)]
    (bids_dir / 'participants.tsv').write_text('\n'.join(rows) + '\n')
    (truth_dir / 'dataset_description.json').write_text(json.dumps({
        'Name': 'qsmflow anatomy phantom: ground truth', 'BIDSVersion': '1.10.0',
        'DatasetType': 'derivative', 'GeneratedBy': [{'Name': 'qsmflow.phantom.anatomy'}]},
        indent=2) + '\n')
    (truth_dir / '.bidsignore').write_text('atlas/\n*_fieldmap.*\n*_xfm.json\n')
    (truth_dir / 'dseg.tsv').write_text(_lut_tsv(anatomy.label_names))
    out = {'bids_dir': bids_dir, 'truth_dir': truth_dir,
           'atlas': write_atlas(atlas_dir, anatomy, template_t1w), 'participants': {}}
    seconds = []
    common = {'MagneticFieldStrength': float(b0_tesla), 'Manufacturer': 'qsmflow-phantom',
              'ManufacturersModelName': 'anatomy phantom (MNI152NLin2009cAsym + CIT168)',
              'MRAcquisitionType': '3D', 'FlipAngle': 15.0, 'RepetitionTime': 0.035}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for i in range(n_subjects):
            start = time.perf_counter()
            sub = f'sub-{i + 1:02d}'
            s_def, s_chi, s_noise = np.random.SeedSequence([int(seed), i]).spawn(3)
            deform = random_deformation(int(s_def.generate_state(1)[0]),
                                        **(deformation_options or {}))
            phantom = subject_phantom(anatomy, deform, voxel_size_mm=voxel_size_mm,
                                      tilt_deg=tilt_deg, chi_jitter=chi_jitter,
                                      rng=np.random.default_rng(s_chi))
            mag, phase, truth = simulate_anatomy_megre(phantom, tes, b0_tesla, snr=snr,
                                                       rng=np.random.default_rng(s_noise))
            anat, tanat = bids_dir / sub / 'anat', truth_dir / sub / 'anat'
            anat.mkdir(parents=True, exist_ok=True)
            tanat.mkdir(parents=True, exist_ok=True)
            jobs = []
            for n, te in enumerate(tes, start=1):
                for part, data, units in (('mag', mag, 'arbitrary'), ('phase', phase, 'rad')):
                    jobs.append(pool.submit(
                        _nifti, anat / f'{sub}_echo-{n}_part-{part}_MEGRE.nii.gz',
                        data[..., n - 1], phantom.affine,
                        {'EchoTime': te, **common, 'Units': units}))
            b0 = truth['b0_dir'].tolist()
            images = {
                'chimap': ('Chimap', phantom.brain_chi_ppm,
                           {'Units': 'ppm', 'QSMReference': 'CSF', 'SkullStripped': True}),
                'dseg': ('desc-phantom_dseg', phantom.labels, None),
                'tissue': ('desc-tissue_dseg', phantom.tissue, None),
                'mask': ('desc-brain_mask', phantom.brain_mask.astype(np.uint8),
                         {'Type': 'Brain'}),
                'total_field': ('desc-total_fieldmap', truth['total_field_ppm'],
                                {'Units': 'ppm', 'B0Direction': b0}),
                'local_field': ('desc-local_fieldmap', truth['local_field_ppm'],
                                {'Units': 'ppm', 'B0Direction': b0}),
            }
            paths = {}
            for key, (suffix, data, meta) in images.items():
                paths[key] = pool.submit(_nifti, tanat / f'{sub}_{suffix}.nii.gz', data,
                                         phantom.affine, meta)
            paths['dseg_tsv'] = tanat / f'{sub}_desc-phantom_dseg.tsv'
            paths['dseg_tsv'].write_text(_lut_tsv(phantom.label_names))
            (tanat / f'{sub}_desc-tissue_dseg.tsv').write_text(_lut_tsv(TISSUE_LABELS))
            paths['xfm'] = tanat / f'{sub}_from-MEGRE_to-MNI152NLin2009cAsym_xfm.json'
            paths['xfm'].write_text(json.dumps({
                **deform.as_dict(), 'template_centre_mm': anatomy.centre_mm.tolist(),
                'voxel_size_mm': float(voxel_size_mm), 'tilt_deg': float(tilt_deg)},
                indent=2) + '\n')
            for job in jobs:
                job.result()
            paths = {k: v.result() if hasattr(v, 'result') else v for k, v in paths.items()}
            paths['deformation'] = deform
            paths['noise_sigma'] = truth['noise_sigma']
            out['participants'][sub] = paths
            seconds.append(time.perf_counter() - start)
    out['seconds_per_subject'] = seconds
    return out
