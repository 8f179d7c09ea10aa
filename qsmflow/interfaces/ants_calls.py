# SPDX-License-Identifier: Apache-2.0
"""The antspyx calls of the registrations, each run in a fresh interpreter.

:func:`in_fresh_process` starts a new Python process per ANTs call; the process unpickles
the called function and so imports the function's module. That is this module: it imports
only the standard library, numpy and (inside the calls) antspyx, not Nipype, nibabel or
the interfaces (:mod:`qsmflow.interfaces.registration`, whose import costs the child
about half a second more). The settings (pyramids, refinement) and the interfaces stay in
:mod:`qsmflow.interfaces.registration`; every call here gets its settings from there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

#: Seed of ANTs' random numbers (the sample jitter of the affine stages' metric). It is
#: passed as ``ANTS_RANDOM_SEED``, which ``antsRegistration`` reads in every antspyx
#: version (antspyx 0.6 silently ignores a ``random_seed`` argument).
RANDOM_SEED = 1

#: antspyx ``type_of_transform`` values without a warp (an affine .mat only).
LINEAR_TYPES = ('Translation', 'Rigid', 'Similarity', 'Affine')

#: Runs in the fresh interpreter: load ``(func, args, kwargs)``, call, store the outcome.
_RUNNER = """
import pickle, sys
with open(sys.argv[1], 'rb') as fobj:
    sys.path[:] = pickle.load(fobj)
    func, args, kwargs = pickle.load(fobj)
try:
    outcome = (True, func(*args, **kwargs))
except BaseException as exc:
    outcome = (False, exc)
with open(sys.argv[2], 'wb') as fobj:
    pickle.dump(outcome, fobj)
"""


def in_fresh_process(func, *args, **kwargs):
    """Run ``func`` in a new Python interpreter and return its result (or raise its error).

    ITK keeps process-wide thread state that does not survive ``fork`` (Nipype's MultiProc
    workers are forked, possibly from a process that already used ANTs), so every ANTs
    call runs in its own process (about a second of start-up). A plain subprocess, not a
    ``multiprocessing`` spawn: spawn re-imports ``__main__``, which in a cluster job is
    Nipype's unguarded batch script and would run the node again. Call and result travel
    through pickle files in the current (node) directory, not stdout, which ANTs prints to.
    The child imports ``func``'s module: keep it light (as this one).
    """
    import pickle
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix='.qsmflow-call-', dir=os.getcwd()) as tmp:
        call, result = Path(tmp) / 'call.pkl', Path(tmp) / 'result.pkl'
        # the caller's import path first: the child starts in the node folder, where a
        # bare ``python -c`` would resolve imports differently
        call.write_bytes(pickle.dumps([os.path.abspath(p) for p in sys.path])
                         + pickle.dumps((func, args, kwargs)))
        proc = subprocess.run([sys.executable, '-c', _RUNNER, str(call), str(result)],
                              check=False, capture_output=True, text=True)
        if not result.exists():
            tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            raise RuntimeError(f'{func.__name__} died in its process (exit {proc.returncode}): '
                               f'{tail}')
        ok, value = pickle.loads(result.read_bytes())
    if not ok:
        raise value
    return value


def prepare_ants(n: int) -> int:
    """Prepare ANTs in this (freshly spawned) process, before ``import ants``.

    ITK gets ``n`` threads from the platform threader (no persistent pool: ITK's default
    thread pool can deadlock in Nipype's forked MultiProc workers) and ANTs the fixed
    :data:`RANDOM_SEED`. Returns the thread count.
    """
    n = max(1, int(n))
    os.environ['ITK_GLOBAL_DEFAULT_THREADER'] = 'Platform'
    os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'] = str(n)
    os.environ['ANTS_RANDOM_SEED'] = str(RANDOM_SEED)
    return n


def register_images(fixed_path, moving_path, out_dir, *, settings, fixed_mask=None,
                    nthreads=1) -> dict:
    """antspyx registration of ``moving`` to ``fixed`` (``settings``: the keyword arguments
    of ``ants.registration``, with the optional ``linear`` stages run first, see
    :func:`qsmflow.interfaces.registration.register`); the transforms copied to
    ``out_dir`` as ``affine.mat``, ``warp.nii.gz`` and ``inverse_warp.nii.gz``."""
    prepare_ants(nthreads)
    import ants

    fixed, moving = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
    if fixed_mask:
        fixed = fixed * ants.image_read(str(fixed_mask))
    settings = _shrink_factors(dict(settings), fixed)
    start = settings.pop('initial_transform', None)
    for n, stage in enumerate(settings.pop('linear', ())):
        stage = _shrink_factors(dict(stage), fixed)
        if start is not None:  # the caller's start, then each stage's result
            stage['initial_transform'] = start
        start = ants.registration(fixed, moving, outprefix=str(Path(out_dir) / f'linear{n}_'),
                                  **stage)['fwdtransforms']
    if start is not None:
        settings['initial_transform'] = start
    reg = ants.registration(fixed, moving, outprefix=str(Path(out_dir) / 'reg_'), **settings)
    out = {'version': ants.__version__}
    warp = [p for p in reg['fwdtransforms'] if p.endswith('.nii.gz')]
    inv = [p for p in reg['invtransforms'] if p.endswith('.nii.gz')]
    mat = [p for p in reg['fwdtransforms'] if p.endswith('.mat')]
    outputs = (('affine', mat, 'affine.mat'), ('warp', warp, 'warp.nii.gz'),
               ('inverse_warp', inv, 'inverse_warp.nii.gz'))
    if settings['type_of_transform'] in LINEAR_TYPES:
        outputs = outputs[:1]
    for key, src, name in outputs:
        if len(src) != 1:
            raise RuntimeError(f'antspyx returned {reg["fwdtransforms"]} / '
                               f'{reg["invtransforms"]}: expected one {name}')
        dest = Path(out_dir) / name
        shutil.copyfile(src[0], dest)
        out[key] = str(dest)
    return out


def _shrink_factors(stage: dict, fixed) -> dict:
    """``stage`` with ``levels_mm`` (if any) turned into ``aff_shrink_factors`` of the fixed
    image's grid: ``round(level / voxel size)``, at least 1."""
    if 'levels_mm' in stage:
        voxel_mm = min(fixed.spacing)
        stage['aff_shrink_factors'] = tuple(max(1, round(level / voxel_mm))
                                            for level in stage.pop('levels_mm'))
    return stage


def apply_to_reference(reference, in_file, transforms, invert, interpolation, nthreads):
    """antspyx ``apply_transforms`` onto the reference grid; returns (array, version)."""
    prepare_ants(nthreads)
    import ants

    fixed = ants.image_read(reference)
    if fixed.dimension == 4:
        fixed = ants.slice_image(fixed, axis=3, idx=0)
    moving = ants.image_read(in_file)
    out = ants.apply_transforms(fixed, moving, transforms, interpolator=interpolation,
                                whichtoinvert=invert)
    return out.numpy(), ants.__version__


def refine_chi(prior_path, chi_path, transforms, out_dir, *, settings, nthreads=1) -> dict:
    """antspyx registration of the χ map, brought to the prior's grid through
    ``transforms``, to the prior (``settings``: ``ants.registration`` keyword arguments, see
    :func:`qsmflow.interfaces.registration.refine_to_prior`)."""
    prepare_ants(nthreads)
    import ants

    fixed = ants.image_read(prior_path)
    moving = ants.apply_transforms(fixed, ants.image_read(chi_path), transforms,
                                   interpolator='linear')
    reg = ants.registration(fixed, moving, outprefix=str(Path(out_dir) / 'refine_'),
                            **settings)
    inv = [p for p in reg['invtransforms'] if p.endswith('.nii.gz')]
    if len(inv) != 1:
        raise RuntimeError(f'antspyx returned {reg["invtransforms"]}: expected one warp')
    dest = Path(out_dir) / 'refine_inverse_warp.nii.gz'
    shutil.copyfile(inv[0], dest)
    prior = fixed.numpy()
    return {'inverse_warp': str(dest), 'version': ants.__version__,
            'correlation_before': _correlation(prior, moving.numpy()),
            'correlation_after': _correlation(prior, reg['warpedmovout'].numpy())}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (NaN when one is constant)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float('nan')
