# SPDX-License-Identifier: Apache-2.0
"""χ-driven refinement of an atlas registration around the iron-rich nuclei
(:class:`RefineNuclei`): the participant's χ map, brought to the atlas by the magnitude
registration (:mod:`qsmflow.interfaces.registration`), is registered once more (antspyx
SyN, in a fresh process, seeded and single-threaded like the main registration) to the
atlas's χ-contrast prior (:mod:`qsmflow.atlases.chi_prior`) in a box around the nuclei.
The settings depend on the χ map's voxel size (:func:`refinement_settings`,
:func:`prior_smoothing_mm`).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)

from qsmflow.interfaces.ants_calls import in_fresh_process, refine_chi
from qsmflow.interfaces.registration import registration_threads


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
