# SPDX-License-Identifier: Apache-2.0
"""``qsmflow compare BIDS_DIR OUT_DIR --pipelines P … [--grid STEP=M1,M2 …]``: several
reconstruction pipelines over a cohort, on pydra (see :mod:`qsmflow.compare`). Problems
end in one line (:class:`qsmflow.errors.InputError`, printed by
:func:`qsmflow.cli.main.main`)."""
from __future__ import annotations

import logging


def run_compare_command(opts) -> int:
    """Resolve the pipelines and the selection from the parsed options and run."""
    from qsmflow.cli.config import selection_from_args
    from qsmflow.compare.pipelines import resolve_pipelines
    from qsmflow.compare.run import run_compare
    from qsmflow.execution.engines import load_plugin_args

    pipelines = resolve_pipelines(opts.pipelines, opts.grid)
    # pydra's event loop reports a failed step's traceback once more through asyncio's
    # logger when its future is collected; the step's one line is printed instead
    logging.getLogger('asyncio').setLevel(logging.CRITICAL)
    return run_compare(
        opts.bids_dir, opts.output_dir, pipelines, selection=selection_from_args(opts),
        segmentations=_absolute(opts.segmentations), labels_from=_absolute(opts.labels_from),
        atlases=opts.atlases, erode=opts.erode_rois, work_dir=opts.work_dir,
        plugin=opts.plugin, nprocs=opts.nprocs, plugin_args=load_plugin_args(opts.plugin_args),
        keep_maps=opts.keep_maps)


def _absolute(path):
    return path.expanduser().absolute() if path else None
