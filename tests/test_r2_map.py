# SPDX-License-Identifier: Apache-2.0
"""A measured spin-echo R2 map for χ-separation (``--r2-map DERIV_DIR``): the flag and the
configuration, the pre-flight lookup and checks, the interface (map vs scalar R2, linear
resampling, provenance), the graph wiring, and one tiny run through the command line."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmflow.bids.derivatives import check_r2_map
from qsmflow.bids.inputs import Acquisition
from qsmflow.errors import InputError
from tests.test_maps import _TES, _config, _write, small_gre  # noqa: F401 - fixture


# --- flag → configuration -------------------------------------------------------------------
def test_r2_map_flag_reaches_the_config(tmp_path):
    from qsmflow.config import RunConfig

    (tmp_path / 'r2').mkdir()
    config = _config(tmp_path, '--r2-map', str(tmp_path / 'r2'))
    cs = config.pipeline.steps['chi_separation']
    assert cs == {'enabled': True, 'params': {}, 'r2_maps': str(tmp_path / 'r2')}
    assert config.maps.r2_maps == tmp_path / 'r2' and config.maps.r2_hz is None
    assert RunConfig.from_dict(config.to_dict()) == config
    assert _config(tmp_path).maps.r2_maps is None


def test_r2_map_usage_errors(tmp_path):
    (tmp_path / 'r2').mkdir()
    with pytest.raises(SystemExit) as exc:  # argparse: mutually exclusive with --r2-hz
        _config(tmp_path, '--r2-map', str(tmp_path / 'r2'), '--r2-hz', '12')
    assert exc.value.code == 2
    with pytest.raises(InputError, match='--r2-map is an input of chi-separation'):
        _config(tmp_path, '--r2-map', str(tmp_path / 'r2'), '--no-chi-separation')
    with pytest.raises(InputError, match='--r2-map .*nothere is not a folder'):
        _config(tmp_path, '--r2-map', str(tmp_path / 'nothere'))


def test_r2_map_usage_error_is_exit_2_on_the_command_line(tmp_path, run_cli):
    bids = tmp_path / 'bids'
    bids.mkdir()
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    proc = run_cli(bids, tmp_path / 'out', 'participant', '--r2-map', tmp_path,
                   '--no-chi-separation')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().count('\n') == 0 and '--no-chi-separation' in proc.stderr


# --- pre-flight ------------------------------------------------------------------------------
def _gre(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 3.0)
    mag = tmp_path / 'mag.nii.gz'
    nb.Nifti1Image(np.ones((10, 11, 9), np.float32), aff).to_filename(mag)
    return Acquisition({'subject': '01', 'run': 1}, [str(mag)], [str(mag)], [0.01], 3.0), aff


def test_preflight_r2_map_found_missing_and_wrong(tmp_path):
    acq, aff = _gre(tmp_path)
    root = tmp_path / 'r2'
    with pytest.raises(InputError) as err:
        check_r2_map(root, acq)
    msg = str(err.value)
    assert '\n' not in msg and msg.startswith('no R2 map for sub-01_run-1 in --r2-map')
    assert msg.endswith(str(root / 'sub-01/anat/sub-01[_run-1][_desc-<label>]_R2map.nii[.gz]'))
    anat = root / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    path = anat / 'sub-01_R2map.nii.gz'
    fine = aff.copy()
    fine[:3, :3] /= 2  # any grid of the scanner space
    nb.Nifti1Image(np.full((20, 22, 18), 14.0, np.float32), fine).to_filename(path)
    assert check_r2_map(root, acq) == path
    (anat / 'sub-01_R2map.json').write_text(json.dumps({'Units': 's-1'}))
    assert check_r2_map(root, acq) == path
    (anat / 'sub-01_R2map.json').write_text(json.dumps({'Units': 'ms'}))
    with pytest.raises(InputError, match=r"sub-01_R2map.nii.gz: R2 map in 'ms' .*1/s"):
        check_r2_map(root, acq)
    (anat / 'sub-01_R2map.json').unlink()
    nb.Nifti1Image(np.full((20, 22, 18), 80.0, np.float32), fine).to_filename(path)  # T2 ms
    with pytest.raises(InputError) as err:
        check_r2_map(root, acq)
    assert str(path) in str(err.value) and 'looks like T2 in ms' in str(err.value)
    assert 'R2 = 1000 / T2' in str(err.value) and '\n' not in str(err.value)
    nb.Nifti1Image(np.full((20, 22, 18), 0.08, np.float32), fine).to_filename(path)  # T2 s
    with pytest.raises(InputError, match='looks like T2 in s'):
        check_r2_map(root, acq)
    far = fine.copy()
    far[:3, 3] += 500.0
    nb.Nifti1Image(np.full((20, 22, 18), 14.0, np.float32), far).to_filename(path)
    with pytest.raises(InputError, match='no value on the GRE grid'):
        check_r2_map(root, acq)
    nb.Nifti1Image(np.full((20, 22, 18, 2), 14.0, np.float32), fine).to_filename(path)
    with pytest.raises(InputError, match='2 volumes'):
        check_r2_map(root, acq)


def test_preflight_fails_only_the_participant_without_an_r2_map(tmp_path):
    from qsmflow.bids import preflight as pf

    one, aff = _gre(tmp_path)
    two = Acquisition({'subject': '02'}, one.mag_files, one.phase_files, [0.01], 3.0)
    anat = tmp_path / 'r2' / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    nb.Nifti1Image(np.full((10, 11, 9), 14.0, np.float32), aff).to_filename(
        anat / 'sub-01_run-01_R2map.nii')
    acqs, failures, lines = {'01': [one], '02': [two]}, {}, []
    summary = {'shape': (10, 11, 9), 'n_echoes': 1, 'phase_scaling': 'rad',
               'voxel_size_mm': (2, 2, 2)}
    orig = pf.check_images
    pf.check_images = lambda acq: summary  # the image checks are tested elsewhere
    try:
        pf.preflight(acqs, failures, log=lines.append, r2_maps=tmp_path / 'r2')
    finally:
        pf.check_images = orig
    assert list(acqs) == ['01'] and acqs['01'][0].r2_map == str(anat / 'sub-01_run-01_R2map.nii')
    assert set(failures) == {'02'} and failures['02'].endswith('sub-02[_desc-<label>]_R2map.nii[.gz]')


# --- the interface ---------------------------------------------------------------------------
def test_chi_separation_with_an_r2_map_instead_of_the_scalar(small_gre, tmp_path):
    """χ = 0, R2* 25 1/s. A map on a grid twice as fine with R2 25 in x < 4 and 5 in x ≥ 4
    (0 outside its own field of view in z) gives χ± ≈ 0 and ±20/(2·137) = ±0.073 ppm there;
    the scalar 11.3 gives ±0.050 everywhere. Voxels without a map value take the scalar."""
    from qsmflow.interfaces.maps import ChiSeparation

    aff = small_gre['affine']
    zero = _write(tmp_path / 'zero.nii.gz', np.zeros((8, 8, 8)), aff)
    r2s = _write(tmp_path / 'r2s.nii.gz', np.full((8, 8, 8), 25.0), aff)
    coarse = np.where(np.arange(8)[:, None, None] < 4, 25.0, 5.0) * np.ones((8, 8, 8))
    coarse[:, :, 6:] = 0  # no value there: the scalar fills the mask's slice z = 6
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    faff = aff.copy()
    faff[:3, :3] /= 2
    faff[:3, 3] -= aff[:3, :3] @ np.full(3, 0.25)
    r2map = _write(tmp_path / 'sub-01_R2map.nii.gz', fine, faff)
    runs = {}
    for name, kwargs in (('map', {'in_r2': r2map, 'params': {'r2_hz': 11.3}}),
                         ('scalar', {'params': {'r2_hz': 11.3}})):
        (tmp_path / name).mkdir()
        res = ChiSeparation(in_field=zero, in_mask=small_gre['mask'], in_r2star=r2s,
                            in_chi=zero, b0_tesla=3.0, **kwargs).run(cwd=str(tmp_path / name))
        step = json.loads(Path(res.outputs.out_para.replace('.nii.gz', '.json'))
                          .read_text())['QSMProcessing'][-1]
        runs[name] = (nb.load(res.outputs.out_para).get_fdata(),
                      nb.load(res.outputs.out_dia).get_fdata(), step)
    p, d, step = runs['map']
    ps, ds, sstep = runs['scalar']
    inside = small_gre['inside']
    assert abs(np.median(ps[inside]) - 13.7 / 274) < 2e-3 and sstep['R2Source'] == 'given value'
    left, right = np.zeros_like(inside), np.zeros_like(inside)
    left[1:3, 1:7, 1:6], right[5:7, 1:7, 1:6] = True, True
    assert np.median(p[left]) < 0.01 and np.median(-d[left]) < 0.01
    assert abs(np.median(p[right]) - 20 / 274) < 5e-3
    assert abs(np.median(d[right]) + 20 / 274) < 5e-3
    assert abs(np.median(p[1:7, 1:7, 6]) - 13.7 / 274) < 0.01  # filled with the scalar
    assert np.allclose(p + d, 0, atol=1e-6)  # χ⁺ + χ⁻ stays χ
    assert step['R2Source'] == r2map and step['R2Map'] == r2map
    assert step['R2MapResampled'].startswith('trilinear') and step['R2HzOverridden'] == 11.3
    assert step['R2MapFilledShare'] == pytest.approx(1 / 6) and step['R2MapFillHz'] == 11.3
    assert step['R2Hz'] == 'map' and step['Parameters']['r2_hz'] is None  # the map's, not 11.3


# --- graph wiring ----------------------------------------------------------------------------
def _origin(graph, node, field):
    """The identity node (and field) at the head of the chain feeding ``node.field``."""
    for upstream, _, data in graph.in_edges(node, data=True):
        for out, inp in data['connect']:
            if inp == field:
                return _origin(graph, upstream, out)
    return node, field


@pytest.mark.parametrize('r2_maps', [True, False])
def test_workflow_feeds_the_preflight_r2_map_to_chi_separation(tmp_path, r2_maps):
    from qsmflow.config.presets import load_preset, with_maps_options
    from qsmflow.workflows.base import init_single_acquisition_wf

    acq = Acquisition(entities={'subject': '01'}, mag_files=['m'] * 3, phase_files=['p'] * 3,
                      echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0, n_voxels=1000,
                      r2_map='/data/r2/sub-01/anat/sub-01_R2map.nii.gz')
    pipeline = with_maps_options(load_preset('default'),
                                 r2_maps=tmp_path if r2_maps else None)
    wf = init_single_acquisition_wf(acq=acq, output_dir=str(tmp_path / 'out'),
                                    bids_dir=str(tmp_path), pipeline=pipeline)
    graph = wf._create_flat_graph()
    chisep = next(n for n in graph.nodes() if str(n).endswith('.chi_separation'))
    head, field = _origin(graph, chisep, 'in_r2')
    if r2_maps:
        assert str(head).endswith('qsm_wf.inputnode') and field == 'r2_map'
        assert head.inputs.r2_map == acq.r2_map
    else:
        assert head is chisep  # nothing feeds in_r2: the scalar R2


# --- one tiny run ----------------------------------------------------------------------------
def test_tiny_run_uses_the_r2_map_and_records_it(tiny_phantom, tmp_path, run_cli):
    """The phantom's true R2* written as the participant's ``_R2map`` (on a grid twice as
    fine): R2′ = R2* − R2 ≈ 0, so χ⁺ − χ⁻ = |χ⁺| + |χ⁻| shrinks towards |χ|; the sidecar
    names the file."""
    bids_dir, _ = tiny_phantom
    truth = nb.load(bids_dir.parent / 'truth' / 'sub-01' / 'anat' / 'sub-01_R2starmap.nii.gz')
    data = np.asarray(truth.dataobj, np.float32)
    fine = np.repeat(np.repeat(np.repeat(data, 2, 0), 2, 1), 2, 2)
    aff = truth.affine.copy()
    aff[:3, :3] /= 2
    aff[:3, 3] -= truth.affine[:3, :3] @ np.full(3, 0.25)
    anat = tmp_path / 'r2' / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    nb.Nifti1Image(fine, aff).to_filename(anat / 'sub-01_R2map.nii.gz')
    (anat / 'sub-01_R2map.json').write_text(json.dumps({'Units': '1/s'}))
    proc = run_cli(bids_dir, tmp_path / 'out', 'participant', '--nprocs', '1',
                   '--skip-bids-validation', '--skip-registration', '--no-swi',
                   '--r2-map', tmp_path / 'r2', '-w', tmp_path / 'work')
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / 'out' / 'sub-01' / 'anat'
    side = json.loads((out / 'sub-01_desc-paramagnetic_Chimap.json').read_text())
    step = side['QSMProcessing'][-1]
    assert step['R2Source'] == str(anat / 'sub-01_R2map.nii.gz') and step['R2Hz'] == 'map'
    assert step['R2MapResampled'].startswith('trilinear')
    para = np.asarray(nb.load(out / 'sub-01_desc-paramagnetic_Chimap.nii.gz').dataobj)
    dia = np.asarray(nb.load(out / 'sub-01_desc-diamagnetic_Chimap.nii.gz').dataobj)
    mask = np.asarray(nb.load(out / 'sub-01_desc-brain_mask.nii.gz').dataobj) > 0
    # R2′ ≈ 0: the split adds (almost) nothing beyond |χ|: χ⁺ − χ⁻ ≈ |χ⁺ + χ⁻|
    excess = (para - dia - np.abs(para + dia))[mask]
    assert float(np.median(excess)) < 0.01, float(np.median(excess))
