# SPDX-License-Identifier: Apache-2.0
"""Templates through the real templateflow API, offline: the phantom's own template in a
temporary TEMPLATEFLOW_HOME, and the real MASSP20/SUIT queries against templateflow's
bundled skeleton (0-byte images, real lookup tables)."""
from __future__ import annotations

import argparse

import pytest

from qsmflow import bids_specs, regions, templates
from qsmflow.interfaces.regions import read_lut


@pytest.fixture(scope='module')
def phantom_tf_home(tmp_path_factory):
    from qsmflow.phantom.template import write_template

    home = tmp_path_factory.mktemp('templateflow')
    write_template(home, size='tiny')
    return home


@pytest.fixture(scope='module')
def skeleton_tf_home(tmp_path_factory):
    """An empty TEMPLATEFLOW_HOME: templateflow fills it from its bundled skeleton."""
    return tmp_path_factory.mktemp('tf_skeleton')


def test_phantom_template_resolves_through_templateflow(phantom_tf_home, monkeypatch):
    from qsmflow.workflows.registration import resolve_atlases, template_files

    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(phantom_tf_home))
    files = template_files('QSMPhantom', 3)
    assert files['image'].endswith('tpl-QSMPhantom_res-03_T1w.nii.gz')
    assert files['mask'].endswith('tpl-QSMPhantom_res-03_desc-brain_mask.nii.gz')
    spec = bids_specs.load('atlases')['atlases']['Phantom']
    (atlas,) = resolve_atlases('QSMPhantom', ['Phantom'])
    assert atlas['image'].endswith('res-03_atlas-Phantom_dseg.nii.gz') and atlas['via'] is None
    rows = regions.regions_from_set(spec['regions'], read_lut(atlas['lut']))
    assert {r['region'] for r in rows} >= {'globus_pallidus', 'dentate_nucleus'}


@pytest.mark.parametrize('template,query', [
    ('MNI152NLin2009cAsym', {'resolution': 2, 'suffix': 'T1w', 'extension': '.nii.gz'}),
    ('MNI152NLin2009cAsym', {'resolution': 2, 'suffix': 'mask', 'desc': 'brain',
                             'extension': '.nii.gz'}),
    ('SUIT', {'suffix': 'T1w', 'extension': '.nii.gz'}),
])
def test_real_template_queries_resolve_offline(skeleton_tf_home, monkeypatch, template, query):
    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(skeleton_tf_home))
    assert len(templates.query(template, **query)) == 1


@pytest.mark.parametrize('name', ['MASSP20', 'Diedrichsen2009'])
def test_real_atlas_queries_and_region_sets(skeleton_tf_home, monkeypatch, name):
    """The atlases.json queries find exactly one image and one lookup table, and every
    label name of the region set exists in templateflow's real lookup table."""
    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(skeleton_tf_home))
    spec = bids_specs.load('atlases')['atlases'][name]
    (image,) = templates.query(spec['template'], **spec['query'])
    (lut,) = templates.query(spec['template'], **spec['lut_query'])
    assert image.name.endswith('_dseg.nii.gz') and lut.stat().st_size > 0
    rows = regions.regions_from_set(spec['regions'], read_lut(lut))
    hemis = {(r['region'], r['hemisphere']) for r in rows}
    for region in spec['regions']:
        assert {(region, 'left'), (region, 'right'), (region, 'bilateral')} <= hemis
    assert spec['citation'] and spec['license']


def test_massp20_region_set_merges_pallidum(skeleton_tf_home, monkeypatch):
    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(skeleton_tf_home))
    spec = bids_specs.load('atlases')['atlases']['MASSP20']
    (lut,) = templates.query(spec['template'], **spec['lut_query'])
    rows = regions.regions_from_set(spec['regions'], read_lut(lut))
    gp = next(r for r in rows if r['region'] == 'globus_pallidus' and r['hemisphere'] == 'left')
    assert gp['labels'] == [9, 11]  # GPi + GPe


def test_placeholder_gives_offline_hint(tmp_path, monkeypatch):
    placeholder = tmp_path / 'tpl-X_T1w.nii.gz'
    placeholder.write_bytes(b'')

    class _Client:
        def get(self, template, **entities):
            return [placeholder]

    monkeypatch.setattr(templates, 'client', _Client)
    with pytest.raises(templates.TemplateError, match='prefill TEMPLATEFLOW_HOME'):
        templates.get('X', suffix='T1w')


def test_missing_template_skips_registration_with_warning(monkeypatch, capsys):
    from qsmflow.inputs import InputError
    from qsmflow.regions_config import regions_options

    def fail(*args, **kwargs):
        raise templates.TemplateError('offline')

    monkeypatch.setattr(templates, 'get', fail)
    opts = argparse.Namespace(template='MNI152NLin2009cAsym', atlases=None)
    assert regions_options(opts)['template'] is None
    assert 'registration and atlas tables skipped' in capsys.readouterr().err
    with pytest.raises(InputError, match='offline'):
        regions_options(argparse.Namespace(template='MNI152NLin2009cAsym',
                                           atlases=['MASSP20']))
    with pytest.raises(InputError, match='unknown atlas'):
        regions_options(argparse.Namespace(template='MNI152NLin2009cAsym', atlases=['nope']))
    with pytest.raises(InputError, match='go together'):
        regions_options(argparse.Namespace(atlas='x.nii.gz'))


def test_template_to_template_transform_is_cached(phantom_tf_home, tmp_path, monkeypatch):
    """The SUIT → MNI step: computed once with antspyx, then read from the cache."""
    from qsmflow.workflows.registration import cached_template_transform

    monkeypatch.setenv('QSMFLOW_CACHE', str(tmp_path))
    image = str(phantom_tf_home / 'tpl-QSMPhantom' / 'tpl-QSMPhantom_res-03_T1w.nii.gz')
    warp, affine = cached_template_transform(image, image, 'Self', 1)
    stamp = (tmp_path / 'xfm').stat().st_mtime_ns, __import__('os').stat(warp).st_mtime_ns
    again = cached_template_transform(image, image, 'Self', 1)
    assert again == (warp, affine)
    assert __import__('os').stat(warp).st_mtime_ns == stamp[1]
