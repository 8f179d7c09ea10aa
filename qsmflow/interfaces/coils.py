# SPDX-License-Identifier: Apache-2.0
"""Combination of uncombined receive coils (MCPC-3D-S) before the echo fit."""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)

from qsmflow.interfaces import base


class _CombineCoilsInputSpec(BaseInterfaceInputSpec):
    coil_files = traits.List(traits.Tuple(traits.List(File(exists=True)),
                                          traits.List(File(exists=True))), mandatory=True,
                             desc='per coil: (magnitude files, phase files), one 3D per echo')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    phase_units = traits.Either(None, traits.Str, default=None, usedefault=True,
                                desc='BIDS Units of the coil phase ("rad", "arbitrary", None)')


class _CombineCoilsOutputSpec(TraitedSpec):
    mag_files = traits.List(File(exists=True),
                            desc='4D root-sum-of-squares magnitude (x, y, z, echo), a.u.')
    phase_files = traits.List(File(exists=True),
                              desc='4D combined phase (x, y, z, echo) in rad, offsets removed')


class CombineCoils(SimpleInterface):
    """MCPC-3D-S coil combination: per-coil echoes in, one 4D magnitude (a.u.) and phase
    (rad) out; the sidecars record the step."""

    input_spec = _CombineCoilsInputSpec
    output_spec = _CombineCoilsOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmflow.interfaces.megre import read_volumes
        from qsmflow.qsm.coil_combination import combine_coils_mcpc3ds
        from qsmflow.qsm.phase import to_radians

        coils = self.inputs.coil_files
        n_echo = len(self.inputs.echo_times)
        ref = nb.load(coils[0][0][0])

        def read(files):  # one preallocated stack per coil and part, NaN/Inf as 0
            return np.nan_to_num(read_volumes(files, n_echo), copy=False, nan=0.0,
                                 posinf=0.0, neginf=0.0)

        def load_coil(c):
            mags, phases = coils[c]
            phase = read(phases)
            return read(mags), to_radians(phase, self.inputs.phase_units, out=phase)

        params = {'echo_times_s': list(self.inputs.echo_times)}
        mag, phase = combine_coils_mcpc3ds(load_coil, len(coils), base.voxel_size(ref),
                                           **params)
        rec = base.step('coil-combination', combine_coils_mcpc3ds, params,
                        NumberOfCoils=len(coils), CombinedMagnitude='root-sum-of-squares',
                        CombinedPhase='magnitude-weighted complex sum, offsets removed')
        out = Path(runtime.cwd)
        self._results['mag_files'] = [base.save(mag, ref, out / 'combined_mag.nii.gz',
                                                steps=[rec])]
        self._results['phase_files'] = [base.save(phase, ref, out / 'combined_phase.nii.gz',
                                                  steps=[rec])]
        return runtime
