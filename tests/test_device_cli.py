# SPDX-License-Identifier: Apache-2.0
"""``--device`` from the command line to the steps: a one-line error for ``gpu`` without
CUDA, the choice carried to the background-removal and inversion nodes, and the device
used recorded in their sidecars."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.qsm.device import cuda_available
from tests.test_cli import _one_line_error, _skeleton


@pytest.mark.skipif(cuda_available(), reason='a CUDA device is present')
def test_device_gpu_without_cuda_is_a_one_line_error(tmp_path, run_cli):
    bids = _skeleton(tmp_path / 'ds')
    proc = run_cli(bids, tmp_path / 'out', 'participant', '--skip-bids-validation',
                   '--device', 'gpu')
    _one_line_error(proc, '--device gpu')
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').rglob('*.nii.gz'))


def test_device_choices_and_default():
    from qsmflow.cli.parser import build_parser

    action = next(a for a in build_parser()._actions if '--device' in a.option_strings)
    assert action.choices == ('cpu', 'gpu', 'auto') and action.default == 'cpu'


def test_device_reaches_the_fft_nodes():
    from qsmflow.config.presets import load_preset
    from qsmflow.workflows.qsm import init_qsm_wf

    wf = init_qsm_wf(pipeline=load_preset('default'), device='auto')
    for name in ('bg_removal', 'inversion'):
        assert wf.get_node(name).inputs.device == 'auto'
    assert init_qsm_wf(pipeline=load_preset('default')).get_node('inversion').inputs.device \
        == 'cpu'


@pytest.mark.parametrize('asked', ['cpu', 'auto'])
def test_sidecars_record_the_device_used(tmp_path, asked):
    from qsmflow.interfaces.bgremove import RemoveBackground
    from qsmflow.interfaces.inversion import InvertDipole

    rng = np.random.default_rng(0)
    field = (0.01 * rng.standard_normal((20, 20, 20))).astype(np.float32)
    mask = np.zeros(field.shape, np.uint8)
    mask[4:16, 4:16, 4:16] = 1
    for name, data in (('field', field), ('mask', mask)):
        nb.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / f'{name}.nii.gz')
    bg = RemoveBackground(in_file=str(tmp_path / 'field.nii.gz'),
                          in_mask=str(tmp_path / 'mask.nii.gz'), method='pdf', device=asked)
    bg.base_dir = str(tmp_path)
    res = bg.run(cwd=str(tmp_path)).outputs
    inv = InvertDipole(in_file=res.out_file, in_mask=res.out_mask, method='tkd', device=asked)
    out = inv.run(cwd=str(tmp_path)).outputs.out_file
    steps = json.loads(open(out.replace('.nii.gz', '.json')).read())['QSMProcessing']
    expected = 'gpu' if cuda_available() else 'cpu'
    for step in ('background-removal', 'dipole-inversion'):
        record = next(s for s in steps if s['Step'] == step)
        assert record['Parameters']['device'] == expected
