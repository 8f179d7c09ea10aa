# SPDX-License-Identifier: Apache-2.0
"""Property-based tests (hypothesis) over header and metadata variations: grid shapes,
voxel sizes, oblique affines, echo counts, layouts, parts, phase scalings and integer
storage with scl_slope/scl_inter. For every
generated acquisition, discovery + pre-flight + LoadMEGRE either reproduce the written
magnitude and phase (rad), or stop with a one-line InputError naming a file."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qsmflow.errors import InputError
from qsmflow.bids.inputs import find_acquisitions  # noqa: E402
from qsmflow.interfaces.megre import LoadMEGRE  # noqa: E402
from qsmflow.phantom.bids import oblique_affine  # noqa: E402
from qsmflow.bids.preflight import check_images  # noqa: E402
from qsmflow.qsm.kernels import b0_dir_from_affine  # noqa: E402
from tests.variants import export  # noqa: E402

#: Largest phase error (rad) each stored scaling may add (rounding to integers).
QUANTUM = {'rad': 1e-5, 'int13': np.pi / 4096, 'uint12': np.pi / 2048}


@st.composite
def acquisitions(draw):
    shape = tuple(draw(st.integers(1, 7)) for _ in range(3))
    n_echo = draw(st.integers(1, 4))
    first = draw(st.floats(0.001, 0.01))
    steps = draw(st.lists(st.floats(0.001, 0.01), min_size=n_echo - 1, max_size=n_echo - 1))
    return {
        'shape': shape,
        'voxel_mm': tuple(draw(st.floats(0.3, 4.0)) for _ in range(3)),
        'angle_deg': draw(st.floats(-60.0, 60.0)),
        'axis': draw(st.sampled_from('xyz')),
        'tes': list(np.round(first + np.cumsum([0.0, *steps]), 6)),
        'duplicate_te': n_echo > 1 and draw(st.booleans()) and draw(st.booleans()),
        'layout': draw(st.sampled_from(['echo', '4d'])),
        'parts': draw(st.sampled_from(['mag/phase', 'real/imag'])),
        'scaling': draw(st.sampled_from(['rad', 'int13', 'uint12'])),
        'units': draw(st.sampled_from(['auto', None])),
        'ext': draw(st.sampled_from(['.nii', '.nii.gz'])),
        'dtype': draw(st.sampled_from([None, np.int16, np.uint16])),
        'seed': draw(st.integers(0, 2**16)),
    }


def _write(root: Path, case: dict):
    rng = np.random.default_rng(case['seed'])
    shape4 = case['shape'] + (len(case['tes']),)
    mag = rng.uniform(1.0, 100.0, shape4).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, shape4).astype(np.float32)
    phase.flat[0], phase.flat[-1] = -np.pi, np.pi - 1e-3  # wrapped phase spans a full cycle
    tes = list(case['tes'])
    if case['duplicate_te']:
        tes[-1] = tes[-2]
    affine = oblique_affine(case['shape'], case['voxel_mm'], case['angle_deg'], case['axis'])
    root.mkdir(parents=True, exist_ok=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'hypothesis', 'BIDSVersion': '1.10.0'}))
    export((mag, phase, affine, {'EchoTime': tes, 'MagneticFieldStrength': 3.0}), root, 'p',
           layout=case['layout'], parts=case['parts'], scaling=case['scaling'],
           units=case['units'], ext=case['ext'], dtype=case['dtype'])
    return mag, phase, affine


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=acquisitions())
def test_pipeline_input_either_works_or_fails_clearly(case):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'ds'
        mag, phase, affine = _write(root, case)
        try:
            acqs, failures = find_acquisitions(root)
            if failures:
                raise InputError(failures['p'])
            acq = acqs['p'][0]
            check_images(acq)
        except InputError as exc:
            msg = str(exc)
            assert '\n' not in msg and str(root) in msg, msg
            if case['duplicate_te']:
                assert 'duplicates' in msg, msg
            else:
                assert min(case['shape']) < 2 and 'is 2D' in msg, msg
            return
        assert not case['duplicate_te'] and min(case['shape']) >= 2
        assert acq.echo_times_s == pytest.approx(case['tes'])
        cwd = Path(tmp) / 'work'
        cwd.mkdir()
        out = LoadMEGRE(mag_files=acq.mag_files, phase_files=acq.phase_files,
                        echo_times=acq.echo_times_s, b0_tesla=acq.b0_tesla,
                        phase_units=acq.phase_units).run(cwd=str(cwd)).outputs
        got_mag = np.asarray(nb.load(out.magnitude).dataobj)
        got_phase = np.asarray(nb.load(out.phase).dataobj)
        assert got_mag.shape == mag.shape
        assert np.allclose(got_mag, mag, rtol=1e-4 if case['dtype'] is None else 2e-3)
        assert got_phase.min() >= -np.pi and got_phase.max() < np.pi
        tol = QUANTUM[case['scaling']] * 1.01
        if case['parts'] == 'real/imag':  # integer real/imag: error ~ quantum / |signal|
            tol = 1e-4 if case['dtype'] is None else 0.01
        err = np.abs(np.angle(np.exp(1j * (got_phase.astype(float) - phase))))
        assert err.max() <= tol
        assert np.allclose(out.b0_dir, b0_dir_from_affine(affine))
        assert np.allclose(nb.load(out.phase).header.get_zooms()[:3], case['voxel_mm'],
                           rtol=1e-5)
