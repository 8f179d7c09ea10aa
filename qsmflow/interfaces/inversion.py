# SPDX-License-Identifier: Apache-2.0
"""Dipole inversion interface."""
from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import inversion
from qsmflow.qsm.kernels import b0_dir_from_affine


class _InvInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='local field in ppm of B0')
    in_mask = File(exists=True, mandatory=True, desc='mask of valid local field')
    method = traits.Either(None, traits.Str, default=None, usedefault=True,
                           desc='function name in qsmflow.qsm.inversion (None = default)')
    params = traits.Dict(usedefault=True, desc='keyword options of the method')


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
        chi = func(field, mask, base.voxel_size(img), b0_dir, **self.inputs.params)
        steps = base.read_steps(self.inputs.in_file, self.inputs.in_mask)
        steps.append(base.step('dipole-inversion', func, self.inputs.params,
                               B0Direction=b0_dir.tolist()))
        out = fname_presuffix('chi.nii.gz', suffix='_ppm', newpath=runtime.cwd)
        self._results['out_file'] = base.save(chi, img, out, steps=steps, meta={'Units': 'ppm'})
        return runtime
