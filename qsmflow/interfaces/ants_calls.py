# SPDX-License-Identifier: Apache-2.0
"""The ANTs calls of the registrations, each run in a fresh interpreter.

:func:`in_fresh_process` starts a new Python process per ANTs call; the process unpickles
the called function and so imports the function's module. That is this module: it imports
only the standard library and numpy (nibabel and ANTs' library inside the calls), not Nipype or
the interfaces (:mod:`qsmflow.interfaces.registration`, whose import costs the child about
half a second more). Registrations (:func:`register_images`) call ``antsRegistration``
through ANTs' compiled library alone (:func:`ants_library`), with the arguments antspyx
would give it (:func:`registration_args`): the same transforms bit for bit, without the
1.5–2 s of ``import ants``. The χ-driven refinement (:func:`refine_chi`) and the
resampling (:func:`apply_to_reference`, with :func:`resampling_args`) do the same with
``antsApplyTransforms``: antspyx itself is imported only to build study templates
(:mod:`qsmflow.interfaces.study_template`).
The settings (pyramids, refinement) and the interfaces stay in
:mod:`qsmflow.interfaces.registration`; every call here gets its settings from there.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
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
        printed = [line for line in proc.stderr.strip().splitlines() if line.strip()][-5:]
        if printed and hasattr(value, 'add_note'):  # ANTs' own errors (Python >= 3.11)
            value.add_note('the process printed: ' + ' | '.join(printed))
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
    ``out_dir`` as ``affine.mat``, ``warp.nii.gz`` and ``inverse_warp.nii.gz``. With a
    ``fixed_mask`` and ``settings['brain_margin_mm']``, every stage registers to the masked
    fixed image cropped to the mask's bounding box grown by that margin
    (:func:`brain_box`: fewer voxels at every level, and a metric histogram less filled
    with background), and the warps are written on the fixed image's whole grid, zero
    outside the box (the same transforms, :func:`_pad_field`).

    ``antsRegistration`` is called with the arguments ``ants.registration`` gives it
    (:func:`registration_args`), on files, through ANTs' compiled library alone
    (:func:`ants_library`): the same transforms bit for bit (on the same fixed image),
    without the 1.5–2 s of ``import ants`` (which imports matplotlib, scikit-learn and
    statsmodels).
    """
    prepare_ants(nthreads)
    import nibabel as nb

    out_dir = Path(out_dir)
    fixed = nb.load(str(fixed_path))
    spacing = fixed.header.get_zooms()[:3]
    settings = dict(settings)
    margin_mm, box = settings.pop('brain_margin_mm', None), None
    if fixed_mask:  # as antspyx's image product: float32 voxels, the fixed image's header
        mask = np.asarray(nb.load(str(fixed_mask)).dataobj, dtype=np.float32)
        data = np.asarray(fixed.dataobj, dtype=np.float32) * mask
        header = fixed.header.copy()
        header.set_data_dtype(np.float32)
        masked = nb.Nifti1Image(data, fixed.affine, header)
        if margin_mm is not None:
            box = brain_box(mask > 0, spacing, margin_mm)
            masked = masked.slicer[box]
        fixed_path = out_dir / 'fixed_masked.nii.gz'
        masked.to_filename(fixed_path)
    files = (str(fixed_path), str(moving_path))
    settings = _shrink_factors(settings, spacing)
    start = settings.pop('initial_transform', None)
    for n, stage in enumerate(settings.pop('linear', ())):
        stage = _shrink_factors(dict(stage), spacing)
        if start is not None:  # the caller's start, then each stage's result
            stage['initial_transform'] = start
        start = _run_registration(*files, str(out_dir / f'linear{n}_'), stage)[0]
    if start is not None:
        settings['initial_transform'] = start
    fwd, inv = _run_registration(*files, str(out_dir / 'reg_'), settings)
    out = {'version': antspyx_version()}
    warp = [p for p in fwd if p.endswith('.nii.gz')]
    inv = [p for p in inv if p.endswith('.nii.gz')]
    mat = [p for p in fwd if p.endswith('.mat')]
    outputs = (('affine', mat, 'affine.mat'), ('warp', warp, 'warp.nii.gz'),
               ('inverse_warp', inv, 'inverse_warp.nii.gz'))
    if settings['type_of_transform'] in LINEAR_TYPES:
        outputs = outputs[:1]
    for key, src, name in outputs:
        if len(src) != 1:
            raise RuntimeError(f'antsRegistration wrote {fwd} / {inv}: expected one {name}')
        dest = out_dir / name
        if box is not None and key != 'affine':
            _pad_field(src[0], dest, fixed, box)
        else:
            shutil.copyfile(src[0], dest)
        out[key] = str(dest)
    return out


def brain_box(mask: np.ndarray, spacing, margin_mm: float) -> tuple:
    """Slices of the bounding box of ``mask`` grown by ``margin_mm`` (mm; whole voxels of
    size ``spacing``, at least the margin) on every side, within the grid; the whole grid
    for an empty mask.

    >>> m = np.zeros((10, 10, 10), bool); m[4:6, 4:6, 4:6] = True
    >>> brain_box(m, (2.0, 2.0, 2.0), 3.0)
    (slice(2, 8, None), slice(2, 8, None), slice(2, 8, None))
    """
    found = np.argwhere(mask)
    if not found.size:
        return tuple(slice(0, n) for n in mask.shape)
    pad = np.ceil(margin_mm / np.asarray(spacing, dtype=float)).astype(int)
    low = np.maximum(found.min(0) - pad, 0)
    high = np.minimum(found.max(0) + 1 + pad, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _pad_field(path, dest, grid, box) -> None:
    """Write the displacement field ``path`` (ANTs' warp on the ``box`` of ``grid``'s voxels)
    to ``dest`` on the whole of ``grid`` (a NIfTI image), zero outside the box: the same
    transform, since ANTs' transforms move no point outside a field's grid, and SyN keeps its
    field's border voxels at zero (so interpolation across the box's edge changes nothing)."""
    import nibabel as nb

    field = nb.load(str(path))
    data = np.asarray(field.dataobj)
    full = np.zeros(tuple(grid.shape[:3]) + data.shape[3:], dtype=data.dtype)
    full[box] = data
    header = field.header.copy()
    out = nb.Nifti1Image(full, grid.affine, header)
    out.set_qform(grid.affine, int(header['qform_code']))
    out.set_sform(grid.affine, int(header['sform_code']))
    out.to_filename(str(dest))


def antspyx_version() -> str:
    """The installed antspyx's version (without importing it)."""
    from importlib.metadata import version

    return version('antspyx')


def ants_library():
    """ANTs' compiled library of antspyx (``ants.lib``: ``antsRegistration`` and the other
    command-line tools as functions of an argument list), loaded on its own, without
    running the ``ants`` package's ``__init__`` (1.5–2 s of imports; loading the library:
    0.03 s). Falls back to the ordinary import where antspyx lays its files out otherwise."""
    import importlib
    import importlib.util

    name = 'ants.lib'
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec('ants')
    found = sorted(Path(package.origin).parent.glob('lib.*.so')) if package else []
    if len(found) != 1:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, found[0])
    lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lib)
    sys.modules[name] = lib
    return lib


def registration_args(fixed: str, moving: str, prefix: str, settings: dict,
                      warped: str | None = None) -> list[str]:
    """The ``antsRegistration`` arguments that ``ants.registration(fixed, moving,
    outprefix=prefix, **settings)`` passes (antspyx 0.6), with the images as files, for the
    transform types qsmflow uses: ``SyNRA``, ``SyNOnly`` and the linear ones
    (:data:`LINEAR_TYPES`), no masks, single precision; the moving image warped to the
    file ``warped`` if given."""
    kind = settings['type_of_transform']
    opts = {**_ANTSPYX_DEFAULTS, **{k: v for k, v in settings.items()
                                    if k not in ('type_of_transform', 'initial_transform')}}
    unknown = set(opts) - set(_ANTSPYX_DEFAULTS)
    if unknown or kind not in ('SyNRA', 'SyNOnly') + LINEAR_TYPES:
        raise ValueError(f'registration_args: {kind} with {sorted(unknown)} not supported')
    start = settings.get('initial_transform')
    if start is None:
        start = ['Identity'] if kind == 'SyNOnly' else [f'[{fixed},{moving},1]']
    elif isinstance(start, str):
        start = [start]
    pair = f'{fixed},{moving},1'

    def linear(transform, iterations, sigmas, shrink):
        return ['--metric', f"{opts['aff_metric']}[{pair},{opts['aff_sampling']},regular,"
                            f"{opts['aff_random_sampling_rate']}]",
                '--transform', f'{transform}[0.25]', '--convergence', iterations,
                '--smoothing-sigmas', sigmas, '--shrink-factors', shrink]

    levels = len(opts['reg_iterations'])
    syn = ['--metric', f"{opts['syn_metric']}[{pair},{opts['syn_sampling']}]",
           '--transform', f"SyN[{opts['grad_step']:f},{opts['flow_sigma']:f},"
                          f"{opts['total_sigma']:f}]",
           '--convergence', f"[{_x(opts['reg_iterations'])},1e-7,8]",
           '--smoothing-sigmas', _x(range(levels - 1, -1, -1)),
           '--shrink-factors', _x(2 ** k for k in range(levels - 1, -1, -1))]
    if kind == 'SyNRA':  # antspyx fixes these linear stages (its aff_* do not apply)
        fixed_levels = ('2100x1200x1200x0', '3x2x1x0', '4x2x2x1')
        stages = (linear('Rigid', *fixed_levels) + ['-x', '[NA,NA]']
                  + linear('Affine', *fixed_levels) + ['-x', '[NA,NA]'] + syn)
    elif kind == 'SyNOnly':
        stages = syn
    else:
        stages = linear(kind, _x(opts['aff_iterations']), _x(opts['aff_smoothing_sigmas']),
                        _x(opts['aff_shrink_factors']))
    return (['--dimensionality', '3', '-r', *start] + stages
            + ['-u', '0', '-z', '1',
               '--output', f'[{prefix},{warped}]' if warped else f'[{prefix}]', '-x', '[NA,NA]',
               '--float', '1', '--write-composite-transform', '0'])


#: ``ants.registration``'s defaults (antspyx 0.6) of the settings :func:`registration_args`
#: takes.
_ANTSPYX_DEFAULTS = {
    'grad_step': 0.2, 'flow_sigma': 3, 'total_sigma': 0, 'aff_metric': 'mattes',
    'aff_sampling': 32, 'aff_random_sampling_rate': 0.2, 'syn_metric': 'mattes',
    'syn_sampling': 32, 'reg_iterations': (40, 20, 0), 'aff_iterations': (2100, 1200, 1200, 10),
    'aff_shrink_factors': (6, 4, 2, 1), 'aff_smoothing_sigmas': (3, 2, 1, 0)}


def _x(values) -> str:
    return 'x'.join(str(v) for v in values)


def _run_registration(fixed: str, moving: str, prefix: str, settings: dict,
                      warped: str | None = None):
    """Run ``antsRegistration`` (the moving image warped to ``warped`` if given); return the
    forward and inverse transforms in antspyx's order (forward: warp, then affine; inverse:
    affine, then inverse warp)."""
    args = registration_args(fixed, moving, prefix, settings, warped)
    for _ in range(2):
        code = ants_library().antsRegistration(args)
        if code != 0:
            raise RuntimeError(f'antsRegistration failed with error code {code}')
        affine = sorted(glob.glob(prefix + '[0-9]GenericAffine.mat'))
        warp = sorted(glob.glob(prefix + '[0-9]Warp.nii.gz'))
        inverse = sorted(glob.glob(prefix + '[0-9]InverseWarp.nii.gz'))
        missing = _missing_outputs(settings['type_of_transform'], affine, warp, inverse, warped)
        if not missing:
            return warp + affine, affine + inverse
        # ANTs ignores its own transform-writing errors (exit 0, files absent): once more,
        # without what it did write (the same transforms: seed and threads are fixed); not
        # every file under the prefix: the caller's inputs may share it (refine_moving)
        for path in affine + warp + inverse + ([warped] if warped else []):
            if os.path.isfile(path):
                os.remove(path)
    folder = os.path.dirname(prefix) or '.'
    free_mb = shutil.disk_usage(folder).free / 2 ** 20
    raise RuntimeError(f'antsRegistration ended without writing its {", ".join(missing)} in '
                       f'{folder} ({free_mb:.0f} MB free there), twice: ANTs ignores its write '
                       'errors; free disk space there or make it writable, and run again')


def _missing_outputs(kind: str, affine, warp, inverse, warped) -> list[str]:
    """Names of the outputs an ``antsRegistration`` of type ``kind`` must have written and
    did not: the affine (.mat) unless ``SyNOnly``, one warp and one inverse warp unless
    linear, the warped image if one was asked for."""
    missing = []
    if kind != 'SyNOnly' and not affine:
        missing.append('affine')
    if kind not in LINEAR_TYPES:
        missing += [name for name, found in (('warp', warp), ('inverse warp', inverse))
                    if len(found) != 1]
    if warped and not os.path.exists(warped):
        missing.append('warped image')
    return missing


def _shrink_factors(stage: dict, spacing) -> dict:
    """``stage`` with ``levels_mm`` (if any) turned into ``aff_shrink_factors`` of the fixed
    image's grid (voxel size ``spacing``, mm): ``round(level / voxel size)``, at least 1."""
    if 'levels_mm' in stage:
        voxel_mm = min(float(v) for v in spacing)
        stage['aff_shrink_factors'] = tuple(max(1, round(level / voxel_mm))
                                            for level in stage.pop('levels_mm'))
    return stage


def apply_to_reference(reference, in_file, transforms, invert, interpolation, nthreads):
    """``ants.apply_transforms(fixed, moving, transforms, interpolator=interpolation,
    whichtoinvert=invert)`` (antspyx 0.6) of the images read by ``ants.image_read``, the
    reference's first volume if it is 4-D: the moving image resampled onto the reference
    grid; returns (float32 array, antspyx version).

    ``antsApplyTransforms`` is called with antspyx's arguments (:func:`resampling_args`),
    on files, through ANTs' compiled library alone (:func:`ants_library`), without the
    1.5–2 s of ``import ants``: the same array bit for bit. It computes in double precision
    as antspyx; antspyx reads the moving image as float32 first, so a moving image whose
    voxels float32 does not hold exactly, or that carries NIfTI scaling, is given to ANTs as
    a float32 copy (:func:`_moving_for_ants`: the values antspyx would resample; for a
    scaled image up to the rounding of the scaling, which nibabel applies in float64). A 4-D
    moving image is refused (antspyx: ``imagetype`` 3). The result,
    written to a scratch folder in the current (node) directory, removed once read, is cast
    to float32 as antspyx's (``image_read``'s default pixel type, the reference's); a 4-D
    reference's first volume is written there too (ANTs reads a 4-D reference as a 3-D grid
    without its rotation).
    """
    prepare_ants(nthreads)
    import tempfile

    import nibabel as nb

    ref = nb.load(str(reference))
    if len(ref.shape) not in (3, 4):
        raise ValueError(f'apply_to_reference: reference {reference} is {len(ref.shape)}-D, '
                         'not 3-D or 4-D')
    with tempfile.TemporaryDirectory(prefix='.qsmflow-resampling-', dir=os.getcwd()) as tmp:
        in_file = _moving_for_ants(str(in_file), Path(tmp) / 'moving.nii')
        if len(ref.shape) == 4:  # ANTs would read a 4-D file's grid without its rotation
            reference = Path(tmp) / 'reference.nii'
            nb.Nifti1Image(np.asarray(ref.dataobj[..., 0]), ref.affine,
                           ref.header).to_filename(reference)
        out = Path(tmp) / 'resampled.nii'
        code = ants_library().antsApplyTransforms(resampling_args(
            str(reference), str(in_file), str(out), transforms, invert, interpolation))
        if code != 0:
            raise RuntimeError(f'antsApplyTransforms failed with error code {code}')
        data = np.asarray(nb.load(str(out), mmap=False).dataobj).astype(np.float32)
    return data, antspyx_version()


#: The interpolators :func:`resampling_args` takes (those qsmflow uses; antspyx's others
#: are not checked against antspyx).
INTERPOLATORS = ('linear', 'nearestNeighbor', 'genericLabel')


def resampling_args(reference: str, moving: str, output: str, transforms, invert,
                    interpolation: str) -> list[str]:
    """The ``antsApplyTransforms`` arguments that ``ants.apply_transforms(fixed, moving,
    transforms, interpolator=interpolation, whichtoinvert=invert)`` passes (antspyx 0.6,
    ``imagetype`` 0, double precision, default value 0), with the images as files and the
    result written to ``output``; an inverted transform (an affine ``.mat`` only) as
    ``[file,1]``."""
    transforms = [str(t) for t in transforms]
    invert = list(invert)
    if interpolation not in INTERPOLATORS:
        raise ValueError(f'resampling_args: interpolator {interpolation!r} not supported '
                         f'(only {INTERPOLATORS})')
    if not transforms or len(invert) != len(transforms):
        raise ValueError(f'resampling_args: {len(transforms)} transforms and {len(invert)} '
                         'inversion flags: one flag per transform, at least one transform')
    args = ['-d', '3', '-i', moving, '-o', output, '-r', reference, '-n', interpolation]
    for transform, inverted in zip(transforms, invert):
        if not os.path.exists(transform):
            raise ValueError(f'resampling_args: transform {transform} does not exist')
        if inverted not in (True, False):
            raise ValueError(f'resampling_args: inversion flag {inverted!r} is not a bool')
        if inverted and '.mat' not in transform:
            raise ValueError(f'resampling_args: cannot invert {transform}: not a matrix')
        args += ['-t', f'[{transform},1]' if inverted else transform]
    return args + ['-z', '1', '-v', '0', '--float', '0', '-e', '0', '-f', '0']


#: NIfTI voxel types whose every value float32 holds exactly (no check of the voxels needed).
_EXACT_IN_FLOAT32 = ('uint8', 'int8', 'int16', 'uint16', 'float32')


def _moving_for_ants(path: str, copy: Path) -> str:
    """The file ANTs should read for the moving image ``path``: ``path`` itself when it is
    unscaled and float32 holds its voxels exactly (what antspyx reads), else its values
    cast to float32 written to ``copy`` (as antspyx's float32 reading). A moving image that
    is not 3-D is refused (ValueError)."""
    import nibabel as nb

    img = nb.load(path)
    if len(img.shape) != 3:
        raise ValueError(f'apply_to_reference: moving image {path} is {len(img.shape)}-D; '
                         'only 3-D images are resampled')
    slope, inter = img.dataobj.slope, img.dataobj.inter
    scaled = not (slope == 1 and inter == 0)
    if not scaled and img.get_data_dtype().name in _EXACT_IN_FLOAT32:
        return path
    data = np.asarray(img.dataobj)  # nibabel applies any scaling (float64)
    as_float32 = data.astype(np.float32)
    if not scaled and np.array_equal(data, as_float32, equal_nan=True):
        return path
    out = nb.Nifti1Image(as_float32, img.affine, img.header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    out.to_filename(copy)
    return str(copy)


def refine_chi(prior_path, chi_path, transforms, out_dir, *, settings, nthreads=1) -> dict:
    """Registration of the χ map, brought to the prior's grid through ``transforms``
    (linear interpolation), to the prior (``settings``: ``ants.registration`` keyword
    arguments, see :func:`qsmflow.interfaces.refinement.refine_to_prior`); through ANTs'
    library alone, with antspyx's arguments, as :func:`register_images`."""
    prepare_ants(nthreads)
    import nibabel as nb

    from qsmflow.atlases.chi_prior import near_nuclei

    out_dir = Path(out_dir)
    moved = str(out_dir / 'refine_moving.nii.gz')
    # as antspyx's apply_transforms: double precision, the result read back as float32
    code = ants_library().antsApplyTransforms(resampling_args(
        str(prior_path), str(chi_path), moved, transforms, [False] * len(transforms),
        'linear'))
    if code != 0:
        raise RuntimeError(f'antsApplyTransforms failed with error code {code}')
    warped = str(out_dir / 'refine_warped.nii.gz')
    _, inv = _run_registration(str(prior_path), moved, str(out_dir / 'refine_'), settings,
                               warped=warped)
    # _run_registration made sure of exactly one inverse warp
    inverse_warp = next(p for p in inv if p.endswith('.nii.gz'))
    dest = out_dir / 'refine_inverse_warp.nii.gz'
    shutil.copyfile(inverse_warp, dest)
    prior_img = nb.load(prior_path)
    prior, moving, after = (np.asarray(nb.load(p).dataobj, dtype=np.float32)
                            for p in (prior_path, moved, warped))
    near = near_nuclei(prior, prior_img.header.get_zooms()[:3])
    return {'inverse_warp': str(dest), 'version': antspyx_version(),
            'correlation_before': _correlation(prior[near], moving[near]),
            'correlation_after': _correlation(prior[near], after[near])}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (NaN when one is constant)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float('nan')
