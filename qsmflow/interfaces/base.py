# SPDX-License-Identifier: Apache-2.0
"""Shared I/O for qsmflow interfaces: NIfTI load/save and provenance sidecars.

Every image an interface writes gets a JSON sidecar beside it whose ``QSMProcessing`` list
holds, in order, every step that led to it: its algorithm (the qsm/ function), every
effective parameter (the function's defaults overridden by what was asked) and qsmflow's
version. Steps are inherited from the inputs' sidecars, so the final ``_Chimap`` sidecar
records the whole pipeline.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, traits

from qsmflow import __version__
from qsmflow.bids.atomic import write_json  # noqa: F401 - the sidecar writer of interfaces

#: Where interfaces log warnings about their results (Nipype's interface logger: the run's
#: log file; qsmflow's runner also repeats every QC warning of a published acquisition).
LOGGER = logging.getLogger('nipype.interface')


class StepInputSpec(BaseInterfaceInputSpec):
    """Inputs of every reconstruction step: the threads its qsm/ call may use."""

    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc='threads (FFT workers, numba) of the qsm/ call, run inside '
                                  'qsmflow.qsm.threads.limit; results do not depend on it, so '
                                  'it is not hashed')


class FFTStepInputSpec(StepInputSpec):
    """Inputs of a step whose qsm/ function may run on a torch device (--device)."""

    device = traits.Enum('cpu', 'gpu', 'auto', usedefault=True,
                         desc="where the qsm/ call's FFTs run (qsmflow.qsm.device); results "
                              'differ by rounding, not bitwise the same: hashed')


def load(path):
    """Return ``(data, img)`` with data as float32 (NaN/Inf replaced by 0)."""
    img = nb.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), img


def voxel_size(img) -> tuple:
    """Voxel spacing (mm) of the first three axes of ``img``."""
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def save(data, ref_img, out_path, *, dtype=np.float32, steps=None, meta=None) -> str:
    """Write ``data`` on the grid of ``ref_img`` and a provenance sidecar; return the path."""
    data = np.asarray(data).astype(dtype, copy=False)  # no second copy of float32 data
    hdr = ref_img.header.copy()
    hdr.set_data_dtype(dtype)
    img = nb.Nifti1Image(data, ref_img.affine, hdr)
    img.header.set_xyzt_units('mm', 'sec')
    img.set_qform(ref_img.affine, code=1)
    img.set_sform(ref_img.affine, code=1)
    if data.ndim == 3:
        img.header.set_dim_info(None, None, None)
    out_path = str(Path(out_path).absolute())
    img.to_filename(out_path)
    sidecar = {'QSMFlowVersion': __version__, 'QSMProcessing': list(steps or [])}
    sidecar.update(meta or {})
    write_json(sidecar_of(out_path), sidecar)
    return out_path


def sidecar_of(path) -> str:
    """Path of the JSON sidecar of a NIfTI ``path``."""
    p = str(path)
    for ext in ('.nii.gz', '.nii'):
        if p.endswith(ext):
            return p[: -len(ext)] + '.json'
    return p + '.json'


def read_steps(*paths) -> list:
    """Union, in order and without repeats, of the ``QSMProcessing`` steps of ``paths``."""
    steps = []
    for path in paths:
        side = sidecar_of(path)
        if os.path.exists(side):
            with open(side) as fobj:
                for step in json.load(fobj).get('QSMProcessing', []):
                    if step not in steps:
                        steps.append(step)
    return steps


def step(name: str, func, params: dict | None = None, **extra) -> dict:
    """Provenance record of one step: algorithm and every effective parameter."""
    return {'Step': name, 'Algorithm': f'{func.__module__}.{func.__name__}',
            'Parameters': effective_params(func, params or {}), **extra}


def effective_params(func, params: dict) -> dict:
    """Keyword-only defaults of ``func`` overridden by ``params`` (JSON-safe)."""
    out = {}
    for name, par in inspect.signature(func).parameters.items():
        if par.kind == par.KEYWORD_ONLY and par.default is not par.empty:
            out[name] = par.default
    out.update(params)
    return json.loads(json.dumps(out, default=_jsonable))


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(np.asarray(obj).tolist())
    return str(obj)
