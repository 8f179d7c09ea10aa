# SPDX-License-Identifier: Apache-2.0
"""The QC table of one acquisition (``…_desc-qc_metrics.tsv`` + ``.json``).

Most numbers are gathered from what the steps already recorded in their sidecars
(brain-extraction QC, phase-quality trimming, the TV weight and the noise it was chosen
from, the reference QC); the rest is measured here on the published maps
(:mod:`qsmflow.reports.metrics`). The row is deterministic (no run times: those are in the
participant's log and report), so reruns give the same bytes.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from qsmflow.qsm.brain_extraction import (DEFAULT_MAX_SURFACE_SHARE, DEFAULT_QC_MAX_VOLUME_ML,
                                           DEFAULT_SURFACE_BAND_MM)

#: Column → (description, units). Atlas columns (``atlas_<name>_…``) are added per atlas.
COLUMNS = {
    'mask_volume_ml': ('Volume of the brain mask from brain extraction (or the given mask), '
                       'before phase-quality trimming', 'mL'),
    'head_volume_ml': ('Volume of the head (magnitude head mask joined with the brain mask)',
                       'mL'),
    'mask_near_surface_share': ('Share of the brain mask within '
                                f'{DEFAULT_SURFACE_BAND_MM:g} mm of the head surface '
                                '(scalp left in the mask raises it; > '
                                f'{DEFAULT_MAX_SURFACE_SHARE:g} is a warning)', '1'),
    'mask_looks_like_head': ('1 when the brain mask looks like a head (> '
                             f'{DEFAULT_MAX_SURFACE_SHARE:g} of it near the head surface, or '
                             f'larger than {DEFAULT_QC_MAX_VOLUME_ML:.0f} mL: the '
                             'brain-extraction QC warning), else 0', '1'),
    'chi_mask_volume_ml': ('Volume of the final mask chi is defined on (after phase-quality '
                           'trimming and background-removal erosion)', 'mL'),
    'quality_removed_share': ('Share of the brain mask removed for unreliable phase '
                              '(phase-quality map < threshold; n/a when not applied)', '1'),
    'magnitude_snr': ('Median first-echo magnitude in the brain mask over the background '
                      'noise sigma (Rayleigh fit of the background; n/a without air in the '
                      'field of view)', '1'),
    'field_noise_median_ppm': ('Median standard error of the total field inside the fit '
                               'mask, from the multi-echo fit residuals (phase quality)',
                               'ppm'),
    'field_noise_p95_ppm': ('95th percentile of the same standard error (the worst phase)',
                            'ppm'),
    'local_field_sigma_ppm': ('Noise sigma of the local field the TV weight was chosen from '
                              '(n/a for other inversions)', 'ppm'),
    'local_field_sd_ppm': ('Standard deviation of the local field in the chi mask', 'ppm'),
    'lambda_ppm_mm': ('Regularisation weight of the dipole inversion (chosen from the data '
                      'for TV unless given; n/a for unregularised methods)', 'ppm*mm'),
    'shell_weight': ('Weight of the TV shell prior chosen from the data (n/a otherwise)', '1'),
    'tv_reweight_strength': ('Strength of TV\'s reweighted second pass (0: one pass; > 0 where '
                             'the weight floor set lambda; n/a for other inversions)', '1'),
    'streaking_index': ('Power density of chi in the magic-angle cone (|D(k)| < 0.1) over '
                        'that outside; higher = more streaking; compare runs of the same '
                        'pipeline and resolution', '1'),
    'chi_p01_ppm': ('1st percentile of chi in the mask', 'ppm'),
    'chi_p05_ppm': ('5th percentile of chi in the mask', 'ppm'),
    'chi_p50_ppm': ('Median of chi in the mask', 'ppm'),
    'chi_p95_ppm': ('95th percentile of chi in the mask', 'ppm'),
    'chi_p99_ppm': ('99th percentile of chi in the mask', 'ppm'),
    'reference_value_ppm': ('Value subtracted from chi by the referencing step', 'ppm'),
    'registration_nmi': ('Normalised mutual information (H(a) + H(b)) / H(a, b), 1 to 2, of '
                         'the registered brain-masked magnitude and the template inside the '
                         'template brain mask, 32 equal-count bins (n/a without '
                         'registration)', '1'),
    'registration_mask_dice': ('Dice of the registered brain mask with the template brain '
                               'mask (n/a without registration)', '1'),
    'n_warnings': ('Number of QC warnings in the chi sidecar', '1'),
    'phase_polarity_score': ('Pre-flight phase-polarity score, -1 to 1 (tail asymmetry of a '
                             'quick chi map: positive when paramagnetic outliers such as '
                             'veins dominate, as they should; n/a when undetermined)', '1'),
    'phase_polarity_inverted': ('1 when the phase polarity looks inverted (score below the '
                                'pre-flight threshold: a warning; paramagnetic sources would '
                                'come out negative), 0 when not, n/a when undetermined', '1'),
}
#: Per-atlas columns (``atlas_<name>_<key>``).
ATLAS_COLUMNS = {
    'volume_ratio_median': ('Median over labels of the label volume on the native chi grid '
                            'over its volume in the atlas (template space): the registration '
                            'scaling, about 1 for a head of the template size', '1'),
    'volume_ratio_min': ('Smallest such ratio (a label the registration shrank or lost)', '1'),
    'volume_ratio_scaled': ('volume_ratio_median divided by the ratio of the brain mask\'s '
                            'volume to the atlas template\'s brain mask: about 1 whatever the '
                            'head\'s size; outside LabelVolumeRatioRange of the table\'s '
                            'sidecar (0.6-1.6) the registration probably failed (n/a without '
                            'the template\'s brain)', '1'),
    'volume_warning': ('1 when volume_ratio_scaled lies outside that range (a warning in the '
                       'log and the table\'s sidecar), 0 when not, n/a without it', '1'),
}


def acquisition_qc(*, magnitude, brain_mask, mask, noise, local_field, chimap,
                   in_registered=None, template=None, template_mask=None, atlas_names=(),
                   in_dsegs=(), atlas_images=(), atlas_brains=(), polarity=None) -> dict:
    """The QC row of one acquisition from its files (paths); see :data:`COLUMNS`."""
    from qsmflow.interfaces import base
    from qsmflow.qsm.kernels import b0_dir_from_affine
    from qsmflow.qsm.region_qc import LABEL_VOLUME_RATIO_RANGE
    from qsmflow.reports import metrics

    mag, img = base.load(magnitude)
    brain = base.load(brain_mask)[0].reshape(mag.shape[:3]) > 0
    final = base.load(mask)[0] > 0
    vox = base.voxel_size(img)
    ml = float(np.prod(vox)) / 1000.0
    steps = _steps(chimap)
    masking = _step(steps, 'masking').get('QC') or _step(_steps(brain_mask), 'masking').get(
        'QC') or {}
    row = {'mask_volume_ml': masking.get('VolumeML', float(brain.sum()) * ml),
           'head_volume_ml': masking.get('HeadVolumeML', math.nan),
           'mask_near_surface_share': masking.get('NearSurfaceShare', math.nan),
           'mask_looks_like_head': int(bool(masking.get('LooksLikeHead'))),
           'chi_mask_volume_ml': float(final.sum()) * ml}
    quality = _step(steps, 'phase-quality-masking')
    row['quality_removed_share'] = (quality['VoxelsRemoved'] / max(int(brain.sum()), 1)
                                    if 'VoxelsRemoved' in quality else math.nan)
    row['magnitude_snr'] = metrics.magnitude_snr(mag, brain)[0]
    sigma = base.load(noise)[0]
    fit = sigma > 0
    row['field_noise_median_ppm'] = float(np.median(sigma[fit])) if fit.any() else math.nan
    row['field_noise_p95_ppm'] = float(np.percentile(sigma[fit], 95)) if fit.any() else math.nan
    inversion = _step(steps, 'dipole-inversion')
    reg = inversion.get('Regularisation') or {}
    lam = reg.get('lam', (inversion.get('Parameters') or {}).get('lam'))
    row['local_field_sigma_ppm'] = reg.get('sigma_ppm', math.nan)
    field = base.load(local_field)[0]
    row['local_field_sd_ppm'] = float(field[final].std()) if final.any() else math.nan
    row['lambda_ppm_mm'] = lam if isinstance(lam, (int, float)) else math.nan
    row['shell_weight'] = reg.get('shell_weight', math.nan)
    row['tv_reweight_strength'] = (reg.get('reweighting') or {}).get('strength', math.nan)
    chi, cimg = base.load(chimap)
    row['streaking_index'] = metrics.streaking_index(
        chi, final, vox, b0_dir=b0_dir_from_affine(cimg.affine))
    row.update(metrics.chi_percentiles(chi, final))
    row['reference_value_ppm'] = _step(steps, 'reference').get('ReferenceValue', math.nan)
    row['registration_nmi'] = row['registration_mask_dice'] = math.nan
    if in_registered and template and template_mask:
        moved, tpl = base.load(in_registered)[0], base.load(template)[0]
        tmask = base.load(template_mask)[0].reshape(tpl.shape[:3]) > 0
        moved = moved.reshape(tpl.shape[:3])
        row['registration_nmi'] = metrics.normalized_mutual_information(
            moved, tpl.reshape(moved.shape), tmask)
        row['registration_mask_dice'] = metrics.dice(moved > 0, tmask)
    row['n_warnings'] = sum(1 for s in steps if (s.get('QC') or {}).get('Warning'))
    row['phase_polarity_score'] = (polarity or {}).get('score', math.nan)
    row['phase_polarity_inverted'] = (int(bool(polarity['inverted'])) if polarity
                                      else math.nan)
    brains = list(atlas_brains) + [''] * (len(atlas_names) - len(atlas_brains))
    for name, dseg, atlas, tbrain in zip(atlas_names, in_dsegs, atlas_images, brains):
        native_lab, nimg = base.load(dseg)
        tpl_lab, timg = base.load(atlas)
        ratios = metrics.volume_ratios(
            metrics.label_volumes_mm3(native_lab, float(np.prod(base.voxel_size(nimg)))),
            metrics.label_volumes_mm3(tpl_lab, float(np.prod(base.voxel_size(timg)))))
        values = list(ratios.values()) or [math.nan]
        key = re.sub(r'[^0-9A-Za-z]', '', name)
        row[f'atlas_{key}_volume_ratio_median'] = float(np.median(values))
        row[f'atlas_{key}_volume_ratio_min'] = float(np.min(values))
        scaled = warned = math.nan
        if tbrain:
            tb, tbimg = base.load(tbrain)
            tml = metrics.mask_volume_ml(tb, base.voxel_size(tbimg))
            if tml > 0:
                scaled = float(np.median(values)) / (metrics.mask_volume_ml(final, vox) / tml)
                lo, hi = LABEL_VOLUME_RATIO_RANGE
                warned = int(not lo <= scaled <= hi)
        row[f'atlas_{key}_volume_ratio_scaled'] = scaled
        row[f'atlas_{key}_volume_warning'] = warned
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}


def write_row(row: dict, path) -> str:
    """Write the one-row table (tab-separated, ``n/a`` for missing, 6 significant digits)."""
    from qsmflow.bids.atomic import write_text

    write_text(path, '\t'.join(row) + '\n' + '\t'.join(_cell(v) for v in row.values()) + '\n')
    return str(path)


def read_row(path) -> dict:
    """The row of a QC table as ``{column: float}`` (NaN for ``n/a``)."""
    head, values = Path(path).read_text().splitlines()[:2]
    return {k: (math.nan if v == 'n/a' else float(v))
            for k, v in zip(head.split('\t'), values.split('\t'))}


def sidecar(row: dict) -> dict:
    """JSON sidecar describing every column of ``row``."""
    from qsmflow import __version__

    meta = {'Description': 'Quality-control metrics of one acquisition (one row). Gathered '
                           'from the step sidecars and measured on the outputs; n/a where '
                           'a step did not run.'}
    for col in row:
        desc = COLUMNS.get(col)
        if desc is None:
            match = re.fullmatch(r'atlas_(\w+?)_(volume_\w+)', col)
            text, units = ATLAS_COLUMNS[match.group(2)]
            desc = (f'Atlas {match.group(1)}: {text[0].lower()}{text[1:]}', units)
        meta[col] = {'Description': desc[0], 'Units': desc[1]}
    meta['GeneratedBy'] = {'Name': 'qsmflow', 'Version': __version__}
    return meta


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def _steps(path) -> list:
    from qsmflow.interfaces.base import sidecar_of

    side = Path(sidecar_of(path))
    return json.loads(side.read_text()).get('QSMProcessing', []) if side.exists() else []


def _step(steps: list, name: str) -> dict:
    """The last step record called ``name`` (``{}`` when absent)."""
    found = [s for s in steps if s.get('Step') == name]
    return found[-1] if found else {}
