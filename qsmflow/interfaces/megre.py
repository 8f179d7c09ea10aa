# SPDX-License-Identifier: Apache-2.0
"""Read a multi-echo GRE acquisition into 4D magnitude and phase (rad)."""
from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm.kernels import b0_dir_from_affine
from qsmflow.qsm.phase import to_radians


class _LoadMEGREInputSpec(BaseInterfaceInputSpec):
    mag_files = traits.List(File(exists=True), mandatory=True, desc='magnitude, one file per echo')
    phase_files = traits.List(File(exists=True), mandatory=True, desc='phase, one file per echo')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    b0_tesla = traits.Float(mandatory=True, desc='main field strength in T')
    phase_units = traits.Either(None, traits.Str, default=None, usedefault=True,
                                desc='BIDS Units of the phase ("rad", "arbitrary" or None)')


class _LoadMEGREOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc='4D magnitude (x, y, z, echo), arbitrary units')
    phase = File(exists=True, desc='4D phase (x, y, z, echo) in rad, wrapped to [-pi, pi)')
    echo_times = traits.List(traits.Float, desc='echo times in s')
    b0_tesla = traits.Float(desc='main field strength in T')
    b0_dir = traits.List(traits.Float, desc='B0 unit vector in voxel index axes (from affine)')


class LoadMEGRE(SimpleInterface):
    """Stack per-echo magnitude and phase (rescaled to rad) into 4D float32 images."""

    input_spec = _LoadMEGREInputSpec
    output_spec = _LoadMEGREOutputSpec

    def _run_interface(self, runtime):
        ref = nb.load(self.inputs.mag_files[0])
        mag = np.stack([base.load(f)[0].reshape(ref.shape[:3]) for f in self.inputs.mag_files], -1)
        phase = np.stack([to_radians(base.load(f)[0].reshape(ref.shape[:3]),
                                     self.inputs.phase_units) for f in self.inputs.phase_files], -1)
        b0_dir = b0_dir_from_affine(ref.affine)
        rec = {'Step': 'input', 'EchoTime': list(self.inputs.echo_times),
               'MagneticFieldStrength': self.inputs.b0_tesla, 'B0Direction': b0_dir.tolist(),
               'PhaseUnits': self.inputs.phase_units or 'rad (from value range)'}
        for key, data in (('magnitude', mag), ('phase', phase)):
            out = fname_presuffix('megre.nii.gz', suffix=f'_{key}', newpath=runtime.cwd)
            self._results[key] = base.save(data, ref, out, steps=[rec])
        self._results.update(echo_times=list(self.inputs.echo_times),
                             b0_tesla=self.inputs.b0_tesla, b0_dir=b0_dir.tolist())
        return runtime
