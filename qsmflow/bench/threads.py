# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench --threads N [N ...]``: the default reconstruction per thread count.

The phantom is simulated once; the default chain (:func:`qsmflow.bench.steps.
default_chain`) first runs once on the 3 mm phantom so that every compiled kernel is
built, then once per thread count ``N`` inside :func:`qsmflow.qsm.threads.limit` ``(N)``
(every step gets ``N`` FFT workers and ``N`` numba threads). One line per thread count:
wall time of the chain (best of ``--repeat``), its speed-up over the first count, the
peak resident memory of the process during the chain (:mod:`qsmflow.bench.rss`) and that
peak per grid voxel; then the slowest step, and a line with every step's time in that run.
The χ maps of all thread counts are compared bitwise.

The memory is that of the pipeline's nodes, which hold only their own inputs: the
simulated echoes are written to disk once (``.npy``, the phantom's truth maps dropped)
and each run reads them before its first step (not timed) and drops them after the last
step that reads them (the phase-quality mask), as the pipeline's nodes load theirs; each
step's result is dropped once no later step reads it.
"""
from __future__ import annotations

import gc
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _echoes(data) -> dict:
    """The chain's own ``mag`` and ``phase``: read from ``data['files']`` (the ``.npy`` files
    of :func:`_write_echoes`) if there, else ``data``'s arrays."""
    if 'files' in data:
        return {key: np.load(path) for key, path in data['files'].items()}
    return {key: data[key] for key in ('mag', 'phase')}


def _write_echoes(data, folder) -> None:
    """Move ``data``'s ``mag`` and ``phase`` into ``.npy`` files in ``folder``
    (``data['files']``)."""
    data['files'] = {}
    for key in ('mag', 'phase'):
        path = Path(folder) / f'{key}.npy'
        np.save(path, data.pop(key))
        data['files'][key] = path


def _chain(data, n_threads):
    """Run the default chain with ``n_threads`` on the echoes of :func:`_echoes`; returns
    ``(s, peak RSS B, steps, chi)`` where ``steps`` maps each step's label to
    ``(s, peak RSS B during the step)``."""
    from qsmflow.bench import rss
    from qsmflow.bench.steps import default_chain
    from qsmflow.qsm import threads

    steps = {}

    def timed(label, func):
        rss.reset_peak()
        t0 = time.perf_counter()
        result = func()
        steps[label] = (time.perf_counter() - t0, rss.peak_bytes())
        return result

    inputs = _echoes(data)
    gc.collect()
    with threads.limit(n_threads):
        out = default_chain(inputs, data['vox'], data['b0_dir'], data['tes'], timed,
                            keep=False)
    total = sum(s for s, _ in steps.values())
    peak = max(p for _, p in steps.values())
    return total, peak, steps, out['chi_ref']


def main(thread_counts, *, size: str = 'full', phantom: str = 'realistic', snr=None,
         oblique_deg: float = 15.0, repeat: int = 1) -> int:
    """Print one line per thread count in ``thread_counts``; 0 if the χ maps agree
    bitwise across thread counts, else 1."""
    with tempfile.TemporaryDirectory(prefix='qsmflow-bench-') as folder:
        return _main(thread_counts, folder, size=size, phantom=phantom, snr=snr,
                     oblique_deg=oblique_deg, repeat=repeat)


def _main(thread_counts, folder, *, size, phantom, snr, oblique_deg, repeat) -> int:
    from qsmflow.bench import rss
    from qsmflow.bench.steps import simulated

    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'qsmflow bench --threads: {phantom} phantom {size}; machine {platform.machine()}, '
          f'{os.cpu_count()} CPUs, load average {load:.2f} at start')
    _chain(simulated(phantom, 'tiny', snr, oblique_deg), 1)  # compile every kernel
    rss.reset_peak()
    data = simulated(phantom, size, snr, oblique_deg)
    del data['head']  # the truth maps: not an input of the chain
    grid = data['mag'].shape[:3]
    n_vox = int(np.prod(grid))
    print(f'  grid {grid} at {data["vox"]} mm, {len(data["tes"])} echoes '
          f'({n_vox / 1e6:.1f} M voxels); peak RSS while simulating it '
          f'{rss.peak_bytes() / 1e9:.2f} GB')
    _write_echoes(data, folder)  # each run reads them, as the pipeline's nodes do
    gc.collect()
    print(f'  {"threads":>7} {"size":>6} {"time (s)":>9} {"speed-up":>9} '
          f'{"peak RSS (GB)":>14} {"B/voxel":>8}  slowest step')
    first, reference, same = None, None, True
    for n in thread_counts:
        runs = []
        for _ in range(repeat):  # each χ is compared at once, not held (peak memory)
            total, peak, steps, chi = _chain(data, n)
            if reference is None:
                reference = chi
            else:
                same = same and np.array_equal(chi, reference)
            del chi
            runs.append((total, peak, steps))
        total, _, steps = min(runs, key=lambda run: run[0])
        peak = max(run[1] for run in runs)
        first = first or total
        label, (slow_s, _) = max(steps.items(), key=lambda item: item[1][0])
        print(f'  {n:>7} {size:>6} {total:9.2f} {first / total:8.2f}x {peak / 1e9:14.2f} '
              f'{peak / n_vox:8.0f}  {label} {slow_s:.2f} s', flush=True)
        print('          steps (s): ' + ', '.join(f'{name} {t:.2f}' for name, (t, _) in
                                        steps.items()), flush=True)
    print(f'  chi bitwise identical across thread counts: {"yes" if same else "NO"}')
    return 0 if same else 1
