# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench``: time every reconstruction step on the phantom, or whole cohorts."""
from __future__ import annotations

import sys


def run_bench(opts) -> int:
    """Run the benchmark that ``opts`` asks for; returns the exit code."""
    if opts.device != 'cpu':
        from qsmflow.qsm.device import resolve

        if opts.cohort or opts.threads:
            print('qsmflow bench: --device is for the reconstruction steps, not --cohort or '
                  '--threads', file=sys.stderr)
            return 2
        try:
            resolve(opts.device)
        except ValueError as err:
            print(f'qsmflow bench: {err}', file=sys.stderr)
            return 2
    if opts.cohort:
        if opts.size == 'hires':
            print('qsmflow bench: --size hires is for the reconstruction steps; --cohort '
                  'runs tiny, small or full participants', file=sys.stderr)
            return 2
        from qsmflow.bench.cohort import main as run_cohort

        return run_cohort(opts.cohort, nprocs=opts.nprocs, size=opts.size or 'small')
    if opts.threads:
        from qsmflow.bench.threads import main as run_threads

        return run_threads(opts.threads, size=opts.size or 'full', phantom=opts.phantom,
                           snr=opts.snr, oblique_deg=opts.oblique, repeat=opts.repeat)
    from qsmflow.bench.steps import run_steps

    return run_steps(opts)
