# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: phantom datasets written once per session, one end-to-end run."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault('NIPYPE_NO_ET', '1')

#: Participants of the end-to-end test cohort (the demo's).
E2E_PARTICIPANTS = (
    {'participant_id': '01', 'age': 34, 'sex': 'F'},
    {'participant_id': '02', 'age': 71, 'sex': 'M'},
)


@pytest.fixture(scope='session')
def phantom_dataset(tmp_path_factory):
    """A small two-participant phantom BIDS dataset and its ground truth."""
    from qsmflow.phantom.bids import write_dataset

    root = tmp_path_factory.mktemp('phantom')
    write_dataset(root / 'rawdata', root / 'truth', [dict(p) for p in E2E_PARTICIPANTS],
                  size='small')
    return root


@pytest.fixture(scope='session')
def e2e_run(phantom_dataset):
    """Run the participant level once on the phantom dataset (Linear plugin)."""
    from qsmflow.cli import main

    out = phantom_dataset / 'derivatives' / 'qsmflow'
    code = main([str(phantom_dataset / 'rawdata'), str(out), 'participant', '--nprocs', '1',
                 '-w', str(phantom_dataset / 'work')])
    return {'root': phantom_dataset, 'out': out, 'code': code,
            'truth': phantom_dataset / 'truth'}
