# SPDX-License-Identifier: Apache-2.0
"""Brain masking interface."""
from __future__ import annotations


from nipype.interfaces.base import (
    File, SimpleInterface, TraitedSpec, isdefined, traits)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import brain_extraction
from qsmflow.qsm import mask as qmask
from qsmflow.qsm import threads

LOGGER = base.LOGGER

#: Brain-mask algorithms: name -> (qsm function, the magnitude it is given).
BRAIN_MASK_ALGORITHMS = {
    'adaptive': (brain_extraction.extract_brain, 'root sum of squares of the echo magnitudes'),
    'threshold': (qmask.brain_mask, 'echo-1 magnitude'),
}


class _BrainMaskInputSpec(base.StepInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_mask = File(exists=True, desc='user-supplied mask (nonzero = brain), any grid in the '
                                     'same scanner space; skips estimation')
    algorithm = traits.Enum(*BRAIN_MASK_ALGORITHMS, usedefault=True,
                            desc="'adaptive': qsm.brain_extraction.extract_brain (scalp, skull, "
                                 "face and neck removed); 'threshold': qsm.mask.brain_mask "
                                 '(magnitude threshold + morphology)')
    params = traits.Dict(usedefault=True, desc='keyword options of the algorithm function')


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='brain mask (uint8, 1 = brain)')


class BrainMask(SimpleInterface):
    """Brain mask from the magnitude (see ``algorithm``), or a given mask; with its QC.

    A given mask (``in_mask``) is used as it is, brought onto the magnitude's grid by
    nearest neighbour through the two image affines when the grids differ (same scanner
    space assumed; no registration). The step record carries ``QC``
    (:func:`mask_check`: volume in mL, share within 10 mm of the head surface, and a
    warning, also logged, when the mask looks like a head).
    """

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        mag, img = base.load(self.inputs.in_magnitude)
        first = mag[..., 0] if mag.ndim == 4 else mag
        ref = img.slicer[..., 0] if mag.ndim == 4 else img
        if isdefined(self.inputs.in_mask) and self.inputs.in_mask:
            mask, rec = user_mask(self.inputs.in_mask, ref)
        else:
            func, source = BRAIN_MASK_ALGORITHMS[self.inputs.algorithm]
            image = first if func is qmask.brain_mask else _root_sum_of_squares(mag)
            with threads.limit(self.inputs.num_threads):
                mask = func(image, base.voxel_size(img), **self.inputs.params)
            rec = base.step('masking', func, self.inputs.params, Input=source)
        rec['QC'] = mask_check(mask, first, base.voxel_size(img))
        out = fname_presuffix(self.inputs.in_magnitude, suffix='_mask', newpath=runtime.cwd)
        self._results['out_mask'] = base.save(mask, ref, out, dtype='uint8',
                                              steps=base.read_steps(self.inputs.in_magnitude) + [rec])
        return runtime


def _root_sum_of_squares(mag):
    """Root sum of squares over the echoes (4D) as float32; a 3D magnitude as it is."""
    if mag.ndim == 3:
        return mag
    return brain_extraction.root_sum_of_squares(mag)


def mask_check(mask, magnitude, voxel_size, source='masking') -> dict:
    """:func:`qsmflow.qsm.brain_extraction.mask_qc` of a brain mask; logs its warning
    (``qsmflow: masking: …``, as the run's summary names the step)."""
    qc = brain_extraction.mask_qc(mask, magnitude, voxel_size)
    if qc['Warning']:
        LOGGER.warning('qsmflow: %s: %s', source, qc['Warning'])
    return qc


def user_mask(path, ref_img) -> tuple:
    """A user's mask on the grid of ``ref_img`` and its provenance record.

    The mask (nonzero = brain; a 4D file must hold a single volume) is resampled by
    nearest neighbour through the two affines (:func:`qsmflow.qsm.regions.resample_labels`)
    when its grid differs from ``ref_img``'s.

    Raises
    ------
    ValueError
        For a mask with several volumes or one that is empty on the target grid.
    """
    import nibabel as nb
    import numpy as np

    from qsmflow.qsm.regions import resample_labels

    img = nb.load(path)
    if len(img.shape) > 3 and int(np.prod(img.shape[3:])) != 1:
        raise ValueError(f'brain mask {path} has {int(np.prod(img.shape[3:]))} volumes; '
                         'give a 3D mask')
    data = np.asarray(img.dataobj).reshape(img.shape[:3])
    src = np.nan_to_num(data.astype(np.float32)) != 0
    same = tuple(src.shape) == tuple(ref_img.shape[:3]) and np.allclose(
        img.affine, ref_img.affine, atol=1e-3)
    mask = src if same else resample_labels(src.astype(np.int32), img.affine, ref_img.affine,
                                            ref_img.shape[:3]) > 0
    if not mask.any():
        raise ValueError(f'brain mask {path} has no brain voxel on the GRE grid (wrong '
                         'scanner space or field of view?)')
    rec = {'Step': 'masking', 'Algorithm': 'user-supplied', 'Source': str(path),
           'Resampled': (None if same else
                         'nearest neighbour through the image affines (no registration)'),
           'Voxels': int(mask.sum())}
    return mask, rec


class _QualityMaskInputSpec(base.StepInputSpec):
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
        quality, brain, mimg, _ = _quality_map(self.inputs)
        with threads.limit(self.inputs.num_threads):
            mask = qmask.quality_mask(quality, brain, **self.inputs.params)
        rec = base.step('phase-quality-masking', qmask.quality_mask, self.inputs.params,
                        QualityMap='qsmflow.qsm.mask.quality_map',
                        VoxelsRemoved=int(brain.sum() - mask.sum()))
        out = fname_presuffix(self.inputs.in_mask, suffix='_quality', newpath=runtime.cwd)
        steps = base.read_steps(self.inputs.in_mask) + [rec]
        self._results['out_mask'] = base.save(mask, mimg, out, dtype='uint8', steps=steps)
        return runtime


def _quality_map(inputs):
    """``(quality, mask, mask image, voxel size)`` from the magnitude/phase/mask inputs."""
    mag, img = base.load(inputs.in_magnitude)
    phase = base.load(inputs.in_phase)[0]
    mask_data, mimg = base.load(inputs.in_mask)
    mask = mask_data.reshape(mag.shape[:3]) > 0
    if mag.ndim == 3:
        mag, phase = mag[..., None], phase[..., None]
    vox = base.voxel_size(img)
    with threads.limit(inputs.num_threads):
        quality = qmask.quality_map(phase, mag, mask, vox,
                                    echo_times_s=list(inputs.echo_times))
    return quality, mask, mimg, vox


class _StrictMaskInputSpec(base.StepInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_phase = File(exists=True, mandatory=True, desc='4D wrapped phase (x, y, z, echo) in rad')
    in_mask = File(exists=True, mandatory=True, desc='generous (filled) mask to restrict')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    params = traits.Dict(usedefault=True, desc='keyword options of qsm.mask.strict_mask')


class StrictMask(SimpleInterface):
    """Strict mask of a two-pass reconstruction: the filled mask minus unreliable phase."""

    input_spec = _StrictMaskInputSpec
    output_spec = _QualityMaskOutputSpec

    def _run_interface(self, runtime):
        quality, filled, mimg, vox = _quality_map(self.inputs)
        with threads.limit(self.inputs.num_threads):
            mask = qmask.strict_mask(quality, filled, vox, **self.inputs.params)
        rec = base.step('strict-masking', qmask.strict_mask, self.inputs.params,
                        QualityMap='qsmflow.qsm.mask.quality_map',
                        VoxelsRemoved=int(filled.sum() - mask.sum()))
        out = fname_presuffix(self.inputs.in_mask, suffix='_strict', newpath=runtime.cwd)
        steps = base.read_steps(self.inputs.in_mask) + [rec]
        self._results['out_mask'] = base.save(mask, mimg, out, dtype='uint8', steps=steps)
        return runtime
