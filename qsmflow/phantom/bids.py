# SPDX-License-Identifier: Apache-2.0
"""Write simulated multi-echo GRE phantom data as a raw BIDS dataset, plus ground truth.

The raw dataset holds ``sub-<label>/anat/sub-<label>_echo-<n>_part-<mag|phase>_MEGRE.nii.gz``
with JSON sidecars. The ground truth is a separate BIDS derivatives dataset (χ map, R2* and
M0 maps, segmentation, brain mask, total and local field, phase offset) on the same grid.
"""

from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nb
import numpy as np

from .. import __version__
from ..qsm.kernels import b0_dir_from_affine
from .forward import simulate_megre
from .head import LABELS, make_head

__all__ = ['DEFAULT_B0_TESLA', 'DEFAULT_ECHO_TIMES_S', 'VARIANTS', 'oblique_affine',
           'write_dataset']

#: Phantom variants: ``'default'`` (:func:`~qsmflow.phantom.head.make_head`, SNR 100) and
#: ``'realistic'`` (:func:`~qsmflow.phantom.realistic.realistic_head`: bright scalp,
#: layered skull, neck, air cavities, fat shift; SNR 35) and ``'clinical'``
#: (:func:`~qsmflow.phantom.clinical.make_clinical_head`: the default head plus foci beside
#: veins and in deep GM, veins of known saturation; SNR 100), with their default SNR.
VARIANTS = {'default': 100.0, 'realistic': 35.0, 'clinical': 100.0}

#: Echo times (s): 5 uniformly spaced echoes, the last near T2* of deep grey matter.
DEFAULT_ECHO_TIMES_S = (0.004, 0.012, 0.020, 0.028, 0.036)

#: Main field strength (T).
DEFAULT_B0_TESLA = 3.0

BIDS_VERSION = '1.10.0'
_FLIP_ANGLE_DEG = 15.0
_REPETITION_TIME_S = 0.045
_TRUTH_IGNORE = ('*_fieldmap.nii.gz', '*_fieldmap.json', '*_phaseoffset.nii.gz',
                 '*_phaseoffset.json')


def oblique_affine(shape, voxel_size_mm, angle_deg: float = 0.0, axis: str = 'x') -> np.ndarray:
    """RAS voxel-to-world affine centred on the grid, optionally rotated (oblique slab).

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape (voxels).
    voxel_size_mm : float or tuple of 3 float
        Voxel spacing (mm).
    angle_deg : float
        Rotation of the slab about ``axis`` (degrees); 0 gives a plain RAS grid.
    axis : {'x', 'y', 'z'}
        World axis of the rotation (``'x'``: pitch, ``'y'``: roll, ``'z'``: yaw).

    Returns
    -------
    (4, 4) ndarray of float64
        Affine (mm) mapping the grid centre to world (0, 0, 0).

    Examples
    --------
    >>> from qsmflow.qsm.kernels import b0_dir_from_affine
    >>> aff = oblique_affine((10, 10, 10), 2.0, 15.0)
    >>> b = b0_dir_from_affine(aff)
    >>> round(float(np.degrees(np.arccos(b[2]))), 6), round(float(aff[0, 0]), 6)
    (15.0, 2.0)
    """
    if axis not in ('x', 'y', 'z'):
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    vox = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,))
    t = math.radians(float(angle_deg))
    c, s = math.cos(t), math.sin(t)
    i, j = {'x': (1, 2), 'y': (2, 0), 'z': (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    affine = np.eye(4)
    affine[:3, :3] = rot * vox
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def _write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content, indent=2) + '\n')
    return path


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, sidecar: dict) -> Path:
    """Write a NIfTI image (qform = sform = ``affine``, mm and s units) and its sidecar."""
    img = nb.Nifti1Image(data, affine)
    img.header.set_xyzt_units('mm', 'sec')
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.to_filename(path)
    _write_json(path.with_name(path.name.replace('.nii.gz', '.json')), sidecar)
    return path


def _normalise_participants(participants) -> list[dict]:
    rows = []
    for entry in participants:
        row = dict(entry)
        label = str(row.get('participant_id', '')).removeprefix('sub-')
        if not re.fullmatch(r'[0-9a-zA-Z]+', label):
            raise ValueError(f'invalid participant label {row.get("participant_id")!r}')
        row['participant_id'] = label
        row['age'] = float(row['age'])
        row['sex'] = str(row.get('sex', 'n/a'))
        rows.append(row)
    if len({r['participant_id'] for r in rows}) != len(rows):
        raise ValueError('participant labels must be unique')
    if not rows:
        raise ValueError('no participants given')
    return rows


def _tsv_value(value) -> str:
    if isinstance(value, float):
        return f'{value:g}'
    return 'n/a' if value is None else str(value)


def _write_raw_top(bids_dir: Path, rows: list[dict], echo_times_s, b0_tesla, size) -> None:
    _write_json(bids_dir / 'dataset_description.json', {
        'Name': 'qsmflow numerical head phantom (multi-echo GRE)',
        'BIDSVersion': BIDS_VERSION,
        'DatasetType': 'raw',
        'License': 'CC0',
        'Authors': ['qsmflow developers'],
        'GeneratedBy': [{'Name': 'qsmflow', 'Version': __version__,
                         'Description': 'qsmflow.phantom simulation'}],
    })
    tes_ms = ', '.join(f'{1e3 * t:g}' for t in echo_times_s)
    (bids_dir / 'README').write_text(
        'Simulated 3D multi-echo gradient-echo data of a numerical head phantom, written by\n'
        f'qsmflow {__version__} (qsmflow.phantom). Grid size: {size}; B0 = {b0_tesla:g} T;\n'
        f'echo times: {tes_ms} ms. Magnitude is in arbitrary units, phase in radians.\n'
        'The ground truth is a separate derivatives dataset.\n'
    )
    (bids_dir / 'CHANGES').write_text('1.0.0 - generated by qsmflow.phantom\n')
    columns = ['participant_id', 'age', 'sex']
    columns += sorted({k for r in rows for k in r} - set(columns))
    lines = ['\t'.join(columns)]
    for r in rows:
        values = [f'sub-{r["participant_id"]}'] + [_tsv_value(r.get(c)) for c in columns[1:]]
        lines.append('\t'.join(values))
    (bids_dir / 'participants.tsv').write_text('\n'.join(lines) + '\n')
    meta = {
        'participant_id': {'Description': 'Participant label'},
        'age': {'Description': 'Age of the simulated participant', 'Units': 'year'},
        'sex': {'Description': 'Sex of the simulated participant',
                'Levels': {'F': 'female', 'M': 'male'}},
    }
    meta.update({c: {'Description': f'{c} (as given to the simulation)'}
                 for c in columns if c not in meta})
    _write_json(bids_dir / 'participants.json', meta)


def _write_truth_top(truth_dir: Path, labels=LABELS) -> None:
    _write_json(truth_dir / 'dataset_description.json', {
        'Name': 'qsmflow numerical head phantom: ground truth',
        'BIDSVersion': BIDS_VERSION,
        'DatasetType': 'derivative',
        'License': 'CC0',
        'GeneratedBy': [{'Name': 'qsmflow', 'Version': __version__,
                         'Description': 'qsmflow.phantom ground truth'}],
    })
    (truth_dir / 'README').write_text(
        'Ground truth of the qsmflow numerical head phantom: susceptibility (ppm, relative\n'
        'to CSF, brain tissue only), R2* (1/s), M0, tissue segmentation, brain mask, total\n'
        'and local field (ppm of B0) and the echo-independent phase offset (rad).\n'
    )
    (truth_dir / '.bidsignore').write_text('\n'.join(_TRUTH_IGNORE) + '\n')
    (truth_dir / 'dseg.tsv').write_text(_dseg_tsv(labels))


def _dseg_tsv(labels=LABELS) -> str:
    return 'index\tname\n' + ''.join(f'{i}\t{n}\n' for i, n in labels)


def _variant_labels(variant):
    if variant in ('default', 'clinical'):
        return LABELS
    from .realistic import REALISTIC_LABELS

    return REALISTIC_LABELS


def _make_head(variant, size, age):
    if variant == 'default':
        return make_head(size=size, age_years=age)
    if variant == 'clinical':
        from .clinical import make_clinical_head

        return make_clinical_head(size=size, age_years=age)
    from .realistic import realistic_head

    return realistic_head(size=size, age_years=age)


def _simulate(variant, head, echo_times_s, b0_tesla, b0_dir, snr, rng):
    """MEGRE simulation of one participant's phantom, and the variant's extra truth images."""
    if variant in ('default', 'clinical'):
        return (*simulate_megre(head, echo_times_s, b0_tesla, b0_dir, snr=snr, rng=rng), {})
    from .realistic import simulate_realistic_megre

    mag, phase, truth = simulate_realistic_megre(head, echo_times_s, b0_tesla, b0_dir,
                                                 snr=snr, rng=rng)
    extra = {
        'head_mask': ('desc-head_mask', head.head_mask.astype(np.uint8),
                      {'Type': 'Head', 'Description': 'Head and neck: every label but the '
                       'air around the head (internal air cavities included).'}),
        'fat_fraction': ('label-fat_probseg', head.fat_fraction,
                         {'Units': 'arbitrary', 'Description': 'Fat signal fraction (0-1); '
                          'fat is simulated at its chemical shift, which the field truth '
                          'leaves out.'}),
    }
    return mag, phase, truth, extra


def _write_participant(bids_dir, truth_dir, row, index, *, size, echo_times_s, b0_tesla,
                       oblique_deg, snr, seed, pool, yaw_deg=0.0, shift_mm=None,
                       variant='default') -> dict:
    sub = f'sub-{row["participant_id"]}'
    head = _make_head(variant, size, row['age'])
    affine = oblique_affine(head.shape, head.voxel_size_mm, oblique_deg)
    if yaw_deg or shift_mm is not None:
        # Head pose in the scanner: a turn about the B0 (z) axis leaves the physics alone.
        pose = oblique_affine((1, 1, 1), 1.0, yaw_deg, axis='z')
        pose[:3, 3] = np.asarray(shift_mm if shift_mm is not None else (0, 0, 0), float)
        affine = pose @ affine
    b0_dir = b0_dir_from_affine(affine)
    mag, phase, truth, extra = _simulate(variant, head, echo_times_s, b0_tesla, b0_dir, snr,
                                         seed + index)
    anat = bids_dir / sub / 'anat'
    anat.mkdir(parents=True, exist_ok=True)
    common = {
        'MagneticFieldStrength': float(b0_tesla),
        'Manufacturer': 'qsmflow-phantom',
        'ManufacturersModelName': (f'numerical head phantom ({size})' if variant == 'default'
                                   else f'numerical head phantom ({variant}, {size})'),
        'MRAcquisitionType': '3D',
        'FlipAngle': _FLIP_ANGLE_DEG,
        'RepetitionTime': _REPETITION_TIME_S,
    }
    out = {'mag': [], 'phase': []}
    for n, te in enumerate(echo_times_s, start=1):
        for part, data, units in (('mag', mag, 'arbitrary'), ('phase', phase, 'rad')):
            path = anat / f'{sub}_echo-{n}_part-{part}_MEGRE.nii.gz'
            meta = {'EchoTime': float(te), **common, 'Units': units}
            out[part].append(pool.submit(_write_nifti, path, data[..., n - 1], affine, meta))

    tanat = truth_dir / sub / 'anat'
    tanat.mkdir(parents=True, exist_ok=True)
    base = {'SkullStripped': False, 'MagneticFieldStrength': float(b0_tesla)}
    images = {
        'chimap': ('Chimap', head.brain_chi_ppm,
                   {'Units': 'ppm', 'SkullStripped': True, 'QSMReference': 'CSF',
                    'Description': 'True susceptibility of brain tissue (ppm, SI) relative to '
                    'CSF; 0 outside the brain.'}),
        'r2starmap': ('R2starmap', head.r2star_hz, {'Units': '1/s'}),
        'm0map': ('M0map', head.m0, {'Units': 'arbitrary'}),
        'dseg': ('desc-phantom_dseg', head.labels.astype(np.int16), {}),
        'mask': ('desc-brain_mask', head.brain_mask.astype(np.uint8), {'Type': 'Brain'}),
        'total_field': ('desc-total_fieldmap', truth['total_field_ppm'],
                        {'Units': 'ppm', 'B0Direction': b0_dir.tolist()}),
        'local_field': ('desc-local_fieldmap', truth['local_field_ppm'],
                        {'Units': 'ppm', 'SkullStripped': True, 'B0Direction': b0_dir.tolist(),
                         'Description': 'Field of the brain susceptibility alone (ppm).'}),
        'phase_offset': ('phaseoffset', truth['phase_offset_rad'], {'Units': 'rad'}),
        **extra,
    }
    for key, (suffix, data, meta) in images.items():
        path = tanat / f'{sub}_{suffix}.nii.gz'
        out[key] = pool.submit(_write_nifti, path, data, affine, {**base, **meta})
    out['dseg_tsv'] = tanat / f'{sub}_desc-phantom_dseg.tsv'
    out['dseg_tsv'].write_text(_dseg_tsv(_variant_labels(variant)))
    out['age'] = row['age']
    out['b0_dir'] = b0_dir
    return out


def write_dataset(bids_dir, truth_dir, participants, *, size: str = 'small',
                  echo_times_s=DEFAULT_ECHO_TIMES_S, b0_tesla: float = DEFAULT_B0_TESLA,
                  oblique_deg: float = 0.0, snr: float | None = None, seed: int = 0,
                  yaw_deg: float = 0.0, shift_mm=None, variant: str = 'default') -> dict:
    """Simulate and write a raw BIDS MEGRE dataset and its ground-truth derivatives.

    Parameters
    ----------
    bids_dir : str or Path
        Raw BIDS dataset to create (or fill).
    truth_dir : str or Path
        Ground-truth derivatives dataset; must not lie inside ``bids_dir`` (nor contain it).
    participants : list of dict
        One dict per participant with ``participant_id`` (label, with or without
        ``sub-``), ``age`` (years) and ``sex`` ('F' or 'M'); other keys become
        ``participants.tsv`` columns.
    size : {'small', 'tiny', 'full'}
        Phantom grid (2, 3 or 1 mm voxels).
    echo_times_s : sequence of float
        Echo times (s).
    b0_tesla : float
        Main field strength (T).
    oblique_deg : float
        Pitch of the slab about x (degrees); the B0 direction in voxel axes follows from
        the written affine.
    snr : float, optional
        Mean brain magnitude at the first echo over the noise σ (dimensionless); default
        that of the variant (:data:`VARIANTS`: 100, or 35 for ``'realistic'``).
    seed : int
        Noise seed; participant ``i`` (0-based) uses ``seed + i``.
    yaw_deg : float
        Head turn about the scanner z (B0) axis (degrees), applied after the slab tilt;
        it moves the head in world space without changing the field.
    shift_mm : sequence of 3 float, optional
        Head position in the scanner (mm, world RAS); default: grid centre at the origin.
    variant : {'default', 'realistic', 'clinical'}
        Phantom: the default head, its clinical variant
        (:func:`~qsmflow.phantom.clinical.make_clinical_head`: foci and veins of known
        saturation, labelled in the truth segmentation), or
        :func:`~qsmflow.phantom.realistic.realistic_head`
        (bright fat scalp, layered skull, neck and spinal canal, eyes, ear canals, fat
        chemical shift). The realistic truth adds ``desc-head_mask`` and
        ``label-fat_probseg`` (fat signal fraction) images, and its segmentation table
        lists its labels.

    Returns
    -------
    dict
        ``bids_dir`` and ``truth_dir`` (Path), ``echo_times_s`` (s), ``b0_tesla`` (T) and
        ``participants``: label -> dict of written paths (``mag``/``phase`` lists per echo,
        ``chimap``, ``dseg``, ``mask``, ``total_field``, ``local_field``, ...;
        ``head_mask``, ``fat_fraction`` for the realistic variant).
    """
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {sorted(VARIANTS)}, got {variant!r}')
    snr = VARIANTS[variant] if snr is None else float(snr)
    bids_dir, truth_dir = Path(bids_dir).resolve(), Path(truth_dir).resolve()
    if truth_dir.is_relative_to(bids_dir) or bids_dir.is_relative_to(truth_dir):
        raise ValueError('truth_dir and bids_dir must be separate, non-nested directories')
    tes = tuple(float(t) for t in echo_times_s)
    if not tes or min(tes) <= 0 or any(b <= a for a, b in zip(tes, tes[1:])):
        raise ValueError('echo_times_s must be positive and increasing (s)')
    rows = _normalise_participants(participants)
    bids_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    _write_raw_top(bids_dir, rows, tes, b0_tesla, size)
    _write_truth_top(truth_dir, _variant_labels(variant))
    written = {}
    # Image writing is dominated by gzip, which runs outside the GIL: write in threads.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for index, row in enumerate(rows):
            written[row['participant_id']] = _write_participant(
                bids_dir, truth_dir, row, index, size=size, echo_times_s=tes,
                b0_tesla=b0_tesla, oblique_deg=oblique_deg, snr=snr, seed=int(seed),
                pool=pool, yaw_deg=yaw_deg, shift_mm=shift_mm, variant=variant)
    for paths in written.values():
        for key, value in paths.items():
            if isinstance(value, list):
                paths[key] = [v.result() for v in value]
            elif hasattr(value, 'result'):
                paths[key] = value.result()
    return {'bids_dir': bids_dir, 'truth_dir': truth_dir, 'echo_times_s': tes,
            'b0_tesla': float(b0_tesla), 'participants': written}
