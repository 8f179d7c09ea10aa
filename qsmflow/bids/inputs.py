# SPDX-License-Identifier: Apache-2.0
"""Find multi-echo GRE acquisitions in a BIDS dataset and check their metadata.

Accepted layouts: one 3D file per echo (``echo-<n>``) or one 4D file per part with
``EchoTime`` as a list; parts ``mag``/``phase`` or ``real``/``imag``; a single echo. The
image contents are checked by :mod:`qsmflow.bids.preflight`. Every problem is raised as
:class:`InputError`, whose message is one line naming the file and the fix. The rules
(suffix, parts, required metadata, limits) come from ``bids_specs/inputs.json``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qsmflow import bids_specs
from qsmflow.errors import InputError


_LABEL_RE = re.compile(r'^[A-Za-z0-9]+$')
#: Uncombined receive-coil images (``coil-<n>``; pybids has no such entity).
_COIL_RE = re.compile(r'_coil-([0-9A-Za-z]+)_')


@dataclass
class Acquisition:
    """One multi-echo GRE acquisition (a subject/session/acq/rec/run).

    :func:`find_acquisitions` fills the files and metadata; pre-flight
    (:func:`qsmflow.bids.preflight.preflight`) resolves the phase scaling and every other
    input file, so that workflow builders only build graphs.
    """

    entities: dict
    mag_files: list = field(default_factory=list)
    phase_files: list = field(default_factory=list)
    echo_times_s: list = field(default_factory=list)
    b0_tesla: float = 0.0
    phase_units: str | None = 'rad'
    #: Parts the two file lists hold: ``'mag/phase'`` or ``'real/imag'`` (then
    #: ``mag_files`` are the part-real and ``phase_files`` the part-imag files).
    complex_parts: str = 'mag/phase'
    #: ``'echo'``: one 3D file per echo; ``'4d'``: one file per part, a volume per echo.
    layout: str = 'echo'
    #: Pre-flight warnings (one line each), filled by :func:`qsmflow.bids.preflight.check_images`.
    warnings: list = field(default_factory=list)
    #: Voxels of one volume (for memory estimates); set by pre-flight, 0 before.
    n_voxels: int = 0
    #: The user's brain mask (``--brain-masks``), found and checked by pre-flight; None
    #: for the automatic mask.
    brain_mask: str | None = None
    #: The user's segmentation (``--segmentations``) and its lookup table, found by
    #: pre-flight; None when not asked for or when the participant has none.
    segmentation: str | None = None
    segmentation_lut: str | None = None
    #: The user's spin-echo R2 map in 1/s (``--r2-map``), found and checked by pre-flight;
    #: None for the scalar R2 of χ-separation.
    r2_map: str | None = None
    #: Uncombined receive coils (``coil-<n>``): ``[(mag files, phase files), ...]`` per coil,
    #: one file per echo in echo order; ``mag_files``/``phase_files`` are then the first
    #: coil's (for pre-flight) and the run combines the coils first (MCPC-3D-S). Empty for
    #: combined data.
    coil_files: list = field(default_factory=list)
    #: Pre-flight phase-polarity check (:func:`qsmflow.qsm.polarity.polarity_score`:
    #: ``score``, ``inverted``, ...); None before pre-flight or when it could not say.
    polarity: dict | None = None

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


def load_bids_filters(path) -> dict:
    """Read a ``--bids-filter-file`` (PyBIDS queries as JSON, as in fMRIPrep).

    The file maps query names to entity filters; qsmflow reads the ``"megre"`` query, e.g.
    ``{"megre": {"session": "pre", "acquisition": ["fast", "slow"], "run": null}}``
    (``null``: the entity must be absent; ``"*"``: any value).
    """
    path = Path(path).expanduser()
    allowed = bids_specs.load('inputs')['bids_filter_queries']
    example = '(e.g. {"megre": {"session": "01"}})'
    if not path.is_file():
        raise InputError(f'{path}: BIDS filter file not found; give the path of a JSON file')
    try:
        filters = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f'{path}: BIDS filter file is not valid JSON ({exc}); '
                         f'fix the file {example}') from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise InputError(f'{path}: BIDS filter file must map query names to entity filters '
                         f'{example}')
    unknown = sorted(set(filters) - set(allowed))
    if unknown:
        raise InputError(f'{path}: unknown query {unknown[0]!r} in BIDS filter file; qsmflow '
                         f'reads {", ".join(repr(a) for a in allowed)} {example}')
    return filters


def _pybids_value(value):
    """fMRIPrep's filter conventions: ``null`` = entity absent, ``"*"`` = any value."""
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == '*':
        return Query.ANY
    if isinstance(value, list):
        return [_pybids_value(v) for v in value]
    return value


def find_acquisitions(bids_dir, participant_labels=None, session_labels=None,
                      field_strength=None, filters=None) -> tuple[dict, dict]:
    """Collect and check the metadata of every MEGRE acquisition of the requested participants.

    Parameters
    ----------
    bids_dir : path
        Root of a BIDS dataset.
    participant_labels, session_labels : list of str or None
        Labels without prefix; ``None`` takes all.
    field_strength : float or None
        B0 in tesla used when ``MagneticFieldStrength`` is missing (``--field-strength``).
    filters : dict or None
        PyBIDS filters from :func:`load_bids_filters` (``{"megre": {entity: value}}``).

    Returns
    -------
    acquisitions : dict
        ``{subject: [Acquisition, ...]}`` for the subjects that passed the checks.
    errors : dict
        ``{subject: one-line message}`` for the subjects that did not.

    Raises
    ------
    InputError
        When a requested participant or session label does not exist in the dataset, or a
        filter names an unknown entity.
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
    if session_labels:
        sessions = sorted(layout.get_sessions())
        missing = [s for s in session_labels if s not in sessions]
        if missing:
            raise InputError(
                f'session label(s) {", ".join(missing)} not found in {bids_dir} '
                f'(available: {", ".join(sessions[:20]) or "none"})')
    query = {k: _pybids_value(v) for k, v in (filters or {}).get('megre', {}).items()}

    acquisitions, errors = {}, {}
    for subject in wanted:
        try:
            acqs = _subject_acquisitions(layout, spec, subject, session_labels, field_strength,
                                         query)
            if not acqs:
                raise InputError(
                    f'sub-{subject}: no multi-echo GRE data found '
                    f'(expected anat/sub-{subject}_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz]'
                    f'{" matching the BIDS filters" if query else ""})')
            acquisitions[subject] = acqs
        except InputError as exc:
            errors[subject] = str(exc)
    return acquisitions, errors


def _subject_acquisitions(layout, spec, subject, session_labels, field_strength, filters):
    # The datatype is the file's folder, not pybids' ``datatype`` entity: pybids finds that
    # entity anywhere in the absolute path, so a dataset under e.g. /data/perf/ or /scratch/anat/
    # would lose (or gain) files.
    query = dict(suffix=spec['suffix'], extension=spec['extensions'])
    query.update(filters)
    query.update(subject=subject, return_type='object')
    if session_labels:
        query['session'] = session_labels
    try:
        files = layout.get(**query)
    except ValueError as exc:  # pybids: unknown entity in a filter
        raise InputError(f'BIDS filter {filters}: {exc}'.splitlines()[0] +
                         '; use BIDS entity names (session, acquisition, run, ...)') from None
    groups: dict[tuple, dict] = {}
    for f in files:
        if Path(f.path).parent.name != spec['datatype']:
            continue
        ents = f.get_entities()
        part = ents.get('part')
        if part not in spec['parts'].values():
            continue
        coil = _COIL_RE.search(Path(f.path).name)
        key = tuple((k, ents.get(k)) for k in spec['group_by'])
        groups.setdefault(key, {}).setdefault(coil and coil.group(1), {}).setdefault(
            part, []).append(f)
    acqs = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for _, v in k)):
        entities = {k: v for k, v in key if v is not None}
        coils = groups[key]
        if None in coils and len(coils) > 1:
            raise InputError(f'{coils[None][next(iter(coils[None]))][0].path}: combined and '
                             'coil-<n> files share the same entities; give the coil files '
                             'their own rec- label (e.g. rec-uncombined)')
        if None in coils:
            acqs.append(_check_group(layout, spec, entities, coils[None], field_strength))
        else:
            acqs.append(_check_coils(layout, spec, entities, coils, field_strength))
    return acqs


def _check_coils(layout, spec, entities, coils, field_strength) -> Acquisition:
    """The acquisition of uncombined coils ``{coil label: {part: [files]}}``: every coil
    must have the first coil's echoes as magnitude and phase files (one per echo)."""
    labels = sorted(coils, key=lambda c: (len(c), c))
    acq = _check_group(layout, spec, entities, coils[labels[0]], field_strength)
    anyfile = Path(acq.phase_files[0])
    if acq.complex_parts != 'mag/phase' or acq.layout != 'echo' or len(acq.echo_times_s) < 2:
        raise InputError(f'{anyfile}: uncombined coils need one part-mag and one part-phase '
                         'file per echo and at least two echoes (MCPC-3D-S); export '
                         'magnitude/phase per echo or use the scanner-combined images')
    for label in labels:
        parts = coils[label]
        got = {p: sorted(str(e) for e in _by_echo(parts.get(spec['parts'][k], [])))
               for p, k in (('mag', 'magnitude'), ('phase', 'phase'))}
        want = sorted(str(i + 1) for i in range(len(acq.echo_times_s)))
        for part, echoes in got.items():
            if echoes != want:
                missing = sorted(set(want) - set(echoes)) or sorted(set(echoes) - set(want))
                raise InputError(f'{anyfile.parent}: coil-{label} part-{part} has echoes '
                                 f'{echoes or "none"}, coil-{labels[0]} has {want} (echo '
                                 f'{missing[0]} differs); add the missing file or remove '
                                 f'coil-{label}')
        acq.coil_files.append(tuple(
            [str(f) for _, f in sorted(_by_echo(parts[spec['parts'][p]]).items(),
                                       key=lambda kv: int(kv[0]))]
            for p in ('magnitude', 'phase')))
    return acq


def _pick_parts(spec, parts) -> tuple[str, str]:
    """The two parts an acquisition is read from: (mag, phase) or (real, imag)."""
    names = spec['parts']
    pairs = [(names['magnitude'], names['phase']), (names['real'], names['imaginary'])]
    for first, second in pairs:
        if parts.get(first) and parts.get(second):
            return first, second
    anyfile = Path(next(iter(parts.values()))[0].path)
    present = sorted(parts)
    want = {'mag': 'phase', 'phase': 'mag', 'real': 'imag', 'imag': 'real'}[present[0]]
    raise InputError(f'{anyfile}: part-{present[0]} without part-{want}; add the matching '
                     f'part-{want} files (qsmflow needs mag+phase or real+imag)')


def _by_echo(files) -> dict:
    """``{echo index or None: Path}``; ``None`` is a file without ``echo-`` (4D/single echo)."""
    out = {}
    for f in files:
        echo = f.get_entities().get('echo')
        if echo in out:
            raise InputError(f'{f.path}: duplicate of {out[echo].name} (same entities, e.g. '
                             '.nii beside .nii.gz); remove one of them')
        out[echo] = Path(f.path)
    if None in out and len(out) > 1:
        raise InputError(f'{out[None]}: a file without echo- beside files with echo-; keep '
                         'either one file per echo (echo-<n>) or one 4D file with every echo')
    return out


def _check_group(layout, spec, entities, parts, field_strength) -> Acquisition:
    first_key, second_key = _pick_parts(spec, parts)
    firsts, seconds = _by_echo(parts[first_key]), _by_echo(parts[second_key])
    anyfile = next(iter(seconds.values()))
    if sorted(firsts, key=str) != sorted(seconds, key=str):
        raise InputError(
            f'{anyfile.parent}: echoes {sorted(firsts, key=str)} (part-{first_key}) and '
            f'{sorted(seconds, key=str)} (part-{second_key}) differ; every echo needs both parts')

    rules = spec['metadata']
    echoes = sorted(firsts, key=lambda e: -1 if e is None else int(e))
    tes = []
    for echo in echoes:
        te = _echo_times(_sidecar(seconds[echo], layout), seconds[echo], rules['EchoTime'])
        te_1 = _echo_times(_sidecar(firsts[echo], layout), firsts[echo], rules['EchoTime'])
        if len(te) != len(te_1) or any(abs(a - b) > 1e-6 for a, b in zip(te, te_1)):
            raise InputError(
                f'{seconds[echo]}: EchoTime {te} differs from its part-{first_key} ({te_1}); '
                'fix the sidecars so both parts of an echo share one EchoTime')
        if echo is not None and len(te) != 1:
            raise InputError(f'{seconds[echo]}: EchoTime is a list but the file has echo-'
                             f'{echo}; give one EchoTime (s) per echo file')
        tes.extend(te)
    if len(set(tes)) != len(tes) or any(b <= a for a, b in zip(tes, tes[1:])):
        what = 'contain duplicates' if len(set(tes)) != len(tes) else 'decrease'
        raise InputError(
            f'{seconds[echoes[0]]}: echo times {tes} s {what}; they must be strictly '
            'increasing with the echo index: fix EchoTime or the echo- entities')

    meta0 = _sidecar(seconds[echoes[0]], layout)
    b0_rule = rules['MagneticFieldStrength']
    if 'MagneticFieldStrength' in meta0:
        b0 = _in_range(meta0['MagneticFieldStrength'], 'MagneticFieldStrength',
                       seconds[echoes[0]], b0_rule)
    elif field_strength is not None:
        b0 = float(field_strength)
    else:
        raise InputError(f'{seconds[echoes[0]]}: missing MagneticFieldStrength; '
                         f'{b0_rule["fix"]}')
    units = meta0.get('Units') if second_key == spec['parts']['phase'] else 'rad'
    if units is not None and units not in rules['Units']['allowed']:
        raise InputError(f'{seconds[echoes[0]]}: Units {units!r} is not valid for phase; '
                         f'{rules["Units"]["fix"]}')
    return Acquisition(
        entities={'subject': entities['subject'], **entities},
        mag_files=[str(firsts[e]) for e in echoes],
        phase_files=[str(seconds[e]) for e in echoes],
        echo_times_s=tes, b0_tesla=float(b0), phase_units=units,
        complex_parts=f'{first_key}/{second_key}',
        layout='4d' if echoes == [None] and len(tes) > 1 else 'echo')


def _echo_times(meta, path, rule) -> list[float]:
    """EchoTime of a sidecar as a list (s): one value, or one per volume of a 4D file."""
    if 'EchoTime' not in meta:
        raise InputError(f'{path}: missing EchoTime; {rule["fix"]}')
    value = meta['EchoTime']
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f'{path}: EchoTime is an empty list; {rule["fix"]}')
    return [_in_range(v, 'EchoTime', path, rule) for v in values]


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
