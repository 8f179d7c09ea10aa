# SPDX-License-Identifier: Apache-2.0
"""``qsmflow fetch-templates``: download every template and atlas file qsmflow uses into
``$TEMPLATEFLOW_HOME``, so that runs work offline (containers, cluster nodes).

The file list is not written down here a second time; it follows from what a run asks
templateflow for:

- the registration template and resolution the command line defaults to (``--template``,
  ``--template-resolution`` of :func:`qsmflow.cli.parser.build_parser`), plus any
  resolution an atlas of that template is defined at (so ``--template-resolution`` can
  match the atlas grid offline), plus templates and resolutions given here;
- for each, the T1w image and brain mask :func:`qsmflow.atlases.specs.template_files`
  fetches;
- every atlas of ``bids_specs/atlases.json`` (its ``query`` and ``lut_query``) and, when it
  lives in another template than the registration target, that template's image
  (``template_query``), as :func:`qsmflow.atlases.specs.resolve_atlases` asks for.
  Atlases of the demo phantom's own template are written by ``qsmflow demo`` and skipped.

Queries are resolved with the same semantics as at run time (:mod:`qsmflow.atlases.templateflow`:
a missing ``desc`` means "no desc entity"), listed offline from templateflow's bundled
index (``--dry-run``) and downloaded through the templateflow API. With ``--transforms``
the template-to-template transforms (SUIT → registration template) are computed once into
``$QSMFLOW_CACHE`` exactly as a run would
(:func:`qsmflow.atlases.transforms.precompute_template_transforms`).

Exit codes: 0 done, 1 a file could not be resolved, downloaded or computed (one line on
stderr naming the problem and the fix), 2 bad invocation.
"""
from __future__ import annotations

import contextlib
import gzip
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_FAILED = 0, 1

#: Files of a registration target, as :func:`qsmflow.atlases.specs.template_files`
#: asks for them (plus ``resolution``); the brain mask is optional there.
TEMPLATE_IMAGE_QUERY = {'suffix': 'T1w', 'extension': '.nii.gz'}
TEMPLATE_MASK_QUERY = {'suffix': 'mask', 'desc': 'brain', 'extension': '.nii.gz'}
#: Image of an atlas's own template when ``atlases.json`` gives no ``template_query``
#: (the default of :func:`qsmflow.atlases.specs.resolve_atlases`).
ATLAS_TEMPLATE_QUERY = TEMPLATE_IMAGE_QUERY


class PrefetchError(RuntimeError):
    """A template file cannot be resolved, downloaded or computed (message: one line)."""


@dataclass(frozen=True)
class Query:
    """One templateflow query, with run-time semantics (``desc`` None: no desc entity).

    Attributes
    ----------
    template : str
        templateflow template identifier.
    entities : tuple of (str, object)
        Sorted query entities, ``desc`` always present.
    purpose : str
        What qsmflow uses the file for (shown in the listing and in errors).
    optional : bool
        True when a run does without it (the template brain mask).
    """

    template: str
    entities: tuple
    purpose: str
    optional: bool = False

    @classmethod
    def make(cls, template: str, entities: dict, purpose: str, optional: bool = False):
        return cls(template, tuple(sorted({'desc': None, **entities}.items())), purpose,
                   optional)

    @property
    def key(self) -> tuple:
        """``(template, entities)``: what identifies the query, whatever it is used for."""
        return (self.template, self.entities)

    @property
    def kwargs(self) -> dict:
        return dict(self.entities)

    def __str__(self) -> str:
        order = {k: i for i, k in enumerate(('resolution', 'atlas', 'desc', 'suffix'))}
        ents = sorted((kv for kv in self.entities if kv[1] is not None),
                      key=lambda kv: (kv[0] == 'extension', order.get(kv[0], 9), kv[0]))
        return f'{self.template} ' + ' '.join(f'{k}={v}' for k, v in ents)


def run_defaults() -> tuple[str, int]:
    """Default ``--template`` and ``--template-resolution`` of ``qsmflow ... participant``."""
    from qsmflow.cli.parser import DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_RESOLUTION

    return DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_RESOLUTION


def atlas_specs() -> dict:
    """Atlases of ``bids_specs/atlases.json`` that come from templateflow (all but the demo
    phantom's, whose template ``qsmflow demo`` writes itself)."""
    from qsmflow import bids_specs
    from qsmflow.phantom.template import TEMPLATE as DEMO_TEMPLATE

    return {name: spec for name, spec in bids_specs.load('atlases')['atlases'].items()
            if spec['template'] != DEMO_TEMPLATE}


def plan(templates=(), resolutions=(), *, specs: dict | None = None) -> list[Query]:
    """Every templateflow query a run may make, without duplicates.

    Parameters
    ----------
    templates : iterable of str
        Registration templates besides the default one.
    resolutions : iterable of int
        Template resolutions besides the default one (for every registration template).
    specs : dict, optional
        Atlas specifications (default: :func:`atlas_specs`).

    Returns
    -------
    list of Query
        Registration targets first, then atlases; a query needed for several purposes
        appears once, with the purposes joined.
    """
    default_template, default_resolution = run_defaults()
    specs = atlas_specs() if specs is None else specs
    targets = list(dict.fromkeys([default_template, *templates]))
    out: list[Query] = []
    for target in targets:
        atlas_res = {spec['query']['resolution'] for spec in specs.values()
                     if spec['template'] == target and 'resolution' in spec['query']}
        for res in sorted({default_resolution, *resolutions, *atlas_res}):
            out.append(Query.make(target, {**TEMPLATE_IMAGE_QUERY, 'resolution': res},
                                  f'registration target {target} (--template-resolution {res})'))
            out.append(Query.make(target, {**TEMPLATE_MASK_QUERY, 'resolution': res},
                                  f'brain mask of {target} (optional)', optional=True))
    for name, spec in specs.items():
        out.append(Query.make(spec['template'], spec['query'], f'atlas {name} labels'))
        out.append(Query.make(spec['template'], spec['lut_query'], f'atlas {name} lookup table'))
        for target in targets:
            if spec['template'] != target:
                out.append(Query.make(
                    spec['template'], spec.get('template_query', ATLAS_TEMPLATE_QUERY),
                    f'{spec["template"]} image, registered to {target} for atlas {name}'))
    merged: dict[tuple, Query] = {}
    for query in out:
        if query.key in merged:
            old = merged[query.key]
            merged[query.key] = Query(old.template, old.entities,
                                      f'{old.purpose}; {query.purpose}',
                                      old.optional and query.optional)
        else:
            merged[query.key] = query
    return list(merged.values())


@dataclass
class Resolved:
    """A query and the files it resolves to in ``TEMPLATEFLOW_HOME``."""

    query: Query
    files: list

    @property
    def missing(self) -> list:
        """Files not downloaded yet (absent or 0-byte templateflow placeholders)."""
        return [f for f in self.files if not f.is_file() or f.stat().st_size == 0]


def templateflow_home() -> Path:
    """The folder templateflow uses now (``$TEMPLATEFLOW_HOME`` or its default)."""
    from qsmflow.atlases import templateflow as templates

    return Path(templates.client().cache.config.root)


def resolve(queries) -> tuple[list[Resolved], list[str]]:
    """Resolve ``queries`` against templateflow's index (offline; nothing is downloaded).

    Returns
    -------
    resolved : list of Resolved
        Queries that match files (exactly one, as a run needs; optional queries that
        match nothing are left out).
    problems : list of str
        One line per query a run could not use: no match, or several.
    """
    from qsmflow.atlases import templateflow as templates

    resolved, problems = [], []
    for query in queries:
        files = templates.query(query.template, **query.kwargs)
        if len(files) == 1:
            resolved.append(Resolved(query, files))
        elif not files and not query.optional:
            problems.append(f'templateflow has no file for {query} ({query.purpose}): '
                            f'{_no_match_fix(query)}')
        elif len(files) > 1:
            names = ', '.join(f.name for f in files)
            problems.append(f'{query} ({query.purpose}) matches {len(files)} files ({names}); '
                            'a run needs exactly one: make the query specific (e.g. add '
                            "'resolution' to the atlas's query or 'template_query' in "
                            'bids_specs/atlases.json)')
    return resolved, problems


def _no_match_fix(query: Query) -> str:
    from qsmflow.atlases import templateflow as templates

    known = templates.client().templates()
    if query.template not in known:
        return (f'unknown template {query.template!r}; templateflow has '
                f'{", ".join(known)}')
    ents = query.kwargs
    if 'resolution' in ents:
        others = {k: v for k, v in ents.items() if k != 'resolution'}
        found = templates.query(query.template, **others)
        res = sorted({int(m.group(1)) for p in found
                      if (m := re.search(r'_res-0*(\d+)_', p.name))})
        if res:
            return (f'{query.template} has this file at resolution '
                    f'{", ".join(map(str, res))}: pass --template-resolution accordingly')
    return 'check the query (bids_specs/atlases.json for atlases)'


def fetch(resolved, *, echo=print) -> tuple[int, int]:
    """Download every missing file of ``resolved`` through the templateflow API.

    Files already present are checked (a truncated ``.gz`` from an interrupted download
    is reset to a placeholder and fetched again). A download that fails leaves its file
    as a 0-byte placeholder, so the next attempt starts over.

    Returns
    -------
    (fetched, present) : tuple of int
        Number of files downloaded and number already complete.

    Raises
    ------
    PrefetchError
        A download failed (no network, server error) or gave an incomplete file.
    """
    from qsmflow.atlases import templateflow as templates

    client = templates.client()
    fetched = present = 0
    for item in resolved:
        for path in item.files:
            if path.is_file() and path.stat().st_size and not _intact(path):
                echo(f'  {relative_to_home(path)} is incomplete (interrupted download?): fetching again')
                _reset(path)
        todo = item.missing
        present += len(item.files) - len(todo)
        if not todo:
            continue
        for path in todo:  # templateflow fails on an absent placeholder: restore it
            if not path.is_file():
                _reset(path)
        echo(f'fetching {item.query} ({item.query.purpose})')
        try:
            with contextlib.redirect_stderr(sys.stdout):  # progress is not an error
                client.get(item.query.template, **item.query.kwargs)
        except BaseException as exc:  # Ctrl-C too: no half-written file is left
            for path in todo:
                with contextlib.suppress(OSError):
                    _reset(path)
            if not isinstance(exc, Exception):
                raise
            raise PrefetchError(_download_hint(client, todo[0], exc)) from None
        for path in todo:
            if not path.is_file() or not path.stat().st_size or not _intact(path):
                _reset(path)
                raise PrefetchError(f'the download of {relative_to_home(path)} is incomplete: run '
                                    'qsmflow fetch-templates again')
        fetched += len(todo)
    return fetched, present


def precompute_transforms(template: str, resolution: int, names, *, nthreads: int = 1,
                          echo=print) -> list[tuple[str, str]]:
    """Compute the template-to-template transforms a run with ``--template template
    --template-resolution resolution`` needs for atlases ``names`` (those living in another
    template, e.g. SUIT), into the run-time cache (``$QSMFLOW_CACHE/xfm``), through the
    run-time code (:func:`qsmflow.atlases.transforms.precompute_template_transforms`).

    Returns
    -------
    list of (warp, affine)
        Cached transform paths, one pair per atlas that lives in another template.

    Raises
    ------
    PrefetchError
        A template file is missing or the cache cannot be written.
    """
    from qsmflow.atlases.templateflow import TemplateError
    from qsmflow.atlases.transforms import precompute_template_transforms, transform_cache

    echo(f'template-to-template transforms to {template} (resolution {resolution}) into '
         f'{transform_cache()}: antspyx, about a minute each unless cached')
    t0 = time.monotonic()
    try:
        pairs = precompute_template_transforms(template, list(names), resolution=resolution,
                                               nthreads=nthreads)
    except TemplateError as exc:
        raise PrefetchError(str(exc)) from None
    except OSError as exc:
        raise PrefetchError(f'cannot write the transform cache {transform_cache()} '
                            f'({error_cause(exc)}): set QSMFLOW_CACHE to a writable folder') from None
    for warp, _ in pairs:
        echo(f'  {warp}')
    echo(f'  {len(pairs)} transforms ready ({time.monotonic() - t0:.0f} s)')
    return pairs


def _intact(path: Path) -> bool:
    """A gzip file reads to its end (an interrupted download does not); others: True."""
    if not path.name.endswith('.gz'):
        return True
    try:
        with gzip.open(path, 'rb') as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error):
        return False
    return True


def _reset(path: Path) -> None:
    """Make ``path`` a 0-byte templateflow placeholder (to be downloaded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'')


def relative_to_home(path: Path) -> str:
    """``path`` relative to TEMPLATEFLOW_HOME when inside it, else as given (for messages)."""
    try:
        return str(Path(path).relative_to(templateflow_home()))
    except ValueError:
        return str(path)


def _download_hint(client, path: Path, exc: Exception) -> str:
    """One line: what failed and what to do, by kind of failure."""
    s3 = client.cache.config.s3_root
    if _is_network_error(exc):
        return (f'cannot download {relative_to_home(path)} from {s3} ({error_cause(exc)}); no network? Run '
                'qsmflow fetch-templates on a machine with internet access and copy its '
                f'TEMPLATEFLOW_HOME folder to {templateflow_home()} (or set TEMPLATEFLOW_HOME '
                'to a prefilled copy)')
    if isinstance(exc, OSError):
        return (f'cannot write {path} ({error_cause(exc)}): make TEMPLATEFLOW_HOME '
                f'({templateflow_home()}) writable or point it at a writable folder')
    return (f'cannot download {relative_to_home(path)} from {s3} ({error_cause(exc)}): retry later, or update '
            'templateflow (pip install -U templateflow) if the file has moved')


def error_cause(exc: Exception) -> str:
    """``Type: message`` of the innermost cause of ``exc`` (urllib3's connection reason,
    not the retry wrapper), on one line of at most about 160 characters."""
    for _ in range(5):
        inner = getattr(exc, 'reason', None)
        if not isinstance(inner, Exception) and exc.args and isinstance(exc.args[0], Exception):
            inner = exc.args[0]
        if not isinstance(inner, Exception) or inner is exc:
            break
        exc = inner
    text = re.sub(r'^<[^>]*>:\s*', '', ' '.join(str(exc).split()))
    text = text if len(text) <= 160 else text[:157] + '...'
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _is_network_error(exc: Exception) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - templateflow depends on requests
        return False
    return isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError))


def total_size(files) -> str:
    """Summed size of the existing ``files`` as text (``'1.2 MB'``, ``'35.0 kB'``)."""
    total = sum(f.stat().st_size for f in files if f.is_file())
    return f'{total / 1e6:.1f} MB' if total >= 1e5 else f'{total / 1e3:.1f} kB'


