# SPDX-License-Identifier: Apache-2.0
"""The run configuration: built once from the command line, frozen, written and read back;
pre-flight resolves every input file into the acquisition record."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmflow.cli.config import config_from_args
from qsmflow.cli.parser import build_parser
from qsmflow.config import RunConfig
from qsmflow.errors import InputError


def _bids(tmp_path) -> Path:
    bids = tmp_path / 'bids'
    bids.mkdir(parents=True)
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return bids


def _config(tmp_path, *argv, level='participant') -> RunConfig:
    opts = build_parser().parse_args([str(_bids(tmp_path)), str(tmp_path / 'out'), level,
                                      *argv])
    return config_from_args(opts)


def test_every_flag_reaches_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(tmp_path / 'tf'))
    (tmp_path / 'masks').mkdir()
    (tmp_path / 'seg').mkdir()
    filters = tmp_path / 'filters.json'
    filters.write_text('{"megre": {"acquisition": "fast"}}')
    config = _config(
        tmp_path, '--participant-label', 'sub-01', '02', '--session-label', 'ses-a',
        '--bids-filter-file', str(filters), '--skip-bids-validation', '--field-strength', '7',
        '--preset', 'fast', '--inversion', 'rts', '--masking', 'magnitude', '--two-pass',
        '--brain-masks', str(tmp_path / 'masks'), '--template', 'QSMPhantom',
        '--template-resolution', '3', '--atlases', 'Phantom', '--segmentations',
        str(tmp_path / 'seg'), '--erode-rois', '--no-refine-nuclei', '--segment-nuclei',
        '--nprocs', '3',
        '--omp-nthreads', '2',
        '--mem-gb', '4', '--plugin-args', '{"maxtasksperchild": 1}', '-w',
        str(tmp_path / 'w'))
    assert config.paths.work_dir == tmp_path / 'w'
    sel = config.selection
    assert sel.participant_labels == ('01', '02') and sel.session_labels == ('a',)
    assert sel.bids_filters == {'megre': {'acquisition': 'fast'}}
    assert sel.skip_bids_validation and sel.field_strength == 7.0
    steps = config.pipeline.steps
    assert config.pipeline.preset == 'fast' and steps['inversion']['method'] == 'rts'
    assert steps['masking']['method'] == 'magnitude' and steps['masking']['two_pass'] is True
    assert steps['masking']['brain_masks'] == str(tmp_path / 'masks')
    assert config.masks.brain_masks == tmp_path / 'masks' and config.masks.two_pass is True
    reg = config.regions
    assert (reg.template, reg.template_resolution, reg.atlases) == ('QSMPhantom', 3, ('Phantom',))
    assert reg.segmentations == tmp_path / 'seg' and reg.erode and not reg.skip_registration
    assert reg.refine_nuclei is False
    default = _config(tmp_path / 'default').regions
    assert default.refine_nuclei is True
    assert reg.segment_nuclei is True and default.segment_nuclei is False
    assert reg.templateflow_home == tmp_path / 'tf'
    eng = config.engine
    assert (eng.nprocs, eng.omp_nthreads, eng.mem_gb, eng.plugin) == (3, 2, 4.0, 'multiproc')
    assert eng.plugin_args == {'maxtasksperchild': 1}


class _Recording(argparse.Namespace):
    """Parsed options that note which ones are read."""

    def __getattribute__(self, name):
        if not name.startswith('_'):
            object.__getattribute__(self, '__dict__').setdefault('_read', set()).add(name)
        return object.__getattribute__(self, name)


def test_every_flag_of_the_parser_is_read_into_the_config(tmp_path):
    """A flag added to the parser must reach the configuration (cli/config.py)."""
    parser = build_parser()
    opts = parser.parse_args([str(_bids(tmp_path)), str(tmp_path / 'out'), 'participant'],
                             namespace=_Recording())
    opts.__dict__['_read'] = set()  # argparse itself looks at every option while parsing
    config_from_args(opts)
    dests = {a.dest for a in parser._actions if a.dest not in ('help', 'version')}
    assert dests - opts.__dict__['_read'] == set()


def test_defaults_resolve_like_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv('TEMPLATEFLOW_HOME', raising=False)
    config = _config(tmp_path, '--nprocs', '1')
    assert config.paths.work_dir == tmp_path / 'work'
    assert config.engine.plugin == 'linear' and config.engine.omp_nthreads == 1
    assert config.regions.atlases is None and config.regions.templateflow_home is None
    assert config.masks.brain_masks is None
    assert 'brain_masks' not in config.pipeline.steps['masking']


def test_config_is_frozen_and_round_trips_through_json(tmp_path):
    config = _config(tmp_path, '--atlases', 'MASSP20', '--nprocs', '2')
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.nprocs = 4
    path = config.to_file(tmp_path / 'config.json')
    assert json.loads(path.read_text())['engine']['nprocs'] == 2
    assert RunConfig.from_file(path) == config


def _atlas_files(tmp_path, lut='index\tname\n1\tPu_L\n2\tPu_R\n'):
    files = {flag: tmp_path / name for flag, name in (
        ('--atlas', 'a_dseg.nii.gz'), ('--atlas-labels', 'a_dseg.tsv'),
        ('--atlas-template', 'a_T1w.nii.gz'))}
    labels = np.zeros((6, 6, 6), np.int16)
    labels[1:3, 1:3, 1:3], labels[3:5, 3:5, 3:5] = 1, 2
    nb.Nifti1Image(labels, np.eye(4)).to_filename(files['--atlas'])
    files['--atlas-labels'].write_text(lut)
    files['--atlas-template'].write_bytes(b'x')
    return files


def test_a_custom_atlas_table_that_does_not_fit_is_one_line_before_any_work(tmp_path):
    """Before, a lookup table without a "name" column failed every participant at the
    table, after the whole reconstruction (95 s on the 2 mm real-anatomy phantom)."""
    for i, (lut, message) in enumerate((
            ('index\tlabel\n1\tPu_L\n', 'not a BIDS dseg.tsv'),
            ('index\tname\n7\tPu_L\n8\tPu_R\n', 'holds none of the 2 labels'))):
        (tmp_path / str(i)).mkdir()
        files = _atlas_files(tmp_path / str(i), lut)
        with pytest.raises(InputError, match=message) as err:
            _config(tmp_path / str(i), *[str(v) for kv in files.items() for v in kv])
        assert '\n' not in str(err.value) and 'a_dseg' in str(err.value)


def test_custom_atlas_is_typed_and_round_trips(tmp_path):
    files = _atlas_files(tmp_path)
    config = _config(tmp_path, *[str(v) for kv in files.items() for v in kv])
    atlas = config.regions.custom_atlas
    assert atlas.image == files['--atlas'] and atlas.template_mask is None
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize('argv, message', [
    (['--preset', 'nope'], 'unknown preset'),
    (['--brain-masks', '/no/such/folder'], 'is not a folder'),
    (['--segmentations', '/no/such/folder'], 'is not a folder'),
    (['--atlases', 'nope'], 'unknown atlas'),
    (['--atlas', 'x.nii.gz'], 'go together'),
    (['--skip-registration', '--atlases', 'MASSP20'], 'skip-registration'),
    (['--plugin-args', '{"a": '], 'invalid JSON'),
    (['--participant-label', 'a/b'], 'invalid label'),
])
def test_bad_invocations_fail_when_the_config_is_built(tmp_path, argv, message):
    with pytest.raises(InputError, match=message):
        _config(tmp_path, *argv)


def test_group_level_reads_only_paths(tmp_path):
    opts = build_parser().parse_args([str(tmp_path / 'nobids'), str(tmp_path / 'out'), 'group',
                                      '--brain-masks', '/no/such/folder'])
    config = config_from_args(opts)
    assert config.analysis_level == 'group' and config.paths.output_dir == tmp_path / 'out'


def test_demo_config_carries_its_templateflow_folder(tmp_path, monkeypatch):
    """The demo names its template folder in the configuration instead of setting
    TEMPLATEFLOW_HOME; the templateflow queries take it as an argument."""
    from qsmflow.atlases.options import regions_options
    from qsmflow.cli.demo import demo_config
    from qsmflow.phantom.template import write_template

    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(tmp_path / 'elsewhere'))
    write_template(tmp_path / 'templateflow', size='tiny')
    config = demo_config(_bids(tmp_path), tmp_path / 'out', size='tiny', nprocs=1,
                         templateflow_home=tmp_path / 'templateflow')
    out = regions_options(config.regions)
    assert out['template'] == 'QSMPhantom' and [a['name'] for a in out['atlases']] == ['Phantom']
    assert out['template_files']['image'].startswith(str(tmp_path / 'templateflow'))
    assert os.environ['TEMPLATEFLOW_HOME'] == str(tmp_path / 'elsewhere')


def test_no_getattr_on_options_left():
    """Options are read from the parsed arguments once (cli/config.py), with their names."""
    root = Path(__file__).resolve().parents[1]
    hits = [f'{p.relative_to(root)}:{i}' for base in ('qsmflow', 'workflows')
            for p in sorted((root / base).rglob('*.py'))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if 'getattr(opts' in line or 'getattr(config' in line]
    assert hits == []


# --- input files resolved at pre-flight ----------------------------------------------------
def _segmentation_without_lut(tmp_path, subject='01') -> Path:
    seg = tmp_path / 'seg'
    anat = seg / f'sub-{subject}' / 'anat'
    anat.mkdir(parents=True)
    (anat / f'sub-{subject}_dseg.nii.gz').write_bytes(b'')
    return seg


def test_preflight_resolves_segmentation_and_voxel_count(tiny_phantom, tmp_path):
    from qsmflow.bids.inputs import find_acquisitions
    from qsmflow.bids.preflight import preflight

    bids_dir, _ = tiny_phantom
    seg = _segmentation_without_lut(tmp_path)
    acqs, failures = find_acquisitions(bids_dir)
    lines = []
    preflight(acqs, failures, log=lines.append, segmentations=seg)
    assert list(failures) == ['01'] and acqs == {}
    reason = failures['01']
    assert 'sub-01_dseg.nii.gz' in reason and 'lookup table' in reason
    assert 'sub-01_dseg.tsv' in reason and str(seg / 'dseg.tsv') in reason
    assert '\n' not in reason

    (seg / 'dseg.tsv').write_text('index\tname\n1\ta\n')
    acqs, failures = find_acquisitions(bids_dir)
    preflight(acqs, failures, log=lines.append, segmentations=seg)
    (acq,) = acqs['01']
    assert acq.segmentation.endswith('sub-01_dseg.nii.gz')
    assert acq.segmentation_lut == str(seg / 'dseg.tsv')
    assert acq.n_voxels > 0 and acq.brain_mask is None


def test_segmentation_without_lut_fails_its_participant_at_preflight(tiny_phantom, tmp_path,
                                                                     run_cli):
    """Before, the missing dseg.tsv surfaced while the workflow was built: 'internal error'
    and no participant ran. Now it is one pre-flight line for that participant."""
    bids_dir, _ = tiny_phantom
    seg = _segmentation_without_lut(tmp_path)
    proc = run_cli(bids_dir, tmp_path / 'out', 'participant',  # in-process (conftest.py)
                   '--skip-bids-validation', '--skip-registration', '--segmentations', seg,
                   '-w', tmp_path / 'work')
    assert proc.returncode == 1, proc.stderr
    assert 'internal error' not in proc.stderr and 'Traceback' not in proc.stderr
    assert 'FAILED pre-flight' in proc.stdout
    failed = [ln for ln in proc.stderr.splitlines() if 'FAILED sub-01' in ln]
    assert len(failed) == 1 and 'sub-01_dseg.nii.gz' in failed[0], proc.stderr
    assert 'lookup table' in failed[0]


@pytest.mark.slow
def test_segmentation_without_lut_leaves_the_others_running(tmp_path, run_cli):
    """Two participants, the first one's segmentation lacks its lookup table: it fails at
    pre-flight, the second is reconstructed; the run's configuration is in the logs."""
    from qsmflow.phantom.bids import write_dataset

    bids_dir = tmp_path / 'raw'
    write_dataset(bids_dir, tmp_path / 'truth', [
        {'participant_id': '01', 'age': 30, 'sex': 'F'},
        {'participant_id': '02', 'age': 60, 'sex': 'M'}], size='tiny')
    seg = _segmentation_without_lut(tmp_path)
    out = tmp_path / 'out'
    proc = run_cli(bids_dir, out, 'participant',  # in-process (Linear; conftest.py)
                   '--skip-bids-validation', '--skip-registration', '--segmentations', seg,
                   '--nprocs', '1', '-w', tmp_path / 'work')
    assert proc.returncode == 1, proc.stderr
    assert 'internal error' not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if 'FAILED sub-' in ln][0].strip() \
        .startswith('FAILED sub-01')
    assert (out / 'sub-02' / 'anat' / 'sub-02_Chimap.nii.gz').exists()
    assert not list(out.glob('sub-01/anat/*_Chimap.nii.gz'))
    (written,) = (out / 'logs').glob('participant-*_config.json')
    config = RunConfig.from_file(written)
    assert config.regions.segmentations == seg and config.engine.nprocs == 1
    assert f'configuration: {written}' in (out / 'logs' / 'sub-02.log').read_text()


def test_brain_extraction_flag_selects_the_algorithm(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    default = _config(tmp_path / 'a', '--nprocs', '1').pipeline.steps['masking']
    assert default.get('brain', 'adaptive') == 'adaptive'
    chosen = _config(tmp_path / 'b', '--nprocs', '1', '--brain-extraction', 'threshold',
                     '--masking', 'magnitude').pipeline.steps['masking']
    assert chosen['brain'] == 'threshold' and chosen['method'] == 'magnitude'


def _preset(tmp_path, **steps) -> Path:
    """The default preset with ``steps`` replaced, written as a user's JSON file."""
    from qsmflow.config.presets import load_preset

    preset = {**load_preset('default'), **steps}
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(preset))
    return path


@pytest.mark.parametrize('steps, message', [
    ({'bf_removal': {'method': 'pdf', 'params': {'erode_voxel': 1}}},
     "bf_removal 'pdf' has no option 'erode_voxel'; its options: tol, max_iter"),
    ({'inversion': {'method': 'tv', 'params': {'device': 'cuda'}}},
     "inversion 'tv' has no option 'device'"),
    ({'inversion': {'method': 'magic', 'params': {}}}, "unknown inversion method 'magic'"),
    ({'unwrapping': {'method': 'romeo', 'params': {'threshold': 0.2}}},
     'step unwrapping has unknown key.s. params; this step takes no options'),
    ({'reference': {'method': 'region'}}, "unknown reference method 'region'"),
    ({'masking': {'method': 'quality', 'params': {'rim_mm': 1}, 'brain': 'threshold'}},
     "masking 'quality' has no option 'rim_mm'.*qsmflow.qsm.mask.brain_mask\)"),
    ({'masking': {'method': 'quality', 'quality_params': {'treshold': 0.3}}},
     "masking quality_params has no option 'treshold'"),
    ({'swi': {'enabled': True, 'minip_params': {'slab': 8}}},
     "swi minip_params has no option 'slab'"),
    ({'bf_remval': {'method': 'pdf'}}, 'unknown step.s. bf_remval'),
])
def test_a_preset_option_no_step_takes_fails_before_any_data_is_read(tmp_path, steps,
                                                                      message):
    """Before, a misspelt option failed the participant after its first steps had run,
    with Nipype's traceback on the console, and an option of a step that takes none
    (unwrapping, reference) was silently ignored."""
    path = _preset(tmp_path, **steps)
    with pytest.raises(InputError, match=message) as err:
        _config(tmp_path, '--preset', str(path))
    assert str(path) in str(err.value) and '\n' not in str(err.value)


def test_every_option_a_shipped_preset_sets_is_accepted(tmp_path):
    from qsmflow.config.presets import available_presets

    for name in available_presets():
        assert _config(tmp_path / name, '--preset', name).pipeline.preset == name
    ok = _preset(tmp_path, bf_removal={'method': 'pdf', 'params': {'erode_voxels': 1}},
                 swi={'enabled': True, 'params': {'strength': 3}, 'minip_params': {'slab_mm': 9}})
    assert _config(tmp_path / 'mine', '--preset', str(ok)).pipeline.steps['bf_removal']['params'] \
        == {'erode_voxels': 1}


def test_a_bad_option_value_fails_its_participant_in_one_line(tiny_phantom, tmp_path,
                                                               run_cli):
    """A value only the step can judge (PDF's ``erode_voxels`` −1) fails the participant
    when the step runs: one ``FAILED`` line with the function's reason, exit 1; the steps
    after it are logged as not run, not as done."""
    bids_dir, _ = tiny_phantom
    path = _preset(tmp_path, bf_removal={'method': 'pdf', 'params': {'erode_voxels': -1}})
    out = tmp_path / 'out'
    proc = run_cli(bids_dir, out, 'participant',  # in-process (Linear; conftest.py)
                   '--skip-bids-validation', '--skip-registration', '--preset', path,
                   '--nprocs', '1', '-w', tmp_path / 'work')
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' not in proc.stderr + proc.stdout
    (failed,) = [ln for ln in proc.stderr.splitlines() if 'FAILED sub-01' in ln]
    assert 'erode_voxels must be a whole number ≥ 0, got -1 (step bg_removal)' in failed
    log = (out / 'logs' / 'sub-01.log').read_text()
    assert 'qsm_wf.inversion not run (an earlier step failed)' in log
    assert 'qsm_wf.inversion finished' not in log
    assert not list(out.glob('sub-01/anat/*_Chimap.nii.gz'))
