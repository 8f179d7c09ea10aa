# SPDX-License-Identifier: Apache-2.0
"""A participant's registration to the study template, composed with the study template's
one registration to a target template (the registration template or a custom atlas's)."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)


class _ThroughInputSpec(BaseInterfaceInputSpec):
    affine = File(exists=True, mandatory=True, desc='affine native → study template (ITK .mat)')
    warp = File(exists=True, mandatory=True, desc='SyN warp native → study template')
    inverse_warp = File(exists=True, mandatory=True, desc='inverse SyN warp')
    study_template = File(exists=True, mandatory=True, desc='study template image (moving)')
    target = File(exists=True, mandatory=True, desc='target template image (fixed)')
    target_mask = File(exists=True, desc='brain mask of the target template')
    target_name = traits.Str(mandatory=True, desc='identifier of the target template')
    nthreads = traits.Int(1, usedefault=True, nohash=True,
                          desc='threads allowed; registration uses REGISTRATION_THREADS')


class _ThroughOutputSpec(TraitedSpec):
    affine = File(exists=True, desc='affine native → study template (the input, unchanged)')
    warp = File(exists=True, desc='displacement field on the target grid: target → '
                                  'study template → affine-aligned native (mm)')
    inverse_warp = File(exists=True, desc='displacement field on the study template grid: '
                                          'affine-aligned native → study template → target')


class ThroughStudyTemplate(SimpleInterface):
    """Native → target transforms that pass through the study template.

    The study template → target registration is computed once and cached
    (:func:`qsmflow.atlases.study_template.study_transforms`); the participant's SyN warp and
    the study template's transform are composed into one displacement field per direction,
    so that the result has the form of a direct registration (an affine, a warp and an
    inverse warp, applied as before) and every later step (labels, refinement, χ in template
    space) is unchanged.
    """

    input_spec = _ThroughInputSpec
    output_spec = _ThroughOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.atlases.study_template import study_transforms
        from qsmflow.interfaces.registration import in_fresh_process

        tpl = study_transforms({'image': self.inputs.study_template}, self.inputs.target,
                               self.inputs.target_name, self.inputs.target_mask or None,
                               self.inputs.nthreads)
        cwd = Path(runtime.cwd)
        # points target → study template → (affine-aligned) native, on the target grid
        warp = in_fresh_process(_compose, self.inputs.target,
                                [tpl['warp'], tpl['affine'], self.inputs.warp],
                                [False, False, False], str(cwd / 'warp_'))
        # points (affine-aligned) native → study template → target, on the study grid
        inverse = in_fresh_process(_compose, self.inputs.study_template,
                                   [self.inputs.inverse_warp, tpl['affine'],
                                    tpl['inverse_warp']],
                                   [False, True, False], str(cwd / 'inverse_warp_'))
        self._results.update(affine=self.inputs.affine, warp=warp, inverse_warp=inverse)
        return runtime


def _compose(reference, transforms, invert, prefix) -> str:
    """antspyx: compose ``transforms`` into one displacement field on ``reference``'s grid."""
    from qsmflow.interfaces.registration import _threads

    _threads(1)
    import ants

    ref = ants.image_read(reference)
    if ref.dimension == 4:
        ref = ants.slice_image(ref, axis=3, idx=0)
    out = ants.apply_transforms(ref, ref, transforms, whichtoinvert=invert, compose=prefix)
    if not out:
        raise RuntimeError(f'antspyx could not compose {transforms}')
    return out
