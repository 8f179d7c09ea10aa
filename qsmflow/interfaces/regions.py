# SPDX-License-Identifier: Apache-2.0
"""Interfaces for segmentations and regional susceptibility tables (χ in ppm)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow import __version__, bids_specs
from qsmflow.qsm import region_qc, regions
from qsmflow.interfaces import base


def read_lut(path) -> dict:
    """Read a BIDS ``dseg.tsv`` (columns ``index`` and ``name``) into ``{index: name}``."""
    with open(path, newline='') as fobj:
        rows = list(csv.DictReader(fobj, delimiter='\t'))
    if not rows or 'index' not in rows[0] or 'name' not in rows[0]:
        raise ValueError(f'{path} must be a TSV with columns "index" and "name"')
    return {int(float(r['index'])): r['name'] for r in rows}


def write_lut(lut: dict, path) -> str:
    """Write ``{index: name}`` as a BIDS ``dseg.tsv``; return the path."""
    lines = ['index\tname'] + [f'{i}\t{n}' for i, n in sorted(lut.items())]
    Path(path).write_text('\n'.join(lines) + '\n')
    return str(path)


def atlas_spec(name: str) -> dict | None:
    """Entry of ``bids_specs/atlases.json`` for atlas ``name`` (None if unknown)."""
    return bids_specs.load('atlases')['atlases'].get(name)


def atlas_metadata(name: str, source: dict | None = None) -> dict:
    """Provenance of a label set for the ``Atlas`` entry of the dseg and table sidecars.

    Parameters
    ----------
    name : str
        Atlas name: a key of ``bids_specs/atlases.json`` (its description, template,
        citation and licence, and those of its template, are filled in) or another label
        (``custom``, ``segmentations``).
    source : dict, optional
        Where the labels came from (templateflow query, user files); added as is and
        overriding the defaults.

    Returns
    -------
    dict
        ``Name`` and, for known atlases, ``Description``, ``Template``, ``Citation``,
        ``License``, ``TemplateName``, ``TemplateCitation``, ``TemplateLicense``.

    Examples
    --------
    >>> meta = atlas_metadata('Diedrichsen2009')
    >>> meta['Template'], meta['License'].startswith('CC BY-NC 3.0')
    ('SUIT', True)
    >>> atlas_metadata('custom', {'Citation': 'user supplied'})
    {'Name': 'custom', 'Citation': 'user supplied'}
    """
    meta = {'Name': name}
    spec = atlas_spec(name)
    if spec:
        tpl = bids_specs.load('atlases').get('templates', {}).get(spec['template'], {})
        meta.update({'Description': spec.get('name'), 'Template': spec['template'],
                     'Citation': spec.get('citation'), 'License': spec.get('license'),
                     'TemplateName': tpl.get('name'), 'TemplateCitation': tpl.get('citation'),
                     'TemplateLicense': tpl.get('license')})
    meta.update(source or {})
    return {k: v for k, v in meta.items() if v is not None}


class _ResampleSegInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='label image (any grid, same scanner space)')
    reference = File(exists=True, mandatory=True, desc='image on the target grid (chi map)')


class _ResampleSegOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='labels on the reference grid (int32)')


class ResampleSegmentation(SimpleInterface):
    """Bring a label image onto the χ grid by nearest neighbour through the image affines."""

    input_spec = _ResampleSegInputSpec
    output_spec = _ResampleSegOutputSpec

    def _run_interface(self, runtime):
        seg = nb.load(self.inputs.in_file)
        ref = nb.load(self.inputs.reference)
        labels = np.asarray(seg.dataobj).reshape(seg.shape[:3])
        out_lab = regions.resample_labels(np.rint(labels).astype(np.int32), seg.affine,
                                          ref.affine, ref.shape[:3])
        rec = {'Step': 'segmentation', 'Source': str(self.inputs.in_file),
               'Interpolation': 'nearest neighbour (through the image affines)'}
        out = fname_presuffix('seg.nii.gz', suffix='_native', newpath=runtime.cwd)
        self._results['out_file'] = base.save(out_lab, ref, out, dtype=np.int32, steps=[rec])
        return runtime


class _StatsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='referenced susceptibility map in ppm')
    in_mask = File(exists=True, mandatory=True, desc='brain mask of the susceptibility map')
    in_dseg = File(exists=True, mandatory=True, desc='labels on the grid of in_file')
    in_lut = File(exists=True, mandatory=True, desc='dseg.tsv (index, name) of in_dseg')
    atlas = traits.Str(mandatory=True, desc='atlas name (a key of atlases.json, or custom)')
    erode = traits.Bool(False, usedefault=True, desc='erode every region by one voxel')
    source = traits.Dict(usedefault=True, desc='atlas/segmentation provenance for the JSON '
                         '(added to atlas_metadata(atlas))')
    in_r2star = File(exists=True, desc='R2* map in 1/s on the grid of in_file (column '
                                       'r2star_mean; absent without it)')
    in_chi_para = File(exists=True, desc='paramagnetic chi map in ppm on the grid of in_file '
                                         '(column chi_para_mean; absent without it)')
    in_chi_dia = File(exists=True, desc='diamagnetic chi map in ppm on the grid of in_file '
                                        '(column chi_dia_mean; absent without it)')
    in_atlas = File(exists=True, desc='the atlas labels in their template (volume guard rail: '
                                      'qsmflow.qsm.region_qc.volume_qc)')
    in_atlas_brain = File(exists=True, desc='brain mask of the atlas\'s template (or the '
                                            'skull-stripped template image): its voxels > 0')


#: Input of :class:`RegionalStats` → table column (:data:`qsmflow.qsm.regions.MAP_COLUMNS`).
MAP_INPUTS = {'in_r2star': 'r2star_mean', 'in_chi_para': 'chi_para_mean',
              'in_chi_dia': 'chi_dia_mean'}


class _StatsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc='regional statistics table (chi in ppm)')
    out_json = File(exists=True, desc='sidecar of the table (units, reference, sources)')


class RegionalStats(SimpleInterface):
    """Regional χ statistics (ppm) per region and hemisphere, with a JSON sidecar."""

    input_spec = _StatsInputSpec
    output_spec = _StatsOutputSpec

    def _run_interface(self, runtime):
        chi, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        labels = np.rint(base.load(self.inputs.in_dseg)[0]).astype(np.int32)
        lut = read_lut(self.inputs.in_lut)
        spec = atlas_spec(self.inputs.atlas)
        region_set = (regions.regions_from_set(spec['regions'], lut) if spec
                      else regions.regions_from_lut(lut))
        chi_meta = _read_json(base.sidecar_of(self.inputs.in_file))
        ref_method = chi_meta.get('QSMReference', 'unknown')
        maps = {column: base.load(getattr(self.inputs, name))[0]
                for name, column in MAP_INPUTS.items() if isdefined(getattr(self.inputs, name))}
        rows = regions.region_table(chi, labels, mask, base.voxel_size(img), region_set,
                                    erode=self.inputs.erode,
                                    reference_mask=mask if ref_method == 'mean' else None,
                                    maps=maps)
        qc = table_qc(rows, self.inputs.atlas)
        if ref_method != 'none':  # unreferenced χ has no meaningful level
            qc['IronRich'] = _logged(region_qc.iron_qc(rows), self.inputs.atlas, 'table')
        if isdefined(self.inputs.in_atlas):
            qc['LabelVolumes'] = label_volume_qc(rows, region_set, self.inputs.in_atlas,
                                                 self.inputs.in_atlas_brain, mask,
                                                 base.voxel_size(img), self.inputs.atlas)
        out_tsv = Path(runtime.cwd) / 'stats.tsv'
        write_table(rows, out_tsv)
        meta = stats_sidecar(atlas_metadata(self.inputs.atlas, self.inputs.source), ref_method,
                             self.inputs.erode, base.read_steps(self.inputs.in_file),
                             rows=rows, qc=qc, map_columns=tuple(maps))
        labels_meta = _read_json(base.sidecar_of(self.inputs.in_dseg))
        refinement = labels_meta.get('RegistrationRefinement')
        if refinement is not None:  # labels refined on χ (workflows.registration)
            meta['LabelRefinement'] = refinement
        if 'NucleiSegmentation' in labels_meta:  # --segment-nuclei (interfaces.nuclei)
            meta.setdefault('LabelRefinement', {})['NucleiSegmentation'] = labels_meta[
                'NucleiSegmentation']
        out_json = Path(runtime.cwd) / 'stats.json'
        base.write_json(out_json, meta)
        self._results.update(out_tsv=str(out_tsv), out_json=str(out_json))
        return runtime


class RegionCoverageError(RuntimeError):
    """A regional table without a single deep nucleus inside the brain mask."""


def table_qc(rows: list[dict], atlas: str) -> dict:
    """:func:`qsmflow.qsm.region_qc.coverage_qc` of a table; logs its warning and raises its
    failure (a :class:`RegionCoverageError`: the participant fails with that one line).

    User segmentations (``atlas == 'segmentations'``) are checked on their deep nuclei only:
    they may label skull, scalp and air, which the brain mask rightly leaves out.
    """
    qc = region_qc.coverage_qc(rows, only_deep=atlas == 'segmentations')
    if qc['Failure']:
        raise RegionCoverageError(f'atlas {atlas}: {qc["Failure"]}')
    return _logged({k: v for k, v in qc.items() if k != 'Failure'}, atlas, 'table')


def _logged(qc: dict, atlas: str, what: str) -> dict:
    """Log a guard rail's ``Warning`` (``qsmflow: atlas <name> <what>: …``); return it."""
    if qc.get('Warning'):
        base.LOGGER.warning('qsmflow: atlas %s %s: %s', atlas, what, qc['Warning'])
    return qc


def label_volume_qc(rows, region_set, atlas_file, brain_file, mask, voxel_size,
                    atlas: str) -> dict:
    """:func:`qsmflow.qsm.region_qc.volume_qc` of a table against its atlas file (labels in
    their template) and that template's brain (``brain_file``: voxels > 0; None: the
    brains' ratio is taken as 1); logs its warning."""
    from qsmflow.reports.metrics import label_volumes_mm3, mask_volume_ml

    lab, limg = base.load(atlas_file)
    volume = label_volumes_mm3(np.rint(lab), float(np.prod(base.voxel_size(limg))))
    vox = float(np.prod(voxel_size))
    atlas_mm3 = {(r['region'], r['hemisphere']): sum(volume.get(i, 0.0) for i in r['labels'])
                 for r in region_set}
    ratio = 1.0
    if brain_file:
        brain, bimg = base.load(brain_file)
        template_ml = mask_volume_ml(brain, base.voxel_size(bimg))
        ratio = mask_volume_ml(mask, voxel_size) / template_ml if template_ml else 1.0
    return _logged(region_qc.volume_qc(rows, atlas_mm3, vox, brain_ratio=ratio), atlas,
                   'labels')


def write_table(rows: list[dict], path) -> None:
    """Write statistic rows as TSV (``n/a`` for missing values, 6 decimals for χ).

    The columns are :data:`qsmflow.qsm.regions.COLUMNS`, then those of
    :data:`qsmflow.qsm.regions.MAP_COLUMNS` the rows have (maps of the acquisition).
    """
    columns = table_columns(rows)
    lines = ['\t'.join(columns)]
    for row in rows:
        lines.append('\t'.join(_fmt(row[c], c) for c in columns))
    Path(path).write_text('\n'.join(lines) + '\n')


def table_columns(rows: list[dict]) -> tuple:
    """Columns of a table: the χ columns, then the map columns its rows have.

    >>> table_columns([{'chi_dia_mean': 0.0, 'r2star_mean': 1.0}])[-3:]  # MAP_COLUMNS order
    ('mask_coverage', 'r2star_mean', 'chi_dia_mean')
    >>> table_columns([{'region': 'x'}]) == regions.COLUMNS
    True
    """
    present = set(rows[0]) if rows else set()
    return regions.COLUMNS + tuple(c for c in regions.MAP_COLUMNS if c in present)


def _fmt(value, column: str = '') -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return 'n/a'
        return f'{value:.2f}' if column == 'volume_mm3' else f'{value:.6f}'
    return str(value)


def stats_sidecar(atlas: dict, ref_method: str, erode: bool, steps: list,
                  rows: list[dict] | None = None, qc: dict | None = None,
                  map_columns: tuple = ()) -> dict:
    """JSON sidecar of a regional table: columns with units, reference, sources, pipeline.

    ``atlas`` is the label set's provenance (:func:`atlas_metadata`): name, template,
    citation and licence. ``rows`` (:func:`qsmflow.qsm.regions.region_table`) name the
    regions ``--erode-rois`` left uneroded; ``qc`` is :func:`table_qc`'s record.
    ``map_columns`` (of :data:`qsmflow.qsm.regions.MAP_COLUMNS`) are the columns of the
    other maps the table has: they are described; the others are listed in
    ``AbsentColumns`` with the reason (the table does not have them).
    """
    chi_desc = 'of susceptibility (ppm, SI) after the reference in QSMReference'
    trim = regions.TRIM_PROPORTION
    meta = {
        'Description': 'Regional susceptibility statistics, one row per region and hemisphere '
                       '(plus whole brain and reference region), computed on the native '
                       'susceptibility grid (labels resampled to it; chi not interpolated).',
        'region': {'Description': 'Region name (from the atlas or segmentation lookup table)'},
        'hemisphere': {'Description': 'left, right or bilateral (left + right merged)'},
        'n_voxels': {'Description': 'Voxels of the region inside the brain mask (after '
                                    'erosion with --erode-rois): the voxels of the statistics'},
        'volume_mm3': {'Description': 'Region volume', 'Units': 'mm^3'},
        'mean': {'Description': f'Mean {chi_desc}', 'Units': 'ppm'},
        'median': {'Description': f'Median {chi_desc}', 'Units': 'ppm'},
        'std': {'Description': f'Standard deviation {chi_desc}', 'Units': 'ppm'},
        'p05': {'Description': f'5th percentile {chi_desc}', 'Units': 'ppm'},
        'p95': {'Description': f'95th percentile {chi_desc}', 'Units': 'ppm'},
        'trimmed_mean': {'Description': f'{trim:.0%}-trimmed mean {chi_desc}: the mean after '
                                        f'the lowest and the highest {trim:.0%} of the '
                                        'values are set aside', 'Units': 'ppm'},
        'boundary_share': {'Description': 'Share of the voxels of the statistics that have a '
                                          '6-neighbour (shared face) outside the region, i.e. '
                                          'next to another tissue or outside the brain mask; '
                                          'partial volume reaches these voxels',
                           'Units': 'fraction (0-1)'},
        'n_labelled': {'Description': 'Voxels carrying the region\'s labels on the '
                                      'susceptibility grid, before the brain mask and erosion '
                                      '(what the atlas predicts for this participant)'},
        'mask_coverage': {'Description': 'Share of n_labelled inside the brain mask (before '
                                         'erosion); below QC.MinMaskCoverage the region is '
                                         'flagged in QC', 'Units': 'fraction (0-1)'},
        'QSMReference': ref_method,
        'ReferenceRegion': ('whole brain mask (row "reference")' if ref_method == 'mean'
                            else 'none' if ref_method == 'none' else ref_method),
        'Atlas': dict(atlas),
        'ErodedByOneVoxel': bool(erode),
    }
    meta.update(map_column_sidecar(map_columns))
    if erode:
        meta['Erosion'] = {
            'Voxels': 1, 'Connectivity': 6, 'PerLabel': True,
            'MinimumVoxels': regions.MIN_ERODED_VOXELS,
            'NotEroded': [f'{r["region"]} {r["hemisphere"]}' for r in rows or []
                          if r['region'] not in (regions.WHOLE_BRAIN, regions.REFERENCE)
                          and not r.get('eroded')],
            'Description': 'Each label eroded by one voxel (6-connectivity) before the '
                           'statistics; a region erosion would leave with fewer than '
                           'MinimumVoxels voxels is tabulated uneroded (listed in NotEroded)'}
    if qc is not None:
        meta['QC'] = dict(qc)
    meta.update({'GeneratedBy': {'Name': 'qsmflow', 'Version': __version__},
                 'QSMProcessing': steps})
    return meta


#: Sidecar entries of the map columns (:data:`qsmflow.qsm.regions.MAP_COLUMNS`).
_MAP_COLUMN_META = {
    'r2star_mean': {'Description': 'Mean R2* of the voxels of the chi statistics (same brain '
                                   'mask, same erosion), from the R2starmap of this '
                                   'acquisition', 'Units': '1/s'},
    'chi_para_mean': {'Description': 'Mean paramagnetic susceptibility chi+ (>= 0) of the '
                                     'voxels of the chi statistics, from the '
                                     'desc-paramagnetic_Chimap of this acquisition; chi before '
                                     'referencing: chi_para_mean + chi_dia_mean - mean is the '
                                     "Chimap's QSMReferenceValue", 'Units': 'ppm'},
    'chi_dia_mean': {'Description': 'Mean diamagnetic susceptibility chi- (<= 0) of the voxels '
                                    'of the chi statistics, from the desc-diamagnetic_Chimap '
                                    'of this acquisition; chi before referencing',
                     'Units': 'ppm'},
}
_ABSENT_REASON = {
    'r2star_mean': 'no R2* map for this acquisition (R2* needs at least 2 echoes)',
    'chi_para_mean': 'no chi-separation for this acquisition (needs at least 2 echoes; off '
                     'with --no-chi-separation)',
}
_ABSENT_REASON['chi_dia_mean'] = _ABSENT_REASON['chi_para_mean']


def map_column_sidecar(map_columns) -> dict:
    """Sidecar entries of a table's map columns: a description and units for each column
    present, and ``AbsentColumns`` (column → why it is not in the table) for the others.

    Examples
    --------
    >>> meta = map_column_sidecar(('r2star_mean',))
    >>> meta['r2star_mean']['Units'], sorted(meta['AbsentColumns'])
    ('1/s', ['chi_dia_mean', 'chi_para_mean'])
    >>> map_column_sidecar(regions.MAP_COLUMNS)['AbsentColumns']
    {}
    """
    unknown = set(map_columns) - set(regions.MAP_COLUMNS)
    if unknown:
        raise ValueError(f'unknown map columns {sorted(unknown)}')
    meta = {c: dict(_MAP_COLUMN_META[c]) for c in regions.MAP_COLUMNS if c in map_columns}
    meta['AbsentColumns'] = {c: _ABSENT_REASON[c] for c in regions.MAP_COLUMNS
                             if c not in map_columns}
    return meta


def _read_json(path) -> dict:
    try:
        with open(path) as fobj:
            return json.load(fobj)
    except (OSError, ValueError):
        return {}
