# SPDX-License-Identifier: Apache-2.0
"""Multi-echo field estimation interface (unwrapping + weighted echo fit)."""
from __future__ import annotations

from nipype.interfaces.base import (
    File, SimpleInterface, TraitedSpec, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import echoes, threads


class _FieldInputSpec(base.StepInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_phase = File(exists=True, mandatory=True, desc='4D phase (x, y, z, echo) in rad')
    in_mask = File(exists=True, mandatory=True, desc='brain mask')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    b0_tesla = traits.Float(mandatory=True, desc='main field strength in T')
    unwrapping = traits.Str('romeo', usedefault=True, desc='unwrapping method')
    combination = traits.Str('wls', usedefault=True,
                             desc="echo combination: 'wls' or 'nlcomplex'")


class _FieldOutputSpec(TraitedSpec):
    out_field = File(exists=True, desc='total field in ppm of B0')
    out_field_hz = File(exists=True, desc='total field in Hz')
    out_noise = File(exists=True, desc='standard error of the field fit in Hz')
    out_noise_ppm = File(exists=True, desc='standard error of the field fit in ppm of B0')


class EstimateField(SimpleInterface):
    """Unwrap every echo and fit the field (Hz and ppm) vs TE (weighted LS or complex fit)."""

    input_spec = _FieldInputSpec
    output_spec = _FieldOutputSpec

    def _run_interface(self, runtime):
        mag, img = base.load(self.inputs.in_magnitude)
        phase = base.load(self.inputs.in_phase)[0]
        mask_data, mimg = base.load(self.inputs.in_mask)
        opts = dict(echo_times_s=list(self.inputs.echo_times), b0_tesla=self.inputs.b0_tesla,
                    unwrapping=self.inputs.unwrapping, combination=self.inputs.combination)
        with threads.limit(self.inputs.num_threads):
            res = echoes.estimate_field(phase, mask_data > 0, base.voxel_size(img),
                                        magnitude=mag, return_unwrapped=False, **opts)
        steps = base.read_steps(self.inputs.in_phase, self.inputs.in_mask)
        steps.append(base.step('unwrapping+echo-fit', echoes.estimate_field, opts))
        res['noise_ppm'] = echoes.hz_to_ppm(res['noise_hz'], self.inputs.b0_tesla)
        for key, name, unit in (('out_field', 'field_ppm', 'ppm'), ('out_field_hz', 'field_hz', 'Hz'),
                                ('out_noise', 'noise_hz', 'Hz'), ('out_noise_ppm', 'noise_ppm', 'ppm')):
            out = fname_presuffix('total.nii.gz', suffix=f'_{name}', newpath=runtime.cwd)
            self._results[key] = base.save(res[name], mimg, out, steps=steps, meta={'Units': unit})
        return runtime
