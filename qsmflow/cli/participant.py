# SPDX-License-Identifier: Apache-2.0
"""Participant-level run: check inputs, build the Nipype workflow, run it, report."""
from __future__ import annotations

import sys
import time

from qsmflow import __version__
from qsmflow.bids.inputs import find_acquisitions
from qsmflow.bids.outputs import init_output_dataset
from qsmflow.bids.preflight import preflight
from qsmflow.bids.validator import validate_input
from qsmflow.execution.progress import write_config
from qsmflow.execution.runner import execute


def run_participants(config) -> int:
    """Run the participant level of a :class:`qsmflow.config.RunConfig`; return the exit
    code (0 all done, 1 some participant failed)."""
    t0 = time.time()
    paths, selection = config.paths, config.selection
    bids_dir, out_dir, work_dir = paths.bids_dir, paths.output_dir, paths.work_dir
    if not selection.skip_bids_validation:
        validate_input(bids_dir)

    acquisitions, failures = find_acquisitions(
        bids_dir, list(selection.participant_labels), list(selection.session_labels),
        selection.field_strength, selection.bids_filters)
    reports = preflight(acquisitions, failures,  # reads every image: before any heavy work
                        brain_masks=config.masks.brain_masks,
                        r2_maps=config.maps.r2_maps,
                        segmentations=config.regions.segmentations)
    for subject, reason in failures.items():
        print(f'qsmflow: skipping sub-{subject}: {reason}', file=sys.stderr)
    todo = [a for acqs in acquisitions.values() for a in acqs]
    print(f'qsmflow {__version__}: {len(todo)} acquisition(s) of {len(acquisitions)} '
          f'participant(s) to process; work directory {work_dir}')

    if todo:
        init_output_dataset(out_dir, bids_dir)
        config_file = write_config(config, out_dir)
        failures.update(execute(todo, config, reports, config_file))

    if todo or failures:  # a report for every participant asked for, failed or not
        from qsmflow.reports.participant import write_participant_reports

        write_participant_reports(out_dir, sorted({a.subject for a in todo} | set(failures)),
                                  failures, bids_dir=bids_dir)
    done = sorted(set(acquisitions) - set(failures))
    print(f'qsmflow: finished in {time.time() - t0:.0f} s: {len(done)} participant(s) done, '
          f'{len(failures)} failed. Outputs in {out_dir}')
    for subject, reason in sorted(failures.items()):
        print(f'  FAILED sub-{subject}: {reason}', file=sys.stderr)
    return 1 if failures else 0

