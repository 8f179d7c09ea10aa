# SPDX-License-Identifier: Apache-2.0
"""Templates without a brain mask (a T1w head as ``--atlas-template``, a templateflow
folder with only the T1w) get one derived from the image, cached; registered labels whose
volumes say the registration failed are a warning in the log and the table's sidecar."""
from __future__ import annotations

import json
import logging
import os
import shutil

import nibabel as nb
import numpy as np
import pytest

from qsmflow.atlases import template_masks
from tests.realdata import TEMPLATEFLOW_HOME

MNI_T1W = (TEMPLATEFLOW_HOME / 'tpl-MNI152NLin2009cAsym'
           / 'tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz')


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('QSMFLOW_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def test_a_template_head_gets_a_brain_mask_once(cache, tmp_path, capsys):
    path = template_masks.derived_brain_mask(MNI_T1W)
    assert path and path.startswith(str(cache / 'masks'))
    img = nb.load(path)
    mask = np.asarray(img.dataobj) > 0
    ml = mask.sum() * float(np.prod(img.header.get_zooms()[:3])) / 1000
    t1 = np.asarray(nb.load(MNI_T1W).dataobj, dtype=np.float32)
    assert np.allclose(img.affine, nb.load(MNI_T1W).affine)
    # a brain, not the head: 1.7-2.2 L of the ~4.2 L head, the scalp outside it
    assert 1700 < ml < 2200, ml
    head = t1 > 0.1 * np.percentile(t1, 99)
    assert mask.sum() < 0.6 * head.sum()
    record = json.loads(next((cache / 'masks').glob('*.json')).read_text())
    assert record['Derived'] is True and abs(record['VolumeML'] - ml) < 1
    # cached: the same file, not written again
    before = os.stat(path).st_mtime_ns
    assert template_masks.derived_brain_mask(MNI_T1W) == path
    assert os.stat(path).st_mtime_ns == before
    os.remove(path)  # a cache cleaned by hand: made again, not a missing file
    assert template_masks.derived_brain_mask(MNI_T1W) == path and os.path.exists(path)
    # announced on the console, a given mask wins
    assert template_masks.with_brain_mask(MNI_T1W, None, '--atlas-template') == path
    assert 'has skull and scalp and no brain mask' in capsys.readouterr().err
    assert template_masks.with_brain_mask(MNI_T1W, '/given.nii.gz', 'x') == '/given.nii.gz'


def test_a_skull_stripped_template_needs_none(cache, tmp_path):
    img = nb.load(MNI_T1W)
    brain = nb.load(template_masks.derived_brain_mask(MNI_T1W))
    stripped = np.asarray(img.dataobj, dtype=np.float32) * (np.asarray(brain.dataobj) > 0)
    nb.save(nb.Nifti1Image(stripped, img.affine), tmp_path / 'brain_T1w.nii.gz')
    assert template_masks.derived_brain_mask(tmp_path / 'brain_T1w.nii.gz') is None
    assert template_masks.with_brain_mask(tmp_path / 'brain_T1w.nii.gz', None, 'x') is None


def test_regions_options_give_the_custom_template_its_derived_mask(cache, tmp_path):
    from qsmflow.atlases.options import regions_options
    from qsmflow.config.settings import CustomAtlas, RegionsConfig

    home = tmp_path / 'tf'
    shutil.copytree(TEMPLATEFLOW_HOME, home)  # the T1w only: no desc-brain mask
    lut = tmp_path / 'labels.tsv'
    lut.write_text('index\tname\n1\tputamen_left\n')
    custom = CustomAtlas(image=MNI_T1W, lut=lut, template_image=MNI_T1W)
    opts = regions_options(RegionsConfig(custom_atlas=custom, templateflow_home=home,
                                         atlases=()))
    derived = template_masks.derived_brain_mask(MNI_T1W)
    assert opts['template_files']['mask'] == derived
    entry = opts['atlases'][-1]
    assert entry['template_mask'] == derived
    assert 'derived by qsmflow' in entry['source']['TemplateMask']


def _write(path, data, vox):
    nb.save(nb.Nifti1Image(np.asarray(data), np.diag([vox, vox, vox, 1.0])), path)
    return str(path)


def test_labels_far_smaller_than_the_atlas_are_a_warning(tmp_path, caplog):
    """A brain registered to a template head (no brain mask): every label comes out at
    about 0.4 of its atlas volume, while the brains are the same size."""
    from qsmflow.interfaces.regions import label_volume_qc
    from qsmflow.qsm import regions

    atlas = np.zeros((40, 40, 40), np.int16)
    atlas[5:15, 5:15, 5:15], atlas[25:35, 5:15, 5:15], atlas[5:15, 25:35, 5:15] = 1, 2, 3
    brain = np.zeros((40, 40, 40), np.uint8)
    brain[2:38, 2:38, 2:38] = 1
    lut = {1: 'putamen_left', 2: 'putamen_right', 3: 'caudate_left'}
    region_set = regions.regions_from_lut(lut)
    files = (_write(tmp_path / 'atlas.nii.gz', atlas, 1.0),
             _write(tmp_path / 'brain.nii.gz', brain, 1.0))
    mask = brain > 0  # the participant's brain: the template's size
    for shrink, warned in ((1.0, False), (0.4, True)):
        side = int(round(10 * shrink ** (1 / 3)))
        native = np.zeros_like(atlas)
        for i, (x, y) in enumerate(((5, 5), (25, 5), (5, 25)), start=1):
            native[x:x + side, y:y + side, 5:5 + side] = i
        rows = regions.region_table(np.zeros(atlas.shape), native, mask, (1, 1, 1), region_set)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            qc = label_volume_qc(rows, region_set, *files, mask, (1, 1, 1), 'custom')
        assert (qc['Warning'] is not None) is warned, qc
        assert ('registration to the template probably failed' in caplog.text) is warned
        assert abs(qc['LabelVolumeRatioMedian'] - side ** 3 / 1000) < 1e-3
    # the same labels in a head half the template's volume are fine: the brains' ratio
    small = np.zeros_like(brain, dtype=bool)
    small[2:38, 2:38, 2:20] = True
    qc = label_volume_qc(rows, region_set, *files, small, (1, 1, 1), 'custom')
    assert qc['Warning'] is None and qc['BrainVolumeRatio'] == 0.5


def test_an_unreadable_template_is_one_line(cache, tmp_path):
    from qsmflow.errors import InputError

    bad = tmp_path / 'tpl_T1w.nii.gz'
    bad.write_bytes(b'not an image')
    with pytest.raises(InputError, match=r'--atlas-template .*tpl_T1w.nii.gz: cannot read it'):
        template_masks.with_brain_mask(bad, None, '--atlas-template')


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from qsmflow.errors import InputError

    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    monkeypatch.setenv('QSMFLOW_CACHE', str(blocker))  # ~/.cache/qsmflow on a read-only home
    with pytest.raises(InputError, match=r'cannot keep the one it derives in .*QSMFLOW_CACHE'):
        template_masks.with_brain_mask(MNI_T1W, None, 'template MNI152NLin2009cAsym')
