# SPDX-License-Identifier: Apache-2.0
"""Regional statistics (pure functions) and the segmentation interfaces on small images."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow import regions
from qsmflow.interfaces.regions import RegionalStats, ResampleSegmentation, read_lut


def _blocks():
    labels = np.zeros((8, 8, 8), np.int16)
    labels[1:4, 1:7, 1:7] = 1
    labels[4:7, 1:7, 1:7] = 2
    chi = np.where(labels == 1, 0.10, np.where(labels == 2, 0.20, 0.0))
    return labels, chi, labels > 0


@pytest.mark.parametrize('name,expected', [
    ('left-caudate', ('caudate', 'left')), ('Right_Dentate', ('dentate', 'right')),
    ('putamen_left', ('putamen', 'left')), ('rh-thalamus', ('thalamus', 'right')),
    ('third-ventricle', ('third_ventricle', 'bilateral')), ('fornix', ('fornix', 'bilateral')),
])
def test_split_hemisphere(name, expected):
    assert regions.split_hemisphere(name) == expected


def test_region_table_exact_values_and_rows():
    labels, chi, mask = _blocks()
    rows = regions.region_table(chi, labels, mask, (1.0, 1.0, 2.0),
                                regions.regions_from_lut({1: 'x_left', 2: 'x_right'}),
                                reference_mask=mask)
    by = {(r['region'], r['hemisphere']): r for r in rows}
    assert by[('x', 'left')]['mean'] == pytest.approx(0.10)
    assert by[('x', 'right')]['p95'] == pytest.approx(0.20)
    assert by[('x', 'bilateral')]['n_voxels'] == 216
    assert by[('x', 'bilateral')]['volume_mm3'] == pytest.approx(432.0)
    assert by[('whole_brain', 'bilateral')]['mean'] == pytest.approx(0.15)
    assert ('reference', 'bilateral') in by
    assert list(rows[0]) == list(regions.COLUMNS)


def test_erosion_removes_border_voxels():
    labels, chi, mask = _blocks()
    set_ = regions.regions_from_lut({1: 'x_left', 2: 'x_right'})
    full = regions.region_table(chi, labels, mask, (1, 1, 1), set_)[0]
    eroded = regions.region_table(chi, labels, mask, (1, 1, 1), set_, erode=True)[0]
    assert full['n_voxels'] == 108 and eroded['n_voxels'] == 1 * 4 * 4


def test_region_set_merges_and_unknown_labels():
    lut = {1: 'left-a', 2: 'right-a', 3: 'left-b', 4: 'right-b'}
    rows = regions.regions_from_set({'ab': ['left-a', 'left-b', 'right-a', 'right-b']}, lut)
    assert [r['labels'] for r in rows] == [[1, 3], [2, 4], [1, 2, 3, 4]]
    with pytest.raises(ValueError, match='not in the atlas'):
        regions.regions_from_set({'c': ['left-c']}, lut)


def test_resample_labels_through_rotated_affines():
    """Labels written on a rotated, shifted, coarser grid come back on the χ grid."""
    labels, _, _ = _blocks()
    fine_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    coarse = labels[::2, ::2, ::2]
    coarse_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    back = regions.resample_labels(coarse, coarse_aff, fine_aff, labels.shape)
    assert regions.dice(back == 1, labels == 1) > 0.6
    turned = np.rot90(labels, k=1, axes=(0, 1))  # turned[i, j, k] = labels[j, 7 - i, k]
    turned_aff = np.array([[0, 1, 0, 0], [-1, 0, 0, 7], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    out = regions.resample_labels(turned, turned_aff, fine_aff, labels.shape)
    assert np.array_equal(out, labels)


def _save(data, path, affine=None):
    nb.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine).to_filename(path)
    return str(path)


def test_interfaces_resample_and_stats(tmp_path):
    labels, chi, mask = _blocks()
    seg_aff = np.eye(4)  # the segmentation grid starts one voxel further along x
    seg_aff[0, 3] = 1.0
    seg = _save(labels[1:].astype(np.int16), tmp_path / 'seg_dseg.nii.gz', seg_aff)
    chi_path = _save(chi.astype(np.float32), tmp_path / 'chi.nii.gz')
    (tmp_path / 'chi.json').write_text(json.dumps({'QSMReference': 'mean'}))
    mask_path = _save(mask.astype(np.uint8), tmp_path / 'mask.nii.gz')
    (tmp_path / 'seg_dseg.tsv').write_text('index\tname\n1\tnuc_left\n2\tnuc_right\n')
    res = ResampleSegmentation(in_file=seg, reference=chi_path).run(cwd=tmp_path)
    back = np.asarray(nb.load(res.outputs.out_file).dataobj)
    assert np.array_equal(back, labels)
    stats = RegionalStats(in_file=chi_path, in_mask=mask_path, in_dseg=res.outputs.out_file,
                          in_lut=str(tmp_path / 'seg_dseg.tsv'), atlas='custom').run(cwd=tmp_path)
    table = stats.outputs.out_tsv
    lines = open(table).read().splitlines()
    assert lines[0].split('\t') == list(regions.COLUMNS)
    assert any(ln.startswith('nuc\tleft\t108\t108.00\t0.100000') for ln in lines)
    meta = json.loads(open(stats.outputs.out_json).read())
    assert meta['mean']['Units'] == 'ppm' and meta['QSMReference'] == 'mean'
    assert read_lut(tmp_path / 'seg_dseg.tsv') == {1: 'nuc_left', 2: 'nuc_right'}


def test_find_segmentation(tmp_path):
    from qsmflow.workflows.regions import find_segmentation

    anat = tmp_path / 'sub-01' / 'ses-a' / 'anat'
    anat.mkdir(parents=True)
    for name in ('sub-01_ses-a_run-1_dseg.nii.gz', 'sub-01_ses-a_run-2_dseg.nii.gz'):
        (anat / name).write_bytes(b'')
    assert find_segmentation(tmp_path, {'subject': '02'}) is None
    with pytest.raises(FileNotFoundError):
        find_segmentation(tmp_path, {'subject': '01', 'session': 'a'})
    (tmp_path / 'dseg.tsv').write_text('index\tname\n1\ta\n')
    img, lut = find_segmentation(tmp_path, {'subject': '01', 'session': 'a', 'run': 2})
    assert img.endswith('run-2_dseg.nii.gz') and lut == str(tmp_path / 'dseg.tsv')
