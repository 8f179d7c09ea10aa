# SPDX-License-Identifier: Apache-2.0
"""The study template of a cohort: built once from the participants' first pass, found again
by the second (``--study-template``).

Step 1 is an ordinary participant run (χ, brain mask and the transforms to the registration
template). Step 2 (``qsmflow BIDS_DIR OUT_DIR group --build-study-template``,
:func:`build_study_template`) brings every participant's brain-masked combined magnitude,
χ map and brain mask onto the registration template's grid through those transforms (a
cheap, already aligned start), builds an unbiased template from the magnitudes with
antspyx (``ants.build_template``: affine + SyN to the running average, the average warp
and affine removed from the average each iteration, the subject registration's settings,
fixed seed, one thread) and carries χ and the masks through the last iteration's
transforms. The template lives on the registration template's grid; its transform to the
registration template itself is computed once (:func:`study_transforms`, the
template-to-template cache). Step 3 (``participant --study-template DIR``) registers each
participant to the study template and composes that with the study template's transform
(:class:`qsmflow.interfaces.study_template.ThroughStudyTemplate`).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np

from qsmflow.errors import InputError

#: Template identifier (``tpl-<STUDY>``) and folder under the derivatives.
STUDY = 'study'
FOLDER = Path('templates') / f'tpl-{STUDY}'

#: Iterations of the template building (``--study-template-iterations``).
DEFAULT_ITERATIONS = 3


def template_paths(folder) -> dict:
    """Files of a study template folder: ``image`` (magnitude, ``_T2starw``), ``mask``,
    ``chimap`` and the ``sidecar`` (JSON of the image)."""
    folder = Path(folder)
    stem = folder / f'tpl-{STUDY}'
    return {'image': Path(f'{stem}_T2starw.nii.gz'),
            'sidecar': Path(f'{stem}_T2starw.json'),
            'mask': Path(f'{stem}_desc-brain_mask.nii.gz'),
            'chimap': Path(f'{stem}_Chimap.nii.gz')}


def find_study_template(path) -> dict:
    """The files of the study template ``path`` (its folder or its ``_T2starw`` image), with
    its sidecar read; an :class:`~qsmflow.errors.InputError` naming the fix otherwise."""
    import json

    path = Path(path).expanduser().absolute()
    folder = path.parent if path.is_file() else path
    files = template_paths(folder)
    missing = [str(p) for k, p in files.items() if k != 'chimap' and not p.is_file()]
    if missing:
        raise InputError(f'--study-template {path}: {missing[0]} not found; build it first '
                         'with "qsmflow BIDS_DIR OUT_DIR group --build-study-template"')
    out = {k: str(p) for k, p in files.items()}
    out['meta'] = json.loads(files['sidecar'].read_text())
    return out


def study_transforms(study: dict, target_image, target_name, target_mask=None,
                     nthreads: int = 1) -> dict:
    """Study template → ``target`` transforms (``warp``, ``affine``, ``inverse_warp``),
    registered once (identity start: the template lives in the target's world space) and
    cached (:func:`qsmflow.atlases.transforms.cached_template_transforms`)."""
    from qsmflow.atlases.transforms import cached_template_transforms

    return cached_template_transforms(study['image'], str(target_image), STUDY, nthreads,
                                      to=target_name, fixed_mask=target_mask)


def participant_inputs(out_dir: Path, bids_dir: Path, template: str,
                       participants=None) -> list[dict]:
    """Per acquisition of the first pass: its combined magnitude (from ``bids_dir``), χ,
    brain mask and the transforms to ``template`` (from ``out_dir``).

    Returns
    -------
    list of dict
        ``name`` (the BIDS prefix ``sub-<label>[_ses-<label>]...``), ``acquisition``
        (:class:`qsmflow.bids.inputs.Acquisition`), ``chimap``,
        ``mask``, ``warp``, ``affine``; sorted by name.
    """
    from qsmflow import bids_specs
    from qsmflow.bids.inputs import find_acquisitions

    derivative_path = bids_specs.output_path
    found, _ = find_acquisitions(bids_dir, participants)
    out = []
    for acq in (a for acqs in found.values() for a in acqs):
        ents = acq.entities
        paths = {'chimap': derivative_path(out_dir, 'chimap', ents),
                 'mask': derivative_path(out_dir, 'mask', ents)}
        fwd = {**ents, 'from': 'MEGRE', 'to': template, 'mode': 'image'}
        paths['warp'] = derivative_path(out_dir, 'xfm_warp', fwd)
        paths['affine'] = derivative_path(out_dir, 'xfm_affine', fwd)
        missing = [str(p) for p in paths.values() if not Path(p).is_file()]
        if missing:
            print(f'qsmflow group: {acq.name} left out of the study template: {missing[0]} '
                  f'not found (run the participant level with --template {template} first)')
            continue
        name = Path(paths['chimap']).name.removesuffix('_Chimap.nii.gz')
        out.append({'name': name, 'acquisition': acq, **{k: str(v) for k, v in
                                                             paths.items()}})
    return sorted(out, key=lambda item: item['name'])


def combined_magnitude_file(acq, mask_path, dest) -> str:
    """The acquisition's root-sum-of-squares magnitude inside the first pass's brain mask,
    scaled to a median of 1 there (scanners and coils differ in scale), written to
    ``dest``. Uncombined coils (``acq.coil_files``) are first joined by their
    root-sum-of-squares per echo, as the reconstruction's combined magnitude is."""
    from qsmflow.interfaces.megre import part_of, read_volumes
    from qsmflow.interfaces.registration import combined_magnitude

    n_echo = len(acq.echo_times_s)
    if acq.coil_files:  # uncombined coils: root-sum-of-squares over the coils, per echo
        mag = None
        for coil_mag_files, _ in acq.coil_files:
            sq = np.square(read_volumes(coil_mag_files, n_echo))
            mag = sq if mag is None else np.add(mag, sq, out=mag)
        mag = np.sqrt(mag, out=mag)
    else:
        mag = read_volumes(acq.mag_files, n_echo)
    if not acq.coil_files and part_of(acq.mag_files[0]) == 'real':
        mag = np.hypot(mag, read_volumes(acq.phase_files, n_echo))
    mag = np.nan_to_num(mag, nan=0.0, posinf=0.0, neginf=0.0)
    mask_img = nb.load(mask_path)
    mask = np.asarray(mask_img.dataobj) > 0
    rss = combined_magnitude(mag, mask)
    scale = float(np.median(rss[mask])) if mask.any() else 0.0
    if not scale > 0:
        raise InputError(f'{acq.mag_files[0]}: no signal inside {mask_path}; leave the '
                         'participant out (--participant-label)')
    nb.Nifti1Image((rss / scale).astype(np.float32), mask_img.affine).to_filename(dest)
    return str(dest)


def build_study_template(out_dir, bids_dir, *, template: str, template_files: dict,
                         participants=None, iterations: int = DEFAULT_ITERATIONS,
                         nthreads: int = 1) -> dict:
    """Build the study template of the first pass under ``out_dir/templates/tpl-study``.

    Parameters
    ----------
    out_dir, bids_dir : Path
        The derivatives of the first pass and the BIDS dataset it ran on.
    template : str
        The registration template of the first pass (``--template``).
    template_files : dict
        Its ``image`` and ``mask`` (:func:`qsmflow.atlases.specs.template_files`): the grid
        of the study template and the target of its one registration.
    participants : list of str, optional
        Participant labels (default: every participant with first-pass outputs).
    iterations : int
        Template-building iterations.
    nthreads : int
        Threads allowed (the registrations use at most
        :data:`qsmflow.interfaces.registration.REGISTRATION_THREADS`).

    Returns
    -------
    dict
        The written files (:func:`template_paths`) as strings.
    """
    import tempfile

    from qsmflow import __version__
    from qsmflow.bids.atomic import copy_file, write_json
    from qsmflow.interfaces.registration import (
        RANDOM_SEED, REGISTRATION, in_fresh_process, registration_threads)

    out_dir = Path(out_dir)
    if iterations < 1:
        raise InputError('--study-template-iterations must be at least 1')
    if not template_files.get('mask') and _is_head(template_files['image']):
        # without it the first pass registered heads, not brains, and its transforms are
        # no start for a brain template (real-anatomy phantom: labels' Dice 0.3, not 0.9);
        # a skull-stripped template needs none (its background is out of the metric)
        raise InputError(f'{template} has no brain mask (desc-brain_mask) in the templateflow '
                         'folder: the first pass was registered unmasked; add the mask '
                         '(qsmflow fetch-templates), rerun the participant level, then build')
    items = participant_inputs(out_dir, Path(bids_dir), template, participants)
    if not items:
        raise InputError(f'no first-pass outputs registered to {template} under {out_dir}: '
                         f'run the participant level (--template {template}) first')
    if len(items) == 1:
        print(f'qsmflow group: warning: a study template of one acquisition ({items[0]["name"]}) '
              'is that acquisition\'s own image: fine for a check, not for a study')
    dest = template_paths(out_dir / FOLDER)
    # ants.build_template registers to the whole template: the brain box of the subject
    # registration (brain_margin_mm) does not apply, and is not recorded
    settings = {**{k: v for k, v in REGISTRATION.items() if k != 'brain_margin_mm'},
                'initial_transform': 'Identity'}
    with tempfile.TemporaryDirectory(prefix='.qsmflow-study-template-', dir=out_dir) as tmp:
        work = Path(tmp)
        mags = [combined_magnitude_file(item['acquisition'], item['mask'],
                                        work / f'{item["name"]}_magnitude.nii.gz')
                for item in items]
        result = in_fresh_process(
            _build, template_files['image'], mags, [i['chimap'] for i in items],
            [i['mask'] for i in items], [[i['warp'], i['affine']] for i in items],
            str(work), iterations=int(iterations), settings=settings,
            nthreads=registration_threads(nthreads))
        dest['image'].parent.mkdir(parents=True, exist_ok=True)
        for key in ('image', 'mask', 'chimap'):
            copy_file(result[key], dest[key])
    meta = {
        'Name': f'study template of {len(items)} acquisition(s)',
        'TemplateBuilding': {
            'Software': f'antspyx {result["version"]} (ants.build_template)',
            'Method': 'unbiased template of the brain-masked root-sum-of-squares magnitudes '
                      '(median 1 inside the mask), started from their mean on the '
                      f'{template} grid (first-pass transforms); chi and brain masks carried '
                      'through the last iteration\'s transforms (mask: mean > 0.5)',
            'Iterations': int(iterations), 'GradientStep': 0.2, 'BlendingWeight': 0.75,
            'Settings': {k: list(v) if isinstance(v, tuple) else v
                         for k, v in settings.items()},
            'RandomSeed': RANDOM_SEED, 'Threads': registration_threads(nthreads)},
        'Sources': [item['name'] for item in items],
        'Space': template, 'SpatialReference': Path(template_files['image']).name,
        'GeneratedBy': {'Name': 'qsmflow', 'Version': __version__},
    }
    write_json(dest['sidecar'], meta)
    write_json(str(dest['chimap']).replace('.nii.gz', '.json'),
               {'Units': 'ppm', 'Description': 'Mean chi of the study template\'s '
                                               'participants on its grid', 'Sources':
                    meta['Sources']})
    return {k: str(v) for k, v in dest.items()}


def _is_head(image) -> bool:
    """Whether a template image without a brain mask still has skull and scalp
    (:func:`qsmflow.atlases.template_masks.image_looks_like_head`); one line when
    unreadable."""
    import nibabel as nb

    from qsmflow.atlases.template_masks import image_looks_like_head

    try:
        return image_looks_like_head(image)
    except (OSError, ValueError, EOFError, nb.filebasedimages.ImageFileError) as exc:
        raise InputError(f'template {image}: cannot read it as an image ({exc})') from None


def _build(reference, mags, chis, masks, xfms, work, *, iterations, settings, nthreads):
    """In a fresh process: the template from ``mags`` (see :func:`build_study_template`);
    returns the paths of the magnitude template, mask, χ and the antspyx version."""
    from qsmflow.interfaces.registration import _threads

    _threads(nthreads)
    import ants

    ref = ants.image_read(reference)
    if ref.dimension == 4:
        ref = ants.slice_image(ref, axis=3, idx=0)

    def to_grid(path, xfm):
        return ants.apply_transforms(ref, ants.image_read(path), list(xfm),
                                     interpolator='linear')

    images = [to_grid(m, x) for m, x in zip(mags, xfms)]
    start = images[0] * 0
    for img in images:
        start = start + img * (1.0 / len(images))
    kwargs = dict(settings)
    kind = kwargs.pop('type_of_transform')
    build = Path(work) / 'build'
    build.mkdir()
    tpl = ants.build_template(initial_template=start, image_list=images,
                              iterations=iterations, output_dir=str(build),
                              type_of_transform=kind, **kwargs)
    # χ and masks through the last iteration: each subject's registration, then the update
    # of the average (the average warp and the inverse of the average affine)
    update = [str(build / 'avgWarp.nii.gz'), str(build / 'avgAffine.mat')]
    out = {}
    for key, paths in (('chimap', chis), ('mask', masks)):
        mean = ref * 0
        for k, (path, xfm) in enumerate(zip(paths, xfms)):
            sub = build / f'img{k:04d}'
            own = [str(sub / 'out1Warp.nii.gz'), str(sub / 'out0GenericAffine.mat')]
            on_tpl = ants.apply_transforms(ref, to_grid(path, xfm), own,
                                           interpolator='linear')
            mean = mean + on_tpl * (1.0 / len(paths))
        mean = ants.apply_transforms(ref, mean, update, whichtoinvert=[False, True],
                                     interpolator='linear')
        data = mean.numpy()
        if key == 'mask':
            data = (data > 0.5).astype(np.float32)
        out[key] = str(Path(work) / f'{key}.nii.gz')
        ants.image_write(mean.new_image_like(data.astype(np.float32)), out[key])
    data = np.where(ants.image_read(out['mask']).numpy() > 0, tpl.numpy(), 0.0)
    out['image'] = str(Path(work) / 'image.nii.gz')
    ants.image_write(tpl.new_image_like(data.astype(np.float32)), out['image'])
    return {**out, 'version': ants.__version__}

