# SPDX-License-Identifier: Apache-2.0
"""Find multi-echo GRE acquisitions in a BIDS dataset and check them before any computing.

Every problem is raised as :class:`InputError`, whose message is one line naming the file
and the fix. The rules (suffix, parts, required metadata, limits) come from
``bids_specs/inputs.json``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qsmflow import bids_specs


class InputError(Exception):
    """A problem with the input data or the invocation; its text is a one-line message."""


_LABEL_RE = re.compile(r'^[A-Za-z0-9]+$')


@dataclass
class Acquisition:
    """One multi-echo GRE acquisition (a subject/session/acq/rec/run)."""

    entities: dict
    mag_files: list = field(default_factory=list)
    phase_files: list = field(default_factory=list)
    echo_times_s: list = field(default_factory=list)
    b0_tesla: float = 0.0
    phase_units: str | None = 'rad'

    @property
    def name(self) -> str:
        """Identifier usable as a Nipype node name (``sub_01_ses_a_run_1``)."""
        keys = ('subject', 'session', 'acquisition', 'reconstruction', 'run')
        short = {'subject': 'sub', 'session': 'ses', 'acquisition': 'acq',
                 'reconstruction': 'rec', 'run': 'run'}
        parts = [f'{short[k]}_{self.entities[k]}' for k in keys if self.entities.get(k)]
        return '_'.join(parts)

    @property
    def subject(self) -> str:
        return self.entities['subject']


def check_dirs(bids_dir, output_dir) -> tuple[Path, Path]:
    """Validate the two positional directories; return them as absolute paths."""
    bids = Path(bids_dir).expanduser().absolute()
    out = Path(output_dir).expanduser().absolute()
    if not bids.is_dir():
        raise InputError(f'BIDS directory {bids} does not exist; give the path to a BIDS dataset')
    if not (bids / 'dataset_description.json').is_file():
        raise InputError(
            f'{bids} is not a BIDS dataset (no dataset_description.json); '
            'give the root folder of a BIDS dataset')
    bids_r, out_r = bids.resolve(), out.resolve()
    if out_r == bids_r or bids_r in out_r.parents:
        raise InputError(
            f'output directory {out} is inside the BIDS directory {bids}; '
            'choose an output directory outside it (e.g. <bids_dir>/../derivatives/qsmflow)')
    return bids, out


def clean_labels(labels, prefix='sub-') -> list[str]:
    """Strip ``sub-``/``ses-`` prefixes and reject labels that are not BIDS labels."""
    cleaned = []
    for label in labels or []:
        lab = label[len(prefix):] if label.startswith(prefix) else label
        if not _LABEL_RE.match(lab):
            raise InputError(
                f'invalid label {label!r}: BIDS labels are letters and digits only '
                f'(e.g. {prefix}01 or 01)')
        cleaned.append(lab)
    return cleaned


def _layout(bids_dir: Path):
    from bids import BIDSLayout

    try:
        return BIDSLayout(str(bids_dir), validate=False)
    except Exception as exc:  # pybids raises several types for broken datasets
        raise InputError(f'cannot index BIDS dataset {bids_dir}: {exc}'.splitlines()[0]) from None


def _sidecar(path: Path, layout) -> dict:
    """BIDS metadata of ``path`` (inheritance applied by pybids)."""
    try:
        return layout.get_metadata(str(path))
    except json.JSONDecodeError as exc:
        raise InputError(f'{path}: JSON sidecar is not valid JSON ({exc}); fix the file') from None


def find_acquisitions(bids_dir, participant_labels=None, session_labels=None,
                      field_strength=None) -> tuple[dict, dict]:
    """Collect and check every MEGRE acquisition of the requested participants.

    Parameters
    ----------
    bids_dir : path
        Root of a BIDS dataset.
    participant_labels, session_labels : list of str or None
        Labels without prefix; ``None`` takes all.
    field_strength : float or None
        B0 in tesla used when ``MagneticFieldStrength`` is missing (``--field-strength``).

    Returns
    -------
    acquisitions : dict
        ``{subject: [Acquisition, ...]}`` for the subjects that passed the checks.
    errors : dict
        ``{subject: one-line message}`` for the subjects that did not.

    Raises
    ------
    InputError
        When a requested participant label does not exist in the dataset.
    """
    spec = bids_specs.load('inputs')
    layout = _layout(Path(bids_dir))
    subjects = sorted(layout.get_subjects())
    if not subjects:
        raise InputError(f'no sub-<label> folders found in {bids_dir}; is it a BIDS dataset?')
    wanted = list(participant_labels) if participant_labels else subjects
    unknown = [s for s in wanted if s not in subjects]
    if unknown:
        raise InputError(
            f'participant label(s) {", ".join(unknown)} not found in {bids_dir} '
            f'(available: {", ".join(subjects[:20])})')

    acquisitions, errors = {}, {}
    for subject in wanted:
        try:
            acqs = _subject_acquisitions(layout, spec, subject, session_labels, field_strength)
            if not acqs:
                raise InputError(
                    f'sub-{subject}: no multi-echo GRE data found '
                    f'(expected anat/sub-{subject}_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz])')
            acquisitions[subject] = acqs
        except InputError as exc:
            errors[subject] = str(exc)
    return acquisitions, errors


def _subject_acquisitions(layout, spec, subject, session_labels, field_strength):
    query = dict(subject=subject, suffix=spec['suffix'], datatype=spec['datatype'],
                 extension=spec['extensions'], return_type='object')
    if session_labels:
        query['session'] = session_labels
    files = layout.get(**query)
    groups: dict[tuple, dict] = {}
    for f in files:
        ents = f.get_entities()
        part = ents.get('part')
        if part not in spec['parts'].values():
            continue
        key = tuple((k, ents.get(k)) for k in spec['group_by'])
        groups.setdefault(key, {}).setdefault(part, []).append(f)
    acqs = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for _, v in k)):
        entities = {k: v for k, v in key if v is not None}
        acqs.append(_check_group(layout, spec, entities, groups[key], field_strength))
    return acqs


def _check_group(layout, spec, entities, parts, field_strength) -> Acquisition:
    mag_key, phase_key = spec['parts']['magnitude'], spec['parts']['phase']
    mags = {f.get_entities().get('echo', 1): Path(f.path) for f in parts.get(mag_key, [])}
    phases = {f.get_entities().get('echo', 1): Path(f.path) for f in parts.get(phase_key, [])}
    anyfile = next(iter((mags or phases).values()))
    if not mags:
        raise InputError(f'{anyfile}: phase without magnitude; add the matching part-mag files')
    if not phases:
        raise InputError(f'{anyfile}: magnitude without phase; add the matching part-phase files')
    if sorted(mags) != sorted(phases):
        raise InputError(
            f'{anyfile.parent}: echoes {sorted(mags)} (mag) and {sorted(phases)} (phase) differ; '
            'every echo needs both a part-mag and a part-phase file')

    rules = spec['metadata']
    echoes = sorted(mags)
    tes = []
    for echo in echoes:
        meta_p = _sidecar(phases[echo], layout)
        te = _required(meta_p, 'EchoTime', phases[echo], rules['EchoTime'])
        te_m = _required(_sidecar(mags[echo], layout), 'EchoTime', mags[echo], rules['EchoTime'])
        if abs(float(te) - float(te_m)) > 1e-6:
            raise InputError(
                f'{phases[echo]}: EchoTime {te} differs from its magnitude ({te_m}); '
                'fix the sidecars so both parts of an echo share one EchoTime')
        tes.append(float(te))
    if any(b <= a for a, b in zip(tes, tes[1:])):
        raise InputError(
            f'{phases[echoes[0]].parent}: echo times {tes} are not strictly increasing with the '
            'echo index; fix EchoTime or the echo- entities')

    meta0 = _sidecar(phases[echoes[0]], layout)
    b0_rule = rules['MagneticFieldStrength']
    if 'MagneticFieldStrength' in meta0:
        b0 = _in_range(meta0['MagneticFieldStrength'], 'MagneticFieldStrength',
                       phases[echoes[0]], b0_rule)
    elif field_strength is not None:
        b0 = float(field_strength)
    else:
        raise InputError(f'{phases[echoes[0]]}: missing MagneticFieldStrength; {b0_rule["fix"]}')
    units = meta0.get('Units')
    if units is not None and units not in rules['Units']['allowed']:
        raise InputError(f'{phases[echoes[0]]}: Units {units!r} is not valid for phase; '
                         f'{rules["Units"]["fix"]}')
    return Acquisition(
        entities={'subject': entities['subject'], **entities},
        mag_files=[str(mags[e]) for e in echoes],
        phase_files=[str(phases[e]) for e in echoes],
        echo_times_s=tes, b0_tesla=float(b0), phase_units=units)


def _required(meta, key, path, rule):
    if key not in meta:
        raise InputError(f'{path}: missing {key}; {rule["fix"]}')
    return _in_range(meta[key], key, path, rule)


def _in_range(value, key, path, rule) -> float:
    try:
        val = float(value)
    except (TypeError, ValueError):
        raise InputError(f'{path}: {key} = {value!r} is not a number; {rule["fix"]}') from None
    if not rule['min'] < val <= rule['max']:
        hint = ' (milliseconds? BIDS wants seconds)' if key == 'EchoTime' and val > 1 else ''
        raise InputError(
            f'{path}: {key} = {val} {rule["unit"]} is outside ({rule["min"]}, {rule["max"]}]'
            f'{hint}; {rule["fix"]}')
    return val


def check_images(acq: Acquisition) -> tuple[int, ...]:
    """Check the NIfTI headers of an acquisition; return its 3D shape (voxels).

    Catches unreadable files, 2D data and echoes whose shapes or affines disagree, before
    any computation starts.
    """
    import nibabel as nb
    import numpy as np

    ref_shape = ref_affine = None
    for path in [*acq.mag_files, *acq.phase_files]:
        try:
            img = nb.load(path)
            shape = img.shape
        except Exception as exc:
            raise InputError(f'{path}: cannot read NIfTI ({exc}); '
                             're-export the file (e.g. with dcm2niix)') from None
        shape3 = tuple(shape[:3]) if len(shape) >= 3 else tuple(shape)
        if len(shape) < 3 or min(shape3) < 2 or (len(shape) > 3 and any(s > 1 for s in shape[3:])):
            raise InputError(f'{path}: image of shape {shape} is not a 3D volume; '
                             'qsmflow needs one 3D volume per echo')
        if ref_shape is None:
            ref_shape, ref_affine = shape3, img.affine
        elif shape3 != ref_shape:
            raise InputError(f'{path}: shape {shape3} differs from {acq.mag_files[0]} '
                             f'{ref_shape}; all echoes and parts must share one grid')
        elif not np.allclose(img.affine, ref_affine, atol=1e-3):
            raise InputError(f'{path}: affine differs from {acq.mag_files[0]}; '
                             'all echoes and parts must share one grid')
    return ref_shape
