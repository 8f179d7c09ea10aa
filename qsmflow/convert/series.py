# SPDX-License-Identifier: Apache-2.0
"""Finding the multi-echo GRE acquisitions among dcm2niix's outputs, from their sidecars.

Every image dcm2niix wrote is described by its JSON sidecar (the DICOM header facts:
``ImageType``, ``EchoNumber``, ``EchoTime``, ``SeriesNumber``, ``ProtocolName``, …). The
part (magnitude, phase, real, imaginary) and the echo are taken from these facts, never
from dcm2niix's file names alone, which are wrong for some exports. Images of one
acquisition are grouped by study, protocol and grid (Siemens writes magnitude and phase
as two series); repeats of a protocol become runs. A group is multi-echo GRE input when
it is a gradient-echo acquisition with at least two echoes and a phase (or real and
imaginary) image for every echo of its magnitude; anything else is skipped with a reason
(:class:`Skipped`). A two-echo GRE field map whose single phase image is the phase
difference of its echoes (``EchoTime1``/``EchoTime2`` in its sidecar, e.g. Siemens
``gre_field_mapping``) is never multi-echo GRE input: :func:`find_fieldmaps` sets it aside
as a :class:`FieldMap`, written in the BIDS ``fmap`` form.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmflow.convert.stacked import split_mag_phase

#: dcm2niix file-name suffixes for the parts, used when ImageType does not tell.
_SUFFIX_PARTS = (('_imaginary', 'imag'), ('_real', 'real'), ('_ph', 'phase'))

#: Minimum number of echoes of a multi-echo GRE acquisition.
MIN_ECHOES = 2


@dataclass
class Image:
    """One 3D image written by dcm2niix and the facts of its sidecar."""

    nifti: Path
    meta: dict
    part: str
    echo: int
    echo_time_s: float
    shape: tuple
    affine: np.ndarray

    @property
    def series(self) -> int:
        return int(self.meta.get('SeriesNumber', 0) or 0)

    @property
    def protocol(self) -> str:
        return str(self.meta.get('ProtocolName') or self.meta.get('SeriesDescription') or '')


@dataclass
class Acquisition:
    """A multi-echo GRE acquisition: ``images[(part, echo)]``, parts mag/phase or real/imag."""

    protocol: str
    images: dict
    parts: tuple
    run: int | None = None
    acq_label: str | None = None

    @property
    def echoes(self) -> list[int]:
        return sorted({e for _, e in self.images})

    @property
    def echo_times_s(self) -> list[float]:
        return [self.images[(self.parts[0], e)].echo_time_s for e in self.echoes]

    @property
    def series(self) -> list[int]:
        return sorted({img.series for img in self.images.values()})

    @property
    def manufacturer(self) -> str:
        return str(next(iter(self.images.values())).meta.get('Manufacturer', ''))


@dataclass
class Skipped:
    """A group of images that is not multi-echo GRE input, and why."""

    protocol: str
    series: list
    n_images: int
    reason: str
    facts: dict = field(default_factory=dict)


@dataclass
class FieldMap:
    """A two-echo GRE field map: a phase-difference image and the magnitude of each echo."""

    protocol: str
    phasediff: Image
    magnitudes: dict  # {1: Image at EchoTime1, 2: Image at EchoTime2 (optional)}
    echo_times_s: tuple  # (EchoTime1, EchoTime2)
    run: int | None = None
    acq_label: str | None = None

    @property
    def series(self) -> list[int]:
        return sorted({self.phasediff.series, *(m.series for m in self.magnitudes.values())})

    @property
    def manufacturer(self) -> str:
        return str(self.phasediff.meta.get('Manufacturer', ''))


def _phasediff_times(img: Image):
    """(EchoTime1, EchoTime2) in s of a phase-difference image, or None."""
    te1, te2 = img.meta.get('EchoTime1'), img.meta.get('EchoTime2')
    if img.part == 'phase' and all(isinstance(t, (int, float)) and t > 0 for t in (te1, te2)) \
            and te2 > te1:
        return float(te1), float(te2)
    return None


def find_fieldmaps(images: list[Image]) -> tuple[list[FieldMap], list[Image], list[Skipped]]:
    """Set the two-echo GRE field maps apart; return them, the other images and the field
    maps that lack the first echo's magnitude (BIDS requires ``magnitude1``).

    A group (one study, protocol and grid) holding a phase image with ``EchoTime1`` and
    ``EchoTime2`` is a field map: its phase-difference images pair, in series order, with
    the magnitude images at ``EchoTime1`` (``magnitude1``) and ``EchoTime2``
    (``magnitude2``); repeats become runs. Its magnitudes are taken out of ``images``.
    """
    groups: dict = {}
    for img in images:
        groups.setdefault(_group_key(img), []).append(img)
    fieldmaps, rest, skipped = [], [], []
    for members in groups.values():
        diffs = [m for m in members if _phasediff_times(m)]
        if not diffs:
            rest += members
            continue
        mags = [m for m in members if m.part == 'mag']
        runs = []
        for n, diff in enumerate(diffs, start=1):
            te1, te2 = _phasediff_times(diff)
            found = {}
            for echo, te in ((1, te1), (2, te2)):
                match = [m for m in mags if abs(m.echo_time_s - te) < 1e-6]
                if len(match) >= n:
                    found[echo] = match[n - 1]
            runs.append(FieldMap(diff.protocol, diff, found, (te1, te2),
                                 run=n if len(diffs) > 1 else None))
        used = {id(m) for fm in runs for m in fm.magnitudes.values()} | {id(d) for d in diffs}
        for fm in [fm for fm in runs if 1 not in fm.magnitudes]:
            runs.remove(fm)
            skipped.append(Skipped(fm.protocol, fm.series, 1 + len(fm.magnitudes),
                                   'phase-difference field map without a magnitude image at '
                                   f'EchoTime1 ({1e3 * fm.echo_times_s[0]:g} ms): export the '
                                   'magnitude series of the field map too'))
        fieldmaps += runs
        rest += [m for m in members if id(m) not in used]
    protocols = sorted({f.protocol for f in fieldmaps})
    if len(protocols) > 1:
        for fm in fieldmaps:
            fm.acq_label = re.sub(r'[^0-9a-zA-Z]', '', fm.protocol) or None
    fieldmaps.sort(key=lambda f: (f.protocol, f.run or 0))
    return fieldmaps, sorted(rest, key=lambda im: (im.series, im.nifti.name)), skipped


def image_part(meta: dict, name: str) -> str:
    """The part of an image: ``'mag'``, ``'phase'``, ``'real'`` or ``'imag'``.

    From the DICOM ``ImageType`` values (``P``/``PHASE``, ``REAL``, ``IMAGINARY``; GE's
    private image type reaches dcm2niix's ``ImageType`` the same way), else dcm2niix's
    file-name suffix.

    Examples
    --------
    >>> image_part({'ImageType': ['ORIGINAL', 'PRIMARY', 'P', 'ND']}, 'x_e2')
    'phase'
    >>> image_part({'ImageType': ['ORIGINAL', 'PRIMARY', 'OTHER', 'IMAGINARY']}, 'x')
    'imag'
    >>> image_part({}, '10_qsm_e1_ph'), image_part({'ImageType': ['M']}, 'x')
    ('phase', 'mag')
    """
    kinds = {str(v).upper() for v in meta.get('ImageType', [])}
    if kinds & {'P', 'PHASE', 'PHASE MAP'}:
        return 'phase'
    if 'IMAGINARY' in kinds:
        return 'imag'
    if 'REAL' in kinds:
        return 'real'
    stem = name.split('.')[0]
    for suffix, part in _SUFFIX_PARTS:
        if re.search(rf'{suffix}(_|$)', stem):
            return part
    return 'mag'


def read_images(out_dir) -> tuple[list[Image], list[Skipped]]:
    """Every image dcm2niix wrote into ``out_dir``; coil images are set aside, a 4D image of
    magnitude and phase is split (:func:`qsmflow.convert.stacked.split_mag_phase`), other
    4D images are set aside; echoes are numbered by echo time when ``EchoNumber`` does not
    tell them apart (:func:`_number_echoes_by_time`).

    Returns
    -------
    images : list of Image
        The 3D images, ordered by series number and file name.
    skipped : list of Skipped
        Images that cannot be one echo of one part (4D series, single coils).
    """
    images, skipped = [], []
    for sidecar in sorted(Path(out_dir).glob('*.json')):
        nifti = sidecar.with_name(sidecar.name[:-5] + '.nii.gz')
        if not nifti.is_file():
            continue
        meta = json.loads(sidecar.read_text())
        img = nb.load(nifti)
        protocol = str(meta.get('ProtocolName') or meta.get('SeriesDescription') or '')
        series = [int(meta.get('SeriesNumber', 0) or 0)]
        if re.search(r'_c[0-9A-Za-z]+(_|$)', sidecar.stem) \
                or meta.get('CoilString', '').startswith('C:'):
            skipped.append(Skipped(protocol, series, 1, 'uncombined coil image (one file per '
                                   'receive coil): coil combination is not supported; '
                                   'export the coil-combined images'))
            continue
        te = meta.get('EchoTime')
        if not isinstance(te, (int, float)) or te <= 0:
            skipped.append(Skipped(protocol, series, 1, 'no EchoTime in the DICOM header'))
            continue
        parts = [(nifti, meta, image_part(meta, sidecar.name))]
        if len(img.shape) > 3 and int(np.prod(img.shape[3:])) > 1:
            parts, reason = split_mag_phase(nifti, meta)
            if reason:
                skipped.append(Skipped(protocol, series, 1, reason))
                continue
        for path, facts, part in parts:
            images.append(Image(path, facts, part, int(meta.get('EchoNumber', 1) or 1),
                                float(te), tuple(img.shape[:3]), img.affine))
    images.sort(key=lambda im: (im.series, im.nifti.name))
    return _number_echoes_by_time(images), skipped


def _number_echoes_by_time(images: list[Image]) -> list[Image]:
    """Echo numbers from the echo times where ``EchoNumber`` does not tell the echoes apart.

    Some exports leave ``EchoNumber`` out or give every echo the same one; dcm2niix then
    still writes one file per echo time (``…a``, ``…b`` names). Within a group (study,
    protocol, grid), when two images of one part share an echo number but not an echo
    time, every image of the group is numbered by the rank of its echo time.
    """
    groups: dict = {}
    for img in images:
        groups.setdefault(_group_key(img), []).append(img)
    for members in groups.values():
        seen: dict = {}
        clash = False
        for img in members:
            te = seen.setdefault((img.part, img.echo), img.echo_time_s)
            clash |= abs(te - img.echo_time_s) > 1e-6
        if clash:
            times = sorted({round(img.echo_time_s, 7) for img in members})
            for img in members:
                img.echo = times.index(round(img.echo_time_s, 7)) + 1
    return images


def _group_key(img: Image):
    return (str(img.meta.get('StudyInstanceUID', '')), img.protocol, img.shape,
            tuple(np.round(img.affine, 2).ravel()))


def _not_megre(images: list[Image]) -> str | None:
    """Why a group of images (one protocol and grid) is not multi-echo GRE input, or None."""
    meta = images[0].meta
    seq = str(meta.get('ScanningSequence', 'GR')).upper()
    if 'GR' not in seq or 'EP' in seq:
        return f'not a gradient-echo acquisition (ScanningSequence {seq})'
    if str(meta.get('ImageType', [''])[0]).upper() == 'DERIVED':
        return 'derived images (ImageType DERIVED)'
    parts = {img.part for img in images}
    echoes = {img.part: sorted({i.echo for i in images if i.part == img.part})
              for img in images}
    if 'phase' in parts and any('EchoTime1' in i.meta for i in images):
        return ('phase-difference field map (one phase image for EchoTime1/EchoTime2): not '
                'multi-echo GRE phase per echo')
    if 'phase' in parts and len(echoes['phase']) < MIN_ECHOES \
            and len(echoes.get('mag', [])) >= MIN_ECHOES:
        return (f'{len(echoes["mag"])} magnitude echoes but phase for echo(es) '
                f'{echoes["phase"]} only (a field map or phase difference): not multi-echo '
                'GRE phase per echo')
    if not parts & {'phase', 'imag'}:
        return 'magnitude only (no phase, real or imaginary images)'
    n_echo = max(len(v) for v in echoes.values())
    if n_echo < MIN_ECHOES:
        return 'single echo (qsmflow convert looks for multi-echo GRE)'
    return None


def _pairing(images: list[Image]):
    """``(parts, missing)``: the part pair of a group and what it lacks."""
    parts = {img.part for img in images}
    pair = ('real', 'imag') if {'real', 'imag'} <= parts and 'phase' not in parts \
        else ('mag', 'phase')
    echoes = [sorted({i.echo for i in images if i.part == p}) for p in pair]
    missing = None if echoes[0] == echoes[1] and echoes[0] else \
        f'{pair[0]} echoes {echoes[0]} but {pair[1]} echoes {echoes[1]}'
    return pair, missing


def find_acquisitions(images: list[Image]) -> tuple[list[Acquisition], list[Skipped]]:
    """Group images into multi-echo GRE acquisitions; report every other group as skipped.

    Images of one study, protocol and grid form a group. When a (part, echo) occurs more
    than once (the protocol was run again), the k-th occurrences (in series order) form
    run k. Runs are numbered only when a protocol has more than one; ``acq_label`` is set
    (from the protocol name) only when a session has more than one multi-echo protocol.
    """
    groups: dict = {}
    for img in images:
        groups.setdefault(_group_key(img), []).append(img)
    found, skipped = [], []
    for members in groups.values():
        protocol = members[0].protocol
        series = sorted({m.series for m in members})
        reason = _not_megre(members)
        if reason is None:
            pair, reason = _pairing(members)
        if reason is not None:
            skipped.append(Skipped(protocol, series, len(members), reason))
            continue
        runs: list[dict] = []
        for img in members:
            if img.part not in pair:
                continue
            slot = next((r for r in runs if (img.part, img.echo) not in r), None)
            if slot is None:
                slot = {}
                runs.append(slot)
            slot[(img.part, img.echo)] = img
        for n, run in enumerate(runs, start=1):
            acq = Acquisition(protocol, run, pair, run=n if len(runs) > 1 else None)
            bad = _check_echo_times(acq)
            if bad:
                skipped.append(Skipped(protocol, acq.series, len(run), bad))
            else:
                found.append(acq)
    protocols = sorted({a.protocol for a in found})
    if len(protocols) > 1:
        for acq in found:
            acq.acq_label = re.sub(r'[^0-9a-zA-Z]', '', acq.protocol) or None
    found.sort(key=lambda a: (a.protocol, a.run or 0))
    return found, skipped


def _check_echo_times(acq: Acquisition) -> str | None:
    """Why the echo times of ``acq`` are unusable (parts disagree, not increasing), or None."""
    for e in acq.echoes:
        tes = {acq.images[(p, e)].echo_time_s for p in acq.parts}
        if max(tes) - min(tes) > 1e-6:
            return f'echo {e}: the parts have different echo times {sorted(tes)} s'
    tes = acq.echo_times_s
    if any(b <= a for a, b in zip(tes, tes[1:])):
        return f'echo times {tes} s do not increase with the echo number'
    if len(acq.echoes) < MIN_ECHOES:
        return 'single echo (qsmflow convert looks for multi-echo GRE)'
    return None
