# SPDX-License-Identifier: Apache-2.0
"""Guard rails of a regional table: what the brain mask empties, label volumes against the
atlas's, and whether the iron-rich nuclei read paramagnetic.

Pure Python/numpy on the rows of :func:`qsmflow.qsm.regions.region_table` (no files). Each
check returns a record for the table's sidecar with a ``Warning`` (one sentence, or None).
"""
from __future__ import annotations

import numpy as np

from qsmflow.qsm.region_names import IRON_RICH, is_deep_nucleus, nucleus_kind
from qsmflow.qsm.regions import REFERENCE, WHOLE_BRAIN

#: A region with less than this share of its labelled voxels inside the brain mask is
#: flagged by :func:`coverage_qc` (far fewer voxels than the labels predict).
MIN_MASK_COVERAGE = 0.5

#: Plausible median ratio of registered label volume to atlas volume, each label's ratio
#: divided by the ratio of the brain volumes (:func:`volume_qc`): near 1 whatever the head's
#: size; a brain registered to a template head without its brain mask gives about 0.4
#: (measured on the real-anatomy phantom).
LABEL_VOLUME_RATIO_RANGE = (0.6, 1.6)

#: :func:`volume_qc` flags a region whose volume ratio is under this share of the median.
MIN_RELATIVE_VOLUME_RATIO = 0.4

#: Least median χ (ppm, referenced to the whole brain) of the iron-rich nuclei
#: (:data:`qsmflow.qsm.region_names.IRON_RICH`) that :func:`iron_qc` accepts: in vivo they
#: read 0.05-0.2 ppm at 3 T (lowest in children), a registration that missed them about 0.
MIN_IRON_RICH_CHI_PPM = 0.02


def _checked(rows, only_deep=False):
    """Sided rows (bilateral rows only for regions without sides), no whole-brain or
    reference row, each with its display name."""
    sided = {r['region'] for r in rows if r['hemisphere'] != 'bilateral'}
    for r in rows:
        if r['region'] in (WHOLE_BRAIN, REFERENCE) or (
                r['hemisphere'] == 'bilateral' and r['region'] in sided):
            continue
        if only_deep and not is_deep_nucleus(r['region']):
            continue
        yield (r['region'] if r['hemisphere'] == 'bilateral'
               else f'{r["region"]} {r["hemisphere"]}'), r


def coverage_qc(rows: list[dict], *, only_deep: bool = False,
                min_coverage: float = MIN_MASK_COVERAGE) -> dict:
    """Guard rails of a regional table: regions the brain mask empties, and deep nuclei.

    The labels on the χ grid are the atlas's prediction for this participant (the
    registration's volume change is in them already); ``mask_coverage`` is the share of
    them inside the brain mask. A region with no voxel in the mask, or with less than
    ``min_coverage`` of its labelled voxels there, is flagged. A table whose deep
    grey-matter nuclei (:func:`is_deep_nucleus`) all lie outside the brain mask, although
    their labels reach the field of view, fails. Left and right rows are checked (bilateral
    rows only for regions without sides); whole-brain and reference rows never.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`region_table` (``region``, ``hemisphere``, ``n_labelled``,
        ``mask_coverage``).
    only_deep : bool
        Check deep nuclei only (for segmentations that also label skull, scalp, air).
    min_coverage : float
        Smallest share (in [0, 1]) of a region's labelled voxels inside the brain mask.

    Returns
    -------
    dict
        ``MinMaskCoverage``; ``OutsideBrainMask``, ``OutsideFieldOfView`` (region names with
        no voxel in the mask, their labels lying elsewhere on the χ grid or off it),
        ``LowCoverage`` (name → share); ``DeepNuclei``, ``DeepNucleiInMask`` (counts of
        checked rows); ``Warning`` (one sentence, or None) and ``Failure`` (one sentence
        when no deep nucleus has a voxel in the mask while some is labelled, else None).

    Examples
    --------
    >>> rows = [{'region': 'putamen', 'hemisphere': 'left', 'n_labelled': 40,
    ...          'mask_coverage': 0.3}, {'region': 'putamen', 'hemisphere': 'right',
    ...          'n_labelled': 40, 'mask_coverage': 0.9}]
    >>> qc = coverage_qc(rows)
    >>> qc['LowCoverage'], qc['Failure'] is None, qc['Warning'] is not None
    ({'putamen left': 0.3}, True, True)
    >>> rows[0]['mask_coverage'] = rows[1]['mask_coverage'] = 0.0
    >>> coverage_qc(rows)['Failure'] is not None  # no deep nucleus left in the mask
    True
    """
    checked = list(_checked(rows, only_deep))
    outside, off_grid, low = [], [], {}
    for name, r in checked:
        cover = r['mask_coverage']
        if not r['n_labelled']:
            off_grid.append(name)
        elif not cover > 0:
            outside.append(name)
        elif cover < min_coverage:
            low[name] = round(float(cover), 3)
    deep = [r for _, r in checked if is_deep_nucleus(r['region'])]
    in_mask = [r for r in deep if r['n_labelled'] and r['mask_coverage'] > 0]
    parts = []
    if outside:
        parts.append('no voxel inside the brain mask (labelled outside it): '
                     + ', '.join(outside))
    if off_grid:
        parts.append('no voxel on the χ grid (labels outside the field of view, or too small '
                     'to survive the resampling): ' + ', '.join(off_grid))
    if low:
        parts.append(f'under {min_coverage:.0%} of the labelled voxels inside the brain '
                     'mask: ' + ', '.join(f'{k} ({v:.0%})' for k, v in low.items()))
    failure = None
    if deep and not in_mask and any(r['n_labelled'] for r in deep):
        failure = (f'no deep grey-matter nucleus of the table has a voxel inside the brain '
                   f'mask ({sum(r["n_labelled"] for r in deep)} labelled voxels of '
                   f'{len(deep)} nuclei lie outside it): check the brain mask and the '
                   'registration')
    return {'MinMaskCoverage': min_coverage, 'OutsideBrainMask': outside,
            'OutsideFieldOfView': off_grid, 'LowCoverage': low, 'DeepNuclei': len(deep),
            'DeepNucleiInMask': len(in_mask), 'Warning': '; '.join(parts) or None,
            'Failure': failure}


def volume_qc(rows: list[dict], atlas_mm3: dict, voxel_volume_mm3: float, *,
              brain_ratio: float = 1.0, ratio_range=LABEL_VOLUME_RATIO_RANGE,
              min_relative: float = MIN_RELATIVE_VOLUME_RATIO) -> dict:
    """Guard rail of registered atlas labels: their volume on the χ grid against the atlas's.

    A registration scales every label with the brain, so each label's volume ratio (χ grid
    over atlas), divided by the brains' volume ratio ``brain_ratio`` (brain mask over the
    template's brain mask), lies near 1. A median outside ``ratio_range`` means the
    registration failed (a brain registered to a template head without its brain mask
    shrinks every label to about 0.4); a region under ``min_relative`` × that median has
    far fewer voxels than the atlas predicts (a region without any is left to
    :func:`coverage_qc`). Sided rows are checked (bilateral rows only for regions without
    sides).

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`region_table` (``region``, ``hemisphere``, ``n_labelled``).
    atlas_mm3 : dict
        ``(region, hemisphere)`` → volume (mm³) of the row's labels in the atlas; rows
        without an entry (or with 0) are not checked.
    voxel_volume_mm3 : float
        Volume of a voxel of the χ grid (mm³).
    brain_ratio : float
        Brain mask volume over the template's brain mask volume (dimensionless; 1 when the
        template has no mask).
    ratio_range : (float, float)
        Plausible range of the median normalised ratio (dimensionless).
    min_relative : float
        Smallest normalised ratio of a region relative to the median (dimensionless).

    Returns
    -------
    dict
        ``LabelVolumeRatioMedian`` (normalised; NaN without checked rows),
        ``BrainVolumeRatio``, ``LabelVolumeRatioRange``, ``Shrunk`` (name → normalised
        ratio) and ``Warning`` (one sentence, or None).

    Examples
    --------
    >>> rows = [{'region': r, 'hemisphere': 'left', 'n_labelled': n}
    ...         for r, n in (('putamen', 50), ('caudate', 45), ('nigra', 4))]
    >>> atlas = {(r['region'], 'left'): 400.0 for r in rows}
    >>> qc = volume_qc(rows, atlas, 8.0)
    >>> qc['LabelVolumeRatioMedian'], qc['Shrunk'], qc['Warning'] is not None
    (0.9, {'nigra left': 0.08}, True)
    >>> volume_qc(rows[:2], atlas, 8.0, brain_ratio=2.0)['Warning'][:40]
    'the atlas labels came out at 0.47 × thei'
    """
    ratios = {}
    for name, r in _checked(rows):
        ref = atlas_mm3.get((r['region'], r['hemisphere']), 0.0)
        if ref > 0:
            ratios[name] = r['n_labelled'] * float(voxel_volume_mm3) / ref / brain_ratio
    lo, hi = (float(x) for x in ratio_range)
    median = float(np.median(list(ratios.values()))) if ratios else float('nan')
    # a region without a voxel is coverage_qc's (off the field of view, or lost in the
    # resampling); here the ones that kept some
    shrunk = {k: round(v, 2) for k, v in ratios.items() if 0 < v < min_relative * median}
    parts = []
    if ratios and not lo <= median <= hi:
        parts.append(f'the atlas labels came out at {median:.2f} × their volume in the atlas '
                     f'(median of {len(ratios)} regions, scaled by the brain volumes; '
                     f'expected {lo:g}-{hi:g}): the registration to the template probably '
                     'failed (a template with skull and scalp needs its brain mask); check '
                     'the registration in the report')
    if shrunk:
        parts.append(f'far fewer labelled voxels than the atlas predicts (under '
                     f'{min_relative:g} × the median ratio {median:.2f}): '
                     + ', '.join(f'{k} ({v:g} ×)' for k, v in shrunk.items()))
    return {'LabelVolumeRatioMedian': round(median, 3), 'BrainVolumeRatio':
            round(float(brain_ratio), 3), 'LabelVolumeRatioRange': [lo, hi],
            'Shrunk': shrunk, 'Warning': '; '.join(parts) or None}


def iron_qc(rows: list[dict], *, min_chi_ppm: float = MIN_IRON_RICH_CHI_PPM) -> dict:
    """Guard rail of a table on χ: its iron-rich nuclei must read paramagnetic.

    The pallidum, substantia nigra, red, subthalamic and dentate nuclei hold the most iron
    of the brain and read 0.05-0.2 ppm above the whole-brain mean at 3 T. When the median
    of their rows' means is under ``min_chi_ppm``, the labels missed them (a failed
    registration: they read about 0 ppm on the real-anatomy phantom) or χ has the wrong
    sign (inverted phase polarity). Needs a table referenced to the whole brain; sided rows
    are checked (bilateral rows only for regions without sides).

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`qsmflow.qsm.regions.region_table` (``region``, ``hemisphere``,
        ``mean`` in ppm).
    min_chi_ppm : float
        Least plausible median (ppm).

    Returns
    -------
    dict
        ``IronRichNuclei`` (count), ``IronRichMedianChiPpm`` (NaN without them),
        ``MinIronRichChiPpm`` and ``Warning`` (one sentence, or None).

    Examples
    --------
    >>> rows = [{'region': r, 'hemisphere': 'left', 'mean': m} for r, m in (
    ...     ('globus_pallidus', 0.15), ('red_nucleus', 0.09), ('putamen', 0.05))]
    >>> iron_qc(rows)['Warning'] is None
    True
    >>> for r in rows[:2]:
    ...     r['mean'] = -0.004
    >>> iron_qc(rows)['Warning'][:63]
    'the iron-rich nuclei read -0.004 ppm on χ (median of 2; in vivo'
    """
    values = [float(r['mean']) for _, r in _checked(rows)
              if nucleus_kind(r['region']) in IRON_RICH and np.isfinite(r['mean'])]
    median = float(np.median(values)) if values else float('nan')
    warning = None
    if values and not median >= min_chi_ppm:
        warning = (f'the iron-rich nuclei read {median:.3f} ppm on χ (median of {len(values)}; '
                   f'in vivo 0.05-0.2 ppm, here under {min_chi_ppm:g}): the labels probably '
                   'missed them (check the registration in the report) or the phase '
                   'polarity is inverted')
    return {'IronRichNuclei': len(values), 'IronRichMedianChiPpm': round(median, 4),
            'MinIronRichChiPpm': min_chi_ppm, 'Warning': warning}
