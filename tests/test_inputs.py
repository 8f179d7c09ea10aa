# SPDX-License-Identifier: Apache-2.0
"""Input discovery and metadata checks (qsmflow.bids.inputs)."""
from __future__ import annotations

import json

import pytest

from qsmflow.errors import InputError
from qsmflow.bids.inputs import clean_labels, find_acquisitions
from tests.test_cli import _skeleton


def _edit(path, **changes):
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def test_finds_echoes_in_order(tmp_path):
    bids = _skeleton(tmp_path / 'ds', subjects=('01', '02'))
    acqs, errors = find_acquisitions(bids)
    assert errors == {}
    assert sorted(acqs) == ['01', '02']
    acq = acqs['01'][0]
    assert acq.echo_times_s == [0.004, 0.012]
    assert [p.rsplit('/', 1)[1] for p in acq.phase_files] == [
        'sub-01_echo-1_part-phase_MEGRE.nii.gz', 'sub-01_echo-2_part-phase_MEGRE.nii.gz']
    assert acq.b0_tesla == 3.0 and acq.phase_units == 'rad'
    assert acq.name == 'sub_01'


def test_missing_echo_time_names_file_and_fix(tmp_path):
    bids = _skeleton(tmp_path / 'ds', subjects=('01', '02'))
    _edit(bids / 'sub-02/anat/sub-02_echo-2_part-phase_MEGRE.json', EchoTime=None)
    acqs, errors = find_acquisitions(bids)
    assert list(acqs) == ['01']
    assert 'sub-02_echo-2_part-phase_MEGRE.nii.gz: missing EchoTime' in errors['02']
    assert 'seconds' in errors['02']


def test_echo_time_in_ms_is_caught(tmp_path):
    bids = _skeleton(tmp_path / 'ds')
    for part in ('mag', 'phase'):
        _edit(bids / f'sub-01/anat/sub-01_echo-1_part-{part}_MEGRE.json', EchoTime=4.0)
    _, errors = find_acquisitions(bids)
    assert 'milliseconds' in errors['01']


def test_missing_field_strength_and_override(tmp_path):
    bids = _skeleton(tmp_path / 'ds')
    for echo in (1, 2):
        _edit(bids / f'sub-01/anat/sub-01_echo-{echo}_part-phase_MEGRE.json',
              MagneticFieldStrength=None)
    _, errors = find_acquisitions(bids)
    assert 'MagneticFieldStrength' in errors['01'] and '--field-strength' in errors['01']
    acqs, errors = find_acquisitions(bids, field_strength=7.0)
    assert errors == {} and acqs['01'][0].b0_tesla == 7.0


def test_non_increasing_echo_times(tmp_path):
    bids = _skeleton(tmp_path / 'ds')
    for part in ('mag', 'phase'):
        _edit(bids / f'sub-01/anat/sub-01_echo-2_part-{part}_MEGRE.json', EchoTime=0.004)
    _, errors = find_acquisitions(bids)
    assert 'strictly increasing' in errors['01']


def test_unknown_label_raises(tmp_path):
    bids = _skeleton(tmp_path / 'ds')
    with pytest.raises(InputError, match='not found'):
        find_acquisitions(bids, ['02'])


def test_clean_labels():
    assert clean_labels(['sub-01', '02'], 'sub-') == ['01', '02']
    with pytest.raises(InputError):
        clean_labels(['../x'])


def test_echo_time_list_on_a_per_echo_file(tmp_path):
    bids = _skeleton(tmp_path / 'ds')
    for part in ('mag', 'phase'):
        _edit(bids / f'sub-01/anat/sub-01_echo-2_part-{part}_MEGRE.json',
              EchoTime=[0.012, 0.02])
    _, errors = find_acquisitions(bids)
    assert 'EchoTime is a list but the file has echo-2' in errors['01']


def test_real_imag_parts_are_found(tmp_path):
    bids = _skeleton(tmp_path / 'ds')
    for path in sorted((bids / 'sub-01/anat').iterdir()):
        path.rename(path.with_name(path.name.replace('part-mag', 'part-real')
                                   .replace('part-phase', 'part-imag')))
    acqs, errors = find_acquisitions(bids)
    acq = acqs['01'][0]
    assert errors == {} and acq.complex_parts == 'real/imag' and acq.phase_units == 'rad'
    assert acq.mag_files[0].endswith('sub-01_echo-1_part-real_MEGRE.nii.gz')
