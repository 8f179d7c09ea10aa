# SPDX-License-Identifier: Apache-2.0
"""R2*/T2*, SWI and minIP in the BIDS App: the flags, the configuration, the workflow graph,
the interfaces on small synthetic NIfTIs (units, provenance, geometry), the names and the
maps' way into the regional tables."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmflow.cli.config import config_from_args
from qsmflow.cli.parser import build_parser
from qsmflow.errors import InputError


def _config(tmp_path, *argv):
    bids = tmp_path / 'bids'
    bids.mkdir(exist_ok=True)
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    opts = build_parser().parse_args([str(bids), str(tmp_path / 'out'), 'participant', *argv])
    return config_from_args(opts)


def test_parser_constants_agree_with_qsm():
    """The parser's choices and default come from the qsm/ signatures' values."""
    from qsmflow.cli import parser
    from qsmflow.qsm import relaxometry, swi

    assert parser.R2STAR_METHODS == relaxometry.METHODS
    assert parser.DEFAULT_SLAB_MM == swi.DEFAULT_SLAB_MM
    slab = inspect.signature(swi.minimum_intensity_projection).parameters['slab_mm'].default
    method = inspect.signature(relaxometry.r2star).parameters['method'].default
    assert (slab, method) == (swi.DEFAULT_SLAB_MM, relaxometry.METHODS[0])


def test_maps_are_on_by_default(tmp_path):
    config = _config(tmp_path)
    steps = config.pipeline.steps
    assert steps['r2star'] == {'method': 'arlo', 'params': {}}
    assert steps['swi'] == {'enabled': True, 'params': {}, 'minip_params': {}}
    assert steps['chi_separation'] == {'enabled': True, 'params': {}}
    assert (config.maps.r2star_method, config.maps.swi, config.maps.minip_slab_mm) == (
        'arlo', True, None)
    assert (config.maps.chi_separation, config.maps.r2_hz) == (True, None)


def test_chi_separation_flags_reach_the_config(tmp_path):
    from qsmflow.config import RunConfig

    config = _config(tmp_path, '--r2-hz', '12.5')
    assert config.pipeline.steps['chi_separation'] == {'enabled': True,
                                                       'params': {'r2_hz': 12.5}}
    assert config.maps.r2_hz == 12.5 and RunConfig.from_dict(config.to_dict()) == config
    off = _config(tmp_path, '--no-chi-separation')
    assert off.pipeline.steps['chi_separation']['enabled'] is False
    assert off.maps.chi_separation is False


def test_maps_flags_reach_the_config(tmp_path):
    config = _config(tmp_path, '--r2star-method', 'nonlinear', '--minip-slab-mm', '12')
    assert config.pipeline.steps['r2star']['method'] == 'nonlinear'
    assert config.pipeline.steps['swi']['minip_params'] == {'slab_mm': 12.0}
    assert config.maps.r2star_method == 'nonlinear' and config.maps.minip_slab_mm == 12.0
    off = _config(tmp_path / 'x' if (tmp_path / 'x').mkdir() is None else tmp_path, '--no-swi')
    assert off.pipeline.steps['swi']['enabled'] is False and off.maps.swi is False
    from qsmflow.config import RunConfig

    assert RunConfig.from_dict(off.to_dict()) == off


def test_a_preset_file_sets_the_maps(tmp_path):
    from qsmflow.config.presets import load_preset

    preset = load_preset('default') | {'r2star': {'method': 'loglinear', 'params': {}},
                                       'swi': {'enabled': False}}
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(preset))
    config = _config(tmp_path, '--preset', str(path))
    assert config.maps.r2star_method == 'loglinear' and config.maps.swi is False
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(preset | {'r2star': {'method': 'fast'}}))
    with pytest.raises(InputError, match="unknown R2\\* method 'fast'"):
        _config(tmp_path, '--preset', str(bad))


@pytest.mark.parametrize('argv', [['--r2star-method', 'fast'], ['--minip-slab-mm', '0'],
                                  ['--r2-hz', '-1'], ['--r2-hz', 'inf']])
def test_bad_maps_flags_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        _config(tmp_path, *argv)
    assert exc.value.code == 2


def _node_names(workflow) -> set:
    return {str(n) for n in workflow._create_flat_graph().nodes()}


@pytest.mark.parametrize('swi_on, chisep_on, n_echoes',
                         [(True, True, 5), (False, False, 5), (True, True, 1),
                          (False, True, 4)])
def test_workflow_graph_has_the_map_steps(swi_on, chisep_on, n_echoes):
    from qsmflow.config.presets import load_preset, with_maps_options
    from qsmflow.workflows.outputs import qsm_outputs
    from qsmflow.workflows.qsm import init_qsm_wf

    pipeline = with_maps_options(load_preset('default'), swi=swi_on,
                                 chi_separation=chisep_on)
    names = {n.rsplit('.', 1)[-1] for n in _node_names(init_qsm_wf(pipeline=pipeline,
                                                                   n_echoes=n_echoes))}
    assert ('relaxometry' in names) == (n_echoes >= 2)
    assert ('swi' in names) == ('minip' in names) == swi_on
    assert ('chi_separation' in names) == (chisep_on and n_echoes >= 2)
    kinds = qsm_outputs(pipeline, n_echoes)
    assert ('r2starmap' in kinds) == (n_echoes >= 2) and ('minip' in kinds) == swi_on
    assert ('chimap_para' in kinds) == ('chimap_dia' in kinds) == (chisep_on
                                                                  and n_echoes >= 2)


def test_output_names_and_bidsignore():
    from qsmflow import bids_specs

    ents = {'subject': '01', 'run': 2}
    assert bids_specs.output_name('r2starmap', ents) == 'sub-01_run-2_R2starmap.nii.gz'
    assert bids_specs.output_name('t2starmap', ents) == 'sub-01_run-2_T2starmap.nii.gz'
    assert bids_specs.output_name('swi', ents) == 'sub-01_run-2_desc-swi_swi.nii.gz'
    assert bids_specs.output_name('minip', ents) == 'sub-01_run-2_desc-minip_swi.nii.gz'
    assert (bids_specs.output_name('chimap_para', ents)
            == 'sub-01_run-2_desc-paramagnetic_Chimap.nii.gz')
    assert (bids_specs.output_name('chimap_dia', ents)
            == 'sub-01_run-2_desc-diamagnetic_Chimap.nii.gz')
    spec = bids_specs.load('outputs')
    assert spec['outputs']['r2starmap']['meta']['Units'] == '1/s'
    assert spec['outputs']['t2starmap']['meta']['Units'] == 's'
    assert spec['outputs']['chimap_para']['meta']['Units'] == 'ppm'
    assert {'*_swi.nii.gz', '*_swi.json'} <= set(spec['bidsignore'])


# -- interfaces on small synthetic NIfTIs --------------------------------------------------

_TES = [0.004, 0.012, 0.020, 0.028]


def _write(path: Path, data, affine, dim_info=None) -> str:
    img = nb.Nifti1Image(np.asarray(data, np.float32), affine)
    if dim_info is not None:
        img.header.set_dim_info(slice=dim_info)
    img.to_filename(str(path))
    return str(path)


@pytest.fixture
def small_gre(tmp_path):
    """8×8×8 voxels of 2×2×3 mm: R2* 25 1/s, a vein (positive local field) along z."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-8, -8, -12)
    r2 = np.full((8, 8, 8), 25.0)
    r2[4, 4, :] = 45.0
    mag = 100 * np.exp(-r2[..., None] * np.asarray(_TES))
    field = np.zeros((8, 8, 8))
    field[4, 4, :] = 0.1
    mask = np.zeros((8, 8, 8))
    mask[1:7, 1:7, 1:7] = 1
    return {'mag': _write(tmp_path / 'mag.nii.gz', mag, affine, dim_info=1),
            'field': _write(tmp_path / 'field.nii.gz', field, affine),
            'mask': _write(tmp_path / 'mask.nii.gz', mask, affine), 'affine': affine,
            'r2': r2, 'inside': mask > 0}


def test_r2star_interface_units_values_and_provenance(small_gre, tmp_path):
    from qsmflow.interfaces.maps import R2StarMap

    res = R2StarMap(in_magnitude=small_gre['mag'], in_mask=small_gre['mask'],
                    echo_times=_TES).run(cwd=str(tmp_path))
    r2 = nb.load(res.outputs.out_r2star)
    t2 = nb.load(res.outputs.out_t2star)
    inside = small_gre['inside']
    np.testing.assert_allclose(r2.get_fdata()[inside], small_gre['r2'][inside], rtol=1e-4)
    np.testing.assert_allclose(t2.get_fdata()[inside], 1 / small_gre['r2'][inside], rtol=1e-4)
    assert np.allclose(r2.affine, small_gre['affine']) and r2.get_data_dtype() == np.float32
    side = json.loads(Path(res.outputs.out_r2star.replace('.nii.gz', '.json')).read_text())
    assert side['Units'] == '1/s'
    assert json.loads(Path(res.outputs.out_t2star.replace('.nii.gz', '.json'))
                      .read_text())['Units'] == 's'
    step = side['QSMProcessing'][-1]
    assert step['Algorithm'] == 'qsmflow.qsm.relaxometry.r2star'
    assert step['Parameters']['method'] == 'arlo' and 'min_snr' in step['Parameters']
    assert step['QC']['UnreliableVoxels'] == 0 and step['QC']['MaskVoxels'] == inside.sum()


def test_r2star_interface_falls_back_from_arlo_on_unequal_echoes(small_gre, tmp_path):
    from qsmflow.interfaces.maps import R2StarMap

    tes = [0.004, 0.010, 0.020, 0.034]
    mag = 100 * np.exp(-small_gre['r2'][..., None] * np.asarray(tes))
    path = _write(tmp_path / 'uneq.nii.gz', mag, small_gre['affine'])
    res = R2StarMap(in_magnitude=path, in_mask=small_gre['mask'],
                    echo_times=tes).run(cwd=str(tmp_path))
    step = json.loads(Path(res.outputs.out_r2star.replace('.nii.gz', '.json'))
                      .read_text())['QSMProcessing'][-1]
    assert step['Parameters']['method'] == 'loglinear' and 'ARLO' in step['Fallback']
    inside = small_gre['inside']
    np.testing.assert_allclose(nb.load(res.outputs.out_r2star).get_fdata()[inside],
                               small_gre['r2'][inside], rtol=1e-4)


def test_swi_and_minip_interfaces_keep_the_geometry(small_gre, tmp_path):
    from qsmflow.interfaces.maps import SWI, MinIP

    res = SWI(in_field=small_gre['field'], in_field_mask=small_gre['mask'],
              in_magnitude=small_gre['mag'], echo_times=_TES, b0_tesla=3.0,
              params={'strength': 2.0}).run(cwd=str(tmp_path))
    swi_img = nb.load(res.outputs.out_swi)
    assert swi_img.shape == (8, 8, 8) and np.allclose(swi_img.affine, small_gre['affine'])
    data = swi_img.get_fdata()
    assert data[4, 4, 3] < 0.5 * data[2, 2, 3]  # the vein
    step = json.loads(Path(res.outputs.out_swi.replace('.nii.gz', '.json'))
                      .read_text())['QSMProcessing'][-1]
    assert step['Algorithm'] == 'qsmflow.qsm.swi.swi' and step['Parameters']['strength'] == 2
    assert step['PhaseEchoTime'] > 0 and abs(sum(step['EchoWeights']) - 1) < 1e-9
    mip = MinIP(in_file=res.outputs.out_swi, in_reference=small_gre['mag'],
                params={'slab_mm': 6.0}).run(cwd=str(tmp_path))
    mip_img = nb.load(mip.outputs.out_file)
    assert mip_img.shape == swi_img.shape and np.allclose(mip_img.affine, swi_img.affine)
    mstep = json.loads(Path(mip.outputs.out_file.replace('.nii.gz', '.json'))
                       .read_text())['QSMProcessing'][-1]
    # slice_dim of the magnitude's header (1: y, 2 mm) names the slab axis: 3 slices
    assert mstep['Parameters'] == {'slab_mm': 6.0, 'slice_axis': 1}
    np.testing.assert_allclose(mip_img.get_fdata()[:, 3], data[:, 2:5].min(axis=1), rtol=1e-6)


def test_chi_separation_interface_units_values_and_provenance(small_gre, tmp_path):
    """χ = 0, R2* 25 1/s, R2 11.3 1/s: the split is ±R2′/(2 Dr) = ±0.05 ppm; the vein
    (R2* 45, one voxel wide) ±0.123 ppm before TV. Without ``r2_hz`` the default (white matter) is recorded."""
    from qsmflow.interfaces.maps import ChiSeparation

    zero = _write(tmp_path / 'zero.nii.gz', np.zeros((8, 8, 8)), small_gre['affine'])
    r2s = _write(tmp_path / 'r2s.nii.gz', small_gre['r2'], small_gre['affine'])
    res = ChiSeparation(in_field=zero, in_mask=small_gre['mask'], in_r2star=r2s, in_chi=zero,
                        b0_tesla=3.0, params={'r2_hz': 11.3}).run(cwd=str(tmp_path))
    para, dia = nb.load(res.outputs.out_para), nb.load(res.outputs.out_dia)
    assert np.allclose(para.affine, small_gre['affine']) and para.get_data_dtype() == np.float32
    inside = small_gre['inside']
    p, d = para.get_fdata(), dia.get_fdata()
    assert p[inside].min() >= 0 >= d[inside].max() and not p[~inside].any()
    assert abs(np.median(p[inside]) - 13.7 / 274) < 2e-3
    assert abs(np.median(d[inside]) + 13.7 / 274) < 2e-3
    assert p[4, 4, 3] > 0.08 and d[4, 4, 3] < -0.08  # one voxel wide: TV on χ± lowers it
    side = json.loads(Path(res.outputs.out_para.replace('.nii.gz', '.json')).read_text())
    assert side['Units'] == 'ppm'
    step = side['QSMProcessing'][-1]
    assert step['Algorithm'] == 'qsmflow.qsm.chi_separation.chi_separation'
    assert step['RelaxometricConstantHzPerPpm'] == 137.0 and step['R2Hz'] == 11.3
    assert step['R2Source'] == 'given value' and step['ChiSource'] == 'given chi'
    assert step['Parameters']['r2_hz'] == 11.3 and step['Parameters']['chi_ppm'] == 'in_chi'
    (tmp_path / 'g').mkdir()
    given = ChiSeparation(in_field=zero, in_mask=small_gre['mask'], in_r2star=r2s,
                          in_chi=zero, b0_tesla=3.0).run(cwd=str(tmp_path / 'g'))
    gstep = json.loads(Path(given.outputs.out_dia.replace('.nii.gz', '.json'))
                       .read_text())['QSMProcessing'][-1]
    assert gstep['R2Hz'] == pytest.approx(14.08) and 'default' in gstep['R2Source']


# -- the maps in the regional tables ---------------------------------------------------------

def _feeding(graph, node, field):
    """``(node name, output)`` that feeds input ``field`` of ``node``, through the identity
    nodes of the flat graph; None when nothing does."""
    from nipype.interfaces.utility import IdentityInterface

    for upstream, _, data in graph.in_edges(node, data=True):
        for out, inp in data['connect']:
            if inp == field:
                if isinstance(upstream.interface, IdentityInterface):
                    return _feeding(graph, upstream, out)
                return str(upstream).rsplit('.', 1)[-1], out
    return None


@pytest.mark.parametrize('n_echoes, chisep_on', [(4, True), (4, False), (1, True)])
def test_regional_tables_are_fed_the_maps_the_acquisition_has(tmp_path, n_echoes, chisep_on):
    """Both table routes (segmentation, atlas) get R2* from the fit and χ⁺/χ⁻ from
    χ-separation when these run; a map that does not run feeds nothing (no column)."""
    from qsmflow.atlases.specs import custom_atlas
    from qsmflow.bids.inputs import Acquisition
    from qsmflow.config.presets import load_preset, with_maps_options
    from qsmflow.interfaces.regions import RegionalStats
    from qsmflow.workflows.base import init_single_acquisition_wf

    files = {}
    for key in ('seg', 'lut', 'image', 'template_image'):
        files[key] = tmp_path / f'{key}.nii.gz'
        files[key].write_bytes(b'x')
    acq = Acquisition(entities={'subject': '01'}, mag_files=['m'] * n_echoes,
                      phase_files=['p'] * n_echoes,
                      echo_times_s=[0.004 * (i + 1) for i in range(n_echoes)], b0_tesla=3.0,
                      n_voxels=1000, segmentation=str(files['seg']),
                      segmentation_lut=str(files['lut']))
    pipeline = with_maps_options(load_preset('default'), chi_separation=chisep_on)
    atlas = custom_atlas({k: files[k] for k in ('image', 'lut', 'template_image')})
    wf = init_single_acquisition_wf(acq=acq, output_dir=str(tmp_path / 'out'),
                                    bids_dir=str(tmp_path), pipeline=pipeline,
                                    regions_opts={'template': None, 'erode': False,
                                                  'atlases': [atlas]})
    graph = wf._create_flat_graph()
    tables = {str(n).split('.')[-2]: n for n in graph.nodes()
              if isinstance(n.interface, RegionalStats)}
    assert set(tables) == {'regions_wf', 'regions_custom_wf'}  # segmentation, custom atlas
    for stats in tables.values():
        assert _feeding(graph, stats, 'in_file') == ('reference', 'out_file')
        assert _feeding(graph, stats, 'in_mask') == ('bg_removal', 'out_mask')
        assert _feeding(graph, stats, 'in_r2star') == (
            ('relaxometry', 'out_r2star') if n_echoes >= 2 else None)
        separated = chisep_on and n_echoes >= 2
        assert _feeding(graph, stats, 'in_chi_para') == (
            ('chi_separation', 'out_para') if separated else None)
        assert _feeding(graph, stats, 'in_chi_dia') == (
            ('chi_separation', 'out_dia') if separated else None)


def test_regions_workflow_rejects_maps_it_cannot_average():
    from qsmflow.workflows.regions import init_regions_wf

    with pytest.raises(ValueError, match="cannot average: \\['swi'\\]"):
        init_regions_wf(atlas='custom', output_dir='/tmp/out', entities={'subject': '01'},
                        maps=('r2starmap', 'swi'))
