# SPDX-License-Identifier: Apache-2.0
"""Running dcm2niix: stage the DICOM files (``.dcm.gz`` decompressed) and convert them.

dcm2niix (the PyPI wheel ``dcm2niix`` ships the binary) does all pixel decoding; qsmflow
only reads its NIfTI files and JSON sidecars. dcm2niix reads one folder tree and does not
read gzip-compressed DICOM, so :func:`stage_dicom` links every DICOM file of the input
tree into a staging folder (inside the BIDS output) and decompresses the ``.gz`` ones
there; :func:`run_dcm2niix` converts the staging folder into another one.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

from qsmflow.errors import InputError

#: Byte offset and value of the DICOM Part 10 magic string.
_MAGIC_OFFSET, _MAGIC = 128, b'DICM'


def find_dcm2niix() -> str:
    """Path of the dcm2niix binary: the ``dcm2niix`` package's, else one on ``PATH``.

    Raises
    ------
    InputError
        When neither is there (one line with the fix).
    """
    try:
        import dcm2niix

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except (ImportError, AttributeError):
        pass
    found = shutil.which('dcm2niix')
    if found:
        return found
    raise InputError('dcm2niix not found: install it with "pip install dcm2niix" (or put the '
                     'dcm2niix binary on PATH)')


def dcm2niix_version() -> str:
    """The dcm2niix version string (e.g. ``'v1.0.20260724'``)."""
    out = subprocess.run([find_dcm2niix(), '-v'], capture_output=True, text=True)
    words = (out.stdout + out.stderr).split()
    return next((w for w in reversed(words) if w.startswith('v1.')), 'unknown')


def _is_dicom(head: bytes) -> bool:
    return head[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == _MAGIC


def dicom_kind(path) -> str | None:
    """``'dicom'``, ``'dicom.gz'`` or ``None`` (not a DICOM Part 10 file) for ``path``."""
    try:
        with open(path, 'rb') as fh:
            head = fh.read(_MAGIC_OFFSET + 4)
        if _is_dicom(head):
            return 'dicom'
        if head[:2] == b'\x1f\x8b':
            with gzip.open(path, 'rb') as fh:
                return 'dicom.gz' if _is_dicom(fh.read(_MAGIC_OFFSET + 4)) else None
    except (OSError, EOFError):
        return None
    return None


def stage_dicom(dicom_dir, staging, skip=()) -> int:
    """Link (or, for ``.gz``, decompress) every DICOM file below ``dicom_dir`` into ``staging``.

    Parameters
    ----------
    dicom_dir : Path
        Folder tree of classic or enhanced DICOM files, plain or gzip-compressed.
    staging : Path
        Empty folder to fill (flat: ``<n>.dcm``).
    skip : sequence of Path
        Folders not to look into (the BIDS output when it lies inside ``dicom_dir``).

    Returns
    -------
    int
        Number of DICOM files staged.
    """
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    skip = [Path(s).resolve() for s in skip]
    n = 0
    for root, dirs, files in os.walk(dicom_dir):
        dirs[:] = sorted(d for d in dirs if (Path(root, d).resolve() not in skip))
        for name in sorted(files):
            src = Path(root, name)
            kind = dicom_kind(src)
            if kind is None:
                continue
            n += 1
            dest = staging / f'{n:07d}.dcm'
            if kind == 'dicom':
                os.symlink(src.resolve(), dest)
            else:
                with gzip.open(src, 'rb') as fin, open(dest, 'wb') as fout:
                    shutil.copyfileobj(fin, fout)
    return n


def run_dcm2niix(staging, out_dir) -> list[Path]:
    """Convert the staged DICOM with dcm2niix into ``out_dir``; return the JSON sidecars.

    Options: gzip-compressed NIfTI, a BIDS sidecar per image, identifying fields kept
    (qsmflow removes them when it writes the BIDS sidecars), file names from the series
    number and the echo (dcm2niix adds ``_ph``, ``_real``, ``_imaginary``, ``_c<n>``, …).

    Raises
    ------
    InputError
        When dcm2niix fails or writes nothing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [find_dcm2niix(), '-z', 'y', '-b', 'y', '-ba', 'n', '-f', '%s_%e', '-o',
           str(out_dir), str(staging)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    sidecars = sorted(out_dir.glob('*.json'))
    if res.returncode != 0 and not sidecars:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f'exit code {res.returncode}'
        raise InputError(f'{staging}: dcm2niix could not convert the DICOM files ({last}); '
                         'check that the folder holds complete MR image series')
    return sidecars
