# SPDX-License-Identifier: Apache-2.0
"""Real-world layouts of multi-echo GRE data, from discovery to LoadMEGRE: each variant of
the phantom gives the same magnitude and phase (rad) as the plain per-echo export."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.bids.inputs import find_acquisitions
from qsmflow.interfaces.megre import LoadMEGRE
from qsmflow.phantom.bids import oblique_affine
from qsmflow.bids.preflight import preflight
from qsmflow.qsm.kernels import b0_dir_from_affine
from qsmflow.qsm.phase import complex_to_mag_phase, infer_phase_units, to_radians
from tests.variants import export, init_dataset

ECHOES = [0, 1, 2]


@pytest.fixture
def bids(tmp_path, tiny_phantom):
    return init_dataset(tmp_path / 'ds', tiny_phantom[0]), tiny_phantom[1]


def _load(acq, cwd):
    """Run LoadMEGRE on a checked acquisition; return (mag, phase, outputs, input step)."""
    node = LoadMEGRE(mag_files=acq.mag_files, phase_files=acq.phase_files,
                     echo_times=acq.echo_times_s, b0_tesla=acq.b0_tesla,
                     phase_units=acq.phase_units)
    cwd.mkdir(parents=True, exist_ok=True)
    out = node.run(cwd=str(cwd)).outputs
    mag = np.asarray(nb.load(out.magnitude).dataobj)
    phase = np.asarray(nb.load(out.phase).dataobj)
    with open(out.phase.replace('.nii.gz', '.json')) as fobj:
        rec = json.load(fobj)['QSMProcessing'][0]
    return mag, phase, out, rec


def _checked(bids_dir, **kwargs):
    acqs, failures = find_acquisitions(bids_dir, **kwargs)
    lines = []
    preflight(acqs, failures, log=lines.append)
    assert failures == {}, failures
    return acqs, lines


def _phase_error(a, b):
    return float(np.abs(np.angle(np.exp(1j * (a.astype(float) - b)))).max())


@pytest.mark.parametrize('kind', ['4d-int13', 'real-imag', 'uint12-no-units', 'nii-symlink',
                                  '4d-real-imag-nii'])
def test_variant_reads_like_plain_export(bids, tmp_path, kind):
    bids_dir, ph = bids
    export(ph, bids_dir, 'plain', echoes=ECHOES)
    opts = {'4d-int13': dict(layout='4d', scaling='int13', ext='.nii'),
            'real-imag': dict(parts='real/imag'),
            'uint12-no-units': dict(scaling='uint12', units=None),
            'nii-symlink': dict(ext='.nii', annex=tmp_path / 'annex'),
            '4d-real-imag-nii': dict(layout='4d', parts='real/imag', ext='.nii')}[kind]
    export(ph, bids_dir, 'var', echoes=ECHOES, **opts)
    acqs, lines = _checked(bids_dir)
    ref_mag, ref_phase, _, _ = _load(acqs['plain'][0], tmp_path / 'a')
    acq = acqs['var'][0]
    assert acq.echo_times_s == [0.004, 0.012, 0.020]
    mag, phase, _, rec = _load(acq, tmp_path / 'b')
    assert mag.shape == phase.shape == ref_mag.shape
    assert phase.min() >= -np.pi and phase.max() < np.pi
    strong = ref_mag > 0.05 * ref_mag.max()  # phase is meaningless where there is no signal
    tol = {'4d-int13': np.pi / 4096, 'uint12-no-units': np.pi / 2048}.get(kind, 1e-4)
    assert _phase_error(phase[strong], ref_phase[strong]) <= tol * 1.01
    assert np.allclose(mag, ref_mag, rtol=1e-4, atol=1e-4 * ref_mag.max())
    assert rec['NumberOfEchoes'] == 3
    if 'real' in kind:
        assert acq.complex_parts == 'real/imag' and rec['ComplexParts'].startswith('real/imag')
    if '4d' in kind:
        assert acq.layout == '4d' and len(acq.mag_files) == 1
        assert rec['InputLayout'] == '4D file, one volume per echo'
        assert any('one 4D file per part' in ln for ln in lines)
    if kind == 'uint12-no-units':
        assert acq.phase_units == 'arbitrary'
        assert any('sub-var: 3 echoes (4, 12, 20 ms)' in ln and '(arbitrary -> rad)' in ln
                   for ln in lines)
    if kind == 'nii-symlink':
        assert all(__import__('os').path.islink(f) for f in acq.mag_files)


def test_single_echo(bids, tmp_path):
    bids_dir, ph = bids
    paths = export(ph, bids_dir, 'one', echoes=[2])
    assert [p.name for p in paths] == ['sub-one_part-mag_MEGRE.nii.gz',
                                       'sub-one_part-phase_MEGRE.nii.gz']
    acqs, lines = _checked(bids_dir)
    acq = acqs['one'][0]
    assert acq.echo_times_s == [0.020] and acq.layout == 'echo'
    assert any('single echo (20 ms)' in ln for ln in lines)
    mag, phase, out, rec = _load(acq, tmp_path)
    assert mag.shape == ph[0].shape[:3] + (1,)
    assert rec['SingleEcho'] is True and rec['NumberOfEchoes'] == 1
    assert 'single echo' in rec['FieldEstimation']


def test_sessions_runs_and_acq_are_separate_acquisitions(bids):
    bids_dir, ph = bids
    export(ph, bids_dir, '01', session='pre', echoes=ECHOES)
    export(ph, bids_dir, '01', session='post', acq='fast', run=1, echoes=[0, 1])
    export(ph, bids_dir, '01', session='post', acq='fast', run=2, echoes=[0, 1])
    export(ph, bids_dir, '01', session='post', acq='slow', echoes=ECHOES, layout='4d')
    acqs, _ = _checked(bids_dir)
    names = [a.name for a in acqs['01']]
    assert names == ['sub_01_ses_post_acq_fast_run_1', 'sub_01_ses_post_acq_fast_run_2',
                     'sub_01_ses_post_acq_slow', 'sub_01_ses_pre']
    from qsmflow import bids_specs
    assert bids_specs.output_name('chimap', acqs['01'][1].entities) == \
        'sub-01_ses-post_acq-fast_run-2_Chimap.nii.gz'
    # session label and PyBIDS filter file select among them
    acqs, _ = _checked(bids_dir, session_labels=['pre'])
    assert [a.name for a in acqs['01']] == ['sub_01_ses_pre']
    acqs, _ = _checked(bids_dir, filters={'megre': {'acquisition': 'fast', 'run': 2}})
    assert [a.name for a in acqs['01']] == ['sub_01_ses_post_acq_fast_run_2']
    acqs, _ = _checked(bids_dir, filters={'megre': {'acquisition': None, 'session': '*'}})
    assert [a.name for a in acqs['01']] == ['sub_01_ses_pre']
    acqs, _ = _checked(bids_dir, filters={'megre': {'acquisition': ['slow', 'fast'],
                                                    'run': None}})
    assert [a.name for a in acqs['01']] == ['sub_01_ses_post_acq_slow']


def test_participant_label_selects(bids):
    bids_dir, ph = bids
    for sub in ('a', 'b', 'c'):
        export(ph, bids_dir, sub, echoes=[0, 1])
    acqs, _ = _checked(bids_dir, participant_labels=['b', 'c'])
    assert sorted(acqs) == ['b', 'c']


def test_anisotropic_prime_matrix_and_oblique_affine(bids, tmp_path):
    bids_dir, ph = bids
    mag, phase, _, meta = ph
    crop = ((1, 48), (2, 55), (2, 46))  # 47 x 53 x 44 -> 47 x 53 x 22 after slice pairing
    oblique = (mag, phase, oblique_affine(mag.shape[:3], 3.0, 20.0, axis='y'), meta)
    export(oblique, bids_dir, 'aniso', echoes=ECHOES, crop=crop, zavg=True, ext='.nii')
    acqs, lines = _checked(bids_dir)
    acq = acqs['aniso'][0]
    assert any('47x53x22 voxels of 3x3x6 mm' in ln for ln in lines)
    mag_out, _, out, rec = _load(acq, tmp_path)
    assert mag_out.shape == (47, 53, 22, 3)
    img = nb.load(out.magnitude)
    assert np.allclose(img.header.get_zooms()[:3], (3, 3, 6))
    expected = b0_dir_from_affine(nb.load(acq.mag_files[0]).affine)
    assert np.allclose(out.b0_dir, expected) and np.allclose(rec['B0Direction'], expected)
    assert abs(np.degrees(np.arccos(abs(expected[2]))) - 20.0) < 1e-4


def test_phase_scaling_helpers():
    ramp = np.linspace(-np.pi, np.pi, 1000, endpoint=False)
    assert np.allclose(to_radians(ramp, 'rad'), ramp, atol=1e-6)
    ints = np.round(ramp / np.pi * 4096).astype(np.int16)
    assert np.allclose(to_radians(ints, 'arbitrary'), ramp, atol=np.pi / 4096)
    assert np.allclose(to_radians(ints, None), ramp, atol=np.pi / 4096)
    uints = (np.round((ramp + np.pi) / (2 * np.pi) * 4096) % 4096).astype(np.uint16)
    assert np.allclose(to_radians(uints, None), ramp, atol=np.pi / 2048)
    assert infer_phase_units(0.0, 2 * np.pi, False) == 'rad'
    assert infer_phase_units(-3.1, 3.1, False, 'arbitrary') == 'rad'  # mislabelled radians
    for lo, hi, integer, units, msg in ((-3, 3, True, None, 'ambiguous'),
                                        (-180.0, 180.0, False, None, 'ambiguous'),
                                        (0, 4095, True, 'rad', 'not radians'),
                                        (1.0, 1.0, False, 'rad', 'constant'),
                                        (0, 1, False, 'deg', 'unknown')):
        with pytest.raises(ValueError, match=msg):
            infer_phase_units(lo, hi, integer, units)
    mag, phase = complex_to_mag_phase(np.cos(ramp) * 2, np.sin(ramp) * 2)
    assert np.allclose(mag, 2) and np.abs(np.angle(np.exp(1j * (phase - ramp)))).max() < 1e-5
    assert phase.min() >= -np.pi and phase.max() < np.pi


def _whole_array_reference(phase, units):
    """to_radians as it was before it worked slab by slab (one float64 pass)."""
    from qsmflow.qsm.phase import phase_range

    data = np.asarray(phase, dtype=np.float64)
    lo, hi, integer = phase_range(data)
    if infer_phase_units(lo, hi, integer, units) == 'rad':
        scaled = data
    else:
        span = 2.0 ** np.ceil(np.log2(hi - lo + 1)) if integer else hi - lo
        scaled = data / span * 2 * np.pi - np.pi if lo >= 0 else data / (span / 2) * np.pi
    return (np.mod(scaled + np.pi, 2 * np.pi) - np.pi).astype(np.float32)


def test_streamed_input_conversions_are_bitwise_the_whole_array_ones(tmp_path):
    """LoadMEGRE's memory savings change no bit: phase scaling and the real/imag conversion
    slab by slab and in place, and the echoes read into one preallocated stack from 3D
    files, a 4D file or a mix (issue 19)."""
    from qsmflow.interfaces.megre import read_volumes
    from qsmflow.qsm import phase as ph

    rng = np.random.default_rng(0)
    shape = (70, 9, 8, 3)  # 70 planes of 216 values: several slabs with n_values=1000
    floats = rng.uniform(-np.pi, np.pi, shape).astype(np.float32)
    floats[3, 2, 1, 0] = np.nan
    ints = rng.integers(0, 4096, shape).astype(np.int16)
    for data, units in ((floats, 'rad'), (ints, None), (ints, 'arbitrary')):
        expected = _whole_array_reference(data, units)
        slabs = ph._slabs
        try:
            ph._slabs = lambda a, n_values=1000: slabs(a, n_values)
            got = ph.to_radians(data, units)
            inplace = data.astype(np.float32)
            ph.to_radians(inplace, units, out=inplace)
        finally:
            ph._slabs = slabs
        assert np.array_equal(got, expected, equal_nan=True)
        assert np.array_equal(inplace, expected, equal_nan=True)
    assert ph.phase_range(floats) == (float(np.nanmin(floats)), float(np.nanmax(floats)), False)
    re, im = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    re64, im64 = re.astype(np.float64), im.astype(np.float64)
    angle = np.arctan2(im64, re64)
    expected = (np.hypot(re64, im64).astype(np.float32),
                np.where(angle >= np.pi, angle - 2 * np.pi, angle).astype(np.float32))
    ph.complex_to_mag_phase(re, im, out=(re, im))
    assert np.array_equal(re, expected[0]) and np.array_equal(im, expected[1])

    affine = np.eye(4)
    paths = []
    for name, part in (('a', floats[..., :1]), ('b', floats[..., 1:])):
        paths.append(str(tmp_path / f'{name}.nii.gz'))
        nb.Nifti1Image(part, affine).to_filename(paths[-1])
    nb.Nifti1Image(floats, affine).to_filename(tmp_path / 'all.nii.gz')
    for files in (paths, [str(tmp_path / 'all.nii.gz')]):
        assert np.array_equal(read_volumes(files, 3), floats, equal_nan=True)
    with pytest.raises(ValueError, match='volumes'):
        read_volumes(paths, 4)
    nb.Nifti1Image(floats[:5, ..., :1], affine).to_filename(tmp_path / 'small.nii.gz')
    with pytest.raises(ValueError, match='share one grid'):
        read_volumes([paths[1], str(tmp_path / 'small.nii.gz')], 3)
