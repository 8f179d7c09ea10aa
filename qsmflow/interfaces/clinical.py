# SPDX-License-Identifier: Apache-2.0
"""Clinical readings of χ: venography, foci (haemorrhage-like / calcification-like) and
QSM-OEF. Each interface reads NIfTI, calls one :mod:`qsmflow.qsm` function and writes
images with provenance sidecars, and tables (TSV) with a JSON description."""
from __future__ import annotations

import csv
import math

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import foci, oef, swi, threads, veins


class _VenographyInputSpec(base.StepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='χ map in ppm')
    in_mask = File(exists=True, mandatory=True, desc='brain mask of χ')
    params = traits.Dict(usedefault=True, desc='keyword options of '
                                               'qsmflow.qsm.veins.segment_veins')
    mip_slab_mm = traits.Float(veins.DEFAULT_MIP_SLAB_MM, usedefault=True,
                               desc='MIP slab thickness in mm along the slice axis')


class _VenographyOutputSpec(TraitedSpec):
    out_veins = File(exists=True, desc='vein segmentation (uint8 0/1)')
    out_vesselness = File(exists=True, desc='vesselness in [0, 1)')
    out_chi_mip = File(exists=True, desc='sliding-slab MIP of χ in ppm')
    out_veins_mip = File(exists=True, desc='sliding-slab MIP of the vesselness')


class Venography(SimpleInterface):
    """Vein segmentation and vesselness of χ (ppm), and axial MIP slabs (mm) of both."""

    input_spec = _VenographyInputSpec
    output_spec = _VenographyOutputSpec

    def _run_interface(self, runtime):
        chi, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        vox = base.voxel_size(img)
        params = dict(self.inputs.params)
        with threads.limit(self.inputs.num_threads):
            seg = veins.segment_veins(chi, mask, vox, **params)
        axis = swi.slice_axis_from_affine(img.affine, img.header.get_dim_info()[2])
        mip = {'slab_mm': self.inputs.mip_slab_mm, 'slice_axis': axis}
        steps = base.read_steps(self.inputs.in_file)
        seg_step = base.step('venography', veins.segment_veins, params)
        mip_step = base.step('maximum-intensity-projection',
                             veins.maximum_intensity_projection, mip)
        outs = {'out_veins': (seg['veins'], np.uint8, 'veins', [seg_step], {}),
                'out_vesselness': (seg['vesselness'], np.float32, 'vesselness', [seg_step],
                                   {}),
                'out_chi_mip': (veins.maximum_intensity_projection(chi, vox, **mip),
                                np.float32, 'chimip', [mip_step], {'Units': 'ppm'}),
                'out_veins_mip': (veins.maximum_intensity_projection(seg['vesselness'], vox,
                                                                     **mip),
                                  np.float32, 'veinsmip', [seg_step, mip_step], {})}
        for key, (data, dtype, suffix, extra, meta) in outs.items():
            out = fname_presuffix('chi.nii.gz', suffix=f'_{suffix}', newpath=runtime.cwd)
            self._results[key] = base.save(data, img, out, dtype=dtype, steps=steps + extra,
                                           meta={**meta, 'MIPSlabThicknessMM': mip['slab_mm']}
                                           if 'mip' in suffix else meta)
        return runtime


class _FociInputSpec(base.StepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='χ map in ppm')
    in_mask = File(exists=True, mandatory=True, desc='brain mask of χ')
    in_veins = File(exists=True, desc='vein segmentation (no focus seeds in veins)')
    in_r2star = File(exists=True, desc='R2* map in 1/s on the χ grid (mean per focus)')
    in_swi = File(exists=True, desc='SWI (magnitude units) on the χ grid (mean per focus)')
    in_labels = File(exists=True, desc='segmentation in the scanner space of χ, any grid '
                                       '(resampled by nearest neighbour): region per focus')
    in_lut = File(exists=True, desc='its lookup table (dseg.tsv: index, name)')
    params = traits.Dict(usedefault=True, desc='keyword options of qsmflow.qsm.foci.detect_foci')


class _FociOutputSpec(TraitedSpec):
    out_dseg = File(exists=True, desc='label image: 0 background, n the n-th focus (int16)')
    out_tsv = File(exists=True, desc='one row per focus (index, name and its measures)')


#: Columns of the foci table and what they hold (the table's JSON description).
FOCI_COLUMNS = {
    'index': 'Label of the focus in the desc-foci_dseg image.',
    'name': 'Descriptive label (never a diagnosis): haemorrhage-like (paramagnetic) or '
            'calcification-like (diamagnetic).',
    'description': 'The same in words, e.g. "paramagnetic focus, haemorrhage-like".',
    'volume_mm3': 'Volume (mm^3), partial-volume estimate (voxels weighted by their share '
                  'of the peak contrast).',
    'peak_chi_ppm': 'Chi at the peak voxel (ppm, as referenced in the Chimap).',
    'mean_chi_ppm': 'Mean chi over the focus label (ppm).',
    'background_chi_ppm': 'Median chi of the tissue 2-3 voxels around the focus (ppm).',
    'peak_contrast_ppm': 'Peak chi minus background (ppm).',
    'mean_contrast_ppm': 'Mean chi minus background (ppm).',
    'elongation': 'Square root of the ratio of the largest to the smallest principal '
                  'variance of the voxel coordinates (1 = round).',
    'x_mm': 'Centroid, scanner (world) coordinate x in mm (NIfTI affine).',
    'y_mm': 'Centroid, scanner coordinate y in mm.',
    'z_mm': 'Centroid, scanner coordinate z in mm.',
    'mean_r2star_hz': 'Mean R2* (1/s) over the focus (n/a without an R2* map).',
    'mean_swi': 'Mean SWI (magnitude units) over the focus (n/a without an SWI).',
    'region': "Label of the user's segmentation (--segmentations) covering most of the "
              'focus (n/a without one; background when unlabelled).',
}


class Foci(SimpleInterface):
    """Compact paramagnetic / diamagnetic foci of χ (ppm): a label image and a table."""

    input_spec = _FociInputSpec
    output_spec = _FociOutputSpec

    def _run_interface(self, runtime):
        chi, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        vein_mask = (base.load(self.inputs.in_veins)[0] > 0
                     if isdefined(self.inputs.in_veins) else None)
        params = dict(self.inputs.params)
        with threads.limit(self.inputs.num_threads):
            labels, rows = foci.detect_foci(chi, mask, base.voxel_size(img),
                                            vein_mask=vein_mask, **params)
        extra = {'mean_r2star_hz': self.inputs.in_r2star, 'mean_swi': self.inputs.in_swi}
        table = _foci_rows(rows, labels, img.affine,
                           {k: v for k, v in extra.items() if isdefined(v)})
        if isdefined(self.inputs.in_labels) and isdefined(self.inputs.in_lut):
            _add_regions(table, labels, img, self.inputs.in_labels, self.inputs.in_lut)
        step = base.step('foci', foci.detect_foci, params)
        meta = {'Description': 'Compact paramagnetic (haemorrhage-like) and diamagnetic '
                               '(calcification-like) foci of the susceptibility map; '
                               'descriptive labels, not a diagnosis.',
                'NumberOfFoci': len(rows), 'Columns': FOCI_COLUMNS}
        out = fname_presuffix('chi.nii.gz', suffix='_foci', newpath=runtime.cwd)
        self._results['out_dseg'] = base.save(labels, img, out, dtype=np.int16,
                                              steps=base.read_steps(self.inputs.in_file)
                                              + [step], meta=meta)
        self._results['out_tsv'] = _write_tsv(fname_presuffix(
            'chi.tsv', suffix='_foci', newpath=runtime.cwd), list(FOCI_COLUMNS), table)
        return runtime


def _foci_rows(rows, labels, affine, maps) -> list[dict]:
    """Table rows: the detector's measures, scanner coordinates and map means."""
    values = {k: np.asarray(nb.load(p).dataobj, dtype=np.float32) for k, p in maps.items()}
    out = []
    for row in rows:
        x, y, z = (affine @ np.r_[row['centroid_vox'], 1.0])[:3]
        focus = labels == row['index']
        entry = {**row, 'name': row['label'], 'x_mm': x, 'y_mm': y, 'z_mm': z}
        for key in ('mean_r2star_hz', 'mean_swi'):
            data = values.get(key)
            entry[key] = (float(data[focus].mean()) if data is not None
                          and data.shape == labels.shape else 'n/a')
        out.append(entry)
    return out


def _add_regions(table, labels, img, seg_path, lut_path, key='index') -> None:
    """Set each row's ``region``: the segmentation label covering most of its voxels
    (``labels == row[key]``)."""
    from qsmflow.interfaces.regions import read_lut
    from qsmflow.qsm.regions import resample_labels

    seg_img = nb.load(seg_path)
    seg = resample_labels(np.asarray(seg_img.dataobj).astype(np.int32), seg_img.affine,
                          img.affine, labels.shape)
    lut = read_lut(lut_path)
    for row in table:
        values, counts = np.unique(seg[labels == row[key]], return_counts=True)
        top = int(values[np.argmax(counts)])
        row['region'] = lut.get(top, 'background' if top == 0 else str(top))


class _OEFInputSpec(base.StepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='χ map in ppm')
    in_mask = File(exists=True, mandatory=True, desc='brain mask of χ')
    in_veins = File(exists=True, mandatory=True, desc='vein segmentation')
    in_foci = File(exists=True, desc='foci label image (excluded from tissue and veins)')
    in_labels = File(exists=True, desc='segmentation in the scanner space of χ, any grid: '
                                       'region per vein segment')
    in_lut = File(exists=True, desc='its lookup table (dseg.tsv: index, name)')
    params = traits.Dict(usedefault=True, desc='keyword options of qsmflow.qsm.oef.vein_oef '
                                               '(hematocrit, delta_chi_do_ppm, ...)')


class _OEFOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc='OEF per vein segment and for the participant')
    out_json = File(exists=True, desc='columns, parameters and the participant summary')


#: Columns of the OEF table.
OEF_COLUMNS = {
    'segment': "Vein segment (connected component of desc-veins_mask), or 'all' for the "
               'participant (median over measured segments weighted by half-maximum volume).',
    'volume_mm3': 'Segment volume (mm^3).',
    'radius_mm': 'Largest distance from the segment edge to its axis (mm).',
    'x_mm': 'Segment centroid, scanner coordinate x (mm).',
    'y_mm': 'Segment centroid, scanner coordinate y (mm).',
    'z_mm': 'Segment centroid, scanner coordinate z (mm).',
    'tissue_chi_ppm': 'Median chi of the tissue shell around the segment (ppm).',
    'median_delta_chi_ppm': 'Median of chi minus tissue over the segment (ppm).',
    'delta_chi_ppm': '90th percentile of chi minus tissue over the segment (ppm): the '
                     'vein-to-tissue susceptibility difference used.',
    'saturation': 'Venous oxygen saturation Y = 1 - delta_chi / (delta_chi_do * Hct).',
    'oef': 'Oxygen extraction fraction (Ya - Y) / Ya; n/a when not measured.',
    'note': 'Why a segment is not measured (partial volume, focus nearby).',
    'region': "Label of the user's segmentation covering most of the segment (n/a "
              'without one).',
}


class OEF(SimpleInterface):
    """QSM-based oxygen extraction fraction per vein segment (χ in ppm, Hct fraction)."""

    input_spec = _OEFInputSpec
    output_spec = _OEFOutputSpec

    def _run_interface(self, runtime):
        chi, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        vein_mask = base.load(self.inputs.in_veins)[0] > 0
        exclude = (base.load(self.inputs.in_foci)[0] > 0
                   if isdefined(self.inputs.in_foci) else None)
        params = dict(self.inputs.params)
        segments, summary = oef.vein_oef(chi, vein_mask, mask, base.voxel_size(img),
                                         exclude=exclude, **params)
        rows = []
        for seg in segments:
            x, y, z = (img.affine @ np.r_[seg['centroid_vox'], 1.0])[:3]
            rows.append({**seg, 'x_mm': x, 'y_mm': y, 'z_mm': z})
        if isdefined(self.inputs.in_labels) and isdefined(self.inputs.in_lut):
            from scipy import ndimage as ndi

            seg_labels = ndi.label(vein_mask, structure=np.ones((3, 3, 3)))[0]
            _add_regions(rows, seg_labels, img, self.inputs.in_labels, self.inputs.in_lut,
                         key='segment')
        rows.append({'segment': 'all', 'saturation': summary['saturation'],
                     'oef': summary['oef'],
                     'note': f"{summary['n_measured']} of {summary['n_segments']} segments"})
        self._results['out_tsv'] = _write_tsv(fname_presuffix(
            'chi.tsv', suffix='_oef', newpath=runtime.cwd), list(OEF_COLUMNS), rows)
        sidecar = {'Description': 'QSM-based oxygen extraction fraction (OEF) per vein '
                                  'segment and for the participant.',
                   'QSMProcessing': base.read_steps(self.inputs.in_file)
                   + [base.step('oef', oef.vein_oef, params)],
                   'Hematocrit': summary['hematocrit'],
                   'DeltaChiDeoxygenatedPPM': summary['delta_chi_do_ppm'],
                   'ArterialSaturation': summary['arterial_saturation'],
                   'OEF': _num(summary['oef']), 'VenousSaturation': _num(summary['saturation']),
                   'Columns': OEF_COLUMNS}
        out_json = fname_presuffix('chi.json', suffix='_oef', newpath=runtime.cwd)
        base.write_json(out_json, sidecar)
        self._results['out_json'] = out_json
        return runtime


def _num(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _write_tsv(path, columns, rows) -> str:
    """Write ``rows`` (dicts) under ``columns``; NaN and missing values become 'n/a'."""
    def cell(v):
        if v is None or (isinstance(v, str) and not v):
            return 'n/a'
        if isinstance(v, (float, np.floating)):
            return f'{float(v):.6g}' if np.isfinite(v) else 'n/a'
        return str(v)

    with open(path, 'w', newline='') as fobj:
        writer = csv.writer(fobj, delimiter='\t', lineterminator='\n')
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row.get(c)) for c in columns])
    return path
