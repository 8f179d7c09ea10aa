# SPDX-License-Identifier: Apache-2.0
"""Dipole inversion interface."""
from __future__ import annotations

import numpy as np
from nipype.interfaces.base import (
    File, SimpleInterface, TraitedSpec, isdefined, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import device, echoes, inversion, threads
from qsmflow.qsm.kernels import b0_dir_from_affine


class _InvInputSpec(base.FFTStepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='local field in ppm of B0')
    in_mask = File(exists=True, mandatory=True, desc='mask of valid local field')
    method = traits.Either(None, traits.Str, default=None, usedefault=True,
                           desc='function name in qsmflow.qsm.inversion (None = default)')
    params = traits.Dict(usedefault=True, desc='keyword options of the method')
    in_magnitude = File(exists=True, desc='magnitude (3D or 4D, first echo used), for medi')
    in_noise_hz = File(exists=True, desc='standard error of the field in Hz, for medi')
    b0_tesla = traits.Float(desc='main field strength in T (converts in_noise_hz to ppm)')
    pass_name = traits.Str(desc="pass of a two-pass reconstruction ('strict' or 'filled'), "
                                'recorded in the provenance')


class _InvOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='susceptibility in ppm (unreferenced)')


class InvertDipole(SimpleInterface):
    """Solve the dipole inversion (local field ppm → χ ppm); B0 direction from the affine."""

    input_spec = _InvInputSpec
    output_spec = _InvOutputSpec

    def _run_interface(self, runtime):
        field, img = base.load(self.inputs.in_file)
        mask = base.load(self.inputs.in_mask)[0] > 0
        func = getattr(inversion, self.inputs.method or inversion.DEFAULT_METHOD)
        b0_dir = b0_dir_from_affine(img.affine)
        extra = {}
        if self.inputs.method == 'medi':
            if isdefined(self.inputs.in_magnitude):
                mag = base.load(self.inputs.in_magnitude)[0]
                extra['magnitude'] = mag[..., 0] if mag.ndim == 4 else mag
            if isdefined(self.inputs.in_noise_hz) and isdefined(self.inputs.b0_tesla):
                noise = echoes.hz_to_ppm(base.load(self.inputs.in_noise_hz)[0],
                                         self.inputs.b0_tesla)
                # the fit's standard error is 0 only where it was not computed: least weight
                worst = float(noise.max()) if noise.max() > 0 else 1.0
                extra['noise'] = np.where(noise > 0, noise, worst).astype(np.float32)
        report = func is inversion.tv  # the TV weight it used: chosen from the data by default
        params = {**self.inputs.params, **device.step_kwargs(func, self.inputs.device)}
        with threads.limit(self.inputs.num_threads):
            chi = func(field, mask, base.voxel_size(img), b0_dir, **extra, **params,
                       **({'return_info': True} if report else {}))
        chi, info = chi if report else (chi, None)
        steps = base.read_steps(self.inputs.in_file, self.inputs.in_mask)
        steps.append(base.step('dipole-inversion', func, params,
                               B0Direction=b0_dir.tolist(),
                               Weighting=sorted(extra) or None,
                               **({'Regularisation': info} if info else {}),
                               **({'Pass': self.inputs.pass_name}
                                  if isdefined(self.inputs.pass_name) else {})))
        out = fname_presuffix('chi.nii.gz', suffix='_ppm', newpath=runtime.cwd)
        self._results['out_file'] = base.save(chi, img, out, steps=steps, meta={'Units': 'ppm'})
        return runtime


class _CombineInputSpec(base.StepInputSpec):
    in_strict = File(exists=True, mandatory=True, desc='χ (ppm) reconstructed on the strict mask')
    in_filled = File(exists=True, mandatory=True, desc='χ (ppm) reconstructed on the filled mask')
    strict_mask = File(exists=True, mandatory=True, desc='mask of in_strict')
    filled_mask = File(exists=True, mandatory=True, desc='mask of in_filled (of the result)')
    align = traits.Bool(True, usedefault=True, desc='shift in_filled to in_strict first')


class _CombineOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='combined susceptibility in ppm (unreferenced)')


class CombineTwoPass(SimpleInterface):
    """χ of a two-pass reconstruction: strict where reliable, filled in the strict mask's holes."""

    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec

    def _run_interface(self, runtime):
        strict, img = base.load(self.inputs.in_strict)
        filled = base.load(self.inputs.in_filled)[0]
        ms = base.load(self.inputs.strict_mask)[0] > 0
        mf = base.load(self.inputs.filled_mask)[0] > 0
        params = {'align': bool(self.inputs.align)}
        with threads.limit(self.inputs.num_threads):
            chi, offset = inversion.combine_two_pass(strict, filled, ms, mf, **params)
        rec = base.step('two-pass-combination', inversion.combine_two_pass, params,
                        VoxelsFromStrict=int((ms & mf).sum()),
                        VoxelsFromFilled=int((mf & ~ms).sum()), OffsetPPM=offset)
        steps = base.read_steps(self.inputs.in_strict, self.inputs.in_filled) + [rec]
        out = fname_presuffix('chi.nii.gz', suffix='_twopass_ppm', newpath=runtime.cwd)
        self._results['out_file'] = base.save(chi, img, out, steps=steps, meta={'Units': 'ppm'})
        return runtime
