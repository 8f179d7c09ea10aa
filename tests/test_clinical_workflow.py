# SPDX-License-Identifier: Apache-2.0
"""Clinical readings in the BIDS App: flags, configuration, graph, and one small run of
the clinical workflow on a synthetic χ map (names, tables, sidecars, units)."""
from __future__ import annotations

import csv
import inspect
import json

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


def test_parser_defaults_agree_with_qsm():
    from qsmflow.cli import parser
    from qsmflow.qsm import oef, veins

    mip = inspect.signature(veins.maximum_intensity_projection).parameters['slab_mm']
    hct = inspect.signature(oef.vein_oef).parameters['hematocrit']
    assert (parser.DEFAULT_MIP_SLAB_MM, parser.DEFAULT_HEMATOCRIT) == (mip.default,
                                                                       hct.default)


def test_readings_are_off_by_default_and_flags_reach_the_config(tmp_path):
    from qsmflow.workflows.clinical import clinical_enabled

    steps = _config(tmp_path).pipeline.steps
    assert not clinical_enabled(steps)
    steps = _config(tmp_path, '--foci', '--oef', '--hematocrit', '0.45',
                    '--mip-slab-mm', '12').pipeline.steps
    assert steps['clinical'] == {'venography': False, 'foci': True, 'oef': True,
                                 'hematocrit': 0.45, 'mip_slab_mm': 12.0}


def test_bad_hematocrit_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match=r'haematocrit must be a fraction in \(0, 1\)'):
        _config(tmp_path, '--oef', '--hematocrit', '1.5')
    with pytest.raises(SystemExit) as exc:
        _config(tmp_path, '--hematocrit', '-1')
    assert exc.value.code == 2


def _synthetic(tmp_path):
    """χ (ppm) of 48³ 1-mm voxels: a vein along y, a 6-mm haemorrhage-like and a 4-mm
    calcification-like focus, a little noise; with its mask and an R2* map."""
    rng = np.random.default_rng(1)
    chi = rng.normal(0, 0.005, (48, 48, 48)).astype(np.float32)
    i, j, k = np.ogrid[:48, :48, :48]
    vein = ((i - 30) ** 2 + (k - 30) ** 2 <= 2.25) & (j >= 6) & (j < 42)
    chi[vein] += 0.45
    chi[(i - 16) ** 2 + (j - 24) ** 2 + (k - 20) ** 2 <= 9] += 0.8
    chi[(i - 32) ** 2 + (j - 24) ** 2 + (k - 14) ** 2 <= 4] -= 0.5
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-24, -24, -24)
    paths = {}
    seg = np.zeros((24, 24, 24), np.int16)  # a segmentation on a 2-mm grid: left half 1
    seg[:12] = 1
    seg_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seg_affine[:3, 3] = (-23.5, -23.5, -23.5)
    paths['seg'] = str(tmp_path / 'seg_dseg.nii.gz')
    nb.Nifti1Image(seg, seg_affine).to_filename(paths['seg'])
    paths['lut'] = str(tmp_path / 'seg_dseg.tsv')
    (tmp_path / 'seg_dseg.tsv').write_text('index\tname\n1\tLeft-Region\n')
    for name, data in (('chi', chi), ('mask', np.ones(chi.shape, np.uint8)),
                       ('r2star', np.full(chi.shape, 20.0, np.float32))):
        paths[name] = str(tmp_path / f'{name}.nii.gz')
        nb.Nifti1Image(data, affine).to_filename(paths[name])
    return paths


def test_clinical_workflow_runs_and_stores_named_outputs(tmp_path):
    from qsmflow.workflows.clinical import init_clinical_wf

    paths = _synthetic(tmp_path)
    out = tmp_path / 'out'
    wf = init_clinical_wf(output_dir=str(out), entities={'subject': '01'},
                          source_files=[paths['chi']], venography=True, foci=True, oef=True,
                          hematocrit=0.42, has_r2star=True,
                          segmentation=(paths['seg'], paths['lut']))
    wf.base_dir = str(tmp_path / 'work')
    wf.config['execution']['remove_unnecessary_outputs'] = False  # as the runner: sidecars
    wf.inputs.inputnode.chimap = paths['chi']
    wf.inputs.inputnode.mask = paths['mask']
    wf.inputs.inputnode.r2starmap = paths['r2star']
    wf.run(plugin='Linear')
    anat = out / 'sub-01' / 'anat'
    names = sorted(p.name for p in anat.iterdir())
    for name in ('sub-01_desc-veins_mask.nii.gz', 'sub-01_desc-veins_probseg.nii.gz',
                 'sub-01_desc-mip_Chimap.nii.gz', 'sub-01_desc-veinsmip_probseg.nii.gz',
                 'sub-01_desc-foci_dseg.nii.gz', 'sub-01_desc-foci_dseg.tsv',
                 'sub-01_desc-foci_dseg.json', 'sub-01_desc-oef_stats.tsv',
                 'sub-01_desc-oef_stats.json', 'sub-01_desc-mip_Chimap.json'):
        assert name in names
    with open(anat / 'sub-01_desc-foci_dseg.tsv') as fobj:
        rows = list(csv.DictReader(fobj, delimiter='\t'))
    assert [r['name'] for r in rows] == ['haemorrhage-like', 'calcification-like']
    assert rows[0]['description'] == 'paramagnetic focus, haemorrhage-like'
    assert float(rows[0]['mean_r2star_hz']) == pytest.approx(20.0)
    assert rows[0]['mean_swi'] == 'n/a'
    assert [r['region'] for r in rows] == ['Left-Region', 'background']  # x −8 mm, +8 mm
    # Scanner coordinates through the affine: voxel (16, 24, 20) is (-8, 0, -4) mm.
    assert [round(float(rows[0][c])) for c in ('x_mm', 'y_mm', 'z_mm')] == [-8, 0, -4]
    dseg = nb.load(anat / 'sub-01_desc-foci_dseg.nii.gz')
    assert dseg.get_data_dtype() == np.int16 and int(dseg.dataobj[16, 24, 20]) == 1
    side = json.loads((anat / 'sub-01_desc-foci_dseg.json').read_text())
    assert side['NumberOfFoci'] == 2 and 'volume_mm3' in side['Columns']
    assert side['QSMProcessing'][-1]['Algorithm'] == 'qsmflow.qsm.foci.detect_foci'
    mip = json.loads((anat / 'sub-01_desc-mip_Chimap.json').read_text())
    assert mip['Units'] == 'ppm' and mip['MIPSlabThicknessMM'] == 16.0
    with open(anat / 'sub-01_desc-oef_stats.tsv') as fobj:
        oef_rows = list(csv.DictReader(fobj, delimiter='\t'))
    assert oef_rows[0]['region'] == 'background' and oef_rows[-1]['segment'] == 'all'
    oef = json.loads((anat / 'sub-01_desc-oef_stats.json').read_text())
    assert oef['Hematocrit'] == 0.42 and oef['DeltaChiDeoxygenatedPPM'] == 3.39
    # The vein: Δχ ≈ 0.45 ppm above tissue, Hct 0.42 → OEF ≈ 0.45 / (3.39 · 0.42) ≈ 0.32.
    assert oef['OEF'] == pytest.approx(0.45 / (3.39 * 0.42), abs=0.05)


@pytest.mark.parametrize('flags', [{}, {'foci': True}, {'venography': True, 'oef': True}])
def test_participant_graph_has_the_asked_readings(tmp_path, flags):
    from qsmflow.bids.inputs import Acquisition
    from qsmflow.config.presets import load_preset, with_clinical_options, with_maps_options
    from qsmflow.workflows.base import init_single_acquisition_wf

    acq = Acquisition(entities={'subject': '01'}, mag_files=['m'] * 3, phase_files=['p'] * 3,
                      echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0, n_voxels=1000)
    pipeline = with_clinical_options(with_maps_options(load_preset('default')), **flags)
    wf = init_single_acquisition_wf(acq=acq, output_dir=str(tmp_path / 'out'),
                                    bids_dir=str(tmp_path), pipeline=pipeline)
    graph = wf._create_flat_graph()
    names = {str(n).rsplit('.', 1)[-1] for n in graph.nodes()}
    assert ('venography' in names) == bool(flags)
    assert ('ds_veins' in names) == bool(flags.get('venography'))
    assert ('foci' in names) == bool(flags.get('foci'))
    assert ('oef' in names) == bool(flags.get('oef'))
    if flags.get('foci'):  # R2* and SWI of the same acquisition beside each focus
        foci = next(n for n in graph.nodes() if str(n).endswith('.foci'))
        fed = {dst for _, _, d in graph.in_edges(foci, data=True) for _, dst in d['connect']}
        assert {'in_r2star', 'in_swi', 'in_veins', 'in_file', 'in_mask'} <= fed
