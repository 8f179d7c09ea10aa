# SPDX-License-Identifier: Apache-2.0
"""Background field removal: total field (ppm) → local field (ppm).

Five methods (:data:`METHODS`) of the families the 2024 QSM consensus recommends, one
module per family:

* :mod:`~qsmflow.qsm.bgremove.sharp` — :func:`vsharp`, variable-radius sophisticated
  harmonic artifact reduction (V-SHARP): harmonic fields obey the spherical mean value
  (SMV) property, so ``f − SMV_r(f)`` removes them; the SMV filter is then deconvolved with
  a truncated inverse. Fast, erodes the mask. :func:`resharp`, SHARP with Tikhonov
  regularisation instead of truncated deconvolution (RESHARP); erodes the mask by one SMV
  radius.
* :mod:`~qsmflow.qsm.bgremove.dipole_projection` — :func:`pdf`, projection onto dipole
  fields (PDF): fit the field inside the mask with dipole sources outside it and subtract;
  keeps the mask, slower.
* :mod:`~qsmflow.qsm.bgremove.boundary` — :func:`ismv`, iterative SMV (the background is
  its own spherical mean inside the mask eroded by the SMV radius, the total field on the
  shell outside it), and :func:`lbv`, Laplacian boundary value (``Δb = 0`` inside the mask,
  the total field on its one-voxel boundary layer).

All take and return fields in ppm of B0 on the full image grid, with the mask the local
field is valid on: ``local, mask = method(total_field, mask, voxel_size, b0_dir, **opts)``.
FFTs run on the mask's bounding box (plus a margin), zero-padded to fast FFT lengths.
Every public name is importable from here; ``qsmflow.qsm.bgremove.<function>`` is the name
the provenance sidecars record.
"""

from qsmflow.qsm.bgremove.boundary import DEFAULT_ISMV_RADIUS_MM, ismv, lbv
from qsmflow.qsm.bgremove.dipole_projection import PDF_PAD_VOXELS, pdf
from qsmflow.qsm.bgremove.sharp import (
    DEFAULT_RESHARP_RADIUS_MM,
    DEFAULT_VSHARP_MAX_RADIUS_MM,
    DEFAULT_VSHARP_MIN_STEP_MM,
    VSHARP_PAD_VOXELS,
    default_vsharp_radii_mm,
    resharp,
    vsharp,
)

__all__ = [
    'DEFAULT_ISMV_RADIUS_MM', 'DEFAULT_RESHARP_RADIUS_MM', 'DEFAULT_VSHARP_MAX_RADIUS_MM',
    'DEFAULT_VSHARP_MIN_STEP_MM', 'METHODS', 'PDF_PAD_VOXELS', 'VSHARP_PAD_VOXELS',
    'default_vsharp_radii_mm', 'ismv', 'lbv', 'pdf', 'resharp', 'vsharp',
]

#: Background-removal methods (function names of this package).
METHODS = ('vsharp', 'pdf', 'resharp', 'ismv', 'lbv')

# help(), pickling and the provenance sidecars (qsmflow.interfaces.base.step) name the
# public path, qsmflow.qsm.bgremove.<function>, not the module it is defined in
for _func in (vsharp, resharp, pdf, ismv, lbv, default_vsharp_radii_mm):
    _func.__module__ = __name__
del _func
