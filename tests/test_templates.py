# SPDX-License-Identifier: Apache-2.0
"""Templates through the real templateflow API, offline: the phantom's own template in a
temporary TEMPLATEFLOW_HOME, and the real MASSP20/SUIT queries against templateflow's
bundled skeleton (0-byte images, real lookup tables)."""
from __future__ import annotations


import nibabel as nb
import numpy as np
import pytest

from qsmflow import bids_specs
from qsmflow.qsm import regions
from qsmflow.atlases import templateflow as templates
from qsmflow.interfaces.regions import read_lut


@pytest.fixture(scope='module')
def phantom_tf_home(tmp_path_factory):
    from qsmflow.phantom.template import write_template

    home = tmp_path_factory.mktemp('templateflow')
    write_template(home, size='tiny')
    return home


@pytest.fixture(scope='module')
def skeleton_tf_home(templateflow_skeleton_home):
    """An empty TEMPLATEFLOW_HOME: templateflow fills it from its bundled skeleton (shared
    with test_prefetch, indexed once per session: conftest.py)."""
    return templateflow_skeleton_home


def test_phantom_template_resolves_through_templateflow(phantom_tf_home, monkeypatch):
    from qsmflow.atlases.specs import resolve_atlases, template_files

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

    monkeypatch.setattr(templates, 'client', lambda home=None: _Client())
    with pytest.raises(templates.TemplateError, match='prefill TEMPLATEFLOW_HOME'):
        templates.get('X', suffix='T1w')


def _regions(**options):
    """The regions section of the run configuration for command-line ``options`` (the
    parser's defaults otherwise)."""
    from qsmflow.cli.config import regions_from_args
    from qsmflow.cli.parser import build_parser

    opts = build_parser().parse_args(['bids', 'out', 'participant'])
    vars(opts).update(options)
    return regions_from_args(opts)


def test_missing_template_skips_registration_with_warning(monkeypatch, capsys):
    from qsmflow.errors import InputError
    from qsmflow.atlases.options import regions_options

    def fail(*args, **kwargs):
        raise templates.TemplateError('offline')

    monkeypatch.setattr(templates, 'get', fail)
    opts = _regions(template='MNI152NLin2009cAsym', atlases=None)
    assert regions_options(opts)['template'] is None
    assert 'registration and atlas tables skipped' in capsys.readouterr().err
    with pytest.raises(InputError, match='offline'):
        regions_options(_regions(template='MNI152NLin2009cAsym',
                                           atlases=['MASSP20']))
    with pytest.raises(InputError, match='unknown atlas'):
        regions_options(_regions(template='MNI152NLin2009cAsym', atlases=['nope']))
    with pytest.raises(InputError, match='go together'):
        regions_options(_regions(atlas='x.nii.gz'))


def _custom_files(tmp_path):
    paths = {}
    for key, name in (('atlas', 'a_dseg.nii.gz'), ('atlas_labels', 'a_dseg.tsv'),
                      ('atlas_template', 'a_T1w.nii.gz')):
        paths[key] = tmp_path / name
        paths[key].write_bytes(b'x')
    # read before any work: the template (a head gets a derived brain mask; here a small
    # skull-stripped image), the labels and their table
    nb.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_filename(
        paths['atlas_template'])
    nb.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4)).to_filename(
        paths['atlas'])
    paths['atlas_labels'].write_text('index\tname\n1\tPu_L\n2\tPu_R\n')
    return paths


def test_custom_atlas_needs_no_templateflow(tmp_path, monkeypatch, capsys):
    """Offline without templates: the default atlases are skipped with a warning, the custom
    atlas (registered to its own image) stays; explicit --atlases stay an error."""
    from qsmflow.errors import InputError
    from qsmflow.atlases.options import regions_options

    def fail(*args, **kwargs):
        raise templates.TemplateError('offline')

    monkeypatch.setattr(templates, 'get', fail)
    files = _custom_files(tmp_path)
    out = regions_options(_regions(template='MNI152NLin2009cAsym', atlases=None,
                                             **files))
    assert out['template'] is None and 'skipped' in capsys.readouterr().err
    (atlas,) = out['atlases']
    assert atlas['name'] == 'custom' and atlas['template_image'] == str(files['atlas_template'])
    assert atlas['source']['LookupTable'] == str(files['atlas_labels'])
    with pytest.raises(InputError, match='offline'):
        regions_options(_regions(template='MNI152NLin2009cAsym',
                                           atlases=['Diedrichsen2009'], **files))
    with pytest.raises(InputError, match='skip-registration'):
        regions_options(_regions(skip_registration=True, **files))


def test_default_atlases_of_absent_templates_are_skipped(phantom_tf_home, monkeypatch, capsys):
    """The registration template is there but not the atlases' templates (MNI, SUIT):
    registration stays, each default atlas is skipped with its own warning."""
    from qsmflow.atlases.options import regions_options

    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(phantom_tf_home))
    out = regions_options(_regions(template='QSMPhantom', template_resolution=3,
                                             atlases=None))
    err = capsys.readouterr().err
    assert out['template'] == 'QSMPhantom' and out['atlases'] == []
    assert 'atlas MASSP20 skipped' in err and 'atlas Diedrichsen2009 skipped' in err
    # the file each lacks, named, and how to prefill the folder offline
    assert 'cannot get templateflow tpl-SUIT_atlas-Diedrichsen2009_dseg.nii.gz: not in the ' \
        'folder' in err and 'run qsmflow fetch-templates' in err
    out = regions_options(_regions(template='QSMPhantom', template_resolution=3,
                                             atlases=['Phantom']))
    assert [a['name'] for a in out['atlases']] == ['Phantom']


def test_every_atlas_and_template_has_citation_and_licence():
    from qsmflow.interfaces.regions import atlas_metadata

    spec = bids_specs.load('atlases')
    for name, atlas in spec['atlases'].items():
        tpl = spec['templates'][atlas['template']]
        assert atlas['citation'] and atlas['license'] and tpl['citation'] and tpl['license']
        meta = atlas_metadata(name, {'Extra': 1})
        assert meta['Template'] == atlas['template'] and meta['Extra'] == 1
        assert meta['License'] == atlas['license']
        assert meta['TemplateLicense'] == tpl['license']
    assert spec['atlases']['Diedrichsen2009']['license'].startswith('CC BY-NC 3.0')
    assert 'doi:10.1162/imag_a_00560' in spec['atlases']['MASSP20']['citation']


@pytest.mark.slow  # a real antspyx registration (phantom templates, 3 mm)
def test_template_to_template_transform_is_cached(phantom_tf_home, tmp_path, monkeypatch):
    """The SUIT → MNI step: computed once with antspyx (from the identity), then read from
    the cache with a record of how it was made."""
    import json
    import os
    from pathlib import Path

    from qsmflow.atlases.transforms import cached_template_transform

    monkeypatch.setenv('QSMFLOW_CACHE', str(tmp_path))
    image = str(phantom_tf_home / 'tpl-QSMPhantom' / 'tpl-QSMPhantom_res-03_T1w.nii.gz')
    warp, affine = cached_template_transform(image, image, 'Self', 1)
    assert os.path.dirname(warp) == str(tmp_path / 'xfm')
    assert os.path.basename(warp).startswith('from-Self_to-QSMPhantom_')
    stamp = os.stat(warp).st_mtime_ns, os.stat(affine).st_mtime_ns
    again = cached_template_transform(image, image, 'Self', 1)
    assert again == (warp, affine)
    assert (os.stat(warp).st_mtime_ns, os.stat(affine).st_mtime_ns) == stamp
    record = json.loads(Path(warp.replace('_warp.nii.gz', '.json')).read_text())
    assert record['Settings']['initial_transform'] == 'Identity'
    assert record['From'] == 'Self' and record['To'] == 'QSMPhantom'


def test_transform_cache_key_follows_contents_and_is_locked(tmp_path, monkeypatch):
    """The key changes with a template's contents (not its path); concurrent requests for
    one transform compute it once (file lock), the others wait and read it."""
    import threading
    import time
    from pathlib import Path

    from qsmflow.atlases import transforms as registration

    monkeypatch.setenv('QSMFLOW_CACHE', str(tmp_path / 'cache'))
    a, b, c = (tmp_path / n for n in ('tpl-A_T1w.nii.gz', 'tpl-B_T1w.nii.gz', 'copy.nii.gz'))
    a.write_bytes(b'template a')
    b.write_bytes(b'template b')
    c.write_bytes(b'template a')
    key = registration.template_transform_key(a, b, 'A')
    assert key.startswith('from-A_to-B_')
    assert registration.template_transform_key(c, b, 'A') == key
    b.write_bytes(b'template b, new release')
    assert registration.template_transform_key(a, b, 'A') != key

    calls = []

    def fake_register(fixed, moving, out_dir, nthreads=1, fixed_mask=None):
        calls.append((fixed, moving))
        time.sleep(0.5)
        for name in ('warp.nii.gz', 'affine.mat', 'inverse_warp.nii.gz'):
            (Path(out_dir) / name).write_text(name)
        return {'warp': f'{out_dir}/warp.nii.gz', 'affine': f'{out_dir}/affine.mat',
                'inverse_warp': f'{out_dir}/inverse_warp.nii.gz', 'version': 'test'}

    monkeypatch.setattr(registration, 'register_templates', fake_register)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        registration.cached_template_transform(str(a), str(b), 'A'))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    warp, affine = results[0]
    assert Path(warp).read_text() == 'warp.nii.gz'
    assert Path(affine).read_text() == 'affine.mat'
