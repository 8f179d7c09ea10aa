# SPDX-License-Identifier: Apache-2.0
"""The template-to-template transform cache (e.g. SUIT → MNI), keyed on content and locked."""
from __future__ import annotations

import re
from pathlib import Path

from qsmflow.atlases.cache import cache_root, content_digest, locked
from qsmflow.atlases.specs import DEFAULT_TEMPLATE, resolve_atlases


def precompute_template_transforms(template: str = DEFAULT_TEMPLATE, names=None, *,
                                   resolution: int | None = 2, nthreads: int = 1,
                                   home=None) -> list:
    """Fill the transform cache for the atlases that live in another template (SUIT).

    For containers and offline machines: run once after prefilling ``TEMPLATEFLOW_HOME``
    so that participant runs read the template-to-template transforms from the cache
    (``home``: that templateflow folder, default ``$TEMPLATEFLOW_HOME``).

    Returns
    -------
    list of (str, str)
        ``(warp, affine)`` paths, one pair per such atlas.
    """
    from qsmflow import bids_specs

    names = names or bids_specs.load('atlases')['default_atlases']
    out = []
    for atlas in resolve_atlases(template, names, resolution=resolution, home=home):
        if atlas['via']:
            via = atlas['via']
            out.append(cached_template_transform(via['moving'], via['fixed'], via['name'],
                                                 nthreads, to=via['to']))
    return out


#: Version of the template-to-template registration recipe; part of the cache key, so a
#: change of method invalidates transforms cached by earlier versions.
TEMPLATE_XFM_VERSION = 1


def transform_cache() -> Path:
    """Folder of the cached template-to-template transforms.

    ``$QSMFLOW_CACHE/xfm``, by default ``~/.cache/qsmflow/xfm``.
    """
    return cache_root() / 'xfm'


def template_transform_key(moving, fixed, name: str, to: str | None = None,
                           fixed_mask=None) -> str:
    """Cache key of a template-to-template transform.

    ``from-<name>_to-<to>_<digest>``, where the digest covers the contents of both images,
    the registration settings and :data:`TEMPLATE_XFM_VERSION` (a re-downloaded identical
    template reuses the transform; a changed template or recipe does not), and of
    ``fixed_mask`` when given.
    """
    import json

    salt = json.dumps({'version': TEMPLATE_XFM_VERSION, **_reproducibility(),
                       'settings': _registration_settings()}, sort_keys=True,
                      default=str).encode()
    digest = content_digest((moving, fixed) + ((fixed_mask,) if fixed_mask else ()), salt)
    label = re.sub(r'[^0-9a-zA-Z]', '', to or template_name(fixed))
    return f'from-{re.sub(r"[^0-9a-zA-Z]", "", name)}_to-{label}_{digest[:16]}'


def cached_template_transform(moving, fixed, name, nthreads=1, *, to=None):
    """Template-to-template transform (e.g. SUIT T1w → MNI T1w), computed once and cached.

    The two templates share a world space only approximately (SUIT is a cerebellar crop in
    MNI-like coordinates), so the registration starts from the identity, not from the
    centres of mass, then runs rigid, affine and SyN (the subject registration's settings).
    The result lives in :func:`transform_cache` under :func:`template_transform_key`, with
    a JSON record of how it was made; concurrent runs wait on a file lock instead of
    computing it twice.

    Parameters
    ----------
    moving, fixed : str
        T1w images of the atlas's template (moving) and of the registration template.
    name : str
        Identifier of the moving template (``SUIT``).
    nthreads : int
        ITK threads.
    to : str, optional
        Identifier of the fixed template (default: from its ``tpl-<id>`` file name).

    Returns
    -------
    (str, str)
        Paths of the warp (.nii.gz) and affine (.mat), to be applied in this order with
        ``fixed`` as the reference (they map ``moving`` onto ``fixed``).
    """
    out = cached_template_transforms(moving, fixed, name, nthreads, to=to)
    return out['warp'], out['affine']


def cached_template_transforms(moving, fixed, name, nthreads=1, *, to=None,
                               fixed_mask=None) -> dict:
    """:func:`cached_template_transform` with the inverse warp too, and an optional brain
    mask of ``fixed`` (multiplied into it, as in the subject registration).

    Returns
    -------
    dict
        ``warp``, ``affine`` (moving → fixed, in this order with ``fixed`` as the
        reference) and ``inverse_warp`` (with the affine inverted first, ``moving`` as the
        reference) paths in the cache.
    """
    import json
    import tempfile

    from qsmflow.bids.atomic import copy_file

    cache = transform_cache()
    key = template_transform_key(moving, fixed, name, to, fixed_mask)
    paths = {k: cache / f'{key}_{k}{ext}' for k, ext in (
        ('warp', '.nii.gz'), ('affine', '.mat'), ('inverse_warp', '.nii.gz'))}
    if all(p.exists() for p in paths.values()):
        return {k: str(p) for k, p in paths.items()}
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f'.{key}.lock'):
        if all(p.exists() for p in paths.values()):  # computed by a concurrent run meanwhile
            return {k: str(p) for k, p in paths.items()}
        with tempfile.TemporaryDirectory(dir=cache, prefix=f'.{key}.') as tmp:
            out = register_templates(fixed, moving, tmp, nthreads=nthreads,
                                     fixed_mask=fixed_mask)
            record = {'From': name, 'To': to or template_name(fixed),
                      'Moving': str(moving), 'Fixed': str(fixed),
                      'Software': f'antspyx {out["version"]}',
                      'Method': 'identity start, rigid, affine (Mattes MI), SyN',
                      'Settings': _registration_settings(), **_reproducibility(),
                      'Version': TEMPLATE_XFM_VERSION}
            if fixed_mask:
                record['FixedMask'] = str(fixed_mask)
            rec = Path(tmp) / 'record.json'
            rec.write_text(json.dumps(record, indent=2, default=str) + '\n')
            for key_, dest in paths.items():
                copy_file(out[key_], dest)
            copy_file(rec, cache / f'{key}.json')
    return {k: str(p) for k, p in paths.items()}


def register_templates(fixed, moving, out_dir, *, nthreads: int = 1,
                       fixed_mask=None) -> dict:
    """Register one template's T1w to another's, starting from the identity (antspyx).

    The subject registration's settings and reproducibility (fixed seed and thread count,
    a fresh process: :func:`qsmflow.interfaces.registration.register`), except for the
    identity start. Returns ``warp`` (.nii.gz), ``affine`` (.mat) and ``inverse_warp``
    paths in ``out_dir`` (moving → fixed) and the antspyx ``version``.
    """
    from qsmflow.interfaces.registration import register

    out = register(fixed, moving, out_dir, nthreads=nthreads, fixed_mask=fixed_mask,
                   settings=_registration_settings())
    return {k: out[k] for k in ('warp', 'affine', 'inverse_warp', 'version')}


def _registration_settings() -> dict:
    """``ants.registration`` arguments of the template-to-template step."""
    from qsmflow.interfaces.registration import REGISTRATION

    return {**REGISTRATION, 'initial_transform': 'Identity'}


def _reproducibility() -> dict:
    """ANTs seed and registration thread count (the result depends on both)."""
    from qsmflow.interfaces import registration

    return {'RandomSeed': getattr(registration, 'RANDOM_SEED', None),
            'Threads': getattr(registration, 'REGISTRATION_THREADS', None)}


def template_name(path) -> str:
    """Template identifier from a templateflow file name (``tpl-<id>_…``), else the stem."""
    name = Path(path).name
    match = re.match(r'tpl-([0-9a-zA-Z]+)', name)
    return match.group(1) if match else re.sub(r'\.nii(\.gz)?$', '', name)
