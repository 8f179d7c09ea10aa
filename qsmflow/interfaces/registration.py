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
    LINEAR_TYPES, RANDOM_SEED, apply_to_reference, in_fresh_process, refine_chi,
    register_images)
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


#: antspyx settings of the χ-driven refinement (:class:`RefineNuclei`): SyN only, from the
#: identity (the magnitude registration has aligned the brain), local cross-correlation
#: (radius 2 voxels: blind to the scale and offset of χ against the prior), on the coarse
#: levels of a 4-2-1 pyramid only, with smooth update and total fields so that nuclei move
#: as a whole instead of being reshaped by noise. Measured on 2026-12-04 on the 2 mm
#: real-anatomy phantom (2 participants, CIT168 + dentate, SNR 100; qsmflow.phantom.anatomy;
#: sub-01 / sub-02): mean Dice of the 18 nuclei labels 0.904 / 0.809 without, 0.892 / 0.894
#: with these settings (flow/total σ 6/3: 0.886 / 0.891; 0 iterations at full resolution
#: changed to 10: Dice 0.899 / 0.915 but table error 0.0103 / 0.0063 ppm and 10× the time);
#: table mean |error| 0.0106 / 0.0101 ppm without, 0.0097 / 0.0055 with.
REFINEMENT = {'type_of_transform': 'SyNOnly', 'initial_transform': 'Identity',
              'syn_metric': 'CC', 'syn_sampling': 2, 'reg_iterations': (40, 20, 0),
              'grad_step': 0.1, 'flow_sigma': 8, 'total_sigma': 4}

#: Iterations of the refinement's full-resolution level when the χ map resolves it (voxels
#: of at most :data:`FINE_LEVEL_MAX_VOXEL_MM`); at coarser χ the level only fits the
#: interpolation of the coarse voxels and stays at 0 (:data:`REFINEMENT`). Measured on
#: 2026-12-05 on the 1 mm real-anatomy phantom (seed 0, 2 participants, the CLI with the
#: custom atlas, both participants at once on 2 cores, load ~2): 5 iterations gave mean Dice
#: 0.922 / 0.924, least 0.85 / 0.83, table mean |error| 0.0076 / 0.0065 ppm, largest 17 % /
#: 11 %, in 79 / 94 s per refinement (0 iterations: 0.888 / 0.903, least 0.77 / 0.71,
#: 29-38 s; 10 iterations, offline: 0.928 / 0.933, least 0.84 / 0.86, 164-176 s).
FINE_LEVEL_ITERATIONS = 5

#: Largest voxel edge (mm) of the χ map for which the refinement runs its full-resolution
#: level (:data:`FINE_LEVEL_ITERATIONS`) and takes :data:`FINE_LEVEL_GRAD_STEP`.
FINE_LEVEL_MAX_VOXEL_MM = 1.2

#: SyN gradient step of the refinement when it runs its full-resolution level (antspyx's
#: default; :data:`REFINEMENT`'s 0.1 elsewhere). Measured offline on the 1 mm real-anatomy
#: phantom, the runs' own χ maps (TV's second pass) and labels, 2026-12-06, least / mean
#: Dice with 0.1 → 0.2: template head seed 1 sub-01 0.782 / 0.901 → 0.800 / 0.912, sub-02
#: 0.810 / 0.927 → 0.827 / 0.926; thick-skull seed 1 sub-01 0.778 / 0.900 → 0.789 / 0.912;
#: thick-skull seed 0 sub-02 0.858 / 0.928 → 0.871 / 0.933; the same time. Session 13 found
#: the same on the one-pass χ (least Dice up on all four participants of seeds 1 and 2, table
#: errors the same or lower) but a loss on the 2 mm fixture (mean 0.897 → 0.884, least 0.74 →
#: 0.64), where the refinement has no full-resolution level: 2 mm keeps 0.1. Raised to 0.3
#: with :data:`FINE_LEVEL_TOTAL_SIGMA` on 2026-12-07 (measured there).
FINE_LEVEL_GRAD_STEP = 0.3

#: SyN total-field variance (voxels²) of the refinement when it runs its full-resolution
#: level (:data:`REFINEMENT`'s 4 elsewhere). The refinement's CC metric converges within
#: its iterations (80 × 40 × 5, or a fourth level, give the labels of 40 × 20 × 5), so what
#: limits it is how far the smoothing lets nuclei move apart from each other. Measured on
#: 2026-12-07 offline (the pipeline's ``RefineNuclei`` and ``ApplyTransforms`` on each run's
#: own χ, which reproduce the pipeline's labels to the last digit), 1 mm real-anatomy
#: phantom, mean / least Dice of the 18 nuclei and the table's mean |error| (ppm), σ² 4 and
#: step 0.2 (before) → σ² 3 and step 0.3 (now):
#:
#: - larger deformation (5 mm at 40–100 mm, rotations to 10°, scale ±8 %), template head,
#:   seed 11: 0.896 / 0.749 / 0.0044 → 0.921 / 0.818 / 0.0040 and 0.923 / 0.816 / 0.0064 →
#:   0.925 / 0.835 / 0.0065; thick-skull seed 12: 0.909 / 0.803 / 0.0023 → 0.918 / 0.839 /
#:   0.0021 and 0.927 / 0.824 / 0.0028 → 0.926 / 0.826 / 0.0025;
#: - the usual deformation, thick-skull seed 1: 0.919 / 0.801 / 0.0027 → 0.923 / 0.789 /
#:   0.0026 (its left pars compacta, 0.78–0.80 in every variant since session 13) and
#:   0.925 / 0.824 / 0.0031 → 0.927 / 0.818 / 0.0032; template head seed 0: 0.932 / 0.848 /
#:   0.0033 → 0.936 / 0.852 / 0.0033 and 0.930 / 0.840 / 0.0040 → 0.929 / 0.833 / 0.0041.
#:
#: σ² 2 at step 0.3 did as well (least 0.805 / 0.833 / 0.846 / 0.831 / 0.787 / 0.835) with
#: table errors 0.0002–0.0003 ppm higher; σ² 2 at step 0.2: least 0.775 / 0.824 / 0.828 /
#: 0.823; σ² 0 (antspyx's default): least 0.82–0.85 but the largest table error 13–15 %
#: (against 5–9 %).
FINE_LEVEL_TOTAL_SIGMA = 3

#: Radius (voxels) of the refinement's local cross-correlation when it runs its
#: full-resolution level (:data:`REFINEMENT`'s 2 elsewhere): a 3-voxel window follows the
#: two-voxel-thin pars compacta closer than a 5-voxel one. Measured on 2026-12-07 (session
#: 22) offline as :data:`FINE_LEVEL_TOTAL_SIGMA`, 1 mm real-anatomy phantom, 16
#: participants (eight seeds, two head models, SNR 100), radius 2 → 1: least Dice of the 18
#: nuclei on average 0.818 → 0.828 (up on 12, down on 4 by 0.013–0.021; under 0.80: three
#: participants → two), table mean |error| 0.0039 → 0.0037 ppm, mean Dice 0.923 → 0.924,
#: about 40 % less time; an affine stage before the SyN, radius 3, or total variance 0–1
#: did not help the misses (README: "Fresh seeds, and the refinement's window at 1 mm").
FINE_LEVEL_CC_RADIUS = 1


#: Gaussian σ (mm) of the prior's smoothing when the refinement runs its full-resolution
#: level (:data:`qsmflow.atlases.chi_prior.PRIOR_SMOOTH_MM`, 0.7 mm, elsewhere): none, the
#: nuclei painted as the atlas draws them, so that the 3-voxel window of
#: :data:`FINE_LEVEL_CC_RADIUS` sees their edges where they are. Measured on 2026-12-07
#: (session 23) offline as :data:`FINE_LEVEL_CC_RADIUS`, 1 mm real-anatomy phantom, 20
#: participants (ten seeds, two head models, SNR 100), σ 0.7 → 0 mm: see the README's
#: "The prior's edges at 1 mm".
FINE_LEVEL_PRIOR_SMOOTH_MM = 0.0


def runs_fine_level(voxel_size_mm) -> bool:
    """Whether the refinement of a χ map of voxel size ``voxel_size_mm`` (mm) runs its
    full-resolution level: its largest voxel edge is at most
    :data:`FINE_LEVEL_MAX_VOXEL_MM`.

    >>> runs_fine_level((1, 1, 1.1)), runs_fine_level((2, 2, 2))
    (True, False)
    """
    return max(float(v) for v in voxel_size_mm) <= FINE_LEVEL_MAX_VOXEL_MM


def prior_smoothing_mm(voxel_size_mm) -> float:
    """Gaussian σ (mm) of the χ prior for a χ map of voxel size ``voxel_size_mm`` (mm):
    :data:`FINE_LEVEL_PRIOR_SMOOTH_MM` where the refinement runs its full-resolution level,
    :data:`qsmflow.atlases.chi_prior.PRIOR_SMOOTH_MM` elsewhere.

    >>> prior_smoothing_mm((1, 1, 1)), prior_smoothing_mm((2, 2, 2))
    (0.0, 0.7)
    """
    from qsmflow.atlases.chi_prior import PRIOR_SMOOTH_MM

    return FINE_LEVEL_PRIOR_SMOOTH_MM if runs_fine_level(voxel_size_mm) else PRIOR_SMOOTH_MM


def refinement_settings(voxel_size_mm) -> dict:
    """:data:`REFINEMENT` for a χ map of voxel size ``voxel_size_mm`` (mm): its last level
    gets :data:`FINE_LEVEL_ITERATIONS`, the gradient step :data:`FINE_LEVEL_GRAD_STEP` and
    the total-field variance :data:`FINE_LEVEL_TOTAL_SIGMA` and the metric radius
    :data:`FINE_LEVEL_CC_RADIUS` when the largest voxel edge is at most
    :data:`FINE_LEVEL_MAX_VOXEL_MM`.

    >>> keys = ('reg_iterations', 'grad_step', 'total_sigma', 'syn_sampling')
    >>> [refinement_settings((2, 2, 2))[k] for k in keys]
    [(40, 20, 0), 0.1, 4, 2]
    >>> [refinement_settings((1, 1, 1.1))[k] for k in keys]
    [(40, 20, 5), 0.3, 3, 1]
    """
    settings = dict(REFINEMENT)
    if runs_fine_level(voxel_size_mm):
        settings['reg_iterations'] = (*REFINEMENT['reg_iterations'][:-1], FINE_LEVEL_ITERATIONS)
        settings['grad_step'] = FINE_LEVEL_GRAD_STEP
        settings['total_sigma'] = FINE_LEVEL_TOTAL_SIGMA
        settings['syn_sampling'] = FINE_LEVEL_CC_RADIUS
    return settings


def refine_to_prior(prior_path, chi_path, transforms, out_dir, *, nthreads: int = 1,
                    settings: dict | None = None, fast: bool = False) -> dict:
    """Register the χ map, brought to the prior's grid through ``transforms``, to the prior.

    Parameters
    ----------
    prior_path : str
        χ-contrast prior image (:func:`qsmflow.atlases.chi_prior.chi_prior`), the fixed
        image; its grid is the refinement's box.
    chi_path : str
        Native χ map (ppm).
    transforms : list of str
        Native → atlas transforms in ANTs order (SyN warp first, then the affine).
    out_dir : str
        Folder for the refinement's warps.
    nthreads : int
        As :func:`register`: at most :data:`REGISTRATION_THREADS` are used, all with
        ``fast``.
    settings : dict, optional
        ``ants.registration`` keyword arguments (default :func:`refinement_settings` of
        the χ map's voxel size).

    Returns
    -------
    dict
        ``inverse_warp`` (atlas grid → refined position), ``correlation_before`` and
        ``correlation_after`` (Pearson correlation of χ with the prior over the voxels
        near its nuclei, :func:`qsmflow.atlases.chi_prior.near_nuclei`) and the
        antspyx ``version``.
    """
    return in_fresh_process(refine_chi, str(prior_path), str(chi_path),
                            [str(t) for t in transforms], str(out_dir),
                            nthreads=registration_threads(nthreads, fast),
                            settings=dict(settings if settings is not None else
                                          refinement_settings(_voxel_size(chi_path))))


def _voxel_size(path) -> tuple:
    """Voxel size (mm) of an image's first three axes."""
    return tuple(float(v) for v in nb.load(path).header.get_zooms()[:3])


def write_prior(atlas_path, lut: dict, out_path, *, smooth_mm: float | None = None) -> str:
    """Write the χ-contrast prior of an atlas (:func:`qsmflow.atlases.chi_prior.chi_prior`)
    on the box around its nuclei (:func:`~qsmflow.atlases.chi_prior.prior_box`), on a grid
    no finer than :data:`~qsmflow.atlases.chi_prior.PRIOR_MIN_VOXEL_MM`; return the path.
    ``smooth_mm``: the prior's Gaussian σ (mm; default
    :data:`~qsmflow.atlases.chi_prior.PRIOR_SMOOTH_MM`). Raises ValueError when the atlas has
    too few iron-rich nuclei."""
    from qsmflow.atlases import chi_prior as cp

    img = nb.load(atlas_path)
    labels, affine, vox = cp.coarsen(np.rint(np.asarray(img.dataobj)).astype(np.int32),
                                     img.affine, img.header.get_zooms()[:3])
    prior = cp.chi_prior(labels, lut, vox,
                         smooth_mm=cp.PRIOR_SMOOTH_MM if smooth_mm is None else smooth_mm)
    box, affine = cp.crop_or_pad(prior, affine, *cp.prior_box(prior, vox))
    nb.Nifti1Image(box, affine).to_filename(out_path)
    return str(out_path)


class _RefineInputSpec(BaseInterfaceInputSpec):
    in_chimap = File(exists=True, mandatory=True, desc='native χ map, ppm')
    atlas = File(exists=True, mandatory=True, desc='atlas label image (its template space)')
    lut = File(exists=True, mandatory=True, desc='dseg.tsv (index, name) of the atlas')
    affine = File(exists=True, mandatory=True,
                  desc='magnitude registration: affine native → atlas template (ITK .mat)')
    warp = File(exists=True, mandatory=True,
                desc='magnitude registration: SyN warp native → atlas template')
    inverse_warp = File(exists=True, mandatory=True,
                        desc='magnitude registration: inverse SyN warp')
    meta = traits.Dict(usedefault=True, desc='sidecar entries of the labels (the atlas)')
    nthreads = traits.Int(1, usedefault=True, nohash=True,
                          desc='threads allowed; registration uses REGISTRATION_THREADS')
    fast = traits.Bool(False, usedefault=True,
                       desc='use all nthreads: faster, not bitwise reproducible')


class _RefineOutputSpec(TraitedSpec):
    transforms = traits.List(File(exists=True),
                             desc='atlas → native transforms for ApplyTransforms')
    invert = traits.List(traits.Bool, desc='invert flags of ``transforms``')
    prior = File(desc='χ-contrast prior image on the refinement box (ppm)')
    meta = traits.Dict(desc='``meta`` with the refinement recorded (RegistrationRefinement)')


class RefineNuclei(SimpleInterface):
    """χ-driven refinement of an atlas registration around the iron-rich nuclei.

    The magnitude registration aligns the brain but leaves the small nuclei, which have
    little contrast in a T1w template, off by a few millimetres. Here the native χ map is
    brought to the atlas through that registration and registered once more (SyN,
    :data:`REFINEMENT`) to the atlas's χ-contrast prior
    (:func:`qsmflow.atlases.chi_prior.chi_prior`) in a box around the nuclei; the atlas then
    comes to the native grid through both. An atlas with too few iron-rich nuclei, or a
    refinement that lowers the correlation of χ with the prior, keeps the magnitude
    registration alone; the labels' sidecar says which happened and why.
    """

    input_spec = _RefineInputSpec
    output_spec = _RefineOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.atlases import chi_prior as cp
        from qsmflow.interfaces.regions import read_lut

        base_xfms = [self.inputs.affine, self.inputs.inverse_warp]
        chi_voxel = _voxel_size(self.inputs.in_chimap)
        settings, smooth_mm = refinement_settings(chi_voxel), prior_smoothing_mm(chi_voxel)
        record = {'Method': 'chi-driven SyN refinement of the atlas registration (antspyx) '
                            'to a chi-contrast prior of the atlas nuclei',
                  'PriorChiPpm': dict(cp.TYPICAL_CHI_PPM),
                  'PriorSmoothingMm': smooth_mm, 'BoxMarginMm': cp.PRIOR_MARGIN_MM,
                  'CorrelationWithinMm': cp.CHECK_DISTANCE_MM,
                  'Settings': {k: list(v) if isinstance(v, tuple) else v
                               for k, v in settings.items()},
                  'FineLevelMaxVoxelMm': FINE_LEVEL_MAX_VOXEL_MM}
        if self.inputs.fast:  # --fast-registration
            record.update(FastRegistration=True, BitwiseReproducible=False,
                          Threads=registration_threads(self.inputs.nthreads, True))
        prior_path = str(Path(runtime.cwd) / 'chi_prior.nii.gz')
        try:
            write_prior(self.inputs.atlas, read_lut(self.inputs.lut), prior_path,
                        smooth_mm=smooth_mm)
        except ValueError as exc:
            self._finish(base_xfms, {**record, 'Applied': False, 'Reason': str(exc)})
            return runtime
        self._results['prior'] = prior_path
        record['PriorVoxelMm'] = [round(v, 4) for v in _voxel_size(prior_path)]
        out = refine_to_prior(prior_path, self.inputs.in_chimap,
                              [self.inputs.warp, self.inputs.affine], runtime.cwd,
                              nthreads=self.inputs.nthreads, settings=settings,
                              fast=self.inputs.fast)
        record.update(Software=f'antspyx {out["version"]}',
                      CorrelationBefore=round(out['correlation_before'], 4),
                      CorrelationAfter=round(out['correlation_after'], 4))
        if not out['correlation_after'] > out['correlation_before']:
            self._finish(base_xfms, {**record, 'Applied': False,
                                     'Reason': 'the refinement did not raise the correlation '
                                               'of chi with the prior'})
            return runtime
        self._finish(base_xfms + [out['inverse_warp']], {**record, 'Applied': True})
        return runtime

    def _finish(self, transforms, record):
        self._results['transforms'] = list(transforms)
        self._results['invert'] = [True] + [False] * (len(transforms) - 1)
        self._results['meta'] = {**dict(self.inputs.meta), 'RegistrationRefinement': record}
