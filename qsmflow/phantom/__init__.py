# SPDX-License-Identifier: Apache-2.0
"""Numerical head phantom, MEGRE forward model and BIDS writer (demo and test data).

* :mod:`~qsmflow.phantom.head`: anatomy (labels, χ in ppm, R2* in 1/s, M0) on RAS grids,
  :func:`~qsmflow.phantom.head.make_head`;
* :mod:`~qsmflow.phantom.forward`: dipole forward model and multi-echo GRE simulation,
  :func:`~qsmflow.phantom.forward.simulate_megre`;
* :mod:`~qsmflow.phantom.realistic`: a harder variant (bright fat scalp, layered skull,
  neck, air cavities, fat shift, SNR 35), :func:`~qsmflow.phantom.realistic.realistic_head`;
* :mod:`~qsmflow.phantom.bids`: raw BIDS dataset plus ground-truth derivatives,
  :func:`~qsmflow.phantom.bids.write_dataset` (``variant='default'`` or ``'realistic'``);
* :mod:`~qsmflow.phantom.qc`: brain-mask measures against the head,
  :func:`~qsmflow.phantom.qc.mask_qc`.
"""

from .forward import field_from_chi, simulate_megre
from .head import DEEP_GM, LABELS, HeadPhantom, make_head, tissue_chi_ppm
from .qc import mask_qc
from .realistic import RealisticHead, realistic_head, simulate_realistic_megre

__all__ = [
    'DEEP_GM',
    'LABELS',
    'HeadPhantom',
    'RealisticHead',
    'field_from_chi',
    'make_head',
    'mask_qc',
    'realistic_head',
    'simulate_megre',
    'simulate_realistic_megre',
    'tissue_chi_ppm',
]
