# SPDX-License-Identifier: Apache-2.0
"""Brain masks from GRE magnitude, and phase-quality masks.

* :mod:`~qsmflow.qsm.mask.brain` — :func:`brain_mask` (magnitude threshold → opening →
  largest connected component → hole filling), :func:`r2star_map` and :func:`csf_mask`
  (ventricular CSF, a reference region).
* :mod:`~qsmflow.qsm.mask.quality` — :func:`quality_map` (per-voxel phase reliability),
  :func:`quality_mask` (unreliable voxels removed from a brain mask, as the 2024 QSM
  consensus recommends) and :func:`strict_mask` (first mask of a two-pass reconstruction).

Every public name is importable from here (``qsmflow.qsm.mask.brain_mask``); that is the
name provenance sidecars record. Binary morphology is in :mod:`qsmflow.qsm._morphology`.
"""

from qsmflow.qsm.mask.brain import (
    DEFAULT_CSF_MAX_R2STAR_HZ,
    DEFAULT_CSF_MIN_DEPTH_MM,
    DEFAULT_CSF_MIN_VOLUME_MM3,
    DEFAULT_OPENING_MM,
    ROBUST_MAX_PERCENTILE,
    brain_mask,
    csf_mask,
    r2star_map,
)
from qsmflow.qsm.mask.quality import (
    DEFAULT_QUALITY_THRESHOLD,
    DEFAULT_STRICT_MARGIN_MM,
    DEFAULT_STRICT_QUALITY_THRESHOLD,
    QUALITY_WINDOW_MM,
    quality_map,
    quality_mask,
    strict_mask,
)

__all__ = [
    'DEFAULT_CSF_MAX_R2STAR_HZ', 'DEFAULT_CSF_MIN_DEPTH_MM', 'DEFAULT_CSF_MIN_VOLUME_MM3',
    'DEFAULT_OPENING_MM', 'DEFAULT_QUALITY_THRESHOLD', 'DEFAULT_STRICT_MARGIN_MM',
    'DEFAULT_STRICT_QUALITY_THRESHOLD', 'QUALITY_WINDOW_MM', 'ROBUST_MAX_PERCENTILE',
    'brain_mask', 'csf_mask', 'quality_map', 'quality_mask', 'r2star_map', 'strict_mask',
]

# help(), pickling and the provenance sidecars (qsmflow.interfaces.base.step) name the
# public path, qsmflow.qsm.mask.<function>, not the submodule it is defined in
for _func in (brain_mask, csf_mask, r2star_map, quality_map, quality_mask, strict_mask):
    _func.__module__ = __name__
del _func

