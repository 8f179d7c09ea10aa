# SPDX-License-Identifier: Apache-2.0
"""Brain masks of templates that come without one, derived from the image and cached.

A registration of the brain-masked magnitude to a template that still has skull and
scalp stretches the brain to the head unless the template's brain mask restricts the
metric. Measured 2026-12-06 on the 2 mm real-anatomy phantom (seed 0, two participants,
custom atlas on the MNI152NLin2009cAsym res-02 T1w, no ``--atlas-template-mask``): mean
Dice of the nuclei 0.03 / 0.03, every label shrunk to 0.43 of the atlas's volume (median),
and the χ map in template space spread over 4.6 L. Templates without a brain mask are
common: a user's ``--atlas-template`` given alone, or a ``TEMPLATEFLOW_HOME`` that holds
only the T1w. So when a template has no mask and its image looks like a head, qsmflow
derives the brain mask with :func:`qsmflow.qsm.brain_extraction.extract_brain` (measured
on T1w templates: MNI152NLin2009cAsym res-02 2059 mL, Dice 0.975 with the mask
:func:`qsmflow.phantom.anatomy.template_brain_mask` draws on it; MNIColin27 1 mm
1996 mL) and keeps it in ``$QSMFLOW_CACHE/masks``, keyed on the image's contents, with a
JSON record of how it was made. A skull-stripped template needs no mask: its background
is already out of the metric.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

#: Version of the recipe; part of the cache key.
TEMPLATE_MASK_VERSION = 1


def mask_cache() -> Path:
    """Folder of the derived template masks: ``$QSMFLOW_CACHE/masks``
    (default ``~/.cache/qsmflow/masks``)."""
    from qsmflow.atlases.cache import cache_root

    return cache_root() / 'masks'


def looks_like_head(data, voxel_size) -> bool:
    """Whether a template image holds more than a brain: its head (foreground) is larger
    than any brain (:data:`qsmflow.qsm.brain_extraction.DEFAULT_QC_MAX_VOLUME_ML`).

    >>> import numpy as np
    >>> r = np.sqrt(((np.indices((56, 56, 56)) - 27.5) ** 2).sum(0)) * 4.0  # 4 mm voxels
    >>> looks_like_head(1.0 * (r < 70), (4, 4, 4)), looks_like_head(1.0 * (r < 90), (4, 4, 4))
    (False, True)
    """
    import numpy as np

    from qsmflow.qsm.brain_extraction import DEFAULT_QC_MAX_VOLUME_ML, head_mask
    from qsmflow.reports.metrics import mask_volume_ml

    head = head_mask(np.asarray(data, dtype=np.float32), voxel_size)
    return mask_volume_ml(head, voxel_size) > DEFAULT_QC_MAX_VOLUME_ML


def read_template(image) -> tuple:
    """A template image's data (float32; a 4D image of one volume made 3D), its nibabel
    image and its voxel size (mm)."""
    import nibabel as nb
    import numpy as np

    img = nb.load(image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and data.size == np.prod(
        data.shape[:3]) else data
    return data, img, tuple(float(v) for v in img.header.get_zooms()[:3])


def image_looks_like_head(image) -> bool:
    """:func:`looks_like_head` of a template image file (False for anything but one 3D
    volume)."""
    data, _, vox = read_template(image)
    return _is_head(data, vox)


def _is_head(data, vox) -> bool:
    return data.ndim == 3 and looks_like_head(data, vox)


def derived_brain_mask(image) -> str | None:
    """Path of the cached brain mask derived from a template image, or None when the
    image is skull-stripped already (:func:`looks_like_head` is false).

    Computed once per image contents (:func:`mask_cache`, file lock against concurrent
    runs, written atomically); ``<name>.json`` beside it records the method, the volume
    and the source image (:func:`derived_brain_mask_record`).
    """
    return derived_brain_mask_record(image)[0]


def derived_brain_mask_record(image) -> tuple[str | None, dict]:
    """:func:`derived_brain_mask` and its JSON record (``Derived``, ``VolumeML``, …)."""
    from qsmflow.atlases.cache import content_digest, locked

    image = Path(image)
    digest = content_digest([image], f'template-mask-{TEMPLATE_MASK_VERSION}'.encode())
    stem = re.sub(r'[^0-9A-Za-z-]', '', re.sub(r'\.nii(\.gz)?$', '', image.name))[:60]
    cache = mask_cache()
    key = f'{stem}_{digest[:16]}'
    path, record = cache / f'{key}_desc-brain_mask.nii.gz', cache / f'{key}.json'
    if not _cached(path, record):
        cache.mkdir(parents=True, exist_ok=True)
        with locked(cache / f'.{key}.lock'):
            if not _cached(path, record):  # else made by a concurrent run meanwhile
                _derive(image, path, record)
    meta = json.loads(record.read_text())
    return (str(path) if meta.get('Derived') else None), meta


def _cached(path: Path, record: Path) -> bool:
    """Whether the cache holds the result: its record, and the mask when one was derived."""
    return record.exists() and (path.exists()
                                or not json.loads(record.read_text()).get('Derived'))


def _derive(image: Path, path: Path, record: Path) -> None:
    import nibabel as nb
    import numpy as np

    from qsmflow.bids.atomic import replace_into, write_text
    from qsmflow.qsm.brain_extraction import extract_brain
    from qsmflow.reports.metrics import mask_volume_ml

    data, img, vox = read_template(image)
    meta = {'Source': str(image.absolute()), 'Version': TEMPLATE_MASK_VERSION}
    if not _is_head(data, vox):
        meta.update(Derived=False, Reason='skull-stripped (or not a 3D head image): no mask '
                                          'needed')
    else:
        mask = extract_brain(data, vox)
        out = nb.Nifti1Image(mask.astype(np.uint8), img.affine)
        out.set_qform(img.affine, 1)
        out.set_sform(img.affine, 1)
        replace_into(path, lambda tmp: nb.save(out, tmp))
        meta.update(Derived=True, Method='qsmflow.qsm.brain_extraction.extract_brain '
                                         '(default settings) on the template image',
                    VolumeML=round(mask_volume_ml(mask, vox), 1))
    write_text(record, json.dumps(meta, indent=2) + '\n')


def with_brain_mask(image, mask, what: str) -> str | None:
    """``mask`` when given, else :func:`derived_brain_mask` of ``image`` (announced on the
    console, naming ``what`` the image is).

    Raises
    ------
    qsmflow.errors.InputError
        When ``image`` cannot be read as an image, or the cache cannot be written (one
        line naming the file and the fix).
    """
    import nibabel as nb
    import numpy as np

    from qsmflow.errors import InputError

    if mask:
        return str(mask)
    try:
        img = nb.load(image)
        np.asarray(img.dataobj[(slice(0, 1),) * min(img.ndim, 3)])  # the data read too
    except (OSError, ValueError, EOFError, nb.filebasedimages.ImageFileError) as exc:
        raise InputError(f'{what} {image}: cannot read it as an image ({exc}); give a NIfTI '
                         'template') from None
    try:
        derived, record = derived_brain_mask_record(image)
    except OSError as exc:
        raise InputError(f'{what} {image} needs a brain mask and qsmflow cannot keep the one '
                         f'it derives in {mask_cache()} ({exc.strerror or exc}): set '
                         'QSMFLOW_CACHE to a writable folder, or give the template\'s brain '
                         'mask') from None
    if derived:
        volume = record.get('VolumeML')
        print(f'qsmflow: {what} {Path(image).name} has skull and scalp and no brain mask: '
              f'registering to the brain mask qsmflow derived from it ({volume:g} mL, '
              f'{derived})', file=sys.stderr)
    return derived
