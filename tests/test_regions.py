# SPDX-License-Identifier: Apache-2.0
"""Regional statistics (pure functions) and the segmentation interfaces on small images."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsmflow.qsm import region_names, region_qc, regions
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
    assert list(rows[0]) == [*regions.COLUMNS, 'eroded']


def test_erosion_removes_border_voxels():
    labels, chi, mask = _blocks()
    set_ = regions.regions_from_lut({1: 'x_left', 2: 'x_right'})
    full = regions.region_table(chi, labels, mask, (1, 1, 1), set_)[0]
    eroded = regions.region_table(chi, labels, mask, (1, 1, 1), set_, erode=True)[0]
    assert full['n_voxels'] == 108 and eroded['n_voxels'] == 1 * 4 * 4


def test_region_table_averages_the_other_maps_over_the_chi_voxels():
    """R2*, χ⁺ and χ⁻ columns: the mean over exactly the voxels of the χ statistics (brain
    mask, erosion, reference), after the χ columns; NaN for an empty region; none without
    maps."""
    labels, chi, mask = _blocks()
    mask[1:4, 1:7, 6] = False  # the mask takes a slab off the left region
    grid = np.indices(labels.shape).sum(axis=0).astype(float)  # differs voxel by voxel
    maps = {'r2star_mean': 20.0 + grid, 'chi_para_mean': 0.01 * grid,
            'chi_dia_mean': -0.002 * grid}
    set_ = regions.regions_from_lut({1: 'x_left', 2: 'x_right', 3: 'empty'})
    for erode in (False, True):
        rows = regions.region_table(chi, labels, mask, (1, 1, 1), set_, erode=erode,
                                    reference_mask=labels == 2, maps=maps)
        assert list(rows[0]) == [*regions.COLUMNS, *regions.MAP_COLUMNS, 'eroded']
        by = {(r['region'], r['hemisphere']): r for r in rows}
        left = (labels == 1) & mask
        if erode:
            left = ndimage.binary_erosion(labels == 1) & mask
        assert by[('x', 'left')]['n_voxels'] == left.sum() == (16 if erode else 90)
        for key, data in maps.items():
            assert by[('x', 'left')][key] == pytest.approx(data[left].mean())
            assert by[('whole_brain', 'bilateral')][key] == pytest.approx(data[mask].mean())
            assert by[('reference', 'bilateral')][key] == pytest.approx(
                data[(labels == 2) & mask].mean())
            assert np.isnan(by[('empty', 'bilateral')][key])
    nan_r2 = np.where(labels == 2, np.nan, maps['r2star_mean'])  # non-finite voxels skipped
    rows = regions.region_table(chi, labels, mask, (1, 1, 1), set_,
                                maps={'r2star_mean': nan_r2})
    assert list(rows[0])[-2:] == ['r2star_mean', 'eroded']
    assert np.isnan(rows[1]['r2star_mean'])  # x right: all NaN
    assert rows[-1]['r2star_mean'] == pytest.approx(maps['r2star_mean'][(labels == 1) & mask]
                                                    .mean())
    with pytest.raises(ValueError, match='shape of chi'):
        regions.region_table(chi, labels, mask, (1, 1, 1), set_,
                             maps={'r2star_mean': np.zeros((4, 4, 4))})


@pytest.mark.parametrize('n', [1, 7, 10, 37, 200])
def test_trimmed_mean_is_scipys_and_robust(n):
    from scipy import stats

    rng = np.random.default_rng(n)
    values = rng.normal(0.1, 0.02, n)
    assert regions.trimmed_mean(values) == pytest.approx(stats.trim_mean(values, 0.1), abs=1e-12)
    if n >= 10:  # an outlier in the cut tail moves the mean, not the trimmed mean
        spiked = np.r_[values[:-1], 5.0]
        assert abs(regions.trimmed_mean(spiked) - regions.trimmed_mean(values)) < 0.01
        assert spiked.mean() - values.mean() > 4.0 / n
    assert np.isnan(regions.trimmed_mean(np.array([])))
    with pytest.raises(ValueError):
        regions.trimmed_mean(values, proportion=0.5)


def test_boundary_share_counts_face_neighbours_outside():
    cube = np.zeros((9, 9, 9), bool)
    cube[2:7, 2:7, 2:7] = True  # 5³: boundary = all but the 3³ core
    assert regions.boundary_share(cube) == pytest.approx(1 - 27 / 125)
    edge = np.ones((5, 5, 5), bool)  # the image border is outside too
    assert regions.boundary_share(edge) == pytest.approx(1 - 27 / 125)
    diagonal = cube.copy()
    diagonal[1, 1, 1] = True  # touches the cube only at a corner: its own boundary voxel
    assert regions.boundary_share(diagonal) == pytest.approx((98 + 1) / 126)
    assert np.isnan(regions.boundary_share(np.zeros((3, 3, 3), bool)))


def test_table_has_robust_statistics_and_boundary_share():
    labels, chi, mask = _blocks()
    chi = chi.copy()
    chi[2, 3, 3] = 3.0  # one outlier voxel in the left block (108 voxels)
    rows = regions.region_table(chi, labels, mask, (1, 1, 1),
                                regions.regions_from_lut({1: 'x_left', 2: 'x_right'}))
    left = rows[0]
    assert left['mean'] == pytest.approx(0.10 + 2.9 / 108)
    assert left['trimmed_mean'] == pytest.approx(0.10) and left['median'] == pytest.approx(0.10)
    # 3x6x6 block: only the 1x4x4 core has all six neighbours inside
    assert left['boundary_share'] == pytest.approx(1 - 16 / 108)
    assert left['n_labelled'] == 108 and left['mask_coverage'] == 1.0
    # left + right blocks touch: their shared face is not a boundary of the bilateral row
    assert rows[2]['boundary_share'] == pytest.approx(1 - 4 * 4 * 4 / 216)


def test_erosion_never_leaves_fewer_than_the_minimum():
    labels = np.zeros((12, 12, 12), np.int16)
    labels[1:7, 1:7, 1:7] = 1   # 216 voxels → 64 after erosion
    labels[8:11, 8:11, 8:10] = 2  # 18 voxels → 0 after erosion: kept whole
    chi = np.where(labels > 0, 0.1, 0.0)
    set_ = regions.regions_from_lut({1: 'big', 2: 'small'})
    rows = {r['region']: r for r in regions.region_table(chi, labels, labels > 0, (1, 1, 1),
                                                          set_, erode=True)}
    assert rows['big']['n_voxels'] == 64 and rows['big']['eroded'] is True
    assert rows['small']['n_voxels'] == 18 and rows['small']['eroded'] is False
    assert rows['big']['n_labelled'] == 216  # before erosion
    fewer = regions.region_table(chi, labels, labels > 0, (1, 1, 1), set_, erode=True,
                                 min_eroded_voxels=100)
    assert fewer[0]['n_voxels'] == 216 and fewer[0]['eroded'] is False


def _nuclei():
    """Putamen and thalamus (left/right) and a skull label, with a brain mask of them."""
    labels = np.zeros((16, 8, 8), np.int16)
    labels[1:4, 1:7, 1:7] = 1    # putamen_left
    labels[4:7, 1:7, 1:7] = 2    # putamen_right
    labels[8:11, 1:7, 1:7] = 3   # thalamus_left
    labels[11:14, 1:7, 1:7] = 4  # thalamus_right
    labels[15, :, :] = 5         # skull
    lut = {1: 'putamen_left', 2: 'putamen_right', 3: 'thalamus_left', 4: 'thalamus_right',
           5: 'skull'}
    return labels, lut, np.isin(labels, [1, 2, 3, 4])


def _qc(labels, lut, mask, **kwargs):
    rows = regions.region_table(np.zeros(labels.shape), labels, mask, (1, 1, 1),
                                regions.regions_from_lut(lut))
    return region_qc.coverage_qc(rows, **kwargs)


def test_coverage_qc_passes_a_good_table_and_names_what_the_mask_empties():
    labels, lut, mask = _nuclei()
    assert _qc(labels, lut, mask, only_deep=True)['Warning'] is None
    qc = _qc(labels, lut, mask)
    assert qc['OutsideBrainMask'] == ['skull'] and qc['Failure'] is None
    assert qc['DeepNuclei'] == qc['DeepNucleiInMask'] == 4
    mask[1:3] = False  # two thirds of the left putamen leave the mask
    mask[8:11] = False  # all of the left thalamus
    qc = _qc(labels, lut, mask, only_deep=True)
    assert qc['LowCoverage'] == {'putamen left': pytest.approx(1 / 3, abs=1e-3)}
    assert qc['OutsideBrainMask'] == ['thalamus left'] and qc['DeepNucleiInMask'] == 3
    assert 'putamen left (33%)' in qc['Warning'] and 'thalamus left' in qc['Warning']
    assert qc['Failure'] is None


def test_coverage_qc_fails_a_table_without_a_deep_nucleus_in_the_mask():
    labels, lut, _ = _nuclei()
    ring = np.zeros(labels.shape, bool)  # a scalp-ring mask: none of the nuclei
    ring[:, 0, :] = ring[:, -1, :] = True
    qc = _qc(labels, lut, ring)
    assert qc['DeepNucleiInMask'] == 0 and '\n' not in qc['Failure']
    assert 'no deep grey-matter nucleus' in qc['Failure']
    assert '432 labelled voxels of 4 nuclei' in qc['Failure']  # 4 x 3x6x6
    # labels off the field of view (a slab without them): a warning, not a failure
    off = _qc(np.zeros_like(labels), lut, ring, only_deep=True)
    assert off['Failure'] is None and off['OutsideFieldOfView'] == [
        'putamen left', 'putamen right', 'thalamus left', 'thalamus right']
    # a table without deep nuclei at all (a cortical atlas) never fails
    assert _qc(labels, {1: 'cortex_left', 2: 'cortex_right'}, ring)['Failure'] is None


def test_every_builtin_atlas_region_is_a_deep_nucleus():
    from qsmflow.bids_specs import load

    for name, spec in load('atlases')['atlases'].items():
        for region in spec['regions']:
            assert region_names.is_deep_nucleus(region), (name, region)
    for other in ('white_matter', 'cortex', 'csf', 'skull', 'scalp', 'vein', 'fornix',
                  'hypothalamus', 'dentate_gyrus', 'ca1', 'cerebellum'):
        assert not region_names.is_deep_nucleus(other)
    for abbreviated in ('gpe', 'snc', 'stn', 'rn', 'dn', 'pu', 'tha', 'nac'):
        assert region_names.is_deep_nucleus(abbreviated), abbreviated


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


def test_stats_interface_with_and_without_the_other_maps(tmp_path):
    """With R2*, χ⁺ and χ⁻ the table ends with their columns (1/s, ppm; 6 decimals), the
    sidecar describes them; without a map its column is absent and ``AbsentColumns`` says
    why. The χ columns and their order do not change."""
    import pandas as pd

    labels, chi, mask = _blocks()
    inputs = {'in_file': _save(chi.astype(np.float32), tmp_path / 'chi.nii.gz'),
              'in_mask': _save(mask.astype(np.uint8), tmp_path / 'mask.nii.gz'),
              'in_dseg': _save(labels, tmp_path / 'dseg.nii.gz'),
              'in_lut': str(tmp_path / 'dseg.tsv')}
    (tmp_path / 'chi.json').write_text(json.dumps({'QSMReference': 'mean'}))
    (tmp_path / 'dseg.tsv').write_text('index\tname\n1\tnuc_left\n2\tnuc_right\n')
    values = {'in_r2star': np.where(labels == 1, 21.5, 33.25),
              'in_chi_para': np.where(labels == 1, 0.125, 0.0),
              'in_chi_dia': np.where(labels == 1, -0.0625, -0.03125)}
    maps = {k: _save(v.astype(np.float32), tmp_path / f'{k}.nii.gz') for k, v in values.items()}

    def run(name, **extra):
        res = RegionalStats(atlas='custom', **inputs, **extra).run(cwd=tmp_path / name)
        return (pd.read_csv(res.outputs.out_tsv, sep='\t', na_values=['n/a'],
                            keep_default_na=False).set_index(['region', 'hemisphere']),
                json.loads(open(res.outputs.out_json).read()))

    (tmp_path / 'all').mkdir(), (tmp_path / 'none').mkdir(), (tmp_path / 'r2').mkdir()
    table, meta = run('all', **maps)
    assert list(table.reset_index().columns) == [*regions.COLUMNS, *regions.MAP_COLUMNS]
    assert table.loc[('nuc', 'left'), ['r2star_mean', 'chi_para_mean', 'chi_dia_mean']].tolist() \
        == [21.5, 0.125, -0.0625]
    assert table.loc[('nuc', 'bilateral'), 'r2star_mean'] == pytest.approx((21.5 + 33.25) / 2)
    assert table.loc[('reference', 'bilateral'), 'chi_dia_mean'] == pytest.approx(-0.046875)
    assert meta['r2star_mean']['Units'] == '1/s' and 'R2starmap' in meta['r2star_mean'][
        'Description']
    assert meta['chi_para_mean']['Units'] == meta['chi_dia_mean']['Units'] == 'ppm'
    assert 'QSMReferenceValue' in meta['chi_para_mean']['Description']
    assert meta['AbsentColumns'] == {}
    plain, plain_meta = run('none')
    assert list(plain.reset_index().columns) == list(regions.COLUMNS)
    assert plain.equals(table[list(regions.COLUMNS[2:])])  # the chi columns unchanged
    assert set(plain_meta['AbsentColumns']) == set(regions.MAP_COLUMNS)
    assert 'echoes' in plain_meta['AbsentColumns']['r2star_mean']
    assert '--no-chi-separation' in plain_meta['AbsentColumns']['chi_dia_mean']
    assert not set(regions.MAP_COLUMNS) & set(plain_meta)
    only_r2, r2_meta = run('r2', in_r2star=maps['in_r2star'])
    assert list(only_r2.reset_index().columns) == [*regions.COLUMNS, 'r2star_mean']
    assert sorted(r2_meta['AbsentColumns']) == ['chi_dia_mean', 'chi_para_mean']


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


def _stats_inputs(tmp_path, mask):
    labels, lut, _ = _nuclei()
    chi = _save(np.full(labels.shape, 0.05, np.float32), tmp_path / 'chi.nii.gz')
    (tmp_path / 'chi.json').write_text(json.dumps({'QSMReference': 'mean'}))
    (tmp_path / 'lut.tsv').write_text('index\tname\n' + ''.join(
        f'{i}\t{n}\n' for i, n in lut.items()))
    return {'in_file': chi, 'in_mask': _save(mask.astype(np.uint8), tmp_path / 'mask.nii.gz'),
            'in_dseg': _save(labels, tmp_path / 'dseg.nii.gz'),
            'in_lut': str(tmp_path / 'lut.tsv')}


def test_stats_sidecar_describes_every_column_and_records_qc(tmp_path):
    labels, _, mask = _nuclei()
    mask[8:11] = False  # the left thalamus leaves the brain mask
    res = RegionalStats(atlas='custom', erode=True, **_stats_inputs(tmp_path, mask)).run(
        cwd=tmp_path)
    meta = json.loads(open(res.outputs.out_json).read())
    for column in regions.COLUMNS:
        assert meta[column]['Description'], column
    assert meta['trimmed_mean']['Units'] == 'ppm' and '10%' in meta['trimmed_mean']['Description']
    assert meta['QC']['OutsideBrainMask'] == ['thalamus left', 'skull']  # custom: every region
    assert 'Failure' not in meta['QC'] and 'thalamus left' in meta['QC']['Warning']
    assert meta['Erosion']['MinimumVoxels'] == regions.MIN_ERODED_VOXELS
    assert 'skull bilateral' in meta['Erosion']['NotEroded']  # nothing of it in the mask
    header = open(res.outputs.out_tsv).readline().rstrip('\n').split('\t')
    assert header == list(regions.COLUMNS)
    seg = RegionalStats(atlas='segmentations', **_stats_inputs(tmp_path / '..', mask)).run(
        cwd=tmp_path)  # segmentations: deep nuclei only, skull left alone
    assert json.loads(open(seg.outputs.out_json).read())['QC']['OutsideBrainMask'] == [
        'thalamus left']


def test_table_without_deep_nucleus_fails_its_step_with_one_line(tmp_path):
    """A scalp-ring mask: the stats step raises, and the crash file gives the one-line
    reason the participant fails with (:func:`qsmflow.execution.crashes.crash_reason`)."""
    from types import SimpleNamespace

    from nipype.pipeline import engine as pe

    from qsmflow.execution.crashes import crash_reason

    labels, _, _ = _nuclei()
    ring = np.zeros(labels.shape, bool)
    ring[:, 0, :] = ring[:, -1, :] = True
    inputs = _stats_inputs(tmp_path, ring)
    wf = pe.Workflow(name='sub_01_wf', base_dir=str(tmp_path / 'work'))
    wf.add_nodes([pe.Node(RegionalStats(atlas='MyNuclei', **inputs), name='stats')])
    crash_dir = tmp_path / 'crash'
    wf.config['execution'] = {'crashdump_dir': str(crash_dir), 'crashfile_format': 'txt'}
    with pytest.raises(RuntimeError):
        wf.run(plugin='Linear')
    reason = crash_reason(SimpleNamespace(name='sub_01'), sorted(crash_dir.glob('crash-*')))
    assert reason.startswith('RegionCoverageError: atlas MyNuclei: no deep grey-matter '
                             'nucleus of the table has a voxel inside the brain mask')
    assert reason.endswith('(step stats)') and '\n' not in reason


def test_qc_warnings_include_the_tables(tmp_path):
    from types import SimpleNamespace

    from qsmflow import bids_specs
    from qsmflow.execution.runner import qc_warnings

    acq = SimpleNamespace(entities={'subject': '01', 'run': 1})
    chi = bids_specs.output_path(tmp_path, 'chimap', acq.entities)
    chi.parent.mkdir(parents=True)
    chi.with_name(chi.name.replace('.nii.gz', '.json')).write_text(json.dumps(
        {'QSMProcessing': [{'Step': 'masking', 'QC': {'Warning': 'looks like a head'}}]}))
    for atlas, warning, volumes, iron in (
            ('MASSP20', 'no voxel inside the brain mask: caudate left', None, None),
            ('Phantom', None, 'labels at 0.4', 'nuclei read 0.001 ppm'),
            ('custom', None, None, None)):
        path = bids_specs.output_path(tmp_path, 'stats_json', {**acq.entities, 'atlas': atlas})
        path.write_text(json.dumps({'QC': {'Warning': warning,
                                           'LabelVolumes': {'Warning': volumes},
                                           'IronRich': {'Warning': iron}}}))
    other = bids_specs.output_path(tmp_path, 'stats_json',
                                   {'subject': '01', 'run': 2, 'atlas': 'MASSP20'})
    other.write_text(json.dumps({'QC': {'Warning': 'of another run'}}))
    assert qc_warnings(acq, tmp_path) == [
        'masking: looks like a head',
        'atlas MASSP20 table: no voxel inside the brain mask: caudate left',
        'atlas Phantom labels: labels at 0.4', 'atlas Phantom table: nuclei read 0.001 ppm']


def test_iron_rich_nuclei_that_read_near_zero_are_a_warning(tmp_path, caplog):
    """Labels that missed the nuclei (a failed registration: the real-anatomy phantom with
    its template's head as the template mask gave mean Dice 0.05, the pallidum at about 0 ppm)
    or an inverted phase: the table says so in its sidecar and the log."""
    import logging

    chi = np.zeros((12, 12, 12))
    labels = np.zeros(chi.shape, np.int16)
    labels[2:5, 2:5, 2:5], labels[7:10, 2:5, 2:5] = 1, 2      # pallidum left/right
    labels[2:5, 7:10, 2:5], labels[7:10, 7:10, 2:5] = 3, 4    # putamen left/right
    lut = {1: 'GPe_L', 2: 'GPe_R', 3: 'Pu_L', 4: 'Pu_R'}
    mask = np.ones(chi.shape, bool)
    img = nb.Nifti1Image(chi.astype(np.float32), np.eye(4))
    for value, warned in ((0.15, False), (0.005, True), (-0.15, True)):
        chi[labels <= 2] = 0.0
        chi[(labels == 1) | (labels == 2)] = value
        chi[(labels == 3) | (labels == 4)] = 0.05
        paths = {}
        for key, data, dtype in (('chi', chi, np.float32), ('mask', mask, np.uint8),
                                 ('dseg', labels, np.int16)):
            paths[key] = tmp_path / f'{key}.nii.gz'
            nb.Nifti1Image(data.astype(dtype), img.affine).to_filename(paths[key])
        (tmp_path / 'chi.json').write_text(json.dumps({'QSMReference': 'mean'}))
        lut_path = tmp_path / 'lut.tsv'
        lut_path.write_text('index\tname\n' + ''.join(f'{i}\t{n}\n' for i, n in lut.items()))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            res = RegionalStats(in_file=str(paths['chi']), in_mask=str(paths['mask']),
                                in_dseg=str(paths['dseg']), in_lut=str(lut_path),
                                atlas='custom').run(cwd=str(tmp_path))
        iron = json.loads(open(res.outputs.out_json).read())['QC']['IronRich']
        assert iron['IronRichNuclei'] == 2, iron
        assert (iron['Warning'] is not None) is warned, (value, iron)
        assert ('iron-rich nuclei read' in caplog.text) is warned


def test_iron_rich_kinds_are_the_priors_paramagnetic_ones():
    from qsmflow.atlases.chi_prior import TYPICAL_CHI_PPM

    assert region_names.IRON_RICH == {k for k, v in TYPICAL_CHI_PPM.items() if v >= 0.1}
