# SPDX-License-Identifier: Apache-2.0
"""The run configuration: one typed, frozen record of everything a run was asked to do.

:func:`qsmflow.cli.config.config_from_args` builds a :class:`RunConfig` once from the
parsed command line and validates it (``qsmflow demo`` and ``qsmflow bench --cohort``
build one directly). The run reads it section by section and hands workflow builders
plain arguments taken from it; no builder sees the whole object. A copy is written as
JSON into ``OUT_DIR/logs/`` by every run (:meth:`RunConfig.to_file`) and can be read back
(:meth:`RunConfig.from_file`) to repeat the run.

Sections: :class:`PathsConfig` (where), :class:`SelectionConfig` (which inputs),
:class:`PipelineConfig` (which algorithms), :class:`MasksConfig` (user brain masks,
two-pass), :class:`MapsConfig` (R2*, SWI, minIP, χ-separation),
:class:`RegionsConfig` (registration, atlases, segmentations, templateflow)
and :class:`EngineConfig` (processes, threads, memory, Nipype plugin).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from qsmflow import __version__


def _path(value) -> Path | None:
    return None if value in (None, '') else Path(value)


@dataclass(frozen=True)
class PathsConfig:
    """Where the run reads and writes."""

    #: Root of the input BIDS dataset (absolute).
    bids_dir: Path
    #: Root of the output derivatives dataset (absolute; outside ``bids_dir``).
    output_dir: Path
    #: Nipype work directory, reused as cache by reruns (``-w``; default
    #: ``OUT_DIR/../work``; absolute).
    work_dir: Path


@dataclass(frozen=True)
class SelectionConfig:
    """Which acquisitions of the input dataset are processed, and how they are read."""

    #: Participant labels without ``sub-`` (``--participant-label``); empty: all.
    participant_labels: tuple = ()
    #: Session labels without ``ses-`` (``--session-label``); empty: all.
    session_labels: tuple = ()
    #: The ``--bids-filter-file`` given (absolute), or None.
    bids_filter_file: Path | None = None
    #: Its PyBIDS filters (``{"megre": {entity: value}}``), or None.
    bids_filters: dict | None = None
    #: B0 in tesla for sidecars without ``MagneticFieldStrength`` (``--field-strength``).
    field_strength: float | None = None
    #: Do not run bids-validator-deno on the input (``--skip-bids-validation``).
    skip_bids_validation: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    """Which algorithm runs at each reconstruction step (:mod:`qsmflow.config.presets`)."""

    #: Preset name or JSON file (``--preset``).
    preset: str = 'default'
    #: The preset resolved with the command-line overrides (``--unwrapping``... and the
    #: masking options of :class:`MasksConfig`): ``{step: {"method", "params", ...}}``, as
    #: :func:`qsmflow.workflows.qsm.init_qsm_wf` takes it.
    steps: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MasksConfig:
    """Brain-mask options that do not depend on the masking method, resolved: the flag,
    else the preset's ``masking`` options (the same values as in
    :attr:`PipelineConfig.steps`)."""

    #: BIDS derivatives folder of the user's ``…_desc-brain_mask.nii[.gz]``
    #: (``--brain-masks``, absolute), or None for the automatic mask.
    brain_masks: Path | None = None
    #: Two-pass reconstruction (``--two-pass``/``--no-two-pass``); None: not resolved.
    two_pass: bool | None = None


@dataclass(frozen=True)
class MapsConfig:
    """The other maps of the acquisition, resolved: the flag, else the preset's ``r2star``
    and ``swi`` steps, else the qsm/ defaults (the same values as in
    :attr:`PipelineConfig.steps`)."""

    #: R2* estimator (``--r2star-method``): one of :data:`qsmflow.qsm.relaxometry.METHODS`.
    r2star_method: str = 'arlo'
    #: Whether SWI and its minIP are computed (``--swi``/``--no-swi``).
    swi: bool = True
    #: minIP slab thickness in mm (``--minip-slab-mm``); None: the default of
    #: :func:`qsmflow.qsm.swi.minimum_intensity_projection`.
    minip_slab_mm: float | None = None
    #: Whether χ is split into paramagnetic and diamagnetic parts
    #: (``--chi-separation``/``--no-chi-separation``; needs ≥ 2 echoes for R2*).
    chi_separation: bool = True
    #: Spin-echo R2 (1/s) assumed by χ-separation (``--r2-hz``); None: the default of
    #: :func:`qsmflow.qsm.chi_separation.default_r2_hz` at the acquisition's field.
    r2_hz: float | None = None
    #: BIDS derivatives folder of the user's spin-echo R2 maps in 1/s,
    #: ``…_R2map.nii[.gz]`` (``--r2-map``, absolute), used by χ-separation instead of
    #: ``r2_hz``; None: the scalar R2.
    r2_maps: Path | None = None


@dataclass(frozen=True)
class CustomAtlas:
    """A user atlas (``--atlas``, ``--atlas-labels``, ``--atlas-template[-mask]``)."""

    #: Label image (absolute).
    image: Path
    #: Lookup table (index, name) of the labels (absolute).
    lut: Path
    #: Template image the labels are defined on (absolute).
    template_image: Path
    #: Brain mask of that template, or None (a skull-stripped template).
    template_mask: Path | None = None


@dataclass(frozen=True)
class RegionsConfig:
    """Template registration, atlas labels and regional tables."""

    #: templateflow identifier of the registration template (``--template``).
    template: str = 'MNI152NLin2009cAsym'
    #: templateflow resolution of the registration target (``--template-resolution``).
    template_resolution: int | None = 2
    #: Atlas names of ``bids_specs/atlases.json`` (``--atlases``); None: the defaults (a
    #: default atlas that cannot be fetched is skipped with a warning, a named one is an
    #: error).
    atlases: tuple | None = None
    #: The user atlas, or None.
    custom_atlas: CustomAtlas | None = None
    #: BIDS derivatives folder of the user's ``…_dseg.nii[.gz]`` and ``dseg.tsv``
    #: (``--segmentations``, absolute), or None.
    segmentations: Path | None = None
    #: Erode every region by one voxel (``--erode-rois``).
    erode: bool = False
    #: χ-driven refinement of the atlas labels around the iron-rich nuclei
    #: (``--refine-nuclei``/``--no-refine-nuclei``).
    refine_nuclei: bool = True
    #: Atlas-initialised segmentation of the iron-rich nuclei on χ before the tables
    #: (``--segment-nuclei``; off: on the real-anatomy phantom it helps only labels the
    #: χ-driven refinement has not reached, see README).
    segment_nuclei: bool = False
    #: Registrations on every allowed thread (``--fast-registration``): faster, but not
    #: bitwise reproducible.
    fast_registration: bool = False
    #: Registration settings (``--registration-pyramid``): a key of
    #: :data:`qsmflow.interfaces.registration.PYRAMIDS` (``'quick'``: linear stages at low
    #: resolution only, 20–30 % less CPU, mean Dice −0.004 on the real-anatomy phantom).
    registration_pyramid: str = 'default'
    #: No template registration (``--skip-registration``).
    skip_registration: bool = False
    #: Folder the templateflow client is rooted at; None: ``$TEMPLATEFLOW_HOME`` or
    #: templateflow's default, as it is when the query runs.
    templateflow_home: Path | None = None
    #: Participant level: the study template folder to register through
    #: (``--study-template``, absolute), or None.
    study_template: Path | None = None
    #: Group level: build the study template instead of the cohort tables
    #: (``--build-study-template``), with this many iterations
    #: (``--study-template-iterations``).
    build_study_template: bool = False
    study_template_iterations: int = 3


@dataclass(frozen=True)
class EngineConfig:
    """How the workflow is executed."""

    #: Processes for Nipype (``--nprocs``).
    nprocs: int = 1
    #: Threads per process (``--omp-nthreads``; resolved: ``nprocs`` when not given).
    omp_nthreads: int = 1
    #: Where the FFT-bound steps compute (``--device``: ``cpu``, ``gpu``, ``auto``;
    #: :mod:`qsmflow.qsm.device`).
    device: str = 'cpu'
    #: Memory MultiProc may use at once in GB (``--mem-gb``), or None: what the machine has.
    mem_gb: float | None = None
    #: ``--plugin`` choice (:data:`qsmflow.execution.engines.NIPYPE_PLUGINS`); resolved:
    #: ``linear`` with one process, ``multiproc`` otherwise, when not given.
    plugin: str = 'linear'
    #: The user's ``--plugin-args`` (parsed JSON), passed to Nipype after qsmflow's own.
    plugin_args: dict = field(default_factory=dict)


_SECTIONS = {'paths': PathsConfig, 'selection': SelectionConfig,
             'pipeline': PipelineConfig, 'masks': MasksConfig, 'maps': MapsConfig,
             'regions': RegionsConfig,
             'engine': EngineConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``qsmflow`` run was asked to do (frozen; built once, then read)."""

    #: Where the run reads and writes.
    paths: PathsConfig
    #: ``'participant'`` or ``'group'``.
    analysis_level: str = 'participant'
    #: Which inputs.
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    #: Which algorithms.
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    #: User brain masks and two-pass.
    masks: MasksConfig = field(default_factory=MasksConfig)
    #: R2*/T2*, SWI and minIP.
    maps: MapsConfig = field(default_factory=MapsConfig)
    #: Registration, atlases and regional tables.
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    #: Execution engine and resources.
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: qsmflow version that built the configuration.
    version: str = __version__

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dictionary (paths as strings, tuples as lists).

        Examples
        --------
        >>> cfg = RunConfig(PathsConfig(Path('/b'), Path('/o'), Path('/w')))
        >>> cfg.to_dict()['paths']
        {'bids_dir': '/b', 'output_dir': '/o', 'work_dir': '/w'}
        >>> RunConfig.from_dict(cfg.to_dict()) == cfg
        True
        """
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """The configuration :meth:`to_dict` wrote."""
        kwargs = {k: v for k, v in data.items() if k not in _SECTIONS}
        for key, section in _SECTIONS.items():
            if key in data:
                kwargs[key] = _section(section, data[key])
        return cls(**kwargs)

    def to_file(self, path) -> Path:
        """Write the configuration as JSON (atomically); return the path."""
        from qsmflow.bids.atomic import write_json

        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_file(cls, path) -> RunConfig:
        """Read a configuration :meth:`to_file` wrote."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _section(cls, data: dict):
    """Rebuild section ``cls`` from its JSON form (paths and tuples restored)."""
    kwargs = {}
    for fld in dataclasses.fields(cls):
        if fld.name not in data:
            continue
        value = data[fld.name]
        kind = str(fld.type)
        if fld.name == 'custom_atlas' and value is not None:
            value = _section(CustomAtlas, value)
        elif kind.startswith('Path') and value is not None:
            value = _path(value)
        elif kind.startswith('tuple') and value is not None:
            value = tuple(value)
        kwargs[fld.name] = value
    return cls(**kwargs)
