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
