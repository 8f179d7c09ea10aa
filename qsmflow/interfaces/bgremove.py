# SPDX-License-Identifier: Apache-2.0
"""Background field removal interface."""
from __future__ import annotations

from nipype.interfaces.base import (
    File, SimpleInterface, TraitedSpec, isdefined, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import bgremove, device, threads
from qsmflow.qsm.kernels import b0_dir_from_affine


class _BgInputSpec(base.FFTStepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='total field in ppm of B0')
    in_mask = File(exists=True, mandatory=True, desc='brain mask')
    method = traits.Str('vsharp', usedefault=True, desc='function name in qsmflow.qsm.bgremove')
    params = traits.Dict(usedefault=True, desc='keyword options of the method')
    pass_name = traits.Str(desc="pass of a two-pass reconstruction ('strict' or 'filled'), "
                                'recorded in the provenance')


class _BgOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='local field in ppm of B0')
    out_mask = File(exists=True, desc='mask of valid local field (may be eroded)')


class RemoveBackground(SimpleInterface):
    """Remove the background field (ppm in, ppm out); B0 direction from the affine."""

    input_spec = _BgInputSpec
    output_spec = _BgOutputSpec

    def _run_interface(self, runtime):
        field, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        func = getattr(bgremove, self.inputs.method)
        b0_dir = b0_dir_from_affine(img.affine)
        params = {**self.inputs.params, **device.step_kwargs(func, self.inputs.device)}
        with threads.limit(self.inputs.num_threads):
            local, new_mask = func(field, mask, base.voxel_size(img), b0_dir,
                                   **params)
        steps = base.read_steps(self.inputs.in_file, self.inputs.in_mask)
        extra = {'Pass': self.inputs.pass_name} if isdefined(self.inputs.pass_name) else {}
        steps.append(base.step('background-removal', func, params,
                               B0Direction=b0_dir.tolist(), **extra))
        out = fname_presuffix('local.nii.gz', suffix='_field_ppm', newpath=runtime.cwd)
        self._results['out_file'] = base.save(local, img, out, steps=steps, meta={'Units': 'ppm'})
        out = fname_presuffix('local.nii.gz', suffix='_mask', newpath=runtime.cwd)
        self._results['out_mask'] = base.save(new_mask, img, out, dtype='uint8', steps=steps)
        return runtime
