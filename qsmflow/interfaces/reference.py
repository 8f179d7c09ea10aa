# SPDX-License-Identifier: Apache-2.0
"""Susceptibility referencing interface."""
from __future__ import annotations

from nipype.interfaces.base import (
    File, SimpleInterface, TraitedSpec, isdefined, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import mask as qmask
from qsmflow.qsm import metrics, reference, threads


class _RefInputSpec(base.StepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='susceptibility in ppm')
    in_mask = File(exists=True, mandatory=True, desc='brain mask')
    method = traits.Str('mean', usedefault=True, desc="'mean', 'region', 'csf' or 'none'")
    ref_mask = File(exists=True, desc="reference region mask (method 'region')")
    in_magnitude = File(exists=True, desc="4D magnitude (method 'csf': finds the ventricles)")
    echo_times = traits.List(traits.Float, desc="echo times in s (method 'csf')")


class _RefOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='referenced susceptibility in ppm')
    ref_value = traits.Float(desc='value subtracted, in ppm')


class ReferenceChi(SimpleInterface):
    """Subtract a reference value (ppm) from χ; the sidecar records it and the brain mean."""

    input_spec = _RefInputSpec
    output_spec = _RefOutputSpec

    def _run_interface(self, runtime):
        chi, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        opts = {'method': self.inputs.method}
        extra = {}
        if self.inputs.method == 'csf':
            if not (isdefined(self.inputs.in_magnitude) and self.inputs.echo_times):
                raise ValueError("reference 'csf' needs the multi-echo magnitude")
            mag = base.load(self.inputs.in_magnitude)[0]
            with threads.limit(self.inputs.num_threads):
                csf = qmask.csf_mask(mag, mask, base.voxel_size(img),
                                     echo_times_s=list(self.inputs.echo_times))
            opts['ref_mask'] = csf
            extra = {'ReferenceRegion': 'ventricular CSF (qsmflow.qsm.mask.csf_mask)',
                     'ReferenceVoxels': int((csf & mask).sum())}
        elif isdefined(self.inputs.ref_mask) and self.inputs.ref_mask:
            opts['ref_mask'] = base.load(self.inputs.ref_mask)[0] > 0
        with threads.limit(self.inputs.num_threads):
            chi_ref, value = reference.reference(chi, mask, **opts)
        brain_mean = float(chi[mask].mean()) - float(value)
        qc = metrics.chi_qc(chi_ref, mask)
        if qc['Warning']:
            base.LOGGER.warning('qsmflow: χ map: %s', qc['Warning'])
        rec = base.step('reference', reference.reference, {'method': self.inputs.method},
                        ReferenceValue=float(value), WholeBrainMeanAfterReference=brain_mean,
                        WholeBrainMeanBeforeReference=float(chi[mask].mean()), QC=qc, **extra)
        steps = base.read_steps(self.inputs.in_file, self.inputs.in_mask) + [rec]
        out = fname_presuffix('chi.nii.gz', suffix='_ref', newpath=runtime.cwd)
        meta = {'Units': 'ppm', 'QSMReference': self.inputs.method, 'QSMReferenceValue': value}
        self._results['out_file'] = base.save(chi_ref, img, out, steps=steps, meta=meta)
        self._results['ref_value'] = float(value)
        return runtime
