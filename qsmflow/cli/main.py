# SPDX-License-Identifier: Apache-2.0
"""The ``qsmflow`` entry point: the BIDS App (``qsmflow BIDS_DIR OUT_DIR participant|group``)
and the tool commands (``demo``, ``bench``, ``fetch-templates``, ``convert``,
``export-dicom``).

The command line is parsed (:mod:`qsmflow.cli.parser`) and turned into one validated
:class:`qsmflow.config.RunConfig` (:func:`qsmflow.cli.config.config_from_args`), which the
participant or group level then runs. Every anticipated failure ends in one line on
stderr (``qsmflow: error: ...``) and a non-zero exit code, never a traceback. Exit codes:
0 all done, 1 some participant failed, 2 bad invocation or input.
"""
from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv=None) -> int:
    """Entry point of the ``qsmflow`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault('NIPYPE_NO_ET', '1')  # no network check at import
    from qsmflow.cli import parser
    from qsmflow.errors import InputError

    try:
        if parser.is_tool_call(argv):
            return _run_tool(parser.build_tools_parser().parse_args(argv))
        from qsmflow.cli.config import config_from_args

        config = config_from_args(parser.build_parser().parse_args(argv))
        if config.analysis_level == 'group' and config.regions.build_study_template:
            from qsmflow.cli.study_template import run_build_study_template

            return run_build_study_template(config)
        if config.analysis_level == 'group':
            from qsmflow.group.run import run_group

            return run_group(config)
        from qsmflow.cli.participant import run_participants

        return run_participants(config)
    except InputError as exc:
        print(f'qsmflow: error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print('qsmflow: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # an unanticipated failure: still one line, details on demand
        if os.environ.get('QSMFLOW_DEBUG'):
            raise
        print(f'qsmflow: internal error: {type(exc).__name__}: {exc} '
              '(rerun with QSMFLOW_DEBUG=1 for the traceback, and please report it)',
              file=sys.stderr)
        return EXIT_FAILED


def _run_tool(opts) -> int:
    """Run the sub-command ``opts.command`` (``demo``, ``bench``, ``fetch-templates``,
    ``convert``)."""
    if opts.command == 'demo':
        from qsmflow.cli.demo import run_demo

        return run_demo(opts.directory, size=opts.size, nprocs=opts.nprocs,
                        oblique_deg=opts.oblique)
    if opts.command == 'bench':
        from qsmflow.cli.bench import run_bench

        return run_bench(opts)
    if opts.command == 'convert':
        from qsmflow.cli.convert import run_convert

        return run_convert(opts)
    if opts.command == 'compare':
        from qsmflow.cli.compare import run_compare_command

        return run_compare_command(opts)
    if opts.command == 'export-dicom':
        from qsmflow.cli.export_dicom import run_export_dicom

        return run_export_dicom(opts)
    from qsmflow.cli.fetch_templates import run_fetch_templates

    return run_fetch_templates(opts)
