# SPDX-License-Identifier: Apache-2.0
"""Regional statistics (pure functions) and the segmentation interfaces on small images."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.qsm import regions
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
    from qsmflow.bids.derivatives import find_segmentation

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


def test_stats_sidecar_names_atlas_template_citation_licence():
    from qsmflow.interfaces.regions import atlas_metadata, stats_sidecar

    meta = stats_sidecar(atlas_metadata('MASSP20', {'TemplateflowQuery': {'atlas': 'MASSP20'}}),
                         'mean', True, [{'Step': 'reference'}])
    atlas = meta['Atlas']
    assert atlas['Name'] == 'MASSP20' and atlas['Template'] == 'MNI152NLin2009cAsym'
    assert 'eLife' in atlas['Citation'] and atlas['License']
    assert atlas['TemplateCitation'].startswith('Fonov') and 'McGill' in atlas['TemplateLicense']
    assert atlas['TemplateflowQuery'] == {'atlas': 'MASSP20'}
    assert meta['ErodedByOneVoxel'] is True and meta['QSMProcessing'] == [{'Step': 'reference'}]
    assert stats_sidecar(atlas_metadata('segmentations'), 'none', False, [])['Atlas'] == {
        'Name': 'segmentations'}


def _node(workflow, name):
    return next(n for n in workflow._get_all_nodes() if n.name == name)


def test_atlas_label_workflows_wire_each_route(tmp_path):
    """Template atlas: inverse subject transform; other-template atlas (SUIT): subject
    transform then the cached template-to-template one; custom: own registration (with
    the optional template mask). Each labels sidecar carries the atlas provenance."""
    from nipype.interfaces.base import isdefined

    from qsmflow.atlases.specs import custom_atlas
    from qsmflow.workflows.registration import init_atlas_labels_wf

    files = {}
    for key in ('image', 'lut', 'template_image', 'template_mask'):
        files[key] = tmp_path / f'{key}.nii.gz'
        files[key].write_bytes(b'x')
    base = {'image': str(files['image']), 'lut': str(files['lut']), 'via': None,
            'source': {'TemplateflowQuery': {'atlas': 'MASSP20'}}}
    plain = init_atlas_labels_wf(atlas={**base, 'name': 'MASSP20'})
    to_native = _node(plain, 'to_native')
    assert to_native.inputs.invert == [True, False]
    assert to_native.inputs.meta['Atlas']['Template'] == 'MNI152NLin2009cAsym'
    via = {'name': 'SUIT', 'moving': str(files['template_image']), 'to': 'MNI152NLin2009cAsym',
           'fixed': str(files['template_mask'])}
    chained = init_atlas_labels_wf(atlas={**base, 'name': 'Diedrichsen2009', 'via': via})
    assert _node(chained, 'to_native').inputs.invert == [True, False, False, False]
    node = _node(chained, 'template_to_template')
    assert (node.inputs.moving, node.inputs.to) == (via['moving'], 'MNI152NLin2009cAsym')
    assert _node(chained, 'to_native').inputs.meta['Atlas']['License'].startswith('CC BY-NC')
    entry = custom_atlas(files)
    own = init_atlas_labels_wf(atlas=entry)
    reg = _node(own, 'register_own')
    assert reg.inputs.template == str(files['template_image'])
    assert reg.inputs.template_mask == str(files['template_mask'])
    assert _node(own, 'to_native').inputs.meta['Atlas']['TemplateMask'] == str(
        files['template_mask'])
    del files['template_mask']
    unmasked = init_atlas_labels_wf(atlas=custom_atlas(files))
    assert not isdefined(_node(unmasked, 'register_own').inputs.template_mask)


def test_connect_regions_custom_atlas_without_template(tmp_path):
    """No registration template (offline): the custom atlas still gets its labels and
    table; atlases of the template are left out; no template registration is built."""
    from types import SimpleNamespace

    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from qsmflow.atlases.specs import custom_atlas
    from qsmflow.workflows.registration import connect_regions

    files = {}
    for key in ('image', 'lut', 'template_image'):
        files[key] = tmp_path / f'{key}.nii.gz'
        files[key].write_bytes(b'x')
    qsm_wf = pe.Workflow(name='qsm_wf')
    qsm_wf.add_nodes([
        pe.Node(niu.IdentityInterface(fields=['magnitude']), name='load_megre'),
        pe.Node(niu.IdentityInterface(fields=['out_mask']), name='brain_mask'),
        pe.Node(niu.IdentityInterface(fields=['chimap', 'mask']), name='outputnode')])
    workflow = pe.Workflow(name='acq_wf')
    workflow.add_nodes([qsm_wf])
    massp = {'name': 'MASSP20', 'image': str(files['image']), 'lut': str(files['lut']),
             'via': None, 'source': {}}
    connect_regions(workflow, qsm_wf, acq=SimpleNamespace(entities={'subject': '01'}),
                    output_dir=str(tmp_path / 'out'),
                    regions_opts={'template': None, 'erode': True,
                                  'atlases': [massp, custom_atlas(files)]})
    names = {node.name for node in workflow._graph.nodes()}
    assert {'atlas_custom_wf', 'regions_custom_wf'} <= names
    assert not names & {'registration_wf', 'atlas_massp20_wf', 'regions_massp20_wf'}
    stats = _node(workflow.get_node('regions_custom_wf'), 'stats')
    assert stats.inputs.erode is True and stats.inputs.atlas == 'custom'
