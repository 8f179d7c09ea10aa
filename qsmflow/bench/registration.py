# SPDX-License-Identifier: Apache-2.0
"""Benchmark: registration of a 1 mm whole head (``python -m qsmflow.bench.registration``).

The moving image is the phantom's combined-magnitude-like image (M0 · exp(−R2*·TE) over
the default echoes, root-sum-of-squares, brain-masked) at 1 mm, turned and shifted in
the scanner; the fixed image is the phantom template at 2 mm, as the participant workflow
registers to the ``res-02`` template by default (``--template-resolution``). The
registration is the one the workflow runs (:func:`qsmflow.interfaces.registration.register`):
seeded and single-threaded, so that it is bitwise reproducible (``--fast N``: as with
``--fast-registration``, on N threads; ``--pyramid quick``: the cheaper
:data:`~qsmflow.interfaces.registration.REGISTRATION_QUICK`). Then the χ-driven
refinement of the atlas labels (:func:`~qsmflow.interfaces.refinement.refine_to_prior`,
the phantom's true χ map to the prior of the template's atlas) is timed the same way, and
the rigid registration that brings another run of the session to this one instead of a
registration of its own (:data:`~qsmflow.interfaces.registration.RIGID_TO_RUN`; the same
head moved by :data:`SECOND_RUN_POSE`). Each prints its wall time and the CPU time of its
process.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np


#: Pose of the benchmark's second run of the session against the first (a head that moved).
SECOND_RUN_POSE = {'pitch_deg': 3.0, 'yaw_deg': -2.0, 'shift_mm': (2.0, -1.5, 3.0)}


def _moving(head, tes_s, affine) -> nb.Nifti1Image:
    echoes = [head.m0 * np.exp(-head.r2star_hz * te) for te in tes_s]
    rss = np.sqrt(np.sum(np.square(echoes), axis=0)) * head.brain_mask
    return nb.Nifti1Image(rss.astype(np.float32), affine)


def posed_affine(head) -> np.ndarray:
    """Voxel-to-world affine of the phantom ``head`` turned and shifted in the scanner as
    the demo's participants are (:data:`qsmflow.cli.demo.DEMO_POSE`)."""
    from qsmflow.cli.demo import DEMO_POSE
    from qsmflow.phantom.bids import oblique_affine

    pose = oblique_affine((1, 1, 1), 1.0, DEMO_POSE['yaw_deg'], axis='z')
    pose[:3, 3] = DEMO_POSE['shift_mm']
    return pose @ oblique_affine(head.shape, head.voxel_size_mm)


def write_moving_head(head, path) -> np.ndarray:
    """Write the moving image of the benchmark (:func:`_moving` over the default echoes)
    of ``head`` at the demo's pose (:func:`posed_affine`) to ``path``; return the affine."""
    from qsmflow.phantom.bids import DEFAULT_ECHO_TIMES_S

    affine = posed_affine(head)
    _moving(head, DEFAULT_ECHO_TIMES_S, affine).to_filename(path)
    return affine


def _children_cpu_s() -> float:
    """CPU time (user + system, s) of this process's finished children: each registration
    runs in its own process (:func:`~qsmflow.interfaces.ants_calls.in_fresh_process`),
    and its CPU time depends less on the machine's load than its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    """Time one registration of the phantom to its template; print the seconds."""
    from qsmflow.interfaces.regions import read_lut
    from qsmflow.interfaces.refinement import prior_smoothing_mm, refine_to_prior, write_prior
    from qsmflow.interfaces.registration import (
        PYRAMIDS, RIGID_TO_RUN, register, registration_threads, template_voxel_mm,
        write_moving)
    from qsmflow.phantom.head import make_head
    from qsmflow.phantom.template import pose_affine, write_template

    parser = argparse.ArgumentParser(prog='python -m qsmflow.bench.registration')
    parser.add_argument('--size', choices=['full', 'small', 'tiny'], default='full')
    parser.add_argument('--template-size', choices=['full', 'small', 'tiny'], default='small')
    parser.add_argument('--pyramid', choices=list(PYRAMIDS), default='default',
                        help='registration settings (--registration-pyramid): PYRAMIDS of '
                             'qsmflow.interfaces.registration')
    parser.add_argument('--fast', type=int, metavar='N', default=None,
                        help='--fast-registration with N threads (default: reproducible, '
                             'one thread)')
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_template(tmp / 'tf', size=opts.template_size)
        res = next(folder.glob('*_T1w.nii.gz')).name.split('_')[1]
        head = make_head(size=opts.size, age_years=60.0)
        affine = write_moving_head(head, tmp / 'native.nii.gz')
        nb.Nifti1Image(head.brain_mask.astype(np.uint8), affine).to_filename(
            tmp / 'mask.nii.gz')
        fixed = folder / f'tpl-QSMPhantom_{res}_T1w.nii.gz'
        nb.Nifti1Image(head.chi_ppm.astype(np.float32) * head.brain_mask,
                       affine).to_filename(tmp / 'chi.nii.gz')
        t0, c0 = time.perf_counter(), _children_cpu_s()
        # as RegisterToTemplate: the moving image averaged to the template's voxel size
        moving = write_moving(tmp / 'native.nii.gz', tmp / 'mask.nii.gz', tmp / 'moving.nii.gz',
                              voxel_mm=template_voxel_mm(fixed))
        xfm = register(fixed, moving, tmp,
                       fixed_mask=folder / f'tpl-QSMPhantom_{res}_desc-brain_mask.nii.gz',
                       nthreads=opts.fast or 1, fast=bool(opts.fast),
                       settings=PYRAMIDS[opts.pyramid])
        seconds, cpu = time.perf_counter() - t0, _children_cpu_s() - c0
        second = nb.load(tmp / 'native.nii.gz')
        nb.Nifti1Image(np.asarray(second.dataobj), pose_affine(second.affine, **SECOND_RUN_POSE)
                       ).to_filename(tmp / 'second.nii.gz')
        (tmp / 'rigid').mkdir()
        t0, c0 = time.perf_counter(), _children_cpu_s()
        register(tmp / 'native.nii.gz', tmp / 'second.nii.gz', tmp / 'rigid',
                 nthreads=opts.fast or 1, fast=bool(opts.fast), settings=RIGID_TO_RUN)
        rigid_s, rigid_cpu = time.perf_counter() - t0, _children_cpu_s() - c0
        prior = write_prior(folder / f'tpl-QSMPhantom_{res}_atlas-Phantom_dseg.nii.gz',
                            read_lut(folder / 'tpl-QSMPhantom_atlas-Phantom_dseg.tsv'),
                            tmp / 'prior.nii.gz',
                            smooth_mm=prior_smoothing_mm(nb.load(tmp / 'chi.nii.gz')
                                                         .header.get_zooms()[:3]))
        t0, c0 = time.perf_counter(), _children_cpu_s()
        refine_to_prior(prior, tmp / 'chi.nii.gz', [xfm['warp'], xfm['affine']], tmp,
                        nthreads=opts.fast or 1, fast=bool(opts.fast))
        refine_s, refine_cpu = time.perf_counter() - t0, _children_cpu_s() - c0
    print(f'registration of a {head.shape} head ({opts.size}) to the {res} template with '
          f'{registration_threads(opts.fast or 1, bool(opts.fast))} ITK thread(s), seeded'
          f'{" (--fast-registration)" if opts.fast else ""}, {opts.pyramid} pyramid: '
          f'{seconds:.1f} s '
          f'({cpu:.1f} s CPU)')
    print(f'chi-driven refinement of the atlas nuclei: {refine_s:.1f} s ({refine_cpu:.1f} s CPU)')
    print(f'another run of the session, rigidly to this one (RIGID_TO_RUN) instead of its own '
          f'registration: {rigid_s:.1f} s ({rigid_cpu:.1f} s CPU)')
    return 0


if __name__ == '__main__':  # pragma: no cover
    raise SystemExit(main())
