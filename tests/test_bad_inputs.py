# SPDX-License-Identifier: Apache-2.0
"""Bad inputs: each gives a one-line error naming the file and the fix, before any
computation, and the other participants still pass (qsmflow.bids.inputs + qsmflow.bids.preflight)."""
from __future__ import annotations

import gzip
import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.errors import InputError
from qsmflow.bids.inputs import find_acquisitions, load_bids_filters
from qsmflow.bids.preflight import preflight
from tests.variants import export, init_dataset


@pytest.fixture
def dataset(tmp_path, tiny_phantom):
    """A dataset with a good participant ``ok``; tests add a bad one."""
    raw, phantom = tiny_phantom
    bids = init_dataset(tmp_path / 'ds', raw)
    export(phantom, bids, 'ok', echoes=[0, 1, 2])
    return bids, phantom


def _anat(bids, sub='bad'):
    return bids / f'sub-{sub}' / 'anat'


def _edit(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _check(bids, **kwargs):
    """Discovery + pre-flight as ``qsmflow`` runs them; returns (acquisitions, failures)."""
    acqs, failures = find_acquisitions(bids, **kwargs)
    lines = []
    preflight(acqs, failures, log=lines.append)
    return acqs, failures, lines


def _assert_fails(bids, fragments, **kwargs):
    acqs, failures, _ = _check(bids, **kwargs)
    assert list(acqs) == ['ok'], failures
    msg = failures['bad']
    assert '\n' not in msg and 'Traceback' not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def _rewrite(path, data=None, affine=None):
    img = nb.load(path)
    data = np.asarray(img.dataobj) if data is None else data
    nb.Nifti1Image(data, img.affine if affine is None else affine).to_filename(path)


def test_missing_echo_time(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1, 2], drop=('EchoTime',))
    _assert_fails(bids, ['sub-bad_echo-1_part-phase_MEGRE.nii.gz: missing EchoTime', 'seconds'])


def test_missing_field_strength_and_override(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1], drop=('MagneticFieldStrength',))
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', 'MagneticFieldStrength',
                         '--field-strength'])
    acqs, failures, _ = _check(bids, field_strength=3.0)
    assert failures == {} and acqs['bad'][0].b0_tesla == 3.0 and acqs['ok'][0].b0_tesla == 3.0


def test_missing_units_with_ambiguous_range(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1], scaling='deg', units=None)
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', 'Units missing', 'ambiguous',
                         'set "Units" to "rad" or "arbitrary"'])


def test_rad_units_contradicted_by_integer_range(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1], scaling='int13', units='rad')
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', 'not radians', '"Units": "arbitrary"'])


def test_invalid_units_value(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1], units='degrees')
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', "Units 'degrees'", 'set "Units"'])


@pytest.mark.parametrize('tes, word', [((0.004, 0.012, 0.008), 'decrease'),
                                       ((0.004, 0.012, 0.012), 'duplicates')])
def test_bad_echo_time_order(dataset, tes, word):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1, 2])
    for n, te in enumerate(tes, start=1):
        for part in ('mag', 'phase'):
            _edit(_anat(bids) / f'sub-bad_echo-{n}_part-{part}_MEGRE.json', EchoTime=te)
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', word, 'strictly increasing'])


def test_echo_time_differs_between_parts(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1])
    _edit(_anat(bids) / 'sub-bad_echo-2_part-mag_MEGRE.json', EchoTime=0.013)
    _assert_fails(bids, ['sub-bad_echo-2_part-phase', 'differs from its part-mag'])


def test_4d_echo_time_list_length_mismatch(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1, 2], layout='4d')
    for part in ('mag', 'phase'):
        _edit(_anat(bids) / f'sub-bad_part-{part}_MEGRE.json', EchoTime=[0.004, 0.012])
    _assert_fails(bids, ['sub-bad_part-mag_MEGRE.nii.gz', '3 volume(s) but 2 expected'])


def test_shape_differs_between_echoes(dataset):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1, 2])
    mag2 = [p for p in paths if 'echo-2_part-mag' in p.name][0]
    _rewrite(mag2, np.asarray(nb.load(mag2).dataobj)[:-1])
    _assert_fails(bids, ['sub-bad_echo-2_part-mag', 'differs from the first echo', 'one grid'])


def test_affine_differs_between_parts(dataset):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1])
    phase1 = [p for p in paths if 'echo-1_part-phase' in p.name][0]
    aff = nb.load(phase1).affine.copy()
    aff[0, 3] += 5.0
    _rewrite(phase1, affine=aff)
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', 'affine differs', 'one grid'])


def test_truncated_nifti(dataset):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1, 2])
    target = [p for p in paths if 'echo-3_part-phase' in p.name][0]
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    _assert_fails(bids, ['sub-bad_echo-3_part-phase', 'truncated or corrupt', 're-export'])


def test_unreadable_nifti(dataset):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1], ext='.nii')
    paths[0].write_bytes(b'not a nifti file at all' * 20)
    _assert_fails(bids, [paths[0].name, 'cannot read NIfTI header', 're-export'])


def test_mostly_nan_is_an_error(dataset):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1])
    phase2 = [p for p in paths if 'echo-2_part-phase' in p.name][0]
    data = np.asarray(nb.load(phase2).dataobj, dtype=np.float32)
    data[: int(data.shape[0] * 0.8)] = np.nan
    _rewrite(phase2, data)
    _assert_fails(bids, ['sub-bad_echo-2_part-phase', '79% of the voxels are NaN/Inf',
                         're-export'])


def test_few_nan_voxels_are_masked_with_a_warning(dataset, tmp_path):
    from qsmflow.interfaces.megre import LoadMEGRE

    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1])
    mag1 = [p for p in paths if 'echo-1_part-mag' in p.name][0]
    data = np.asarray(nb.load(mag1).dataobj, dtype=np.float32)
    data[20, 20, 20:25] = np.nan
    data[21, 20, 20] = np.inf
    _rewrite(mag1, data)
    acqs, failures, lines = _check(bids)
    assert failures == {}
    acq = acqs['bad'][0]
    assert acq.warnings == ['6 NaN/Inf voxel(s) (0.0045%) are masked out (set to zero)']
    assert any('sub-bad' in ln and 'WARNING: 6 NaN/Inf' in ln for ln in lines)
    node = LoadMEGRE(mag_files=acq.mag_files, phase_files=acq.phase_files,
                     echo_times=acq.echo_times_s, b0_tesla=acq.b0_tesla,
                     phase_units=acq.phase_units)
    res = node.run(cwd=str(tmp_path))
    mag = np.asarray(nb.load(res.outputs.magnitude).dataobj)
    assert np.isfinite(mag).all() and (mag[20, 20, 20:25] == 0).all()
    with open(res.outputs.magnitude.replace('.nii.gz', '.json')) as fobj:
        meta = json.load(fobj)
    assert meta['QSMProcessing'][0]['NonFiniteVoxelsZeroed'] == 6


def test_all_zero_magnitude(dataset):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1])
    mag2 = [p for p in paths if 'echo-2_part-mag' in p.name][0]
    _rewrite(mag2, np.zeros(nb.load(mag2).shape, np.float32))
    _assert_fails(bids, ['sub-bad_echo-2_part-mag', 'magnitude is all zero', 're-export'])


def test_2d_data(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1], crop=((0, 48), (0, 58), (24, 25)))
    _assert_fails(bids, ['sub-bad_echo-1_part-mag', 'is 2D', 'needs 3D volumes'])


def test_phase_without_magnitude(dataset):
    bids, ph = dataset
    for path in export(ph, bids, 'bad', echoes=[0, 1]):
        if 'part-mag' in path.name:
            path.unlink()
            path.with_name(path.name.replace('.nii.gz', '.json')).unlink()
    _assert_fails(bids, ['sub-bad_echo-1_part-phase', 'part-phase without part-mag',
                         'add the matching part-mag'])


def test_mixed_4d_and_per_echo_files(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1])
    export(ph, bids, 'bad', echoes=[0, 1], layout='4d')
    _assert_fails(bids, ['sub-bad_part-', 'without echo- beside files with echo-'])


def test_unknown_session_label(dataset):
    bids, _ = dataset
    with pytest.raises(InputError, match=r'session label\(s\) 9 not found .*available: none'):
        find_acquisitions(bids, session_labels=['9'])


@pytest.mark.parametrize('content, fragment', [
    ('{"megre": ', 'not valid JSON'),
    ('["megre"]', 'must map query names'),
    ('{"bold": {"task": "rest"}}', "unknown query 'bold'"),
])
def test_bad_filter_file(tmp_path, content, fragment):
    path = tmp_path / 'filter.json'
    path.write_text(content)
    with pytest.raises(InputError, match=fragment):
        load_bids_filters(path)
    with pytest.raises(InputError, match='not found'):
        load_bids_filters(tmp_path / 'none.json')


def test_filter_with_unknown_entity(dataset):
    bids, _ = dataset
    acqs, failures = find_acquisitions(bids, filters={'megre': {'colour': 'red'}})
    assert not acqs and 'colour' in failures['ok'] and 'BIDS entity names' in failures['ok']


def test_cli_filter_file_error_is_one_line(dataset, tmp_path, run_cli):
    bids, _ = dataset
    bad = tmp_path / 'f.json'
    bad.write_text('{')
    proc = run_cli(bids, tmp_path / 'out', 'participant', '--skip-bids-validation',
                   '--bids-filter-file', bad)  # in-process (conftest.py)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith('qsmflow: error:')]
    assert len(errs) == 1 and 'f.json: BIDS filter file is not valid JSON' in errs[0]
    assert not (tmp_path / 'out').exists()


def test_gzip_helper_sanity():
    """The truncation test above relies on gzip failing mid-stream."""
    data = gzip.compress(b'x' * 100000)
    with pytest.raises(EOFError):
        gzip.decompress(data[: len(data) // 2])


def test_same_echo_as_nii_and_nii_gz(dataset):
    bids, ph = dataset
    export(ph, bids, 'bad', echoes=[0, 1])
    export(ph, bids, 'bad', echoes=[0, 1], ext='.nii')
    _assert_fails(bids, ['sub-bad_echo-1_part-', 'duplicate of', 'remove one of them'])


def test_failed_acquisition_leaves_no_partial_outputs(tmp_path):
    from qsmflow.bids.inputs import Acquisition
    from qsmflow.bids.outputs import expected_outputs, remove_partial_outputs

    acq = Acquisition({'subject': '01', 'session': 'a', 'run': 1})
    other = Acquisition({'subject': '01', 'session': 'a', 'run': 2})
    paths = expected_outputs(acq, tmp_path)[:2] + expected_outputs(other, tmp_path)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'x')
        path.with_name(path.name.replace('.nii.gz', '.json')).write_text('{}')
    removed = remove_partial_outputs(acq, tmp_path)
    assert len(removed) == 4 and not any(p.exists() for p in removed)
    assert all(p.exists() for p in expected_outputs(other, tmp_path))


def test_broken_symlink_datalad_content_not_fetched(dataset, tmp_path):
    bids, ph = dataset
    paths = export(ph, bids, 'bad', echoes=[0, 1], annex=tmp_path / 'annex')
    paths[1].resolve().unlink()  # as after "datalad drop"
    _assert_fails(bids, [paths[1].name, 'broken symlink', 'datalad get'])
