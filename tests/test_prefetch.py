# SPDX-License-Identifier: Apache-2.0
"""``qsmflow fetch-templates`` (:mod:`qsmflow.atlases.prefetch`) and the container recipe.

- Every prefetch query resolves, offline, against templateflow's bundled index in an empty
  ``TEMPLATEFLOW_HOME``, to exactly the one file a run needs.
- The prefetch list covers every templateflow query the run-time code makes: the queries
  are recorded from :func:`qsmflow.atlases.options.regions_options` (the participant run's
  own code path) for every atlas of ``bids_specs/atlases.json``, so an atlas added there
  and not prefetched fails here.
- The command works through the CLI; a fetch without network ends in one line and exit 1.
- The Dockerfile installs qsmflow from a wheel of the repository, as CI's ``pip install .``
  does, and prefetches with ``qsmflow fetch-templates`` into ``/templateflow``.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qsmflow import bids_specs
from qsmflow.atlases import prefetch
from qsmflow.cli import main
from qsmflow.atlases import templateflow as templates

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tf_home(templateflow_skeleton_home):
    """An empty TEMPLATEFLOW_HOME: templateflow fills it from its bundled skeleton (0-byte
    image placeholders, real lookup tables); indexed once for the session (conftest.py)."""
    return templateflow_skeleton_home


@pytest.fixture
def offline(tf_home, monkeypatch):
    """TEMPLATEFLOW_HOME = ``tf_home`` without network: every HTTP request is recorded and
    fails as an unreachable host does. Downloaded or damaged files are reset afterwards."""
    import requests

    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(tf_home))
    monkeypatch.setenv('TEMPLATEFLOW_AUTOUPDATE', '0')
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise requests.ConnectionError(f'Failed to resolve {url.split("/")[2]} '
                                       '(Name or service not known)')

    monkeypatch.setattr(requests, 'get', no_network)
    templates.client().cache.ensure()  # the bundled skeleton, before noting placeholders
    placeholders = [p for p in tf_home.rglob('*') if p.is_file() and p.stat().st_size == 0]
    yield calls
    for path in placeholders:
        path.write_bytes(b'')


def _runtime_queries(monkeypatch, argv) -> set:
    """Every templateflow query ``qsmflow BIDS OUT participant *argv`` makes before building
    its workflow (:func:`qsmflow.atlases.options.regions_options`), recorded at
    :func:`qsmflow.atlases.templateflow.get`, resolved offline (nothing is downloaded)."""
    from qsmflow.atlases.options import regions_options
    from qsmflow.cli.config import regions_from_args
    from qsmflow.cli.parser import build_parser

    recorded = set()

    def recording_get(template, home=None, **entities):
        recorded.add(prefetch.Query.make(template, entities, '').key)
        found = templates.query(template, home=home, **entities)
        if len(found) != 1:
            raise templates.TemplateError(f'{template} {entities} matched {len(found)} files')
        return found[0]

    monkeypatch.setattr(templates, 'get', recording_get)
    opts = build_parser().parse_args(['bids', 'out', 'participant', *argv])
    out = regions_options(regions_from_args(opts))
    assert out['template'], 'the run-time code skipped registration'
    return recorded


def _prefetch_resolutions(template: str) -> list[int]:
    return sorted(dict(q.entities)['resolution'] for q in prefetch.plan()
                  if q.template == template and dict(q.entities)['suffix'] == 'T1w'
                  and 'resolution' in dict(q.entities))


def test_every_prefetch_query_resolves_offline(offline, tf_home):
    queries = prefetch.plan()
    resolved, problems = prefetch.resolve(queries)
    assert problems == []
    assert [r.query for r in resolved] == queries  # all of them, each to exactly one file
    for item in resolved:
        (path,) = item.files
        assert path.is_relative_to(tf_home) and f'tpl-{item.query.template}' in path.name
    # the list: MNI T1w + brain mask at 1 and 2 mm, MASSP20, SUIT + Diedrichsen2009
    names = {p.name for r in resolved for p in r.files}
    for res in ('01', '02'):
        assert f'tpl-MNI152NLin2009cAsym_res-{res}_T1w.nii.gz' in names
        assert f'tpl-MNI152NLin2009cAsym_res-{res}_desc-brain_mask.nii.gz' in names
    assert {'tpl-MNI152NLin2009cAsym_res-01_atlas-MASSP20_dseg.nii.gz',
            'tpl-MNI152NLin2009cAsym_res-01_atlas-MASSP20_dseg.tsv', 'tpl-SUIT_T1w.nii.gz',
            'tpl-SUIT_atlas-Diedrichsen2009_dseg.nii.gz',
            'tpl-SUIT_atlas-Diedrichsen2009_dseg.tsv'} <= names
    assert offline == []  # listing needs no network


def test_prefetch_covers_the_default_run(offline, monkeypatch):
    runtime = _runtime_queries(monkeypatch, [])
    planned = {q.key for q in prefetch.plan()}
    target = prefetch.Query.make('MNI152NLin2009cAsym',
                                 {'resolution': 2, **prefetch.TEMPLATE_IMAGE_QUERY}, '')
    assert target.key in runtime  # the recorder saw the run's registration target
    assert runtime <= planned, f'not prefetched: {sorted(runtime - planned)}'


def test_prefetch_covers_every_atlas_at_every_prefetched_resolution(offline, monkeypatch):
    """All atlases of atlases.json (but the demo's), at each resolution prefetched for the
    default template: what the run asks for is in the prefetch list."""
    names = sorted(prefetch.atlas_specs())
    template, default_res = prefetch.run_defaults()
    resolutions = _prefetch_resolutions(template)
    assert default_res in resolutions and len(names) >= 2
    planned = {q.key for q in prefetch.plan()}
    for res in resolutions:
        runtime = _runtime_queries(monkeypatch, ['--atlases', *names,
                                                 '--template-resolution', str(res)])
        assert runtime <= planned, f'res {res}, not prefetched: {sorted(runtime - planned)}'


def test_an_atlas_added_to_atlases_json_is_prefetched(offline, monkeypatch):
    """The list follows bids_specs/atlases.json: a new atlas (here in a third template)
    is prefetched with its template image, and what the run asks for is covered."""
    spec = json.loads(json.dumps(bids_specs.load('atlases')))
    spec['atlases']['Schaefer100'] = {
        'template': 'MNI152NLin6Asym',
        'query': {'resolution': 2, 'atlas': 'Schaefer2018', 'desc': '100Parcels7Networks',
                  'suffix': 'dseg', 'extension': '.nii.gz'},
        'lut_query': {'atlas': 'Schaefer2018', 'desc': '100Parcels7Networks',
                      'suffix': 'dseg', 'extension': '.tsv'},
        'template_query': {'resolution': 1, 'suffix': 'T1w', 'extension': '.nii.gz'},
        'regions': {}}
    real_load = bids_specs.load
    monkeypatch.setattr(bids_specs, 'load',
                        lambda name: spec if name == 'atlases' else real_load(name))
    planned = prefetch.plan()
    assert {q.template for q in planned} >= {'MNI152NLin6Asym'}
    runtime = _runtime_queries(monkeypatch, ['--atlases', 'Schaefer100'])
    assert runtime <= {q.key for q in planned}
    assert prefetch.resolve(planned)[1] == []


def test_only_the_demo_template_is_left_out(offline):
    from qsmflow.phantom.template import TEMPLATE

    every = bids_specs.load('atlases')['atlases']
    left_out = set(every) - set(prefetch.atlas_specs())
    assert left_out == {n for n, s in every.items() if s['template'] == TEMPLATE}
    assert TEMPLATE not in templates.client().templates()  # written by `qsmflow demo`


def test_dry_run_through_the_cli(offline, tf_home, capsys):
    from qsmflow.cli import main

    assert main(['fetch-templates', '--dry-run']) == 0
    out = capsys.readouterr().out
    for query in prefetch.plan():
        assert str(query) in out
    for path in ('tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz',
                 'tpl-SUIT/tpl-SUIT_atlas-Diedrichsen2009_dseg.nii.gz'):
        assert re.search(re.escape(path) + r'\s+\(to fetch\)', out)
    assert 'nothing downloaded' in out and offline == []
    assert (tf_home / 'tpl-SUIT' / 'tpl-SUIT_T1w.nii.gz').stat().st_size == 0
    assert main(['fetch-templates', '--list']) == 0  # the alias


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('qsmflow: error: ') and 'Traceback' not in err
    return lines[0]


def test_fetch_without_network_is_one_line_and_exit_1(offline, tf_home, capsys):
    from qsmflow.cli import main

    assert main(['fetch-templates']) == 1
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert 'cannot download tpl-MNI152NLin2009cAsym/' in line and 'no network?' in line
    assert 'Failed to resolve templateflow.s3.amazonaws.com' in line
    assert f'copy its TEMPLATEFLOW_HOME folder to {tf_home}' in line
    assert offline and offline[0].startswith('https://templateflow.s3.amazonaws.com/tpl-')
    first = prefetch.resolve(prefetch.plan())[0][0].files[0]
    assert first.stat().st_size == 0  # still a placeholder: the next run starts over


class _Response:
    """A streamed HTTP response: ``chunks`` of bytes, then ``error`` if given."""

    def __init__(self, body: bytes, *, cut: int | None = None, error=None, status: int = 200):
        self.headers = {'content-length': str(len(body))}
        self.status_code = status
        self._body, self._cut, self._error = body, cut, error

    def iter_content(self, size):
        body = self._body if self._cut is None else self._body[:self._cut]
        for i in range(0, len(body), size):
            yield body[i:i + size]
        if self._error is not None:
            raise self._error


def test_interrupted_download_is_reset_and_reported(offline, monkeypatch, capsys):
    import requests

    body = gzip.compress(os.urandom(5000))
    monkeypatch.setattr(requests, 'get', lambda url, **kw: _Response(
        body, cut=2000, error=requests.ConnectionError('Connection reset by peer')))
    assert main(['fetch-templates']) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert 'cannot download' in line and 'Connection reset by peer' in line
    first = prefetch.resolve(prefetch.plan())[0][0].files[0]
    assert first.stat().st_size == 0  # not left half-written (templateflow would keep it)


def test_interrupt_during_download_leaves_a_placeholder(offline, monkeypatch, capsys):
    import requests

    from qsmflow.cli import main

    body = gzip.compress(os.urandom(5000))
    monkeypatch.setattr(requests, 'get', lambda url, **kw: _Response(
        body, cut=3000, error=KeyboardInterrupt()))
    assert main(['fetch-templates']) == 130  # Ctrl-C: the CLI's interrupted exit
    assert capsys.readouterr().err.strip() == 'qsmflow: interrupted'
    first = prefetch.resolve(prefetch.plan())[0][0].files[0]
    assert first.stat().st_size == 0


def test_server_refusal_is_not_called_a_network_problem(offline, monkeypatch, capsys):
    import requests

    monkeypatch.setattr(requests, 'get', lambda url, **kw: _Response(b'', status=404))
    assert main(['fetch-templates']) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert 'status code 404' in line and 'pip install -U templateflow' in line
    assert 'no network' not in line


def test_truncated_file_is_fetched_again_and_all_files_come(offline, monkeypatch, capsys):
    import requests

    body = gzip.compress(b'\x00' * 4096)
    served = []

    def serve(url, **kwargs):
        served.append(url.rsplit('/', 1)[1])
        return _Response(body)

    monkeypatch.setattr(requests, 'get', serve)
    resolved = prefetch.resolve(prefetch.plan())[0]
    broken = resolved[0].files[0]
    broken.write_bytes(body[:len(body) // 2])  # an earlier download that was cut short
    assert main(['fetch-templates']) == 0
    out = capsys.readouterr().out
    assert 'is incomplete (interrupted download?): fetching again' in out
    assert broken.name in served and broken.read_bytes() == body
    images = {f.name for r in resolved for f in r.files if f.name.endswith('.nii.gz')}
    assert set(served) == images  # every image once; lookup tables came with the index
    assert main(['fetch-templates']) == 0 and len(served) == len(images)  # nothing left to fetch
    assert '0 files fetched' in capsys.readouterr().out


def test_unknown_template_and_resolution_are_one_line_errors(offline, capsys):
    assert main(['fetch-templates', '--template', 'NoSuchTemplate']) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "unknown template 'NoSuchTemplate'" in line and 'MNI152NLin6Asym' in line
    assert main(['fetch-templates', '--template-resolution', '7']) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert 'resolution 1, 2: pass --template-resolution accordingly' in line
    assert offline == []  # refused before any download


def test_unusable_templateflow_home_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / 'file').write_bytes(b'')
    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(tmp_path / 'file' / 'templateflow'))
    assert main(['fetch-templates', '--dry-run']) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert 'cannot use TEMPLATEFLOW_HOME' in line and 'set TEMPLATEFLOW_HOME to a writable' in line


def test_console_script_without_network(tf_home):
    """The installed command, in its own process, through a refused proxy: no network."""
    env = {**os.environ, 'TEMPLATEFLOW_HOME': str(tf_home), 'TEMPLATEFLOW_AUTOUPDATE': '0',
           'HTTPS_PROXY': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9',
           'NO_PROXY': '', 'no_proxy': ''}
    proc = subprocess.run([sys.executable, '-m', 'qsmflow', 'fetch-templates'], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr)
    assert 'no network?' in line and 'ProxyError' in line


@pytest.mark.slow  # a real antspyx registration (phantom templates, 3 mm)
def test_transforms_are_precomputed_into_the_run_time_cache(tmp_path, monkeypatch):
    """--transforms: the SUIT(-like) → template transform lands where a run looks for it
    (phantom templates, offline); a second call finds it cached."""
    from qsmflow.phantom.template import write_cerebellar_template, write_template
    from qsmflow.atlases.transforms import cached_template_transform, transform_cache

    home, cache = tmp_path / 'tf', tmp_path / 'cache'
    write_template(home, size='tiny')
    write_cerebellar_template(home, size='tiny')
    monkeypatch.setenv('TEMPLATEFLOW_HOME', str(home))
    monkeypatch.setenv('QSMFLOW_CACHE', str(cache))
    ((warp, affine),) = prefetch.precompute_transforms('QSMPhantom', 3, ['Diedrichsen2009'],
                                                       echo=lambda *a: None)
    assert Path(warp).parent == transform_cache() and Path(warp).stat().st_size > 0
    stamp = Path(warp).stat().st_mtime_ns
    moving = templates.get('SUIT', suffix='T1w', extension='.nii.gz')
    fixed = templates.get('QSMPhantom', resolution=3, suffix='T1w', extension='.nii.gz')
    assert cached_template_transform(str(moving), str(fixed), 'SUIT') == (warp, affine)
    assert Path(warp).stat().st_mtime_ns == stamp  # read from the cache, not recomputed

    monkeypatch.setenv('QSMFLOW_CACHE', str(tmp_path / 'warp.nii.gz'))  # a file: unusable
    (tmp_path / 'warp.nii.gz').write_bytes(b'')
    with pytest.raises(prefetch.PrefetchError, match='set QSMFLOW_CACHE to a writable folder'):
        prefetch.precompute_transforms('QSMPhantom', 3, ['Diedrichsen2009'],
                                       echo=lambda *a: None)


# --- the container recipe ------------------------------------------------------------------

def _dockerfile_stages() -> list[dict]:
    """Stages of the Dockerfile: ``base``, ``name`` and ``steps`` ((INSTRUCTION, args))."""
    joined, buf = [], ''
    for raw in (ROOT / 'Dockerfile').read_text().splitlines():
        line = raw.strip()
        if line.startswith('#') or (not line and not buf):
            continue
        if line.endswith('\\'):
            buf += line[:-1] + ' '
            continue
        joined.append(buf + line)
        buf = ''
    stages = []
    for line in joined:
        instr, _, args = line.partition(' ')
        if instr.upper() == 'FROM':
            words = [w for w in args.split() if not w.startswith('--')]
            name = words[2] if len(words) == 3 and words[1].lower() == 'as' else None
            stages.append({'base': words[0], 'name': name, 'steps': []})
        else:
            stages[-1]['steps'].append((instr.upper(), args.strip()))
    return stages


def _lineage(stages, stage) -> list[dict]:
    """``stage`` and the stages it is built FROM, oldest first."""
    by_name = {s['name']: s for s in stages if s['name']}
    chain = [stage]
    while chain[0]['base'] in by_name:
        chain.insert(0, by_name[chain[0]['base']])
    return chain


def _env(chain) -> dict:
    env = {}
    for stage in chain:
        for instr, args in stage['steps']:
            if instr == 'ENV':
                words = shlex.split(args)
                if all('=' in w for w in words):
                    env.update(w.split('=', 1) for w in words)
                else:
                    env[words[0]] = ' '.join(words[1:])
    return env


def _steps(chain, instr):
    return [args for stage in chain for i, args in stage['steps'] if i == instr]


def _copy_from(args):
    """(stage, sources, dest) of ``COPY --from=stage src... dest``, else None."""
    words = args.split()
    flags = dict(w[2:].split('=', 1) for w in words if w.startswith('--') and '=' in w)
    paths = [w for w in words if not w.startswith('--')]
    return (flags.get('from'), paths[:-1], paths[-1]) if 'from' in flags else None


def _ci_install_command() -> str:
    """The install + demo command CI runs: the README line CI's own grep picks."""
    pattern = re.search(r"readme_demo=\$\(grep -E '([^']+)' README\.md",
                        (ROOT / '.ci' / 'run').read_text()).group(1)
    return next(line for line in (ROOT / 'README.md').read_text().splitlines()
                if re.search(pattern, line))


def _wheel_build(stages):
    """The stage that builds the repository's wheel, and the wheel folder."""
    for stage in stages:
        workdir = (_steps([stage], 'WORKDIR') or ['/'])[-1]
        copies_repo = any(a.split()[:1] == ['.'] and a.split()[-1].rstrip('/') ==
                          workdir.rstrip('/') for a in _steps([stage], 'COPY'))
        for run in _steps([stage], 'RUN'):
            match = re.search(r'pip wheel ([^&;]*)', run)
            if copies_repo and match:
                words = match.group(1).split()
                assert '-e' not in words and '--editable' not in words
                assert '.' in words, 'the wheel must be built from the repository root'
                flag = next(w for w in words if w in ('-w', '--wheel-dir'))
                return stage, words[words.index(flag) + 1]
    raise AssertionError('no stage copies the repository and builds its wheel')


def test_dockerfile_installs_qsmflow_as_ci_does():
    """CI installs with ``pip install .`` (a PEP 517 wheel build of the repository); the
    image installs that same wheel and never the source tree."""
    assert re.search(r'pip install \.(\s|$)', _ci_install_command())
    stages = _dockerfile_stages()
    build, wheels = _wheel_build(stages)
    final = stages[-1]
    chain = _lineage(stages, final)
    assert chain[0]['base'] == 'python:3.11-slim' and build not in chain
    copied = [c for c in map(_copy_from, _steps(chain, 'COPY')) if c and c[0] == build['name']]
    assert any(src == [wheels] for _, src, _ in copied)
    installs = [r for r in _steps(chain, 'RUN') if 'pip install' in r]
    assert installs and all(re.search(r'pip install \S*/(qsmflow-)?\*\.whl', r) for r in installs)
    assert not any(a.split()[0] == '.' for a in _steps(chain, 'COPY'))  # no source tree


def test_dockerfile_prefetches_templates_with_qsmflow():
    stages = _dockerfile_stages()
    fetching = [s for s in stages if any('qsmflow fetch-templates' in r
                                         for r in _steps([s], 'RUN'))]
    assert len(fetching) == 1
    tpl_stage = fetching[0]
    tpl_chain = _lineage(stages, tpl_stage)
    assert _env(tpl_chain)['TEMPLATEFLOW_HOME'] == '/templateflow'
    assert any('pip install' in r for r in _steps(tpl_chain, 'RUN'))  # the same install
    final_chain = _lineage(stages, stages[-1])
    assert tpl_stage not in final_chain  # the download tools and logs stay behind
    shared = [s for s in tpl_chain if s in final_chain]
    assert any('pip install' in r for r in _steps(shared, 'RUN')), \
        'the image and the prefetch should run the same installed qsmflow and templateflow'
    env = _env(final_chain)
    assert env['TEMPLATEFLOW_HOME'] == '/templateflow' and env['TEMPLATEFLOW_AUTOUPDATE'] == '0'
    copies = [c for c in map(_copy_from, _steps([stages[-1]], 'COPY')) if c]
    assert (tpl_stage['name'], ['/templateflow'], '/templateflow') in copies
    # the SUIT → MNI transform is computed at build time where a run looks for it
    run = next(r for r in _steps([tpl_stage], 'RUN') if 'qsmflow fetch-templates' in r)
    assert '--transforms' in run
    cache = _env(tpl_chain)['QSMFLOW_CACHE']
    assert env['QSMFLOW_CACHE'] == cache
    assert any(tpl == tpl_stage['name'] and any(cache.startswith(s.rstrip('/') + '/')
                                                or cache == s for s in src)
               for tpl, src, _ in copies)


def test_dockerfile_runs_qsmflow_as_a_non_root_user():
    stages = _dockerfile_stages()
    chain = _lineage(stages, stages[-1])
    users = _steps(chain, 'USER')
    assert users and users[-1] not in ('root', '0') and not users[-1].startswith('0:')
    assert any('useradd' in r and users[-1] in r for r in _steps(chain, 'RUN'))
    assert json.loads(_steps(chain, 'ENTRYPOINT')[-1]) == ['qsmflow']
    env = _env(chain)
    assert env['HOME'] == f'/home/{users[-1]}'  # ~/.cache/qsmflow, ~/.nipype
    assert env['NUMBA_CACHE_DIR'].startswith('/tmp/')  # writable for any user
