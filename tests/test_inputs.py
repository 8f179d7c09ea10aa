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


@pytest.mark.parametrize('parent', ['perf', 'anat', 'func'])
def test_dataset_under_a_folder_named_like_a_datatype(tmp_path, parent):
    """pybids finds its ``datatype`` entity anywhere in the absolute path; qsmflow must not."""
    bids = _skeleton(tmp_path / parent / 'ds', subjects=('01',))
    acqs, errors = find_acquisitions(bids)
    assert errors == {}
    assert len(acqs['01'][0].phase_files) == 2


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


def _add_coil_files(bids, subject='01'):
    """Per-coil copies of the skeleton's echoes, named as dcm2niix/QSMxT write them."""
    import shutil

    anat = bids / f'sub-{subject}' / 'anat'
    for path in sorted(anat.glob('*_MEGRE.*')):
        for coil in ('01', '02'):
            name = path.name.replace(f'sub-{subject}_', f'sub-{subject}_rec-uncombined_'
                                     f'coil-{coil}_')
            shutil.copy(path, anat / name)
    return anat


def test_uncombined_coils_form_one_acquisition(tmp_path):
    bids = _skeleton(tmp_path / 'ds', subjects=('01',))
    _add_coil_files(bids)
    acqs, errors = find_acquisitions(bids)
    assert errors == {} and len(acqs['01']) == 2
    combined, coils = sorted(acqs['01'], key=lambda a: bool(a.coil_files))
    assert combined.coil_files == [] and coils.entities['reconstruction'] == 'uncombined'
    assert [[p.rsplit('_coil-', 1)[1] for p in mags + phases] for mags, phases in
            coils.coil_files][1] == ['02_echo-1_part-mag_MEGRE.nii.gz',
                                     '02_echo-2_part-mag_MEGRE.nii.gz',
                                     '02_echo-1_part-phase_MEGRE.nii.gz',
                                     '02_echo-2_part-phase_MEGRE.nii.gz']
    assert coils.echo_times_s == [0.004, 0.012]


def test_coil_missing_an_echo_fails_with_one_line(tmp_path):
    bids = _skeleton(tmp_path / 'ds', subjects=('01',))
    anat = _add_coil_files(bids)
    for path in anat.glob('*_coil-02_echo-2_part-phase_*'):
        path.unlink()
    acqs, errors = find_acquisitions(bids)
    assert acqs == {}
    assert 'coil-02 part-phase has echoes' in errors['01'] and 'add the missing file' in \
        errors['01'] and '\n' not in errors['01']
