# SPDX-License-Identifier: Apache-2.0
"""Set-up shared by the dipole inversions (private): argument checks and the FFT grid.

Every inversion validates ``(local_field, mask, voxel_size, b0_dir)`` with
:func:`_validate`, then crops to the mask's bounding box, zero-pads by
:data:`PAD_VOXELS` (then to fast FFT lengths) and solves on that grid in
float32/complex64 (:class:`_Problem`); :meth:`_Problem.finish` puts χ back on the full grid,
0 outside the mask, with the input's float dtype.
"""

from __future__ import annotations

import numpy as np

from qsmflow.qsm._validation import check_field_mask, iterations, positive
from qsmflow.qsm.kernels import PaddedBox, dipole_kernel

#: Zero padding (voxels, each side) around the mask's bounding box for the FFT grid.
PAD_VOXELS = 8


def _validate(local_field, mask, voxel_size, b0_dir):
    return check_field_mask(local_field, mask, voxel_size, b0_dir, name='local_field')


_positive = positive
_iterations = iterations


class _Problem:
    """Cropped, padded float32 field and dipole kernel shared by all inversions."""

    def __init__(self, field, mask, vsz, b0, *, kernel=True):
        self.grid = PaddedBox(mask, margin_voxels=0, pad_voxels=PAD_VOXELS)
        self.shape = self.grid.shape
        self.mask = self.grid.to_grid(mask, bool)
        self.field = self.grid.to_grid(np.where(mask, field, 0), np.float32)
        self.vsz = vsz
        self.D = dipole_kernel(self.shape, vsz, b0) if kernel else None

    def finish(self, chi, dtype):
        chi = np.asarray(chi, dtype=np.float32)
        chi *= self.mask
        return self.grid.to_full(chi, dtype=dtype)
