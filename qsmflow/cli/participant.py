# SPDX-License-Identifier: Apache-2.0
"""Participant-level run: check inputs, build the Nipype workflow, run it, report."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from qsmflow import __version__
from qsmflow.bids.inputs import check_dirs, clean_labels, find_acquisitions, load_bids_filters
from qsmflow.bids.outputs import init_output_dataset
from qsmflow.bids.preflight import preflight
from qsmflow.bids.validator import validate_input
from qsmflow.errors import InputError
from qsmflow.execution.runner import execute


def run_participants(opts) -> int:
    """Run the participant level for parsed command-line ``opts``; return the exit code."""
    from qsmflow.config.presets import load_preset, with_overrides

    t0 = time.time()
    bids_dir, out_dir = check_dirs(opts.bids_dir, opts.output_dir)
    work_dir = (opts.work_dir or out_dir.parent / 'work').expanduser().absolute()
    labels = clean_labels(opts.participant_label, 'sub-')
    sessions = clean_labels(opts.session_label, 'ses-')
    try:
        pipeline = with_overrides(
            load_preset(opts.preset), unwrapping=opts.unwrapping, bf_removal=opts.bf_removal,
            inversion=opts.inversion, reference=opts.reference,
            masking=getattr(opts, 'masking', None),
            echo_combination=getattr(opts, 'echo_combination', None))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if getattr(opts, 'two_pass', None) is not None:
        pipeline['masking']['two_pass'] = bool(opts.two_pass)
    if getattr(opts, 'brain_masks', None) is not None:
        if not Path(opts.brain_masks).is_dir():
            raise InputError(f'--brain-masks {opts.brain_masks} is not a folder; give a BIDS '
                             'derivatives folder with sub-<label>/anat/*_desc-brain_mask.nii.gz')
        pipeline['masking']['brain_masks'] = str(Path(opts.brain_masks).absolute())
    if not opts.skip_bids_validation:
        validate_input(bids_dir)

    filters = getattr(opts, 'bids_filter_file', None)
    filters = load_bids_filters(filters) if filters else None
    acquisitions, failures = find_acquisitions(bids_dir, labels, sessions, opts.field_strength,
                                               filters)
    reports = preflight(acquisitions, failures,  # reads every image: before any heavy work
                        brain_masks=pipeline['masking'].get('brain_masks'))
    for subject, reason in failures.items():
        print(f'qsmflow: skipping sub-{subject}: {reason}', file=sys.stderr)
    todo = [a for acqs in acquisitions.values() for a in acqs]
    print(f'qsmflow {__version__}: {len(todo)} acquisition(s) of {len(acquisitions)} '
          f'participant(s) to process; work directory {work_dir}')

    if todo:
        init_output_dataset(out_dir, bids_dir)
        failures.update(execute(todo, out_dir, bids_dir, work_dir, pipeline, opts,
                                 reports))

    done = sorted(set(acquisitions) - set(failures))
    print(f'qsmflow: finished in {time.time() - t0:.0f} s: {len(done)} participant(s) done, '
          f'{len(failures)} failed. Outputs in {out_dir}')
    for subject, reason in sorted(failures.items()):
        print(f'  FAILED sub-{subject}: {reason}', file=sys.stderr)
    return 1 if failures else 0


