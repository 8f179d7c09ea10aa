# SPDX-License-Identifier: Apache-2.0
"""4D images of dcm2niix that stack magnitude and phase of one echo, split into 3D files.

When a series' magnitude and phase images carry the same ``ImageType`` (nothing in the
standard header tells them apart), dcm2niix cannot split them and writes one 4D file per
echo with the two parts as volumes. :func:`split_mag_phase` tells the parts apart from
the values: a magnitude is never negative, a phase spans one cycle (−π…π or the vendors'
integer ranges, :func:`qsmflow.qsm.phase.infer_phase_units`) with negative values. Each
volume is written as a 3D file beside the 4D one (in dcm2niix's staging folder) with the
4D file's sidecar and the part recorded. Anything else stays unsplit, with a reason:
real and imaginary parts (both signed: not to be told apart from the values), phase
stored without negative values (0…4095), or more than two volumes (echoes stacked: the
sidecar holds one ``EchoTime`` only).
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmflow.qsm.phase import infer_phase_units, phase_range


def _is_phase(volume) -> bool:
    """Signed values spanning one cycle: rad, the vendors' integers, or Philips' displayed
    milliradians (±3142, which dcm2niix gives when it scales both parts alike)."""
    lo, hi, integer = phase_range(volume)
    if not lo < 0 < hi or max(-lo, hi) > 1.1 * min(-lo, hi):
        return False
    try:
        infer_phase_units(lo, hi, integer, None)
        return True
    except ValueError:
        return abs(max(-lo, hi) - 1000 * np.pi) < 0.01 * 1000 * np.pi


def split_mag_phase(nifti: Path, meta: dict) -> tuple[list, str | None]:
    """Split a two-volume 4D magnitude + phase image into two 3D files.

    Parameters
    ----------
    nifti : Path
        dcm2niix's 4D image (``.nii.gz``), shape (X, Y, Z, 2).
    meta : dict
        Its sidecar.

    Returns
    -------
    files : list of (Path, dict, str)
        ``(3D image, sidecar, part)`` for the magnitude and the phase; empty when not split.
    reason : str or None
        Why the image was not split (None when it was).
    """
    img = nb.load(nifti)
    if img.ndim != 4 or img.shape[3] != 2:
        n = img.shape[3] if img.ndim == 4 else 1
        return [], (f'4D image of {n} volumes (echoes stacked in one file: its sidecar has '
                    'one EchoTime); export one series per echo or part')
    data = np.asarray(img.dataobj, dtype=np.float32)
    vols = [data[..., 0], data[..., 1]]
    nonneg = [float(v.min()) >= 0 for v in vols]
    phase = [_is_phase(v) for v in vols]
    picks = [i for i in (0, 1) if nonneg[i] and phase[1 - i]]
    if len(picks) != 1:
        return [], ('4D image of 2 volumes (parts stacked in one file) that are not one '
                    'magnitude and one signed phase; export magnitude and phase as separate '
                    'series')
    mag_index = picks[0]
    out = []
    stem = nifti.name[:-len('.nii.gz')]
    for index, part in ((mag_index, 'mag'), (1 - mag_index, 'phase')):
        dest = nifti.with_name(f'{stem}_vol{index + 1}{part}.nii.gz')
        vol = nb.Nifti1Image(vols[index], img.affine, img.header)
        vol.set_data_dtype(np.float32)
        vol.header.set_slope_inter(1.0, 0.0)
        nb.save(vol, dest)
        side = {**meta, 'QsmflowSplitFrom': f'{nifti.name} volume {index + 1} ({part})'}
        dest.with_name(dest.name[:-len('.nii.gz')] + '.json').write_text(json.dumps(side))
        out.append((dest, side, part))
    return out, None
