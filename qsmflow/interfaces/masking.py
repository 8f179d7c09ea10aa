# SPDX-License-Identifier: Apache-2.0
"""Brain masking interface."""
from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import mask as qmask


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_mask = File(exists=True, desc='user-supplied mask (nonzero = brain); skips estimation')
    params = traits.Dict(usedefault=True, desc='keyword options of qsm.mask.brain_mask')


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='brain mask (uint8, 1 = brain)')


class BrainMask(SimpleInterface):
    """Brain mask from the first-echo magnitude (threshold + morphology), or a given mask."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        mag, img = base.load(self.inputs.in_magnitude)
        first = mag[..., 0] if mag.ndim == 4 else mag
        if self.inputs.in_mask:
            mask = base.load(self.inputs.in_mask)[0].reshape(first.shape) > 0
            rec = {'Step': 'masking', 'Algorithm': 'user-supplied', 'Source': self.inputs.in_mask}
        else:
            mask = qmask.brain_mask(first, base.voxel_size(img), **self.inputs.params)
            rec = base.step('masking', qmask.brain_mask, self.inputs.params, Input='echo-1 magnitude')
        out = fname_presuffix(self.inputs.in_magnitude, suffix='_mask', newpath=runtime.cwd)
        self._results['out_mask'] = base.save(mask, img.slicer[..., 0] if mag.ndim == 4 else img,
                                              out, dtype='uint8',
                                              steps=base.read_steps(self.inputs.in_magnitude) + [rec])
        return runtime


class _QualityMaskInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_phase = File(exists=True, mandatory=True, desc='4D wrapped phase (x, y, z, echo) in rad')
    in_mask = File(exists=True, mandatory=True, desc='brain mask to restrict')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    params = traits.Dict(usedefault=True, desc='keyword options of qsm.mask.quality_mask')


class _QualityMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='reliable part of the brain mask (uint8, 1 = kept)')


class QualityMask(SimpleInterface):
    """Remove voxels of unreliable phase (phase-quality map) from a brain mask."""

    input_spec = _QualityMaskInputSpec
    output_spec = _QualityMaskOutputSpec

    def _run_interface(self, runtime):
        mag, img = base.load(self.inputs.in_magnitude)
        phase = base.load(self.inputs.in_phase)[0]
        mask_data, mimg = base.load(self.inputs.in_mask)
        brain = mask_data.reshape(mag.shape[:3]) > 0
        if mag.ndim == 3:
            mag, phase = mag[..., None], phase[..., None]
        quality = qmask.quality_map(phase, mag, brain, base.voxel_size(img),
                                    echo_times_s=list(self.inputs.echo_times))
        mask = qmask.quality_mask(quality, brain, **self.inputs.params)
        rec = base.step('phase-quality-masking', qmask.quality_mask, self.inputs.params,
                        QualityMap='qsmflow.qsm.mask.quality_map',
                        VoxelsRemoved=int(brain.sum() - mask.sum()))
        out = fname_presuffix(self.inputs.in_mask, suffix='_quality', newpath=runtime.cwd)
        steps = base.read_steps(self.inputs.in_mask) + [rec]
        self._results['out_mask'] = base.save(mask, mimg, out, dtype='uint8', steps=steps)
        return runtime
