# SPDX-License-Identifier: Apache-2.0
"""The unwrappers' working box (private): the mask's bounding box with a one-voxel border,
cropped from the image and put back (:mod:`qsmflow.qsm.unwrap`,
:mod:`qsmflow.qsm.echoes.unwrapping`)."""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._vector import slabwise


def _crop_pad(arr, box, fill=0):
    """Crop ``arr`` (3D, or 4D with a leading echo axis) to ``box`` and pad by one voxel of
    ``fill`` (what :func:`numpy.pad` gives; the planes are copied in slabs on the thread
    pool, :func:`~qsmflow.qsm._vector.slabwise`: a strided echo of a 4D image is slow to
    gather)."""
    src = arr[box if arr.ndim == 3 else (slice(None),) + tuple(box)]
    out = np.empty(src.shape[:-3] + tuple(n + 2 for n in src.shape[-3:]), src.dtype)
    out[..., 0, :, :] = fill
    out[..., -1, :, :] = fill

    def planes(s):
        rows = slice(s.start + 1, s.stop + 1)
        out[..., rows, 0, :] = fill
        out[..., rows, -1, :] = fill
        out[..., rows, 1:-1, 0] = fill
        out[..., rows, 1:-1, -1] = fill
        out[..., rows, 1:-1, 1:-1] = src[..., s, :, :]

    slabwise(planes, src.shape[-3])
    return out


def _uncrop(arr_b, box, shape, mask):
    """Inverse of :func:`_crop_pad` for a 3D box array; zero outside ``mask``."""
    out = np.zeros(shape, dtype=np.float32)
    out[box] = arr_b[1:-1, 1:-1, 1:-1]
    out[~mask] = 0
    return out


def _zero_outside(arr, mask):
    """``arr`` with its non-finite values outside ``mask`` set to 0 (``arr`` itself if none).

    Values outside the mask never enter the result, but NaN/inf there would turn the
    (masked-out) weights of the mask's border edges into NaN, and with them the quality
    that picks the seeds. Finite inputs are passed through untouched (same bits).
    """
    if arr is None or np.isfinite(arr).all():
        return arr
    return np.where(mask != 0, arr, 0).astype(arr.dtype, copy=False)
