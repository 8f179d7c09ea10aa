# SPDX-License-Identifier: Apache-2.0
"""The ``qsmflow`` argument parsers: one place for every flag and its default.

``qsmflow BIDS_DIR OUT_DIR participant|group`` is the BIDS-App form; the tool commands
(``demo``, ``bench``, ``fetch-templates``, ``convert``) are argparse sub-commands of
:func:`build_tools_parser`. :func:`qsmflow.cli.main.main` tells the two apart by the
BIDS-App analysis level in third position, so a BIDS folder named ``demo`` is still a
BIDS folder. Building a parser has no side effects.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from qsmflow import __version__
from qsmflow.qsm.device import DEVICES

#: Default registration template and its templateflow resolution (``--template``,
#: ``--template-resolution``); :mod:`qsmflow.atlases.prefetch` plans with the same values.
DEFAULT_TEMPLATE = 'MNI152NLin2009cAsym'
DEFAULT_TEMPLATE_RESOLUTION = 2

#: Exit codes: 0 all done, 1 some participant failed, 2 bad invocation or input.
#: R2* estimators (``--r2star-method``) and the default minIP slab (mm), from qsm/.
R2STAR_METHODS = ('arlo', 'loglinear', 'nonlinear')
DEFAULT_SLAB_MM = 8.0
#: Venography MIP slab (mm) and OEF haematocrit defaults, from qsm/ (veins, oef).
DEFAULT_MIP_SLAB_MM, DEFAULT_HEMATOCRIT = 16.0, 0.40
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
'qsmflow fetch-templates' fills TEMPLATEFLOW_HOME for offline use (containers, clusters);
'qsmflow convert DICOM_DIR BIDS_DIR' converts multi-echo GRE DICOM to BIDS;
'qsmflow export-dicom OUT_DIR DICOM_OUT' writes the maps as DICOM series for PACS."""


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


def _non_negative_float(value):
    fvalue = float(value)
    if not fvalue >= 0 or fvalue == float('inf'):
        raise argparse.ArgumentTypeError(f'{value} is not a finite number >= 0')
    return fvalue


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App argument parser (``qsmflow BIDS_DIR OUT_DIR participant|group``)."""
    from qsmflow.config.presets import available_presets

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

    _add_selection_arguments(parser)

    g_pipe = parser.add_argument_group('Reconstruction')
    g_pipe.add_argument('--preset', default='default', metavar='NAME|FILE',
                        help=f'pipeline preset: {", ".join(available_presets())} or a JSON file '
                             '(default: %(default)s)')
    g_pipe.add_argument('--unwrapping', choices=['romeo', 'laplacian'],
                        help='phase unwrapping (overrides the preset)')
    g_pipe.add_argument('--masking', choices=['magnitude', 'quality'],
                        help='brain mask: magnitude only, or minus unreliable phase '
                             '(overrides the preset)')
    g_pipe.add_argument('--brain-extraction', choices=['adaptive', 'threshold'],
                        help='brain extraction on the magnitude: adaptive (removes scalp, '
                             'skull, face and neck; the default) or threshold (magnitude '
                             'threshold and morphology; keeps the scalp on real heads) '
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

    g_maps = parser.add_argument_group('Other maps (R2*, T2*, SWI, minIP, χ-separation)')
    g_maps.add_argument('--r2star-method', choices=list(R2STAR_METHODS),
                        help='R2*/T2* fit: arlo (closed form, equally spaced echoes; the '
                             'default), loglinear (weighted log-linear) or nonlinear '
                             '(magnitude least squares) (overrides the preset)')
    g_maps.add_argument('--swi', action=argparse.BooleanOptionalAction, default=None,
                        help='compute the SWI and its minIP (default: on, or as the preset '
                             'says); --no-swi leaves them out')
    g_maps.add_argument('--minip-slab-mm', type=_positive_float, metavar='MM',
                        help='minIP slab thickness in mm along the slice axis '
                             f'(default: {DEFAULT_SLAB_MM:g})')
    g_maps.add_argument('--chi-separation', action=argparse.BooleanOptionalAction,
                        default=None,
                        help='split χ into paramagnetic (desc-paramagnetic_Chimap) and '
                             'diamagnetic (desc-diamagnetic_Chimap) parts with R2* '
                             '(default: on with ≥ 2 echoes, or as the preset says)')
    g_r2 = g_maps.add_mutually_exclusive_group()
    g_r2.add_argument('--r2-hz', type=_non_negative_float, metavar='HZ',
                      help='spin-echo R2 (1/s) that χ-separation subtracts from R2* '
                           '(default: white matter at the field strength, 14.1 at 3 T)')
    g_r2.add_argument('--r2-map', type=Path, metavar='DERIV_DIR',
                      help='measured spin-echo R2 maps for χ-separation instead of --r2-hz: '
                           'a BIDS derivatives folder with sub-<label>[/ses-<label>]/anat/'
                           '*_R2map.nii[.gz] in 1/s in the scanner space of the GRE (any '
                           'grid; resampled linearly); a participant without one fails')

    g_clin = parser.add_argument_group('Clinical readings (venography, foci, QSM-OEF)')
    g_clin.add_argument('--venography', action=argparse.BooleanOptionalAction, default=None,
                        help='store the vein segmentation (desc-veins_mask), vesselness '
                             '(desc-veins_probseg) and MIP slabs of χ and vesselness '
                             '(default: off)')
    g_clin.add_argument('--foci', action=argparse.BooleanOptionalAction, default=None,
                        help='detect haemorrhage-like (paramagnetic) and calcification-like '
                             '(diamagnetic) foci: desc-foci_dseg.nii.gz and .tsv (default: off)')
    g_clin.add_argument('--oef', action=argparse.BooleanOptionalAction, default=None,
                        help='oxygen extraction fraction from vein χ per vein segment and '
                             'participant: desc-oef_stats.tsv (default: off)')
    g_clin.add_argument('--hematocrit', type=_positive_float, metavar='FRACTION',
                        help=f'haematocrit of the OEF, a fraction (default: '
                             f'{DEFAULT_HEMATOCRIT:g})')
    g_clin.add_argument('--mip-slab-mm', type=_positive_float, metavar='MM',
                        help='venography MIP slab thickness in mm along the slice axis '
                             f'(default: {DEFAULT_MIP_SLAB_MM:g})')

    _add_regions_arguments(parser)
    g_perf = parser.add_argument_group('Performance')
    g_perf.add_argument('--nprocs', '--nthreads', type=_positive_int, default=os.cpu_count() or 1,
                        help='processes for Nipype (1 = Linear plugin; default: all CPUs)')
    g_perf.add_argument('--omp-nthreads', type=_positive_int,
                        help='threads per process (FFT workers; default: nprocs)')
    g_perf.add_argument('--device', choices=DEVICES, default='cpu',
                        help='where background removal (PDF, V-SHARP, RESHARP) and the '
                             'inversion (TV, TKD, Tikhonov, RTS) compute: cpu (numpy, default), '
                             "gpu (torch on CUDA; pip install 'qsmflow[gpu]') or auto (gpu "
                             'when present); not bitwise the cpu results (rounding, see README)')
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


def _add_selection_arguments(parser) -> None:
    """Add the participant selection flags ('Options for filtering BIDS queries') to
    ``parser``: the BIDS-App form and ``qsmflow compare``."""
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


def _add_regions_arguments(parser) -> None:
    """Add the 'Registration and regional tables' argument group to ``parser``."""
    group = parser.add_argument_group('Registration and regional tables')
    group.add_argument('--template', default=DEFAULT_TEMPLATE, metavar='NAME',
                       help='templateflow template to register to (default: %(default)s; '
                            'offline: prefill TEMPLATEFLOW_HOME)')
    group.add_argument('--template-resolution', type=int, default=DEFAULT_TEMPLATE_RESOLUTION,
                       metavar='RES',
                       help='templateflow resolution of the registration target '
                            '(default: %(default)s)')
    group.add_argument('--atlases', nargs='+', metavar='NAME',
                       help='atlases of bids_specs/atlases.json to tabulate '
                            '(default: MASSP20 Diedrichsen2009)')
    group.add_argument('--atlas', type=Path, metavar='PATH', help='custom atlas label image')
    group.add_argument('--atlas-labels', type=Path, metavar='TSV',
                       help='lookup table (index, name) of --atlas')
    group.add_argument('--atlas-template', type=Path, metavar='IMAGE',
                       help='template image the custom --atlas is defined on (the brain-masked '
                            'magnitude is registered to it: skull-stripped, or give '
                            '--atlas-template-mask)')
    group.add_argument('--atlas-template-mask', type=Path, metavar='MASK',
                       help='brain mask of --atlas-template (without it, a template with skull '
                            'and scalp gets one qsmflow derives from it)')
    group.add_argument('--segmentations', type=Path, metavar='DERIV_DIR',
                       help='BIDS derivatives folder with sub-<l>[/ses-<l>]/anat/*_dseg.nii[.gz] '
                            'in each participant\'s scanner space and a dseg.tsv')
    group.add_argument('--erode-rois', action='store_true',
                       help='erode every region by one voxel against partial volume (a region '
                            'erosion would leave with fewer than 10 voxels is kept whole)')
    group.add_argument('--refine-nuclei', action=argparse.BooleanOptionalAction, default=True,
                       help='refine the atlas registration around the iron-rich nuclei with a '
                            'chi-driven SyN to a chi-contrast image of the atlas; the table '
                            'uses the refined labels (_desc-refined_dseg; default: on)')
    group.add_argument('--segment-nuclei', action='store_true',
                       help='move the iron-rich nuclei\'s atlas labels onto the chi contrast, '
                            'at most 2 mm (atlas-initialised mixture model); the table uses '
                            'them (_desc-refined_dseg). Helps labels that --refine-nuclei has '
                            'not refined; after it, no gain on the real-anatomy phantom')
    group.add_argument('--skip-registration', action='store_true',
                       help='no template registration (tables only from --segmentations)')
    group.add_argument('--study-template', type=Path, metavar='DIR',
                       help='participant level, second pass: register through the study '
                            'template DIR (OUT_DIR/templates/tpl-study, built by the group '
                            'level with --build-study-template from a first pass)')
    group.add_argument('--build-study-template', action='store_true',
                       help='group level: build the study template of the first pass '
                            '(unbiased, antspyx) under OUT_DIR/templates/tpl-study instead of '
                            'the cohort tables')
    group.add_argument('--study-template-iterations', type=int, default=3, metavar='N',
                       help='template-building iterations of --build-study-template '
                            '(default: %(default)s)')
    group.add_argument('--fast-registration', action='store_true',
                       help='register on every --omp-nthreads thread: faster, but the '
                            'transforms (and tables) vary slightly from run to run (default: '
                            'one thread, bitwise reproducible)')
    group.add_argument('--registration-pyramid', choices=['default', 'quick'],
                       default='default',
                       help='registration settings: quick runs the rigid and affine stages at '
                            'about 8 and 4 mm only (20-30%% less CPU, bitwise reproducible; '
                            'atlas labels\' mean Dice 0.004-0.01 lower on the real-anatomy '
                            'phantom, least Dice up to 0.13 lower on the tiny demo; default: '
                            '%(default)s)')


def _add_compare_parser(sub) -> None:
    """The ``qsmflow compare`` sub-command (:mod:`qsmflow.compare`)."""
    from qsmflow.compare import PLUGINS

    compare = sub.add_parser(
        'compare', help='run several reconstruction pipelines over a cohort and compare '
                        'their regional chi (pydra)',
        description='Reconstruct every selected acquisition with every pipeline (on pydra: '
                    'steps shared by pipelines are computed once, reruns reuse finished '
                    'steps) and compare the regional mean chi: OUT_DIR/compare/table.tsv '
                    '(tidy, every run), spread.tsv (between-pipeline SD and range per '
                    'region), icc.tsv (ICC per pipeline pair), figures/, index.html. Needs '
                    'native-space labels: --segmentations and/or --labels-from (a '
                    'participant-level output with atlas labels; compare does not register).')
    compare.add_argument('bids_dir', type=Path, help='root folder of a BIDS dataset')
    compare.add_argument('output_dir', type=Path,
                         help='output folder; results go to OUTPUT_DIR/compare/')
    compare.add_argument('--pipelines', nargs='+', default=[], metavar='P',
                         help='pipelines: a preset name, a preset JSON file, or step '
                              'overrides of the default preset such as '
                              'bf_removal=vsharp,inversion=rts (PRESET:STEP=METHOD,... for '
                              'another preset)')
    compare.add_argument('--grid', nargs='+', default=[], metavar='STEP=M1,M2',
                         help='add the product of these methods (on the default preset), '
                              'e.g. --grid bf_removal=pdf,vsharp inversion=tv,rts')
    _add_selection_arguments(compare)
    labels = compare.add_argument_group('Native-space labels (at least one)')
    labels.add_argument('--segmentations', type=Path, metavar='DERIV_DIR',
                        help='BIDS derivatives folder with sub-<l>[/ses-<l>]/anat/'
                             '*_dseg.nii[.gz] in each participant\'s scanner space and a '
                             'dseg.tsv (as for the participant level)')
    labels.add_argument('--labels-from', type=Path, metavar='QSMFLOW_OUT_DIR',
                        help='a participant-level output folder: its native-space atlas labels '
                             '(*_atlas-<name>_dseg.nii.gz) are used')
    labels.add_argument('--atlases', nargs='+', metavar='NAME',
                        help='with --labels-from: only these atlases (default: every one there)')
    labels.add_argument('--erode-rois', action='store_true',
                        help='erode every region by one voxel (as the participant level)')
    perf = compare.add_argument_group('Execution')
    perf.add_argument('--nprocs', type=_positive_int, default=os.cpu_count() or 1,
                      help='processes of the concurrent-futures worker (default: all CPUs)')
    perf.add_argument('--plugin', choices=PLUGINS, default='cf',
                      help="pydra worker: cf (local processes) or slurm (sbatch per task; "
                           "the work directory must be shared) (default: %(default)s)")
    perf.add_argument('--plugin-args', metavar='JSON|FILE',
                      help='arguments of the pydra worker, e.g. \'{"sbatch_args": "-p short"}\'')
    perf.add_argument('-w', '--work-dir', type=Path,
                      help="pydra's cache, reused by reruns (default: OUTPUT_DIR/compare/work)")
    compare.add_argument('--keep-maps', action='store_true',
                         help='also keep every pipeline\'s chi map in OUTPUT_DIR/compare/maps/')


TOOLS = ('demo', 'bench', 'fetch-templates', 'convert', 'compare', 'export-dicom')


def build_tools_parser() -> argparse.ArgumentParser:
    """The parser of the tool commands ``qsmflow demo|bench|fetch-templates|convert``."""
    parser = argparse.ArgumentParser(prog='qsmflow', description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'qsmflow {__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    demo = sub.add_parser(
        'demo', help='build the phantom dataset, process it and compare with its truth',
        description='Write a synthetic two-participant phantom BIDS dataset into DIR/rawdata '
                    '(ground truth in DIR/truth), reconstruct it into DIR/qsmflow and compare '
                    'with the truth. Runs offline.')
    demo.add_argument('directory', type=Path, help='folder to create the demo in')
    demo.add_argument('--size', choices=['tiny', 'small', 'full'], default='small',
                      help='phantom resolution: tiny 3 mm, small 2 mm, full 1 mm '
                           '(default: %(default)s)')
    demo.add_argument('--nprocs', type=_positive_int, default=os.cpu_count() or 1,
                      help='processes for Nipype (default: all CPUs)')
    demo.add_argument('--oblique', type=float, default=0.0, metavar='DEG',
                      help='tilt the acquisition by DEG degrees (default: 0)')

    bench = sub.add_parser(
        'bench', help='time and memory of each reconstruction step on the phantom',
        description='Time and memory of each reconstruction step on the forward-simulated '
                    'head phantom, exactly as the pipeline calls it; or, with --cohort, of '
                    'whole participant-level runs.')
    bench.add_argument('--size', choices=['tiny', 'small', 'full', 'hires'],
                       help='phantom grid (default: full, 1 mm 144×176×144; hires: 0.6 mm '
                            '240×293×240; with --cohort: small, 2 mm, as the demo)')
    bench.add_argument('--phantom', choices=['realistic', 'default'], default='realistic',
                       help='head phantom: realistic (bright fat scalp, skull, neck, air '
                            'cavities, veins of several sizes; SNR 35) or default (the '
                            "demo's ellipsoid head; SNR 100) (default: %(default)s)")
    bench.add_argument('--snr', type=_positive_float, metavar='SNR',
                       help="first-echo brain SNR (default: the phantom's, 35 or 100)")
    bench.add_argument('--repeat', type=_positive_int, default=1,
                       help='runs per step (best is kept)')
    bench.add_argument('--oblique', type=float, default=15.0, metavar='DEG',
                       help='acquisition tilt in degrees (default: %(default)s)')
    bench.add_argument('--methods', nargs='+', default=None,
                       help='inversion methods to time (default: all available)')
    bench.add_argument('--cohort', nargs='+', type=_positive_int, metavar='N',
                       help='instead: time whole participant-level runs (registration and '
                            'tables included) of N demo participants each, e.g. 1 2 4 8')
    bench.add_argument('--nprocs', type=_positive_int, default=2,
                       help='with --cohort: Nipype processes (default: %(default)s)')
    bench.add_argument('--device', choices=DEVICES, default='cpu',
                       help='where PDF, V-SHARP, RESHARP, TKD, Tikhonov, TV and RTS compute (as '
                            'the '
                            'participant level; default: %(default)s)')
    bench.add_argument('--threads', nargs='+', type=_positive_int, metavar='N',
                       help='instead: the default reconstruction with N threads for every '
                            'step, one line per N (time, speed-up, peak RSS), e.g. 1 2')

    fetch = sub.add_parser(
        'fetch-templates', help='fill TEMPLATEFLOW_HOME for offline runs',
        description='Download every template and atlas file qsmflow uses (registration '
                    f'template {DEFAULT_TEMPLATE} at resolution {DEFAULT_TEMPLATE_RESOLUTION} '
                    'and the resolutions of its atlases, every atlas of bids_specs/atlases.json '
                    'and the templates they live in) into $TEMPLATEFLOW_HOME, for offline '
                    'runs. Then use it with TEMPLATEFLOW_HOME=<that folder> '
                    'TEMPLATEFLOW_AUTOUPDATE=0.')
    fetch.add_argument('--template', action='append', default=[], metavar='NAME',
                       help='another registration template to prefetch (repeatable)')
    fetch.add_argument('--template-resolution', action='append', default=[], type=int,
                       metavar='RES',
                       help='another resolution of every registration template (repeatable)')
    fetch.add_argument('--dry-run', '--list', action='store_true', dest='dry_run',
                       help='list each query and the files it resolves to; download nothing '
                            '(works offline)')
    fetch.add_argument('--transforms', action='store_true',
                       help='also compute the atlas template-to-template transforms (e.g. '
                            'SUIT to the registration template, a minute of antspyx) into '
                            '$QSMFLOW_CACHE, so that runs need not')
    fetch.add_argument('--omp-nthreads', type=_positive_int, default=os.cpu_count() or 1,
                       metavar='N', help='threads for --transforms (default: all CPUs)')

    convert = sub.add_parser(
        'convert', help='convert the multi-echo GRE series of a DICOM folder to BIDS',
        description='Find the multi-echo GRE series (magnitude and phase, or real and '
                    'imaginary, of every echo) in a folder tree of classic or enhanced DICOM '
                    '(.dcm.gz too), convert them with dcm2niix and write them into BIDS_DIR as '
                    'sub-<l>[/ses-<l>]/anat/*_echo-<n>_part-<mag|phase|real|imag>_MEGRE.nii.gz '
                    'with the vendor phase conventions applied (Siemens integers and Philips '
                    'scaling to rad, GE slice chopping and polarity). Other series (field '
                    'maps, single echo, magnitude only) are skipped; what was converted and '
                    'skipped, and why, is printed and written to '
                    'BIDS_DIR/sourcedata/qsmflow_convert/. Re-running gives the same files.')
    convert.add_argument('dicom_dir', type=Path, help='folder tree of one patient\'s DICOM files')
    convert.add_argument('bids_dir', type=Path, help='BIDS dataset to create or add to')
    convert.add_argument('--participant-label', metavar='LABEL',
                         help='participant label (with or without "sub-"; default: the '
                              'DICOM PatientID, letters and digits)')
    convert.add_argument('--session-label', metavar='LABEL',
                         help='session label (with or without "ses-"; default: none)')
    _add_compare_parser(sub)

    from qsmflow.export.maps import MAP_NAMES

    export = sub.add_parser(
        'export-dicom', help='write the native maps as DICOM series for PACS viewers',
        description='Write the native maps of a qsmflow output folder (chi, chi-separation, '
                    'R2*, T2*, SWI, minIP) as DICOM series (MR Image Storage, one file per '
                    'slice, values as integers x RescaleSlope in the map\'s units, a display '
                    'window) into DICOM_OUT/<map file name>/. With --reference-series the '
                    'series join the source study (patient, StudyInstanceUID, '
                    'FrameOfReferenceUID, ReferencedSeriesSequence).')
    export.add_argument('out_dir', type=Path, help='qsmflow output folder (derivatives)')
    export.add_argument('dicom_out', type=Path, help='folder to write the DICOM series into')
    export.add_argument('--reference-series', type=Path, metavar='DICOM_DIR',
                        help='folder of the source DICOM series (e.g. the GRE magnitude) '
                             'whose study the maps join')
    export.add_argument('--deidentify', action='store_true',
                        help='leave out the patient\'s identity: name and ID become the BIDS '
                             'participant, no birth date, sex, dates; new UIDs')
    export.add_argument('--maps', nargs='+', choices=MAP_NAMES, default=list(MAP_NAMES),
                        metavar='MAP', help=f'maps to export, of {", ".join(MAP_NAMES)} '
                                            '(default: every one present)')
    export.add_argument('--participant-label', metavar='LABEL',
                        help='export only this participant (with or without "sub-")')
    export.add_argument('--session-label', metavar='LABEL',
                        help='export only this session (with or without "ses-")')
    return parser


def is_tool_call(argv) -> bool:
    """Whether ``argv`` is a tool command rather than the BIDS-App form.

    The BIDS-App form has its analysis level third (``BIDS_DIR OUT_DIR participant``), so a
    BIDS folder named like a command (``qsmflow demo out participant``) stays a BIDS folder.

    >>> is_tool_call(['demo', 'x']), is_tool_call(['demo', 'out', 'participant'])
    (True, False)
    >>> is_tool_call(['--help']), is_tool_call(['bench'])
    (False, True)
    """
    positionals = [a for a in argv if not a.startswith('-')]
    bids_app = len(positionals) >= 3 and positionals[2] in ('participant', 'group')
    return bool(argv) and argv[0] in TOOLS and not bids_app
