# SPDX-License-Identifier: Apache-2.0
"""The phantom's own template, written in templateflow layout (``tpl-QSMPhantom``).

The demo and the tests put it into a local ``TEMPLATEFLOW_HOME`` and use it through the
same templateflow queries as the real templates: a T1w-like image (white matter bright,
grey matter darker, CSF dark), a brain mask and an atlas (``atlas-Phantom``) holding the
phantom's labels, on a plain RAS grid centred on the origin.

:func:`write_cerebellar_template` writes a second, SUIT-like template (a posterior-fossa
crop of the same image, placed at another pose, with the dentate nuclei as its atlas), so
that the template-to-template chain of atlases living in another template (SUIT's
``Diedrichsen2009``) can be run offline.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmflow.bids.atomic import write_nifti

from .head import LABELS, make_head
from .tissues import BRAIN_LABELS, DEEP_GM, LABEL_INDEX

#: Template identifier and atlas name.
TEMPLATE, ATLAS = 'QSMPhantom', 'Phantom'

#: Age of the template head (years).
TEMPLATE_AGE_YEARS = 50.0

_T1W = {'white_matter': 1.0, 'cortex': 0.6, 'csf': 0.15, 'vein': 0.5, 'calcification': 0.3,
        'haemorrhage': 0.9, 'skull': 0.1, 'scalp': 0.7, 'background': 0.0, 'sinus_air': 0.0}
_T1W.update({f'{r}_{s}': v for r, v in (('caudate', 0.7), ('putamen', 0.72),
                                        ('globus_pallidus', 0.8), ('thalamus', 0.78),
                                        ('substantia_nigra', 0.75), ('red_nucleus', 0.75),
                                        ('subthalamic_nucleus', 0.75),
                                        ('dentate_nucleus', 0.8)) for s in ('left', 'right')})


def write_template(tf_home, *, size: str = 'small') -> Path:
    """Write ``tpl-QSMPhantom`` into the templateflow folder ``tf_home``.

    Parameters
    ----------
    tf_home : str or Path
        A ``TEMPLATEFLOW_HOME`` folder (created if needed).
    size : {'small', 'tiny', 'full'}
        Grid of the template (2, 3 or 1 mm; written as ``res-02``, ``res-03``, ``res-01``).

    Returns
    -------
    Path
        The template folder.
    """
    head, t1w, affine = _template_arrays(size)
    res = f'{int(round(head.voxel_size_mm[0])):02d}'
    folder = Path(tf_home) / f'tpl-{TEMPLATE}'
    folder.mkdir(parents=True, exist_ok=True)
    brain = np.isin(head.labels, [i for i, n in LABELS if n in BRAIN_LABELS])
    stem = f'tpl-{TEMPLATE}_res-{res}'
    for suffix, data in (('T1w', t1w),
                         ('desc-brain_mask', brain.astype(np.uint8)),
                         (f'atlas-{ATLAS}_dseg', head.labels.astype(np.int16))):
        _write(data, affine, folder / f'{stem}_{suffix}.nii.gz')
    (folder / f'tpl-{TEMPLATE}_atlas-{ATLAS}_dseg.tsv').write_text(
        'index\tname\n' + ''.join(f'{i}\t{n}\n' for i, n in LABELS))
    desc = {'Identifier': TEMPLATE, 'Name': 'qsmflow numerical head phantom template',
            'Authors': ['qsmflow developers'], 'License': 'CC0', 'TemplateFlowVersion': '1.0.0',
            'BIDSVersion': '1.1.0', 'Species': 'Homo sapiens',
            'ReferencesAndLinks': ['qsmflow.phantom'], 'DeepGreyMatter': list(DEEP_GM),
            'res': {res: {'zooms': list(head.voxel_size_mm), 'shape': list(head.shape),
                          'origin': affine[:3, 3].tolist()}}}
    (folder / 'template_description.json').write_text(json.dumps(desc, indent=2) + '\n')
    return folder


#: Posterior-fossa box (mm, template coordinates) of the SUIT-like template: cerebellum,
#: brainstem and the occipital lobe above them, as SUIT's field of view.
CEREBELLAR_BOX_MM = ((-50.0, 50.0), (-70.0, -2.0), (-58.0, 8.0))

#: Dentate labels of the SUIT-like atlas: the indices and names of SUIT's Diedrichsen2009.
CEREBELLAR_LABELS = {'dentate_nucleus_left': (29, 'Left_Dentate'),
                     'dentate_nucleus_right': (30, 'Right_Dentate')}


def write_cerebellar_template(tf_home, *, size: str = 'small', identifier: str = 'SUIT',
                              atlas: str = 'Diedrichsen2009', pitch_deg: float = 6.0,
                              yaw_deg: float = -4.0, shift_mm=(3.0, -5.0, 4.0)) -> Path:
    """Write a SUIT-like template of the phantom into the templateflow folder ``tf_home``.

    The phantom template's T1w-like image is cropped to :data:`CEREBELLAR_BOX_MM` and placed
    at another pose (turned by ``pitch_deg`` about x, then ``yaw_deg`` about z, then
    shifted by ``shift_mm``), as SUIT lies only roughly in MNI's world space. Its atlas
    holds the dentate nuclei with SUIT's ``Diedrichsen2009`` indices and names
    (:data:`CEREBELLAR_LABELS`). The files are named like templateflow's real SUIT ones
    (``tpl-<identifier>_T1w.nii.gz``, ``tpl-<identifier>_atlas-<atlas>_dseg.nii.gz`` and
    ``.tsv``, no resolution entity), so ``bids_specs/atlases.json``'s own entry for the
    atlas finds them.

    Parameters
    ----------
    tf_home : str or Path
        A ``TEMPLATEFLOW_HOME`` folder (created if needed).
    size : {'small', 'tiny', 'full'}
        Phantom grid (2, 3 or 1 mm).
    identifier, atlas : str
        Template identifier and atlas name.
    pitch_deg, yaw_deg : float
        Turns (degrees) about the world x and then z axes.
    shift_mm : sequence of 3 float
        Shift (mm) after the turns.

    Returns
    -------
    Path
        The template folder.
    """
    head, t1w, affine = _template_arrays(size)
    vox = np.asarray(head.voxel_size_mm, float)
    lo, hi = (np.asarray([b[i] for b in CEREBELLAR_BOX_MM]) for i in (0, 1))
    first = np.maximum(np.ceil((lo - affine[:3, 3]) / vox).astype(int), 0)
    last = np.minimum(np.floor((hi - affine[:3, 3]) / vox).astype(int) + 1, head.shape)
    crop = tuple(slice(a, b) for a, b in zip(first, last))
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, 3] + vox * first
    posed = pose_affine(cropped, pitch_deg=pitch_deg, yaw_deg=yaw_deg, shift_mm=shift_mm)
    labels = np.zeros(head.shape, np.int16)
    for name, (index, _) in CEREBELLAR_LABELS.items():
        labels[head.labels == LABEL_INDEX[name]] = index
    folder = Path(tf_home) / f'tpl-{identifier}'
    folder.mkdir(parents=True, exist_ok=True)
    _write(t1w[crop], posed, folder / f'tpl-{identifier}_T1w.nii.gz')
    _write(labels[crop], posed, folder / f'tpl-{identifier}_atlas-{atlas}_dseg.nii.gz')
    (folder / f'tpl-{identifier}_atlas-{atlas}_dseg.tsv').write_text(
        'index\tname\n' + ''.join(f'{i}\t{n}\n' for i, n in CEREBELLAR_LABELS.values()))
    shape = [int(s.stop - s.start) for s in crop]
    desc = {'Identifier': identifier, 'Name': 'qsmflow phantom posterior-fossa template '
            f'(offline stand-in for {identifier})', 'Authors': ['qsmflow developers'],
            'License': 'CC0', 'TemplateFlowVersion': '1.0.0', 'BIDSVersion': '1.1.0',
            'Species': 'Homo sapiens', 'ReferencesAndLinks': ['qsmflow.phantom'],
            'res': {'1': {'zooms': vox.tolist(), 'shape': shape,
                          'origin': posed[:3, 3].tolist()}}}
    (folder / 'template_description.json').write_text(json.dumps(desc, indent=2) + '\n')
    return folder


def pose_affine(affine, *, pitch_deg: float = 0.0, yaw_deg: float = 0.0,
                shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``affine`` moved in world space: turned about x (pitch), then z (yaw), then shifted.

    Examples
    --------
    >>> a = pose_affine(np.eye(4), yaw_deg=90.0, shift_mm=(1.0, 0.0, 0.0))
    >>> np.round(a @ [1.0, 0.0, 0.0, 1.0], 6).tolist()
    [1.0, 1.0, 0.0, 1.0]
    """
    p, y = np.deg2rad(pitch_deg), np.deg2rad(yaw_deg)
    pitch = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    yaw = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = yaw @ pitch
    pose[:3, 3] = np.asarray(shift_mm, float)
    return pose @ np.asarray(affine, float)


def _template_arrays(size: str):
    """Phantom head of the template, its T1w-like image (float32) and RAS affine."""
    head = make_head(size=size, age_years=TEMPLATE_AGE_YEARS)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(head.voxel_size_mm)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(head.shape) - 1) / 2.0)
    lut = np.array([_T1W[n] for _, n in LABELS], dtype=np.float32)
    return head, (lut[head.labels] * 1000.0).astype(np.float32), affine


def _write(data, affine, path: Path) -> None:
    img = nb.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units('mm')
    write_nifti(img, path)
