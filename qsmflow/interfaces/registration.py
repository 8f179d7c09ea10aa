# SPDX-License-Identifier: Apache-2.0
"""Template registration with antspyx (rigid → affine → SyN), in-process."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits)

from qsmflow.interfaces import base

#: antspyx registration settings: rigid + affine with Mattes mutual information, then a
#: regularised SyN (small gradient step, smooth update and total fields), which keeps small
#: nuclei from being pulled by contrast differences between magnitude and template.
REGISTRATION = {'type_of_transform': 'SyNRA', 'aff_metric': 'mattes', 'syn_metric': 'mattes',
                'aff_iterations': (1000, 500, 250, 0), 'aff_shrink_factors': (6, 4, 2, 1),
                'aff_smoothing_sigmas': (3, 2, 1, 0), 'reg_iterations': (40, 20, 0),
                'grad_step': 0.05, 'flow_sigma': 6, 'total_sigma': 3}


def _threads(n: int) -> None:
    """Set ITK's thread count; use the platform threader (no persistent pool).

    ITK's default thread pool can deadlock in Nipype's forked MultiProc workers, so every
    ANTs call here uses plain per-call threads instead.
    """
    os.environ['ITK_GLOBAL_DEFAULT_THREADER'] = 'Platform'
    os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'] = str(max(1, int(n)))


def combined_magnitude(mag: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Root-sum-of-squares magnitude over echoes (a.u.), zero outside ``mask`` if given.

    Examples
    --------
    >>> m = np.ones((2, 2, 2, 4)); float(combined_magnitude(m)[0, 0, 0])
    2.0
    """
    rss = np.sqrt(np.sum(np.square(mag, dtype=np.float64), axis=-1)) if mag.ndim == 4 else mag
    if mask is not None:
        rss = np.where(mask, rss, 0.0)
    return rss.astype(np.float32)


def in_fresh_process(func, *args, **kwargs):
    """Run ``func`` in a freshly spawned interpreter and return its result.

    ITK keeps process-wide thread state that does not survive ``fork`` (Nipype's MultiProc
    workers are forked, possibly from a process that already used ANTs), so every ANTs
    call runs in its own spawned process (about a second of start-up).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:
        return pool.submit(func, *args, **kwargs).result()


def register(fixed_path, moving_path, out_dir, *, fixed_mask=None, nthreads: int = 1) -> dict:
    """Register ``moving`` to ``fixed`` (antspyx ``SyNRA``); save the transforms.

    Returns
    -------
    dict
        ``affine`` (.mat, moving → fixed), ``warp`` and ``inverse_warp`` (.nii.gz) paths.
    """
    return in_fresh_process(_register, str(fixed_path), str(moving_path), str(out_dir),
                            fixed_mask=str(fixed_mask) if fixed_mask else None,
                            nthreads=nthreads)


def _register(fixed_path, moving_path, out_dir, *, fixed_mask=None, nthreads=1) -> dict:
    _threads(nthreads)
    import ants

    fixed, moving = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
    if fixed_mask:
        fixed = fixed * ants.image_read(str(fixed_mask))
    reg = ants.registration(fixed, moving, outprefix=str(Path(out_dir) / 'reg_'),
                            random_seed=1, **REGISTRATION)
    out = {}
    warp = [p for p in reg['fwdtransforms'] if p.endswith('.nii.gz')]
    inv = [p for p in reg['invtransforms'] if p.endswith('.nii.gz')]
    mat = [p for p in reg['fwdtransforms'] if p.endswith('.mat')]
    for key, src, name in (('affine', mat, 'affine.mat'), ('warp', warp, 'warp.nii.gz'),
                           ('inverse_warp', inv, 'inverse_warp.nii.gz')):
        dest = Path(out_dir) / name
        shutil.copyfile(src[0], dest)
        out[key] = str(dest)
    return out


class _RegInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D multi-echo magnitude, a.u.')
    in_mask = File(exists=True, mandatory=True,
                   desc='brain mask of the magnitude (before background-removal erosion)')
    template = File(exists=True, mandatory=True, desc='template image (fixed)')
    template_mask = File(exists=True, desc='template brain mask')
    nthreads = traits.Int(1, usedefault=True, desc='ITK threads')


class _RegOutputSpec(TraitedSpec):
    moving = File(exists=True, desc='brain-masked combined magnitude (moving image), a.u.')
    affine = File(exists=True, desc='rigid+affine transform, native → template (ITK .mat)')
    warp = File(exists=True, desc='SyN displacement field, native → template (mm)')
    inverse_warp = File(exists=True, desc='inverse SyN displacement field (mm)')


class RegisterToTemplate(SimpleInterface):
    """Register the brain-masked combined magnitude to a template (rigid, affine, SyN)."""

    input_spec = _RegInputSpec
    output_spec = _RegOutputSpec

    def _run_interface(self, runtime):
        mag, img = base.load(self.inputs.in_magnitude)
        mask = base.load(self.inputs.in_mask)[0].reshape(mag.shape[:3]) > 0
        ref = img.slicer[..., 0] if mag.ndim == 4 else img
        moving = str(Path(runtime.cwd) / 'magnitude_combined.nii.gz')
        nb.Nifti1Image(combined_magnitude(mag, mask), ref.affine).to_filename(moving)
        out = register(self.inputs.template, moving, runtime.cwd,
                       fixed_mask=self.inputs.template_mask or None,
                       nthreads=self.inputs.nthreads)
        self._results.update(moving=moving, **out)
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image to resample')
    reference = File(exists=True, mandatory=True, desc='image defining the output grid')
    transforms = traits.List(File(exists=True), mandatory=True,
                             desc='ANTs transforms, the one next to the reference first')
    invert = traits.List(traits.Bool, desc='invert each transform (affines only)')
    interpolation = traits.Enum('genericLabel', 'linear', 'nearestNeighbor', usedefault=True,
                                desc='interpolator (genericLabel for label images)')
    nthreads = traits.Int(1, usedefault=True, desc='ITK threads')
    meta = traits.Dict(usedefault=True, desc='extra sidecar entries (e.g. SpatialReference)')


class _ApplyOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='resampled image on the reference grid')


class ApplyTransforms(SimpleInterface):
    """Resample an image through ANTs transforms (labels: generic-label interpolation)."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        invert = (list(self.inputs.invert) if isdefined(self.inputs.invert)
                  else [False] * len(self.inputs.transforms))
        data, version = in_fresh_process(
            _apply, self.inputs.reference, self.inputs.in_file, list(self.inputs.transforms),
            invert, self.inputs.interpolation, self.inputs.nthreads)
        ref = nb.load(self.inputs.reference)
        labels = self.inputs.interpolation != 'linear'
        dtype = np.int32 if labels else np.float32
        data = np.rint(data).astype(dtype) if labels else data
        steps = base.read_steps(self.inputs.in_file) + [{
            'Step': 'resampling', 'Software': f'antspyx {version}',
            'Interpolation': self.inputs.interpolation,
            'Transforms': [Path(t).name for t in self.inputs.transforms]}]
        out = str(Path(runtime.cwd) / ('resampled' + ''.join(Path(self.inputs.in_file).suffixes)))
        hdr_ref = ref.slicer[..., 0] if len(ref.shape) == 4 else ref
        self._results['out_file'] = base.save(data, hdr_ref, out, dtype=dtype, steps=steps,
                                              meta=dict(self.inputs.meta))
        return runtime


def _apply(reference, in_file, transforms, invert, interpolation, nthreads):
    """antspyx ``apply_transforms`` onto the reference grid; returns (array, version)."""
    _threads(nthreads)
    import ants

    fixed = ants.image_read(reference)
    if fixed.dimension == 4:
        fixed = ants.slice_image(fixed, axis=3, idx=0)
    moving = ants.image_read(in_file)
    out = ants.apply_transforms(fixed, moving, transforms, interpolator=interpolation,
                                whichtoinvert=invert)
    return out.numpy(), ants.__version__
