# SPDX-License-Identifier: Apache-2.0
"""Re-export phantom MEGRE data in the layouts real datasets come in (test helper).

:func:`export` reads one phantom participant (per-echo 3D magnitude/phase in rad) and
writes it again under new entities, as one 3D file per echo or one 4D file, as mag/phase
or real/imag, with radian or integer phase, .nii or .nii.gz, optionally as symlinks into
an annex folder (as DataLad does), cropped, with fewer echoes or with edited sidecars.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np


def read_phantom(bids_dir, subject='01'):
    """``(mag, phase, affine, meta)``: (X, Y, Z, N) arrays, affine, common sidecar keys."""
    anat = Path(bids_dir) / f'sub-{subject}' / 'anat'
    mags = sorted(anat.glob(f'sub-{subject}_echo-*_part-mag_MEGRE.nii.gz'),
                  key=lambda p: int(p.name.split('echo-')[1].split('_')[0]))
    mag, phase, tes = [], [], []
    for path in mags:
        img = nb.load(path)
        mag.append(np.asarray(img.dataobj, dtype=np.float32))
        ph_path = Path(str(path).replace('part-mag', 'part-phase'))
        phase.append(np.asarray(nb.load(ph_path).dataobj, dtype=np.float32))
        tes.append(json.loads(Path(str(ph_path).replace('.nii.gz', '.json')).read_text())
                   ['EchoTime'])
    meta = json.loads(Path(str(mags[0]).replace('.nii.gz', '.json')).read_text())
    meta.pop('Units', None)
    meta['EchoTime'] = tes
    return np.stack(mag, -1), np.stack(phase, -1), img.affine, meta


def init_dataset(bids_dir, template_dir) -> Path:
    """A raw BIDS dataset with the top-level files of ``template_dir`` and no subjects."""
    bids_dir = Path(bids_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    for name in ('dataset_description.json', 'README', 'CHANGES'):
        shutil.copy(Path(template_dir) / name, bids_dir / name)
    return bids_dir


def scale_phase(phase_rad, scaling):
    """Stored phase: ``'rad'``, ``'int13'`` (−4096…4095) or ``'uint12'`` (0…4095)."""
    if scaling == 'rad':
        return phase_rad.astype(np.float32)
    if scaling == 'int13':
        return np.clip(np.round(phase_rad / np.pi * 4096), -4096, 4095).astype(np.int16)
    if scaling == 'deg':
        return (np.degrees(phase_rad) + 1e-3).astype(np.float32)
    if scaling == 'uint12':
        return (np.round((phase_rad + np.pi) / (2 * np.pi) * 4096) % 4096).astype(np.uint16)
    raise ValueError(scaling)


def export(phantom, bids_dir, subject, *, session=None, acq=None, run=None, layout='echo',
           parts='mag/phase', scaling='rad', units='auto', ext='.nii.gz', echoes=None,
           crop=None, annex=None, drop=(), meta=None, zavg=False, dtype=None):
    """Write one acquisition of ``phantom = read_phantom(...)`` into ``bids_dir``.

    ``units='auto'`` writes ``rad`` or ``arbitrary`` to match ``scaling``; ``None`` omits
    it. ``echoes`` selects (0-based) echoes; a single echo is written without ``echo-``.
    ``zavg`` averages the complex signal over pairs of slices (doubling the slice thickness).
    ``dtype`` stores magnitude/real/imag as that type (nibabel sets scl_slope/scl_inter).
    Returns the written image paths.
    """
    mag, phase, affine, common = phantom
    tes = list(common['EchoTime'])
    if echoes is not None:
        mag, phase, tes = mag[..., echoes], phase[..., echoes], [tes[i] for i in echoes]
    if crop is not None:
        sl = tuple(slice(a, b) for a, b in crop)
        mag, phase = mag[sl], phase[sl]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([a for a, _ in crop]) + affine[:3, 3]
    if zavg:
        sig = mag * np.exp(1j * phase)
        n = sig.shape[2] // 2 * 2
        sig = 0.5 * (sig[:, :, 0:n:2] + sig[:, :, 1:n:2])
        mag, phase = np.abs(sig).astype(np.float32), np.angle(sig).astype(np.float32)
        affine = affine.copy()
        affine[:3, 3] += 0.5 * affine[:3, 2]
        affine[:3, 2] *= 2
    if parts == 'mag/phase':
        data = {'mag': mag, 'phase': scale_phase(phase, scaling)}
    else:
        data = {'real': (mag * np.cos(phase)).astype(np.float32),
                'imag': (mag * np.sin(phase)).astype(np.float32)}
    anat = Path(bids_dir) / f'sub-{subject}' / (f'ses-{session}' if session else '') / 'anat'
    anat.mkdir(parents=True, exist_ok=True)
    ents = ''.join(f'_{k}-{v}' for k, v in (('ses', session), ('acq', acq), ('run', run)) if v)
    stem = f'sub-{subject}{ents}'
    base_meta = {k: v for k, v in common.items() if k != 'EchoTime' and k not in drop}
    base_meta.update(meta or {})
    written = []
    if layout == '4d' or len(tes) == 1:
        volumes = [(None, slice(None), tes if len(tes) > 1 else tes[0])]
    else:
        volumes = [(i + 1, slice(i, i + 1), te) for i, te in enumerate(tes)]
    for echo, sel, te in volumes:
        for part, arr in data.items():
            name = f'{stem}{f"_echo-{echo}" if echo else ""}_part-{part}_MEGRE'
            vol = arr[..., sel]
            vol = vol[..., 0] if vol.shape[-1] == 1 else vol
            side = {'EchoTime': te, **base_meta}
            if part == 'phase' and units is not None and 'Units' not in drop:
                side['Units'] = ('rad' if scaling == 'rad' else 'arbitrary') \
                    if units == 'auto' else units
            if 'EchoTime' in drop:
                del side['EchoTime']
            written.append(_write(anat / f'{name}{ext}', vol, affine, side, annex,
                                  None if part == 'phase' else dtype))
    return written


def _write(path, data, affine, sidecar, annex, dtype=None):
    img = nb.Nifti1Image(data, affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.header.set_xyzt_units('mm', 'sec')
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    target = path
    if annex is not None:
        target = Path(annex) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(target)
    if annex is not None:
        path.symlink_to(target)
    path.with_name(path.name.split('.')[0] + '.json').write_text(json.dumps(sidecar, indent=1))
    return path


def snapshot(folder) -> dict:
    """``{relative path: (size, mtime)}`` of every entry below ``folder`` (links not followed)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob('*'))}

