# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench``: time every reconstruction step on the phantom, or whole cohorts."""
from __future__ import annotations


def run_bench(opts) -> int:
    """Run the benchmark that ``opts`` asks for; returns the exit code."""
    if opts.cohort:
        from qsmflow.bench.cohort import main as run_cohort

        return run_cohort(opts.cohort, nprocs=opts.nprocs, size=opts.size or 'small')
    from qsmflow.bench.steps import run_steps

    return run_steps(opts)
