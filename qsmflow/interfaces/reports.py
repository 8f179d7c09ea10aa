# SPDX-License-Identifier: Apache-2.0
"""QC metrics and reportlets of one acquisition (inputs: the reconstruction's files)."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined,
    traits)

from qsmflow.interfaces import base


class _QCInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_brain_mask = File(exists=True, mandatory=True,
                         desc='brain mask before phase-quality trimming and background removal '
                              '(its sidecar holds the brain-extraction QC)')
    in_mask = File(exists=True, mandatory=True, desc='final mask of chi')
    in_noise = File(exists=True, mandatory=True, desc='standard error of the total field, ppm')
    in_local_field = File(exists=True, mandatory=True, desc='local field, ppm')
    in_chimap = File(exists=True, mandatory=True,
                     desc='referenced chi (ppm); its sidecar lists every step')
    in_registered = File(exists=True, desc='brain-masked magnitude on the template grid')
    template = File(exists=True, desc='template image (registration target)')
    template_mask = File(exists=True, desc='template brain mask')
    atlas_names = traits.List(traits.Str, desc='atlases whose labels are in in_dsegs')
    in_dsegs = InputMultiObject(File(exists=True), desc='atlas labels on the native chi grid')
    atlas_images = traits.List(File(exists=True), desc='the same atlases in template space')
    atlas_brains = traits.List(traits.Str, desc="brain mask (or skull-stripped image) of each "
                                                "atlas's template; '' for none")
    polarity = traits.Dict(desc="pre-flight phase-polarity check ('score', unitless -1..1; "
                                "'inverted', bool)")


class _QCOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc='one-row QC table')
    out_json = File(exists=True, desc='its sidecar: every column described, with units')


class QCMetrics(SimpleInterface):
    """QC numbers of one acquisition (:mod:`qsmflow.reports.qc_table`): one-row TSV + JSON."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.reports import qc_table

        opt = {k: getattr(self.inputs, k) for k in (
            'in_registered', 'template', 'template_mask', 'atlas_names', 'in_dsegs',
            'atlas_images', 'atlas_brains', 'polarity') if isdefined(getattr(self.inputs, k))}
        row = qc_table.acquisition_qc(
            magnitude=self.inputs.in_magnitude, brain_mask=self.inputs.in_brain_mask,
            mask=self.inputs.in_mask, noise=self.inputs.in_noise,
            local_field=self.inputs.in_local_field, chimap=self.inputs.in_chimap, **opt)
        out = Path(runtime.cwd) / 'qc.tsv'
        qc_table.write_row(row, out)
        self._results['out_tsv'] = str(out)
        self._results['out_json'] = str(base.write_json(out.with_suffix('.json'),
                                                        qc_table.sidecar(row)))
        return runtime


class _FiguresInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_brain_mask = File(exists=True, mandatory=True, desc='brain mask before trimming')
    in_mask = File(exists=True, mandatory=True, desc='final mask of chi')
    in_total_field = File(exists=True, mandatory=True, desc='total field, ppm')
    in_local_field = File(exists=True, mandatory=True, desc='local field, ppm')
    in_noise = File(exists=True, mandatory=True, desc='standard error of the total field, ppm')
    in_chimap = File(exists=True, mandatory=True, desc='referenced chi, ppm')
    in_registered = File(exists=True, desc='brain-masked magnitude on the template grid')
    template = File(exists=True, desc='template image')
    template_mask = File(exists=True, desc='template brain mask')
    in_dseg = File(exists=True, desc='atlas labels on the native chi grid')
    in_lut = File(exists=True, desc='their lookup table (index, name)')


class _FiguresOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc='reportlets (SVG/PNG), named by content')


class Reportlets(SimpleInterface):
    """Reportlets of one acquisition (:mod:`qsmflow.reports.reportlets`)."""

    input_spec = _FiguresInputSpec
    output_spec = _FiguresOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.reports import reportlets

        opt = {k: getattr(self.inputs, k) for k in (
            'in_registered', 'template', 'template_mask', 'in_dseg', 'in_lut')
            if isdefined(getattr(self.inputs, k))}
        self._results['out_files'] = reportlets.acquisition_reportlets(
            runtime.cwd, magnitude=self.inputs.in_magnitude,
            brain_mask=self.inputs.in_brain_mask, mask=self.inputs.in_mask,
            total_field=self.inputs.in_total_field, local_field=self.inputs.in_local_field,
            noise=self.inputs.in_noise, chimap=self.inputs.in_chimap, **opt)
        return runtime


class _FigureSinkInputSpec(BaseInterfaceInputSpec):
    in_files = traits.List(File(exists=True), mandatory=True,
                           desc='reportlets; each file name (stem) becomes the desc entity')
    base_directory = traits.Str(mandatory=True, desc='root of the derivatives dataset')
    entities = traits.Dict(mandatory=True, desc='BIDS entities of the acquisition')


class _FigureSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc='stored reportlets')


class FigureSink(SimpleInterface):
    """Copy reportlets to ``sub-<l>[/ses-<l>]/figures/<name>_desc-<what>_qsm.<ext>``."""

    input_spec = _FigureSinkInputSpec
    output_spec = _FigureSinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from qsmflow import bids_specs
        from qsmflow.interfaces.bids import atomic_copy

        out = []
        for path in self.inputs.in_files:
            desc, ext = Path(path).stem, Path(path).suffix
            dest = bids_specs.output_path(self.inputs.base_directory, 'figure',
                                          self.inputs.entities, desc=desc, extension=ext)
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(path, dest)
            out.append(str(dest))
        self._results['out_files'] = out
        return runtime

