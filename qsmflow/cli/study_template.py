# SPDX-License-Identifier: Apache-2.0
"""``qsmflow BIDS_DIR OUT_DIR group --build-study-template``: the study template of the
first pass (:mod:`qsmflow.atlases.study_template`)."""
from __future__ import annotations

import time


def run_build_study_template(config) -> int:
    """Build ``OUT_DIR/templates/tpl-study`` from the first pass; return the exit code."""
    from qsmflow.atlases.specs import template_files
    from qsmflow.atlases.study_template import FOLDER, build_study_template
    from qsmflow.atlases.template_masks import with_brain_mask
    from qsmflow.atlases.templateflow import TemplateError
    from qsmflow.bids.atomic import write_text
    from qsmflow.errors import InputError

    t0 = time.time()
    regions, paths = config.regions, config.paths
    try:
        files = template_files(regions.template, regions.template_resolution,
                               home=regions.templateflow_home)
    except TemplateError as exc:
        raise InputError(str(exc)) from None
    files['mask'] = with_brain_mask(files['image'], files['mask'], f'template {regions.template}')
    out = build_study_template(
        paths.output_dir, paths.bids_dir, template=regions.template, template_files=files,
        participants=list(config.selection.participant_labels) or None,
        iterations=regions.study_template_iterations, nthreads=config.engine.omp_nthreads)
    ignore = paths.output_dir / '.bidsignore'
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if f'/{FOLDER.parts[0]}' not in lines:
        write_text(ignore, '\n'.join([*lines, f'/{FOLDER.parts[0]}']) + '\n')
    print(f'qsmflow group: study template in {time.time() - t0:.0f} s: {out["image"]}; '
          f'second pass: qsmflow {paths.bids_dir} {paths.output_dir} participant '
          f'--study-template {paths.output_dir / FOLDER} (then the group level)')
    return 0
