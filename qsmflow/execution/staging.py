# SPDX-License-Identifier: Apache-2.0
"""Staged outputs: an acquisition's derivatives appear in OUT_DIR only when all are done.

The workflow writes every derivative under ``OUT_DIR/.staging`` (same file system, a hidden
folder that BIDS tools skip); once every step of an acquisition has finished, its files are
moved to their final names with :func:`os.replace`. A run killed at any moment therefore
leaves in OUT_DIR only complete sets from earlier acquisitions, and the next run (which
reuses the work directory) stages and publishes the rest.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from qsmflow import bids_specs

STAGING = '.staging'


def staging_root(out_dir) -> Path:
    """Folder the workflow writes derivatives into before they are published."""
    return Path(out_dir) / STAGING


def name_prefix(acq) -> str:
    """File-name prefix shared by every derivative of ``acq`` (``sub-01_ses-a_run-1``)."""
    name = bids_specs.output_name('chimap', acq.entities)
    suffix = bids_specs.output_name('chimap', {'subject': 'X'})[len('sub-X'):]
    return name[:-len(suffix)]


def participant_folder(root, acq) -> Path:
    """``root/sub-<l>[/ses-<l>]``."""
    folder = Path(root) / f'sub-{acq.subject}'
    if acq.entities.get('session'):
        folder = folder / f'ses-{acq.entities["session"]}'
    return folder


def staged_files(acq, out_dir) -> list[Path]:
    """Files of ``acq`` waiting in the staging folder (sidecars included)."""
    folder = participant_folder(staging_root(out_dir), acq)
    prefix = name_prefix(acq) + '_'
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob('*') if p.is_file() and p.name.startswith(prefix))


def _stale_temporaries(acq, out_dir) -> list[Path]:
    """Hidden ``.<name>.tmp<pid>`` files a killed copy of ``acq`` left behind."""
    folder = participant_folder(staging_root(out_dir), acq)
    if not folder.is_dir():
        return []
    return sorted(folder.rglob(f'.{name_prefix(acq)}_*'))


def publish(acq, out_dir) -> list[Path]:
    """Move every staged file of ``acq`` to its final place in ``out_dir``; return them."""
    root = staging_root(out_dir)
    for stale in _stale_temporaries(acq, out_dir):
        stale.unlink()
    moved = []
    for src in staged_files(acq, out_dir):
        dest = Path(out_dir) / src.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        moved.append(dest)
    _prune(root)
    return moved


def discard(acq, out_dir) -> None:
    """Delete the staged files of a failed acquisition."""
    for path in staged_files(acq, out_dir) + _stale_temporaries(acq, out_dir):
        path.unlink()
    _prune(staging_root(out_dir))


def _prune(root: Path) -> None:
    """Remove empty folders under (and including) the staging root."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob('*') if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        shutil.rmtree(root, ignore_errors=True)
