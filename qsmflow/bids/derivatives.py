# SPDX-License-Identifier: Apache-2.0
"""Find a participant's files in a user's BIDS derivatives folder (masks, R2 maps,
segmentations).

A file is looked for in ``DERIV/sub-<l>[/ses-<l>]/anat/`` and must be named
``sub-<l>[_ses-<l>][_acq-<l>][_rec-<l>][_run-<i>]…[_desc-<l>]_<suffix>.nii[.gz]``. The
acquisition-level entities a file carries (``ses``, ``acq``, ``rec``, ``run``) must equal
the acquisition's; an entity the file leaves out matches any value (one mask for every run
of a session). Files in a template space (``space-`` other than ``orig``/``scanner``) are
not in the participant's scanner space and are skipped. Of the matching files the most
specific one (most entities matched) is taken; two equally specific ones are ambiguous.
"""
from __future__ import annotations

import re
from pathlib import Path

#: Acquisition entities (BIDS key → key of ``Acquisition.entities``) a file must agree on.
MATCHED_ENTITIES = (('ses', 'session'), ('acq', 'acquisition'), ('rec', 'reconstruction'),
                    ('run', 'run'))

#: ``space-`` labels that mean the participant's own scanner space.
SCANNER_SPACES = ('orig', 'scanner')

_EXTENSIONS = ('.nii.gz', '.nii')


class DerivativeLookupError(ValueError):
    """No file, or more than one equally good file, for an acquisition."""


class MissingLookupTableError(FileNotFoundError):
    """A segmentation image without its lookup table (``image``; looked for at ``beside``
    and at the shared ``shared``)."""

    def __init__(self, image, beside, shared):
        self.image, self.beside, self.shared = Path(image), Path(beside), Path(shared)
        super().__init__(f'{image} has no dseg.tsv beside it nor at {self.shared.parent}')


def parse_entities(name: str) -> tuple[dict, str]:
    """BIDS entities and suffix of a file name (extension removed).

    Examples
    --------
    >>> parse_entities('sub-01_ses-a_run-2_desc-brain_mask.nii.gz')
    ({'sub': '01', 'ses': 'a', 'run': '2', 'desc': 'brain'}, 'mask')
    """
    stem = name
    for ext in _EXTENSIONS:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    parts = stem.split('_')
    ents = {}
    for part in parts[:-1]:
        key, _, value = part.partition('-')
        ents[key] = value
    return ents, parts[-1]


def _same(key: str, file_value: str, acq_value) -> bool:
    if acq_value is None or acq_value == '':
        return False
    if key == 'run':  # run-1 and run-01 are the same run
        try:
            return int(file_value) == int(acq_value)
        except ValueError:
            return str(file_value) == str(acq_value)
    return str(file_value) == str(acq_value)


def expected_pattern(deriv_dir, entities: dict, *, suffix: str, desc: str | None) -> str:
    """The path pattern :func:`find_derivative` looks for (for error messages).

    Examples
    --------
    >>> expected_pattern('/d', {'subject': '01', 'session': 'a', 'run': 2},
    ...                  suffix='mask', desc='brain')
    '/d/sub-01/ses-a/anat/sub-01[_ses-a][_run-2]_desc-brain_mask.nii[.gz]'
    """
    folder = Path(deriv_dir) / f'sub-{entities["subject"]}'
    if entities.get('session'):
        folder = folder / f'ses-{entities["session"]}'
    opt = ''.join(f'[_{key}-{entities[ent]}]' for key, ent in MATCHED_ENTITIES
                  if entities.get(ent) not in (None, ''))
    tail = f'_desc-{desc}_{suffix}' if desc else f'[_desc-<label>]_{suffix}'
    return str(folder / 'anat' / f'sub-{entities["subject"]}{opt}{tail}.nii[.gz]')


def find_derivative(deriv_dir, entities: dict, *, suffix: str,
                    desc: str | None = None) -> Path | None:
    """The file of one acquisition in a derivatives folder, or None when there is none.

    Parameters
    ----------
    deriv_dir : str or Path
        Root of a BIDS derivatives dataset.
    entities : dict
        The acquisition's entities (``subject``, optional ``session``, ``acquisition``,
        ``reconstruction``, ``run``).
    suffix : str
        BIDS suffix (``'mask'``, ``'dseg'``...).
    desc : str, optional
        Required ``desc-`` label; None accepts any (or none).

    Returns
    -------
    Path or None

    Raises
    ------
    DerivativeLookupError
        When two or more files match equally well.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()); anat = root / 'sub-01' / 'anat'
    >>> anat.mkdir(parents=True)
    >>> for n in ('sub-01_desc-brain_mask.nii.gz', 'sub-01_run-2_desc-brain_mask.nii.gz',
    ...           'sub-01_space-MNI_desc-brain_mask.nii.gz'):
    ...     _ = (anat / n).write_bytes(b'')
    >>> find_derivative(root, {'subject': '01', 'run': 2}, suffix='mask', desc='brain').name
    'sub-01_run-2_desc-brain_mask.nii.gz'
    >>> find_derivative(root, {'subject': '01', 'run': 1}, suffix='mask', desc='brain').name
    'sub-01_desc-brain_mask.nii.gz'
    >>> find_derivative(root, {'subject': '02'}, suffix='mask', desc='brain') is None
    True
    """
    folder = Path(deriv_dir) / f'sub-{entities["subject"]}'
    if entities.get('session'):
        folder = folder / f'ses-{entities["session"]}'
    folder = folder / 'anat'
    if not folder.is_dir():
        return None
    scored = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(_EXTENSIONS) or path.name.startswith('.'):
            continue
        ents, sfx = parse_entities(path.name)
        if sfx != suffix or ents.get('sub') != str(entities['subject']):
            continue
        if desc is not None and ents.get('desc') != desc:
            continue
        if ents.get('space', 'orig') not in SCANNER_SPACES:
            continue
        score, ok = 0, True
        for key, ent in MATCHED_ENTITIES:
            if key in ents:
                ok = ok and _same(key, ents[key], entities.get(ent))
                score += 1
        if ok:
            scored.append((score, path))
    if not scored:
        return None
    best = max(s for s, _ in scored)
    top = [p for s, p in scored if s == best]
    if len(top) > 1:
        raise DerivativeLookupError(
            f'{len(top)} files match sub-{entities["subject"]} equally well in {folder}: '
            f'{", ".join(p.name for p in top)}; add acq-/run- entities to tell them apart')
    return top[0]


def find_brain_mask(deriv_dir, entities: dict) -> Path:
    """The user's brain mask (``…_desc-brain_mask.nii[.gz]``) of one acquisition.

    Raises
    ------
    DerivativeLookupError
        One line naming the expected file pattern when there is none, or the candidates
        when several match equally well.
    """
    return _find_required(deriv_dir, entities, suffix='mask', desc='brain',
                          what='brain mask', flag='--brain-masks')


def check_brain_mask(deriv_dir, acq) -> Path:
    """Pre-flight check of the user's brain mask of ``acq``: found, readable, overlapping.

    Reads the mask and brings it onto the acquisition's grid (nearest neighbour through the
    affines, as the pipeline does) to check that it holds brain voxels there.

    Parameters
    ----------
    deriv_dir : str or Path
        The ``--brain-masks`` folder.
    acq : :class:`qsmflow.bids.inputs.Acquisition`
        The acquisition (its first magnitude file sets the grid).

    Returns
    -------
    Path
        The mask file.

    Raises
    ------
    qsmflow.errors.InputError
        One line: no or ambiguous mask (with the expected pattern), unreadable file,
        several volumes, or no brain voxel on the GRE grid.
    """
    import numpy as np

    from qsmflow.errors import InputError
    from qsmflow.qsm.regions import resample_labels

    try:
        path = find_brain_mask(deriv_dir, acq.entities)
    except DerivativeLookupError as exc:
        raise InputError(str(exc)) from None
    img, data, ref = _read_3d(path, acq, 'brain mask', 'mask')
    mask = np.nan_to_num(data) != 0
    on_grid = resample_labels(mask.astype(np.int32), img.affine, ref.affine, ref.shape[:3])
    if not on_grid.any():
        raise InputError(f'{path}: brain mask has no brain voxel on the GRE grid of '
                         f'{Path(acq.mag_files[0]).name} (is it in the same scanner space?)')
    return path


#: ``Units`` of an R2 map's sidecar that mean 1/s (compared case-insensitively).
R2_UNITS = ('1/s', 's-1', 's^-1', 'hz')

#: Plausible median (1/s) of a spin-echo R2 map of the head: R2 of brain tissue is
#: 10–25 1/s from 1.5 to 7 T (CSF ≈ 0.5–2). A median above 50 1/s (T2 < 20 ms) is a T2
#: map in ms, one below 1 1/s a T2 map in s or R2 in 1/ms.
R2_PLAUSIBLE_MEDIAN_HZ = (1.0, 50.0)


def find_r2_map(deriv_dir, entities: dict) -> Path:
    """The user's spin-echo R2 map (``…_R2map.nii[.gz]``) of one acquisition.

    Raises
    ------
    DerivativeLookupError
        One line naming the expected file pattern when there is none, or the candidates
        when several match equally well.
    """
    return _find_required(deriv_dir, entities, suffix='R2map', desc=None, what='R2 map',
                          flag='--r2-map')


def _find_required(deriv_dir, entities, *, suffix, desc, what, flag) -> Path:
    """:func:`find_derivative`, or one line naming the expected file pattern."""
    found = find_derivative(deriv_dir, entities, suffix=suffix, desc=desc)
    if found is None:
        raise DerivativeLookupError(
            f'no {what} for ' + _label(entities) + f' in {flag}: expected '
            + expected_pattern(deriv_dir, entities, suffix=suffix, desc=desc))
    return found


def _read_3d(path, acq, what, noun):
    """Pre-flight read of a user's 3D image ``path`` and of the GRE grid of ``acq``:
    ``(image, data as float32 3D, GRE reference image)``, or one-line InputErrors for an
    unreadable file or several volumes."""
    import nibabel as nb
    import numpy as np

    from qsmflow.errors import InputError

    try:
        img = nb.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        ref = nb.load(str(acq.mag_files[0]))
    except Exception as exc:  # noqa: BLE001 - any read failure is one pre-flight line
        raise InputError(f'{path}: cannot read the {what} ({type(exc).__name__}: '
                         f'{str(exc).splitlines()[0][:120]})') from None
    if data.ndim > 3 and int(np.prod(data.shape[3:])) != 1:
        raise InputError(f'{path}: {what} has {int(np.prod(data.shape[3:]))} volumes; '
                         f'give a 3D {noun}')
    return img, data.reshape(data.shape[:3]), ref


def check_r2_map(deriv_dir, acq) -> Path:
    """Pre-flight check of the user's R2 map of ``acq``: found, 3D, in 1/s, on the GRE.

    The sidecar (the ``.json`` beside the image), when there is one, must give ``Units``
    1/s (``1/s``, ``s-1``, ``s^-1`` or ``Hz``); the median of the map's positive values
    must lie in :data:`R2_PLAUSIBLE_MEDIAN_HZ` (else it is a T2 map or in other units);
    the map, linearly resampled through the affines as the pipeline does
    (:func:`qsmflow.qsm.regions.resample_linear`), must have values on the GRE grid.

    Parameters
    ----------
    deriv_dir : str or Path
        The ``--r2-map`` folder.
    acq : :class:`qsmflow.bids.inputs.Acquisition`
        The acquisition (its first magnitude file sets the grid).

    Returns
    -------
    Path
        The R2 map.

    Raises
    ------
    qsmflow.errors.InputError
        One line naming the file (or the expected pattern) and the fix.
    """
    import json

    import numpy as np

    from qsmflow.errors import InputError
    from qsmflow.qsm.regions import resample_linear

    try:
        path = find_r2_map(deriv_dir, acq.entities)
    except DerivativeLookupError as exc:
        raise InputError(str(exc)) from None
    sidecar = Path(re.sub(r'\.nii(\.gz)?$', '.json', str(path)))
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except Exception as exc:  # noqa: BLE001 - any read failure is one pre-flight line
        raise InputError(f'{path}: cannot read the R2 map or its sidecar '
                         f'({type(exc).__name__}: {str(exc).splitlines()[0][:120]})') from None
    img, data, ref = _read_3d(path, acq, 'R2 map', 'map')
    units = meta.get('Units') if isinstance(meta, dict) else None
    if units is not None and str(units).strip().lower() not in R2_UNITS:
        raise InputError(f'{path}: R2 map in {units!r} ({sidecar.name}); --r2-map takes R2 '
                         'in 1/s (Units "1/s"): convert it (R2 = 1000 / T2 in ms)')
    positive = data[np.isfinite(data) & (data > 0)]
    if positive.size == 0:
        raise InputError(f'{path}: R2 map has no positive value; give R2 in 1/s')
    median = float(np.median(positive))
    low, high = R2_PLAUSIBLE_MEDIAN_HZ
    if median > high:
        raise InputError(f'{path}: median {median:.4g} is no R2 in 1/s (brain: 10-25); it '
                         'looks like T2 in ms: give R2 = 1000 / T2 in 1/s')
    if median < low:
        raise InputError(f'{path}: median {median:.4g} is no R2 in 1/s (brain: 10-25); it '
                         'looks like T2 in s or R2 in 1/ms: give R2 in 1/s (1 / T2 in s)')
    on_grid = resample_linear(data, img.affine, ref.affine, ref.shape[:3],
                              valid=np.isfinite(data) & (data > 0))
    if not np.isfinite(on_grid).any():
        raise InputError(f'{path}: R2 map has no value on the GRE grid of '
                         f'{Path(acq.mag_files[0]).name} (is it in the same scanner space?)')
    return path


def find_segmentation(deriv_dir, entities: dict) -> tuple[str, str] | None:
    """Find a participant's ``_dseg.nii[.gz]`` and its lookup table in a derivatives folder.

    The image is ``sub-<l>[/ses-<l>]/anat/sub-<l>…_dseg.nii[.gz]``; when several match,
    the one sharing the acquisition's ``acq-``/``run-`` entities is preferred. The lookup
    table is the ``.tsv`` beside the image or ``dseg.tsv`` at the folder root.

    Parameters
    ----------
    deriv_dir : str or Path
        BIDS derivatives folder.
    entities : dict
        BIDS entities of the acquisition (``subject``, optional ``session``...).

    Returns
    -------
    (str, str) or None
        Paths of the image and lookup table; None when the participant has none.

    Raises
    ------
    MissingLookupTableError
        (a ``FileNotFoundError``) When an image exists but no lookup table does.
    """
    root = Path(deriv_dir)
    folder = root / f'sub-{entities["subject"]}'
    if entities.get('session'):
        folder = folder / f'ses-{entities["session"]}'
    found = sorted((folder / 'anat').glob(f'sub-{entities["subject"]}*_dseg.nii*'))
    if not found:
        return None

    def score(path):
        return sum(f'_{key}-{entities[ent]}_' in path.name
                   for key, ent in (('acq', 'acquisition'), ('run', 'run'))
                   if entities.get(ent))

    image = max(found, key=score)
    beside = Path(re.sub(r'\.nii(\.gz)?$', '.tsv', str(image)))
    for lut in (beside, root / 'dseg.tsv'):
        if lut.exists():
            return str(image), str(lut)
    raise MissingLookupTableError(image, beside, root / 'dseg.tsv')


def check_segmentation(deriv_dir, acq) -> tuple[str, str] | None:
    """Pre-flight lookup of the user's segmentation of ``acq`` and its lookup table.

    Returns
    -------
    (str, str) or None
        :func:`find_segmentation`'s image and lookup table; None when the participant has
        no segmentation (its regional tables then come from atlases only).

    Raises
    ------
    qsmflow.errors.InputError
        One line naming the image and the fix when its lookup table is missing.
    """
    from qsmflow.errors import InputError

    try:
        return find_segmentation(deriv_dir, acq.entities)
    except MissingLookupTableError as exc:
        raise InputError(f'{exc.image}: segmentation (--segmentations) without a lookup '
                         f'table; add {exc.beside.name} beside it or {exc.shared} (TSV with '
                         'columns index, name)') from None


def _label(entities: dict) -> str:
    keys = (('sub', 'subject'),) + MATCHED_ENTITIES
    return '_'.join(f'{k}-{entities[e]}' for k, e in keys if entities.get(e) not in (None, ''))


__all__ = ['DerivativeLookupError', 'MissingLookupTableError', 'R2_PLAUSIBLE_MEDIAN_HZ',
           'R2_UNITS', 'check_brain_mask', 'check_r2_map', 'check_segmentation',
           'expected_pattern', 'find_brain_mask', 'find_derivative', 'find_r2_map',
           'find_segmentation', 'parse_entities']
