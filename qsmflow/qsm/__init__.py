# SPDX-License-Identifier: Apache-2.0
"""QSM algorithms: numpy arrays in, arrays out (no files, no Nipype).

One module or small package per step: :mod:`~qsmflow.qsm.mask`, :mod:`~qsmflow.qsm.unwrap`,
:mod:`~qsmflow.qsm.echoes`, :mod:`~qsmflow.qsm.bgremove`, :mod:`~qsmflow.qsm.inversion`,
:mod:`~qsmflow.qsm.reference`, :mod:`~qsmflow.qsm.regions`, :mod:`~qsmflow.qsm.metrics`,
with :mod:`~qsmflow.qsm.kernels` (dipole and SMV kernels, FFT geometry) and the private
:mod:`~qsmflow.qsm._validation` (argument checks), :mod:`~qsmflow.qsm._morphology`
(binary morphology) and :mod:`~qsmflow.qsm._vector` (the iterative solvers' vector work
in fixed chunks over threads) shared between them. Each step is called
``qsmflow.qsm.<step>.<method>(data, mask, voxel_size, b0_dir=..., **options)`` with fields
in ppm and the voxel size in mm. :func:`qsmflow.qsm.threads.limit` sets how many threads
the FFTs and compiled loops use; results do not depend on it.
"""

import os as _os

# OpenMP threads of the numba kernels (numba's "omp" layer, libgomp) sleep when idle
# instead of spinning: a spinning worker would take the core the next FFT (scipy's own
# worker threads) or vector chunk (qsmflow.qsm._vector) needs. libgomp reads this when
# numba first launches its pool, which no qsmflow.qsm import does; a value the user set wins.
_os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
