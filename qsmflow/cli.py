# SPDX-License-Identifier: Apache-2.0
"""qsmflow command line: a BIDS App (``qsmflow BIDS_DIR OUT_DIR participant``) plus the
``qsmflow demo DIR`` command that builds and processes the built-in phantom dataset.

Every anticipated failure ends in one line on stderr (``qsmflow: error: ...``) and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qsmflow import __version__

#: Exit codes: 0 all done, 1 some participant failed, 2 bad invocation or input.
#: Nipype plugins selectable with ``--plugin``.
PLUGINS = ('linear', 'multiproc', 'slurm', 'slurmgraph', 'sge', 'sgegraph', 'pbs', 'pbsgraph')
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_DESCRIPTION = """\
qsmflow: quantitative susceptibility mapping (QSM) of the brain from BIDS multi-echo GRE.
Reads sub-*/[ses-*/]anat/*[_echo-<n>]_part-<mag|phase|real|imag>_MEGRE.nii[.gz] (one 3D
file per echo, or one 4D file with EchoTime as a list; phase in rad or scanner integers) and
writes susceptibility maps (ppm), masks and field maps as a BIDS derivatives dataset in OUT_DIR.
Every input is checked before any computation (pre-flight report per participant).
Other commands: 'qsmflow demo DIR' builds a synthetic phantom dataset and processes it;
'qsmflow bench' times every reconstruction step on the 1 mm phantom;
'qsmflow fetch-templates' fills TEMPLATEFLOW_HOME for offline use (containers, clusters)."""


def _positive_int(value):
    ivalue = int(value)
    if ivalue < 1:
        raise argparse.ArgumentTypeError(f'{value} is not a positive integer')
    return ivalue


def _positive_float(value):
    fvalue = float(value)
    if fvalue <= 0:
        raise argparse.ArgumentTypeError(f'{value} is not a positive number')
    return fvalue


def _build_parser() -> argparse.ArgumentParser:
    """The BIDS-App argument parser (no side effects)."""
    from qsmflow.pipeline import available_presets

    parser = argparse.ArgumentParser(
        prog='qsmflow', description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bids_dir', type=Path, help='root folder of a BIDS dataset')
    parser.add_argument('output_dir', type=Path,
                        help='output folder (a BIDS derivatives dataset; outside bids_dir)')
    parser.add_argument('analysis_level', choices=['participant', 'group'],
                        help='processing stage: "participant" reconstructs each participant, '
                             '"group" builds cohort tables, age norms and plots')
    parser.add_argument('--version', action='version', version=f'qsmflow {__version__}')

    g_bids = parser.add_argument_group('Options for filtering BIDS queries')
    g_bids.add_argument('--participant-label', '--participant_label', nargs='+', metavar='LABEL',
                        help='participants to process (with or without "sub-"; default: all)')
    g_bids.add_argument('--session-label', nargs='+', metavar='LABEL',
                        help='sessions to process (with or without "ses-"; default: all)')
    g_bids.add_argument('--bids-filter-file', '--bids_filter_file', type=Path, metavar='FILE',
                        help='JSON file of PyBIDS filters for the "megre" query, as in fMRIPrep '
                             '(e.g. {"megre": {"acquisition": "fast"}})')
    g_bids.add_argument('--skip-bids-validation', '--skip_bids_validation', action='store_true',
                        help='do not run bids-validator-deno on the input dataset')
    g_bids.add_argument('--field-strength', type=_positive_float, metavar='TESLA',
                        help='B0 in tesla for data whose sidecars lack MagneticFieldStrength')

    g_pipe = parser.add_argument_group('Reconstruction')
    g_pipe.add_argument('--preset', default='default', metavar='NAME|FILE',
                        help=f'pipeline preset: {", ".join(available_presets())} or a JSON file '
                             '(default: %(default)s)')
    g_pipe.add_argument('--unwrapping', choices=['romeo', 'laplacian'],
                        help='phase unwrapping (overrides the preset)')
    g_pipe.add_argument('--masking', choices=['magnitude', 'quality'],
                        help='brain mask: magnitude only, or minus unreliable phase '
                             '(overrides the preset)')
    g_pipe.add_argument('--brain-masks', type=Path, metavar='DERIV_DIR',
                        help='use your own brain masks: a BIDS derivatives folder with '
                             'sub-<label>[/ses-<label>]/anat/*_desc-brain_mask.nii[.gz] in the '
                             'scanner space of the GRE (any grid); replaces the automatic mask')
    g_pipe.add_argument('--two-pass', action=argparse.BooleanOptionalAction, default=None,
                        help='two-pass inversion: reconstruct inside a strict phase-quality '
                             'mask, then fill the excluded voxels from a reconstruction in the '
                             'generous brain mask (default: as the preset says)')
    g_pipe.add_argument('--echo-combination', choices=['wls', 'nlcomplex'],
                        help='echo combination: weighted least squares or nonlinear complex fit '
                             '(overrides the preset)')
    g_pipe.add_argument('--bf-removal', choices=['vsharp', 'pdf', 'resharp', 'ismv', 'lbv'],
                        help='background field removal (overrides the preset)')
    g_pipe.add_argument('--inversion', choices=['tv', 'rts', 'tkd', 'tikhonov', 'medi', 'lsqr',
                                                'ilsqr', 'ndi'],
                        help='dipole inversion (overrides the preset)')
    g_pipe.add_argument('--reference', choices=['mean', 'csf', 'none'],
                        help='susceptibility reference (overrides the preset)')

    from qsmflow.regions_config import add_arguments as add_regions_arguments

    add_regions_arguments(parser)
    g_perf = parser.add_argument_group('Performance')
    g_perf.add_argument('--nprocs', '--nthreads', type=_positive_int, default=os.cpu_count() or 1,
                        help='processes for Nipype (1 = Linear plugin; default: all CPUs)')
    g_perf.add_argument('--omp-nthreads', type=_positive_int,
                        help='threads per process (FFT workers; default: nprocs)')
    g_perf.add_argument('--mem-gb', '--mem_gb', type=_positive_float, metavar='GB',
                        help='memory MultiProc may use at once (default: what the machine has)')
    g_perf.add_argument('--plugin', choices=PLUGINS, type=str.lower,
                        help='Nipype execution plugin (default: linear with --nprocs 1, '
                             'multiproc otherwise); slurm, slurmgraph, sge and pbs submit each '
                             'step as a cluster job from a shared work directory')
    g_perf.add_argument('--plugin-args', metavar='JSON|FILE',
                        help='plugin arguments as a JSON object or a JSON file, passed to '
                             "Nipype's plugin, e.g. '{\"sbatch_args\": \"-p short\"}'")
    g_perf.add_argument('-w', '--work-dir', type=Path,
                        help='Nipype work directory, reused as cache on reruns '
                             '(default: OUT_DIR/../work)')
    return parser


def _build_demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='qsmflow demo',
        description='Write a synthetic two-participant phantom BIDS dataset into DIR/rawdata '
                    '(ground truth in DIR/truth), reconstruct it into DIR/qsmflow and compare '
                    'with the truth. Runs offline.')
    parser.add_argument('directory', type=Path, help='folder to create the demo in')
    parser.add_argument('--size', choices=['tiny', 'small', 'full'], default='small',
                        help='phantom resolution: tiny 3 mm, small 2 mm, full 1 mm '
                             '(default: %(default)s)')
    parser.add_argument('--nprocs', type=_positive_int, default=os.cpu_count() or 1,
                        help='processes for Nipype (default: all CPUs)')
    parser.add_argument('--oblique', type=float, default=0.0, metavar='DEG',
                        help='tilt the acquisition by DEG degrees (default: 0)')
    return parser


def main(argv=None) -> int:
    """Entry point of the ``qsmflow`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault('NIPYPE_NO_ET', '1')  # no network check at import
    from qsmflow.inputs import InputError

    try:
        if argv and argv[0] == 'demo':
            from qsmflow.demo import run_demo

            opts = _build_demo_parser().parse_args(argv[1:])
            return run_demo(opts.directory, size=opts.size, nprocs=opts.nprocs,
                            oblique_deg=opts.oblique)
        if argv and argv[0] == 'fetch-templates':
            from qsmflow.prefetch import main as prefetch_main

            return prefetch_main(argv[1:])
        if argv and argv[0] == 'bench':
            from qsmflow.bench import main as bench_main

            return bench_main(argv[1:])
        opts = _build_parser().parse_args(argv)
        if opts.analysis_level == 'group':
            from qsmflow.group.run import run_group

            return run_group(opts)
        from qsmflow.run import run_participants

        return run_participants(opts)
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
