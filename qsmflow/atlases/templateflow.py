# SPDX-License-Identifier: Apache-2.0
"""Template and atlas retrieval through the templateflow API.

Every template (the real ``MNI152NLin2009cAsym``/``SUIT`` and the demo phantom's
``QSMPhantom``) is found with the same templateflow queries. The client is rooted at the
folder a query is given (``home``: the run configuration's
:attr:`qsmflow.config.RegionsConfig.templateflow_home`, e.g. the demo's own folder), else
at ``$TEMPLATEFLOW_HOME`` as it is when the query runs. Offline machines need a prefilled
``TEMPLATEFLOW_HOME``: templateflow's PyPI package ships 0-byte placeholders that are
downloaded on first use.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


class TemplateError(RuntimeError):
    """A template or atlas file cannot be found or downloaded."""


def client(home=None):
    """A templateflow client rooted at ``home``, else at the current ``$TEMPLATEFLOW_HOME``
    (else templateflow's default); one client per folder."""
    return _client(str(home) if home else os.environ.get('TEMPLATEFLOW_HOME') or '')


@lru_cache(maxsize=8)
def _client(root: str):
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=root) if root else TemplateFlowClient()


def query(template: str, *, home=None, **entities) -> list[Path]:
    """Paths a templateflow query resolves to, without downloading anything.

    Parameters
    ----------
    template : str
        Template identifier, e.g. ``'MNI152NLin2009cAsym'``.
    home : str or Path, optional
        templateflow folder (default: ``$TEMPLATEFLOW_HOME``).
    **entities
        templateflow query (``resolution``, ``atlas``, ``suffix``, ``desc``, ``extension``).

    Returns
    -------
    list of Path
        Matching files (possibly 0-byte placeholders).
    """
    entities.setdefault('desc', entities.get('desc'))
    found = client(home).ls(template, **entities)
    return [Path(p) for p in (found if isinstance(found, list) else [found] if found else [])]


def get(template: str, *, home=None, **entities) -> Path:
    """Fetch exactly one template file through the templateflow API (client rooted at
    ``home``, default ``$TEMPLATEFLOW_HOME``).

    Raises
    ------
    TemplateError
        When the query matches nothing, several files, or the file cannot be downloaded
        (offline: prefill ``TEMPLATEFLOW_HOME``).
    """
    entities.setdefault('desc', entities.get('desc'))
    try:
        found = client(home).get(template, **entities)
    except Exception as exc:  # network errors of the download surface here
        raise TemplateError(_offline_hint(template, entities, exc, home)) from None
    paths = found if isinstance(found, list) else [found] if found else []
    if not paths:
        raise TemplateError(_offline_hint(template, entities, 'not in the folder', home))
    if len(paths) > 1:
        raise TemplateError(f'templateflow query {template} {entities} matched {len(paths)} '
                            'files (expected one)')
    path = Path(paths[0])
    if not path.exists() or path.stat().st_size == 0:
        raise TemplateError(_offline_hint(template, entities, 'file not downloaded', home))
    return path


def _offline_hint(template, entities, exc, home=None) -> str:
    home = home or os.environ.get('TEMPLATEFLOW_HOME', '~/.cache/templateflow')
    return (f'cannot get templateflow {describe(template, entities)}: {exc}. On an offline '
            f'machine, prefill TEMPLATEFLOW_HOME ({home}): run qsmflow fetch-templates (the '
            'default template and every built-in atlas; --template NAME adds a registration '
            'template) where there is internet and copy the folder')


def describe(template: str, entities: dict) -> str:
    """A templateflow query as the file name it asks for (``*`` where it leaves an
    entity open).

    >>> describe('MNI152NLin2009cAsym', {'resolution': 1, 'atlas': 'MASSP20',
    ...                                  'suffix': 'dseg', 'extension': '.nii.gz', 'desc': None})
    'tpl-MNI152NLin2009cAsym_res-01_atlas-MASSP20_dseg.nii.gz'
    """
    parts = [f'tpl-{template}']
    for key, entity in (('resolution', 'res'), ('atlas', 'atlas'), ('desc', 'desc')):
        value = entities.get(key)
        if value is not None:
            parts.append(f'{entity}-{int(value):02d}' if isinstance(value, int)
                         else f'{entity}-{value}')
    return '_'.join(parts) + f"_{entities.get('suffix') or '*'}{entities.get('extension') or ''}"
