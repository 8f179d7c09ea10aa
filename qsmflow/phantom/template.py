# SPDX-License-Identifier: Apache-2.0
"""The phantom's own template, written in templateflow layout (``tpl-QSMPhantom``).

The demo and the tests put it into a local ``TEMPLATEFLOW_HOME`` and use it through the
same templateflow queries as the real templates: a T1w-like image (white matter bright,
grey matter darker, CSF dark), a brain mask and an atlas (``atlas-Phantom``) holding the
phantom's labels, on a plain RAS grid centred on the origin.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np

from .head import LABELS, make_head
from .tissues import BRAIN_LABELS, DEEP_GM

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
    head = make_head(size=size, age_years=TEMPLATE_AGE_YEARS)
    res = f'{int(round(head.voxel_size_mm[0])):02d}'
    affine = np.eye(4)
    affine[:3, :3] = np.diag(head.voxel_size_mm)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(head.shape) - 1) / 2.0)
    folder = Path(tf_home) / f'tpl-{TEMPLATE}'
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for _, n in LABELS]
    lut = np.array([_T1W[n] for n in names], dtype=np.float32)
    t1w = lut[head.labels] * 1000.0
    brain = np.isin(head.labels, [i for i, n in LABELS if n in BRAIN_LABELS])
    stem = f'tpl-{TEMPLATE}_res-{res}'
    for suffix, data in (('T1w', t1w.astype(np.float32)),
                         ('desc-brain_mask', brain.astype(np.uint8)),
                         (f'atlas-{ATLAS}_dseg', head.labels.astype(np.int16))):
        img = nb.Nifti1Image(data, affine)
        img.set_qform(affine, code=4)
        img.set_sform(affine, code=4)
        img.header.set_xyzt_units('mm')
        _atomic_nifti(img, folder / f'{stem}_{suffix}.nii.gz')
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


def _atomic_nifti(img, path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.tmp.nii.gz')
    img.to_filename(tmp)
    tmp.replace(path)
