# SPDX-License-Identifier: Apache-2.0
"""``qsmflow fetch-templates``: fill ``TEMPLATEFLOW_HOME`` for offline runs (see
:mod:`qsmflow.atlases.prefetch` for what is planned and fetched)."""
from __future__ import annotations

import os
import sys

from qsmflow.atlases.prefetch import (
    PrefetchError, atlas_specs, error_cause, fetch, plan, precompute_transforms,
    relative_to_home, resolve, run_defaults, templateflow_home, total_size)
from qsmflow.cli.main import EXIT_FAILED, EXIT_OK


def run_fetch_templates(opts) -> int:
    """``qsmflow fetch-templates [--template NAME] [--dry-run] [--transforms]``."""
    try:
        return _run(opts)
    except PrefetchError as exc:
        print(f'qsmflow: error: {exc}', file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # TEMPLATEFLOW_HOME cannot be created or indexed
        home = os.environ.get('TEMPLATEFLOW_HOME', '~/.cache/templateflow')
        print(f'qsmflow: error: cannot use TEMPLATEFLOW_HOME {home} ({error_cause(exc)}): set '
              'TEMPLATEFLOW_HOME to a writable folder',
              file=sys.stderr)
        return EXIT_FAILED


def _run(opts) -> int:
    queries = plan(opts.template, opts.template_resolution)
    resolved, problems = resolve(queries)
    home = templateflow_home()
    print(f'TEMPLATEFLOW_HOME: {home}')
    if opts.dry_run:
        for item in resolved:
            print(f'{item.query}  [{item.query.purpose}]')
            for path in item.files:
                state = ('present, ' + total_size([path]) if path not in item.missing
                         else 'to fetch')
                print(f'    {relative_to_home(path)}  ({state})')
        for line in problems:
            print(f'qsmflow: error: {line}', file=sys.stderr)
        missing = sum(len(item.missing) for item in resolved)
        print(f'{len(resolved)} queries, {sum(len(i.files) for i in resolved)} files, '
              f'{missing} to fetch (dry run: nothing downloaded)')
        return EXIT_FAILED if problems else EXIT_OK
    if problems:
        raise PrefetchError(problems[0] + (f' (and {len(problems) - 1} more problems: '
                                           'see --dry-run)' if len(problems) > 1 else ''))
    fetched, present = fetch(resolved)
    files = [f for item in resolved for f in item.files]
    print(f'{fetched} files fetched, {present} already present ({total_size(files)} in {home}); '
          f'offline runs: TEMPLATEFLOW_HOME={home} TEMPLATEFLOW_AUTOUPDATE=0')
    if opts.transforms:
        default_template, resolution = run_defaults()
        for template in dict.fromkeys([default_template, *opts.template]):
            precompute_transforms(template, resolution, list(atlas_specs()),
                                  nthreads=max(1, opts.omp_nthreads))
    return EXIT_OK

