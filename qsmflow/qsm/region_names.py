# SPDX-License-Identifier: Apache-2.0
"""What a label's name says: its side, and which deep grey-matter nucleus it is.

Atlases and segmentations name their labels every way (``'L Globus Pallidus externa'``,
``'Right_Dentate'``, ``'putamen_left'``, ``'GPe_L'``, ``'SNc'``). The regional tables
(:mod:`qsmflow.qsm.regions`: rows per side, the deep-nucleus guard rails) and the χ prior
of the atlas nuclei (:mod:`qsmflow.atlases.chi_prior`) read them here.
"""
from __future__ import annotations

import re

#: Deep grey-matter nuclei a label can name (:func:`nucleus_kind`): ``(kind, pattern
#: searched in the normalised base name, abbreviations)``. An abbreviation must be the whole
#: base name or one of its ``_``-separated words (``GPe``, ``SNc``, ``STN_left``, ``Pu``,
#: CIT168's ``Ca``/``STH``/``NAC``); the first kind that matches wins (``subthalamic``
#: before ``thalamus``). Not nuclei here: the hippocampal dentate gyrus, the hypothalamus.
DEEP_NUCLEI = (
    ('pallidum', r'pallid', ('gp', 'gpe', 'gpi')),
    ('nigra', r'nigra', ('sn', 'snc', 'snr', 'snpc', 'snpr')),
    ('red_nucleus', r'red_nucleus|ruber', ('rn',)),
    ('subthalamic', r'subthalamic', ('stn', 'sth')),
    ('dentate', r'dentate(?!_gyrus)', ('dn',)),
    ('caudate', r'caudate', ('ca', 'cd', 'cau', 'caud')),
    ('putamen', r'putamen', ('pu', 'put')),
    ('striatum', r'striatum', ()),
    ('accumbens', r'accumbens', ('nac', 'nacc')),
    ('thalamus', r'(?<!hypo)thalam', ('th', 'tha', 'thal')),
)

_SIDE_PATTERNS = (
    (re.compile(r'^(left|lh|l)[-_ ](.+)$', re.I), 1, 0),
    (re.compile(r'^(right|rh|r)[-_ ](.+)$', re.I), 1, 0),
    (re.compile(r'^(.+)[-_ ](left|lh|l)$', re.I), 0, 1),
    (re.compile(r'^(.+)[-_ ](right|rh|r)$', re.I), 0, 1),
)


def split_hemisphere(name: str) -> tuple[str, str]:
    """Split a label name into a base name and a hemisphere.

    Parameters
    ----------
    name : str
        Label name such as ``'left-caudate'``, ``'Right_Dentate'`` or ``'putamen_left'``.

    Returns
    -------
    base : str
        Lower-case base name with ``-`` and spaces turned into ``_``.
    hemisphere : {'left', 'right', 'bilateral'}
        ``'bilateral'`` when the name carries no side.

    Examples
    --------
    >>> split_hemisphere('left-globus-pallidus-externa')
    ('globus_pallidus_externa', 'left')
    >>> split_hemisphere('Right_Dentate'), split_hemisphere('fornix')
    (('dentate', 'right'), ('fornix', 'bilateral'))
    """
    for pattern, ibase, iside in _SIDE_PATTERNS:
        match = pattern.match(name.strip())
        if match:
            groups = match.groups()
            side = groups[iside].lower()
            hemi = 'left' if side in ('left', 'lh', 'l') else 'right'
            return _norm(groups[ibase]), hemi
    return _norm(name), 'bilateral'


def _norm(name: str) -> str:
    return re.sub(r'[-\s]+', '_', name.strip()).lower()


def nucleus_kind(name: str) -> str | None:
    """Which deep grey-matter nucleus a label or region name names (:data:`DEEP_NUCLEI`).

    Parameters
    ----------
    name : str
        A label name with or without its side (``'L Globus Pallidus externa'``,
        ``'STN_right'``, ``'putamen'``).

    Returns
    -------
    str or None
        ``'pallidum'``, ``'nigra'``, ``'red_nucleus'``, ``'subthalamic'``, ``'dentate'``,
        ``'caudate'``, ``'putamen'``, ``'striatum'``, ``'accumbens'``, ``'thalamus'``; None
        for anything else.

    Examples
    --------
    >>> [nucleus_kind(n) for n in ('L Globus Pallidus externa', 'GPi_left', 'SNc',
    ...                            'R Subthalamic Nucleus', 'STN-right', 'Right_Dentate')]
    ['pallidum', 'pallidum', 'nigra', 'subthalamic', 'subthalamic', 'dentate']
    >>> [nucleus_kind(n) for n in ('Left-Thalamus', 'Hypothalamus', 'dentate gyrus', 'CA1',
    ...                            'white_matter')]
    ['thalamus', None, None, None, None]
    """
    base = split_hemisphere(str(name))[0]
    words = set(base.split('_'))
    for kind, pattern, abbreviations in DEEP_NUCLEI:
        if re.search(pattern, base) or words & set(abbreviations):
            return kind
    return None


#: Kinds of :func:`nucleus_kind` that hold the most iron of the brain and read 0.05-0.2 ppm
#: above the whole-brain mean at 3 T (those at 0.1 ppm or more in
#: :data:`qsmflow.atlases.chi_prior.TYPICAL_CHI_PPM`); checked by
#: :func:`qsmflow.qsm.region_qc.iron_qc`.
IRON_RICH = frozenset({'pallidum', 'nigra', 'red_nucleus', 'subthalamic', 'dentate'})


def is_deep_nucleus(region: str) -> bool:
    """Whether a region's name is a deep grey-matter nucleus (:func:`nucleus_kind`).

    Examples
    --------
    >>> [is_deep_nucleus(r) for r in ('globus_pallidus', 'dentate', 'white_matter', 'skull')]
    [True, True, False, False]
    """
    return nucleus_kind(region) is not None
