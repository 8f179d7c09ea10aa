# SPDX-License-Identifier: Apache-2.0
"""Pre-flight memory estimate of each reconstruction node (the Nipype ``mem_gb``).

A node's peak resident memory is the Python process with its libraries plus, per voxel
of the grid, what the step holds at its peak: its inputs and outputs as float32 and its
work arrays (:data:`NODE_MEMORY`). The numbers were measured with
``python -m qsmflow.bench.nodes`` (each node's interface in a fresh process, resident
memory sampled with psutil) on the realistic phantom; the estimate is within 25 % of
the measurement (tests/test_bench_memory.py).
"""
from __future__ import annotations

#: Per node: resident memory (GB) of its process before it reads its data (Python, numpy,
#: scipy, nibabel, nipype, the interface and, where the step has compiled loops, numba's
#: LLVM), then the peak bytes per grid voxel ``(per voxel, per voxel and echo)``: inputs,
#: outputs and work arrays. Measured on the realistic phantom at 2 mm and 1 mm (5 echoes):
#: the slope between the two grids is the bytes per voxel; the share per echo is that of
#: the echo stacks the node reads (float32 magnitude and phase) and its per-echo work
#: arrays (``field_fit`` re-measured on 2026-12-05 23:29 UTC after its echoes are streamed
#: chunk by chunk through the temporal unwrapping and the fit: 0.253 and 0.519 GB on the
#: 2 mm and 1 mm grids, 83.4 B per voxel with 5 echoes, of which 12 per echo: the float32
#: magnitude and phase it reads and the unwrapped echoes it returns; ``inversion``
#: re-measured the same day after TV's leaner work arrays: 0.239 and 0.387 GB).
#: ``strict_mask`` is taken as ``quality_mask`` (same inputs) and ``combine_two_pass`` (two
#: χ maps and masks in, one out) was not measured.
NODE_MEMORY = {
    'load_megre': (0.180, 0.0, 10.0),
    'brain_mask': (0.188, 10.0, 9.5),
    'field_fit': (0.215, 23.4, 12.0),
    'quality_mask': (0.164, 20.0, 12.8),
    'strict_mask': (0.164, 20.0, 12.8),
    'bg_removal': (0.163, 30.4, 0.0),
    'inversion': (0.218, 46.3, 0.0),
    'combine_two_pass': (0.221, 24.0, 0.0),
    'reference': (0.160, 18.8, 0.0),
}


#: The method each measurement of :data:`NODE_MEMORY` ran (the defaults). Other methods
#: of these nodes were not measured and keep the earlier, generous bytes per voxel.
MEASURED_METHODS = {'bg_removal': 'pdf', 'inversion': 'tv'}
UNMEASURED_BYTES_PER_VOXEL = {'bg_removal': 120.0, 'inversion': 160.0}


def node_mem_gb(node: str, n_voxels: int, n_echoes: int = 1, method: str | None = None
                ) -> float:
    """Estimated peak memory (GB) of reconstruction node ``node`` on a grid of
    ``n_voxels`` voxels with ``n_echoes`` echoes, running ``method`` (for
    ``bg_removal``/``inversion``; None: the default).

    Examples
    --------
    >>> node_mem_gb('field_fit', 144 * 176 * 144, 5) > node_mem_gb('field_fit', 10**6, 5)
    True
    """
    base_gb, per_voxel, per_echo = NODE_MEMORY[node]
    if method not in (None, MEASURED_METHODS.get(node, method)):
        per_voxel, per_echo = UNMEASURED_BYTES_PER_VOXEL[node], 0.0
    return base_gb + n_voxels * (per_voxel + per_echo * n_echoes) / 1e9
