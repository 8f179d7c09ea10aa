# SPDX-License-Identifier: Apache-2.0
"""Atomic writes: a file appears complete under its name, or not at all.

Each function writes into a hidden temporary file in the destination's folder
(``.<name>.tmp<pid>``, same file system) and then renames it over the destination with
:func:`os.replace`; a process killed mid-write leaves at most that hidden temporary
behind (:mod:`qsmflow.execution.staging` removes stale ones). Used for every file
qsmflow writes outside Nipype's work directory: sidecars, the dataset description,
``.bidsignore``, tables, group outputs, cached transforms and the demo template.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

_NIFTI_EXTENSIONS = ('.nii.gz', '.nii')


def temporary_path(dest) -> Path:
    """The temporary file :func:`replace_into` writes ``dest`` through.

    NIfTI names keep their extension at the end (nibabel picks the format from it).

    Examples
    --------
    >>> temporary_path('/d/x.json').name.startswith('.x.json.tmp')
    True
    >>> temporary_path('/d/x.nii.gz').name.endswith('.nii.gz')
    True
    """
    dest = Path(dest)
    tag = f'tmp{os.getpid()}'
    for ext in _NIFTI_EXTENSIONS:
        if dest.name.endswith(ext):
            return dest.with_name(f'.{dest.name[:-len(ext)]}.{tag}{ext}')
    return dest.with_name(f'.{dest.name}.{tag}')


def replace_into(dest, write) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``dest``, then rename it to ``dest``.

    The temporary file is removed when ``write`` fails.
    """
    dest = Path(dest)
    tmp = temporary_path(dest)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return replace_into(path, lambda tmp: tmp.write_text(text))


def jsonable(obj):
    """``json.dump`` fallback: numpy scalars and arrays (and tuples) as numbers and lists,
    anything else as its string."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(np.asarray(obj).tolist())
    return str(obj)


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON (with a final newline) to ``path`` atomically.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / 'x.json'
    >>> _ = write_json(path, {'a': (1, 2)})
    >>> path.read_text()
    '{\\n  "a": [\\n    1,\\n    2\\n  ]\\n}\\n'
    """
    def write(tmp):
        with open(tmp, 'w') as fobj:
            json.dump(obj, fobj, indent=2, default=jsonable)
            fobj.write('\n')

    return replace_into(path, write)


def copy_file(src, dest) -> Path:
    """Copy the contents of ``src`` to ``dest`` atomically."""
    return replace_into(dest, lambda tmp: shutil.copyfile(src, tmp))


def write_nifti(img, path) -> Path:
    """Save the nibabel image ``img`` to ``path`` (``.nii`` or ``.nii.gz``) atomically."""
    return replace_into(path, lambda tmp: img.to_filename(str(tmp)))
