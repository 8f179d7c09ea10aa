# SPDX-License-Identifier: Apache-2.0
"""Template registration with antspyx (rigid → affine → SyN), in a fresh process per call.

Registration is bitwise reproducible: the same inputs give the same transforms in every run,
whatever ``--nprocs``/``--omp-nthreads`` say. Two things make ANTs vary otherwise (measured
with antspyx 0.6.3 on the tiny phantom): the random jitter of the affine stages' "regular"
metric sampling, seeded from the clock unless a seed is given, and ITK's multi-threaded
Mattes mutual information, which merges the threads' derivative buffers in the order the
threads finish, so that with two threads no two runs agree even with a fixed seed (and the
SyN stage, repeatable at a fixed thread count, changes with the count). Every registration
therefore runs with :data:`RANDOM_SEED` on :data:`REGISTRATION_THREADS` thread(s), unless
the user trades that for speed (``--fast-registration``: every allowed thread,
:func:`registration_threads`; recorded in the sidecars).
Resampling (:class:`ApplyTransforms`) does not depend on the thread count and keeps its
threads.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits)

from qsmflow.interfaces import base
# the calls that run in a fresh process live in a module without Nipype (a lighter child);
# RANDOM_SEED, LINEAR_TYPES, in_fresh_process and _threads are used from here too
from qsmflow.interfaces.ants_calls import (  # noqa: F401
    LINEAR_TYPES, RANDOM_SEED, apply_to_reference, in_fresh_process, register_images)
from qsmflow.interfaces.ants_calls import prepare_ants as _threads  # noqa: F401
from qsmflow.qsm.blocks import block_affine, block_factors, block_mean

#: antspyx registration settings: rigid + affine with Mattes mutual information, then a
#: regularised SyN (small gradient step, smooth update and total fields). The total
#: field's smoothing is what holds a deformation back, and what keeps small nuclei from
#: being pulled by the contrast differences between magnitude and template. Until
#: 2026-12-06 it was σ² 3 voxels² (gradient step 0.05), and a subject whose anatomy
#: differs from the template by more than a few millimetres was barely warped; now σ² 2
#: with step 0.1. Measured 2026-12-06 offline on the pipeline's own inputs (magnitude, χ,
#: atlas; the pipeline's χ refinement after it), mean / least Dice of the 18 nuclei after
#: the refinement, old → now (σ² 1 in brackets), sub-01 and sub-02:
#:
#: - 1 mm real-anatomy phantom with a larger deformation (5 mm peak at 40–100 mm
#:   wavelengths, rotations to 10°, scale ±8 %, Jacobian 0.72–1.33 at the 1st–99th
#:   percentile), seed 5: 0.890 / 0.743 → 0.903 / 0.789 (0.911 / 0.842) and 0.856 / 0.724 →
#:   0.905 / 0.834 (0.914 / 0.827); thick-skull head, seed 8: 0.894 / 0.734 → 0.908 / 0.820
#:   (0.913 / 0.818) and 0.884 / 0.743 → 0.906 / 0.824 (0.909 / 0.822);
#: - the usual deformation (3 mm peak, 70–160 mm): thick-skull seed 1 0.915 / 0.793 →
#:   0.918 / 0.801 (0.919 / 0.804) and 0.926 / 0.818 → 0.925 / 0.821; template head seed 6
#:   0.930 / 0.852 → 0.930 / 0.868 and 0.927 / 0.849 → 0.925 / 0.811 (0.925 / 0.816);
#: - the 2 mm fixture of ``tests/test_real_anatomy_tables.py``: 0.898 / 0.741 → 0.889 /
#:   0.690 (0.878 / 0.643) and 0.896 / 0.647 → 0.889 / 0.629 (0.888 / 0.647);
#: - the tiny ellipsoid phantom's head to its 3 mm template, labels without refinement:
#:   0.989 / 0.909 → 0.986 / 0.909, but 0.873 / 0.667 at σ² 1: there the magnitude's
#:   contrast pulls the nuclei, hence not σ² 1.
#: antspyx's ``SyNRA`` fixes its rigid and affine stages itself (convergence
#: 2100×1200×1200×0, shrink factors 4×2×2×1, σ 3×2×1×0 voxels): the ``aff_iterations``,
#: ``aff_shrink_factors`` and ``aff_smoothing_sigmas`` here have no effect (antspyx 0.6).
#: ``brain_margin_mm`` (qsmflow's, not antspyx's; only with a fixed mask): every stage runs
#: on the fixed image cropped to its brain mask's bounding box grown by 10 mm, and the warps
#: are put back on the fixed image's whole grid, zero outside the box
#: (:func:`~qsmflow.interfaces.ants_calls.register_images`). Measured 2026-12-05 (2-core
#: machine; the ``register`` and ``ApplyTransforms`` calls of the pipeline; README,
#: Performance > Registration): CPU time of the 1 mm bench 6.2–7.3 → 4.9–5.8 s (quiet
#: window, 7 runs each), mean / least Dice of
#: the atlas nuclei 0.869 / 0.722 → 0.890 / 0.806 on it, 0.982 / 0.984 → 0.992 / 0.992 (least
#: 0.839 / 0.875 → 0.938 / 0.938) on the tiny demo, 0.904 / 0.809 → 0.912 / 0.821 (least
#: 0.774 / 0.632 → 0.774 / 0.615) on the 2 mm real-anatomy phantom.
REGISTRATION = {'type_of_transform': 'SyNRA', 'aff_metric': 'mattes', 'syn_metric': 'mattes',
                'aff_iterations': (1000, 500, 250, 0), 'aff_shrink_factors': (6, 4, 2, 1),
                'aff_smoothing_sigmas': (3, 2, 1, 0), 'reg_iterations': (40, 20, 0),
                'grad_step': 0.1, 'flow_sigma': 6, 'total_sigma': 2, 'brain_margin_mm': 10.0}

#: The linear stages of :data:`REGISTRATION_QUICK`, each from the result of the one
#: before: rigid, then affine (Mattes mutual information; the first from the
#: images' centres of mass), on levels of the fixed image's grid near ``levels_mm``
#: (shrink factor ``round(level / voxel size)``, at least 1: 4 and 2 on the default 2 mm
#: template, 3 and 1 on a 3 mm one). antspyx's ``SyNRA`` (:data:`REGISTRATION`) runs rigid,
#: then affine, each at 1/4, 1/2, 1/2 and full resolution: two thirds of ANTs' time.
REGISTRATION_LINEAR = (
    {'type_of_transform': 'Rigid', 'aff_metric': 'mattes', 'aff_iterations': (1000,),
     'levels_mm': (8.0,), 'aff_smoothing_sigmas': (2,)},
    {'type_of_transform': 'Affine', 'aff_metric': 'mattes', 'aff_iterations': (1000, 500),
     'levels_mm': (8.0, 4.0), 'aff_smoothing_sigmas': (2, 1)})

#: A cheaper pyramid (issue 19; an option, not the default): the linear stages of
#: :data:`REGISTRATION_LINEAR`, then the SyN of :data:`REGISTRATION`. Bitwise reproducible
#: like it. Measured 2026-12-05 (2-core machine, loaded): the 1 mm phantom head to the
#: 2 mm template in 10.7 s of CPU instead of 13.0 s (``python -m qsmflow.bench.registration
#: --pyramid quick``); mean Dice of the atlas labels on the tiny demo 0.975 / 0.973 against
#: 0.983 / 0.985 (an affine without the rigid stage before it: 0.94 / 0.90, and one run
#: of 0.80), least Dice (the dentate) 0.788 / 0.750 against 0.839 / 0.875 (measured
#: 2026-12-05 10:00); on the 2 mm real-anatomy phantom see the README. Hence not the
#: default; no cheaper pyramid tried held Dice (README, Performance). Those numbers are
#: without ``brain_margin_mm``, which it takes from :data:`REGISTRATION`; with it (measured
#: 2026-12-05 19:20, loaded): mean Dice 0.996 / 0.998 (least 0.970 / 0.970) on the tiny
#: demo, 0.915 / 0.815 (least 0.786 / 0.615) on the 2 mm real-anatomy phantom, 0.888
#: (least 0.784) on the 1 mm bench, in 3.8 s of CPU instead of 5.0 s.
REGISTRATION_QUICK = {**{k: v for k, v in REGISTRATION.items() if not k.startswith('aff_')},
                      'type_of_transform': 'SyNOnly', 'linear': REGISTRATION_LINEAR}

#: Registration settings by ``--registration-pyramid`` name.
PYRAMIDS = {'default': REGISTRATION, 'quick': REGISTRATION_QUICK}

#: A run brought to its session's reference run (:mod:`qsmflow.interfaces.run_registration`):
#: rigid, Mattes mutual information, on levels near 8 and 4 mm of the reference run's grid
#: (as ``levels_mm`` of :data:`REGISTRATION_LINEAR`). Measured 2026-12-05 on the 1 mm phantom
#: head against itself moved by 3°/2°/3.6 mm (and by 12°/8°/17.9 mm) with noise added: 3.0 s
#: (3.8 s) of CPU, largest error over the brain 0.02 mm; levels 8, 4 and 2 mm: 9.8 s, 0.003 mm;
#: antspyx's ``Rigid`` on the full pyramid: 23.8 s, 0.002 mm.
RIGID_TO_RUN = {'type_of_transform': 'Rigid', 'aff_metric': 'mattes',
                'aff_iterations': (1000, 500), 'levels_mm': (8.0, 4.0),
                'aff_smoothing_sigmas': (2, 1)}

#: ITK threads of every registration, whatever the caller allows. With more than one
#: thread the Mattes metric's result depends on thread timing (see the module docstring).
#: The cost, for the 1 mm phantom head on the 2 mm template: 16–20 s of CPU time with one
#: thread or two; two threads run together about half of the time, so a second idle core
#: would cut the node's wall time by about a third (to ~12 s from ~18 s). Nothing is lost
#: when the other cores are busy with other nodes or participants.
REGISTRATION_THREADS = 1


def registration_threads(nthreads: int, fast: bool = False) -> int:
    """ITK threads of a registration the caller allows ``nthreads`` for: at most
    :data:`REGISTRATION_THREADS` (bitwise reproducible), or all of them with ``fast``
    (``--fast-registration``: faster, but the result varies from run to run)."""
    nthreads = max(1, int(nthreads))
    return nthreads if fast else min(nthreads, REGISTRATION_THREADS)


def combined_magnitude(mag: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Root-sum-of-squares magnitude over echoes (a.u.), zero outside ``mask`` if given.

    Examples
    --------
    >>> m = np.ones((2, 2, 2, 4)); float(combined_magnitude(m)[0, 0, 0])
    2.0
    """
    from qsmflow.qsm.brain_extraction import root_sum_of_squares  # bitwise, in slabs

    rss = root_sum_of_squares(mag) if mag.ndim == 4 else mag
    if mask is not None:
        rss = np.where(mask, rss, 0.0)
    return rss.astype(np.float32)


def register(fixed_path, moving_path, out_dir, *, fixed_mask=None, nthreads: int = 1,
             settings: dict | None = None, fast: bool = False) -> dict:
    """Register ``moving`` to ``fixed`` with antspyx; save the transforms (reproducibly).

    Parameters
    ----------
    fixed_path, moving_path : str or Path
        Fixed (template) and moving images.
    out_dir : str or Path
        Folder for the transforms.
    fixed_mask : str or Path, optional
        Brain mask multiplied into the fixed image.
    nthreads : int
        Threads the caller allows; the registration uses at most
        :data:`REGISTRATION_THREADS` of them, so that its result does not depend on it.
    settings : dict, optional
        ``ants.registration`` keyword arguments (default :data:`REGISTRATION`).
    fast : bool
        Use all ``nthreads`` (:func:`registration_threads`): faster, not reproducible.

    Returns
    -------
    dict
        ``affine`` (.mat, moving → fixed), ``warp`` and ``inverse_warp`` (.nii.gz; not for
        a linear ``type_of_transform`` such as :data:`RIGID_TO_RUN`'s) paths and the antspyx
        ``version``.
    """
    return in_fresh_process(register_images, str(fixed_path), str(moving_path), str(out_dir),
                            fixed_mask=str(fixed_mask) if fixed_mask else None,
                            nthreads=registration_threads(nthreads, fast),
                            settings=dict(REGISTRATION if settings is None else settings))


def write_moving(in_magnitude, in_mask, out_path, *, voxel_mm: float | None = None) -> str:
    """Write the moving image of a registration: the root-sum-of-squares magnitude over
    echoes (a.u.) inside the brain mask, on the magnitude's grid or, with ``voxel_mm``, as
    block means on the coarsest grid of whole blocks whose voxels are at most ``voxel_mm``
    (:func:`qsmflow.qsm.blocks.block_factors`); return its path."""
    mag, img = base.load(in_magnitude)
    mask = base.load(in_mask)[0].reshape(mag.shape[:3]) > 0
    ref = img.slicer[..., 0] if mag.ndim == 4 else img
    moving, affine = combined_magnitude(mag, mask), ref.affine
    if voxel_mm is not None:
        factors = block_factors(ref.header.get_zooms()[:3], voxel_mm)
        moving, affine = block_mean(moving, factors), block_affine(affine, factors)
    nb.Nifti1Image(moving, affine).to_filename(out_path)
    return str(out_path)


#: Finest grid (mm) a template registration runs on: a finer template (a 1 mm or 0.7 mm T1w
#: given as ``--atlas-template``) is block-averaged to the coarsest grid of whole blocks
#: with voxels of at most this (:func:`coarse_fixed`). The magnitude registration places
#: the brain; the χ-driven refinement places the nuclei on the atlas's own grid. Measured
#: 2026-12-06 on the 1 mm real-anatomy phantom (thick-skull head, seed 1, two participants,
#: custom atlas on a 1 mm MNI152NLin2009cAsym T1w (res-02 upsampled; the real res-01 is not
#: vendored) without its mask): registered at 1 mm, 124-135 s per magnitude registration,
#: refined labels mean Dice 0.917 / 0.927 (least 0.797 / 0.824), table mean |error| 0.0025 /
#: 0.0030 ppm; on its 2 mm block means 14.6-14.8 s, 0.915 / 0.926 (least 0.800 / 0.816),
#: 0.0027 / 0.0030 ppm (the res-02 template itself: 15 s, 0.915 / 0.926, 0.793 / 0.818).
REGISTRATION_MIN_VOXEL_MM = 2.0


def coarse_fixed(template, template_mask, out_dir, *,
                 voxel_mm: float = REGISTRATION_MIN_VOXEL_MM) -> tuple:
    """The fixed image (and mask) of a registration on a grid no finer than ``voxel_mm``.

    A template whose voxels are all coarser than half of ``voxel_mm`` is returned as is (the
    default res-02 templates: unchanged, bit for bit); a finer one is block-averaged
    (:func:`qsmflow.qsm.blocks.block_mean`; the mask: blocks at least half inside) into
    ``out_dir``. The transforms of a registration live in world coordinates, so they apply
    to the template's own grid and to its atlases as before.

    Returns
    -------
    (str, str or None)
        Paths of the fixed image and mask.
    """
    img = nb.load(template)
    factors = block_factors(img.header.get_zooms()[:3], voxel_mm)
    if factors == (1, 1, 1):
        return str(template), (str(template_mask) if template_mask else None)
    out_dir = Path(out_dir)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    affine = block_affine(img.affine, factors)
    fixed = out_dir / 'template_coarse.nii.gz'
    nb.Nifti1Image(block_mean(data, factors), affine).to_filename(fixed)
    mask = None
    if template_mask:
        mimg = nb.load(template_mask)
        inside = (np.asarray(mimg.dataobj).reshape(mimg.shape[:3]) > 0).astype(np.float32)
        mask = out_dir / 'template_coarse_mask.nii.gz'
        nb.Nifti1Image((block_mean(inside, factors) >= 0.5).astype(np.uint8),
                       affine).to_filename(mask)
    return str(fixed), (str(mask) if mask else None)


def template_voxel_mm(template) -> float:
    """The largest voxel size (mm) of a template image: the grid a registration to it
    resolves, to which :func:`write_moving` averages the moving image.

    Averaging a finer moving image to it (2 × 2 × 2 blocks of a 1 mm head for a 2 mm
    template) is the anti-aliased image the metric samples at the template's grid points.
    Measured 2026-12-05 on the 1 mm real-anatomy phantom (MNI152NLin2009cAsym res-02,
    CIT168 + dentate labels, seeds 0 and 1, two participants each): CPU time of the
    default registration 27–32 s → 16.5–17.3 s, mean Dice of the atlas labels 0.893 /
    0.779 / 0.809 / 0.894 → 0.898 / 0.825 / 0.822 / 0.904, least Dice 0.81 / 0.55 / 0.67
    / 0.80 → 0.82 / 0.66 / 0.70 / 0.82.
    """
    return float(max(nb.load(template).header.get_zooms()[:3]))


class _RegInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D multi-echo magnitude, a.u.')
    in_mask = File(exists=True, mandatory=True,
                   desc='brain mask of the magnitude (before background-removal erosion)')
    template = File(exists=True, mandatory=True, desc='template image (fixed)')
    template_mask = File(exists=True, desc='template brain mask')
    # nohash: the result does not depend on it, so a rerun with other --nprocs reuses it
    nthreads = traits.Int(1, usedefault=True, nohash=True,
                          desc='threads allowed; registration uses REGISTRATION_THREADS')
    fast = traits.Bool(False, usedefault=True,
                       desc='use all nthreads: faster, not bitwise reproducible')
    pyramid = traits.Enum(*PYRAMIDS, usedefault=True,
                          desc='registration settings (PYRAMIDS; --registration-pyramid)')


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
        fixed, fixed_mask = coarse_fixed(self.inputs.template,
                                         self.inputs.template_mask or None, runtime.cwd)
        moving = write_moving(self.inputs.in_magnitude, self.inputs.in_mask,
                              Path(runtime.cwd) / 'magnitude_combined.nii.gz',
                              voxel_mm=template_voxel_mm(fixed))
        out = register(fixed, moving, runtime.cwd, fixed_mask=fixed_mask,
                       nthreads=self.inputs.nthreads, fast=self.inputs.fast,
                       settings=PYRAMIDS[self.inputs.pyramid])
        self._results.update(moving=moving, **{k: out[k] for k in (
            'affine', 'warp', 'inverse_warp')})
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image to resample')
    reference = File(exists=True, mandatory=True, desc='image defining the output grid')
    transforms = traits.List(File(exists=True), mandatory=True,
                             desc='ANTs transforms, the one next to the reference first')
    invert = traits.List(traits.Bool, desc='invert each transform (affines only)')
    interpolation = traits.Enum('genericLabel', 'linear', 'nearestNeighbor', usedefault=True,
                                desc='interpolator (genericLabel for label images)')
    # nohash: resampling gives the same result with any number of threads
    nthreads = traits.Int(1, usedefault=True, nohash=True, desc='ITK threads')
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
            apply_to_reference, self.inputs.reference, self.inputs.in_file,
            list(self.inputs.transforms), invert, self.inputs.interpolation, self.inputs.nthreads)
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
