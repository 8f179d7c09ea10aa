# SPDX-License-Identifier: Apache-2.0
"""Which native maps ``qsmflow export-dicom`` exports, how they are displayed, and finding
them in a qsmflow derivatives folder.

File names and units come from ``bids_specs/outputs.json`` (the output kinds of
:data:`workflows.outputs.ALL_OUTPUTS`); this module adds what a DICOM viewer needs: a
short name for ``--maps``, the series description, whether the map has negative values
(int16 or uint16 storage) and the display window. Windows are fixed for maps in physical
units, so that every exported series of a study looks alike:

==========  ==============  ======================  ==========================
``--maps``  output kind     window (centre / width)  shown range
==========  ==============  ======================  ==========================
chi         chimap          0 / 0.4 ppm             −0.2 … +0.2 ppm
chi-para    chimap_para     0.1 / 0.2 ppm           0 … 0.2 ppm
chi-dia     chimap_dia      −0.1 / 0.2 ppm          −0.2 … 0 ppm
r2star      r2starmap       50 / 100 1/s            0 … 100 1/s
t2star      t2starmap       0.05 / 0.1 s            0 … 100 ms
swi         swi             data: 0.5th–99.5th percentile of the non-zero voxels
minip       minip           data: 0.5th–99.5th percentile of the non-zero voxels
==========  ==============  ======================  ==========================
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsmflow import bids_specs


@dataclass(frozen=True)
class MapKind:
    """One exportable map."""

    name: str          # --maps name
    kind: str          # key of bids_specs/outputs.json
    description: str   # DICOM SeriesDescription (units added)
    signed: bool       # has negative values: int16 storage
    window: tuple | None  # (centre, width) in the map's units; None: from the data

    @property
    def units(self) -> str:
        return bids_specs.load('outputs')['outputs'][self.kind]['meta'].get('Units',
                                                                            'arbitrary')


MAP_KINDS = (
    MapKind('chi', 'chimap', 'QSM chi', True, (0.0, 0.4)),
    MapKind('chi-para', 'chimap_para', 'QSM chi paramagnetic', True, (0.1, 0.2)),
    MapKind('chi-dia', 'chimap_dia', 'QSM chi diamagnetic', True, (-0.1, 0.2)),
    MapKind('r2star', 'r2starmap', 'R2star', False, (50.0, 100.0)),
    MapKind('t2star', 't2starmap', 'T2star', False, (0.05, 0.1)),
    MapKind('swi', 'swi', 'SWI', False, None),
    MapKind('minip', 'minip', 'SWI minIP', False, None),
)
MAP_NAMES = tuple(m.name for m in MAP_KINDS)

#: Entities a native map's file name may carry besides desc (no space-: template maps
#: are not exported).
_NATIVE_ENTITIES = ('sub', 'ses', 'acq', 'rec', 'run')


@dataclass(frozen=True)
class FoundMap:
    """A map file of one acquisition."""

    map: MapKind
    path: Path
    entities: dict  # BIDS entities of the file name ('sub', 'ses', 'acq', 'rec', 'run')

    @property
    def stem(self) -> str:
        return self.path.name.split('.')[0]


def window(kind: MapKind, data: np.ndarray) -> tuple[float, float]:
    """(centre, width) of the display window of ``data`` (see the module docstring).

    Examples
    --------
    >>> window(MAP_KINDS[0], np.zeros(3))
    (0.0, 0.4)
    >>> window(MAP_KINDS[5], np.array([0.0, 1.0, 2.0, 3.0]))
    (2.0, 1.98)
    """
    if kind.window is not None:
        return kind.window
    values = data[np.isfinite(data) & (data != 0)]
    if values.size == 0:
        return 0.5, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    width = max(hi - lo, 1e-6)
    return round((lo + hi) / 2, 6), round(width, 6)


def parse_name(name: str) -> tuple[dict, str] | None:
    """(entities, suffix) of a BIDS file name, or None when it is not one.

    Examples
    --------
    >>> parse_name('sub-01_ses-a_run-2_desc-paramagnetic_Chimap.nii.gz')
    ({'sub': '01', 'ses': 'a', 'run': '2', 'desc': 'paramagnetic'}, 'Chimap')
    """
    stem = name.split('.')[0]
    *pairs, suffix = stem.split('_')
    entities = {}
    for pair in pairs:
        key, sep, value = pair.partition('-')
        if not sep or not re.fullmatch(r'[0-9a-zA-Z]+', value):
            return None
        entities[key] = value
    return (entities, suffix) if pairs and pairs[0].startswith('sub-') else None


def _kind_of(name: str):
    parsed = parse_name(name)
    if parsed is None:
        return None, {}
    entities, suffix = parsed
    desc = entities.pop('desc', None)
    if set(entities) - set(_NATIVE_ENTITIES):
        return None, {}
    outputs = bids_specs.load('outputs')['outputs']
    for kind in MAP_KINDS:
        spec = outputs[kind.kind]
        if spec['suffix'] == suffix and spec.get('desc') == desc:
            return kind, entities
    return None, {}


def find_maps(out_dir, names=MAP_NAMES, participant: str | None = None,
              session: str | None = None) -> list[FoundMap]:
    """The native maps ``names`` below the qsmflow derivatives folder ``out_dir``.

    Ordered by acquisition (file-name entities) and then by the order of
    :data:`MAP_KINDS`. ``participant``/``session`` (labels without prefix) narrow the
    search.
    """
    wanted = [m for m in MAP_KINDS if m.name in names]
    found = []
    sub = f'sub-{participant}' if participant else 'sub-*'
    for path in sorted(Path(out_dir).glob(f'{sub}/**/anat/*.nii*')):
        kind, entities = _kind_of(path.name)
        if kind is None or kind not in wanted:
            continue
        if session is not None and entities.get('ses') != session:
            continue
        found.append(FoundMap(kind, path, entities))
    found.sort(key=lambda f: (sorted(f.entities.items()), wanted.index(f.map)))
    return found
