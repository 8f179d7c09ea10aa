# SPDX-License-Identifier: Apache-2.0
"""Pipeline presets: which algorithm runs at each step, with which options.

Presets are JSON files in ``qsmflow/data/presets`` (or any file a user gives); command-line
flags override single steps. Algorithm defaults themselves live in the signatures of the
``qsmflow.qsm`` functions, never here.

Each step is ``{"method": ..., "params": {...}}``. The ``masking`` step also takes
(see :func:`qsmflow.workflows.qsm.init_qsm_wf`):

* ``brain``: the brain-extraction algorithm, ``'adaptive'`` (default:
  :func:`qsmflow.qsm.brain_extraction.extract_brain`, removes scalp, skull, face and neck)
  or ``'threshold'`` (:func:`qsmflow.qsm.mask.brain_mask`, the magnitude threshold);
  ``params`` are that function's options;
* ``quality_params``: options of :func:`qsmflow.qsm.mask.quality_mask` (method
  ``'quality'``);
* ``two_pass`` (bool, default false): two-pass reconstruction, strict phase-quality mask
  then the filled mask, combined;
* ``strict_params``: options of :func:`qsmflow.qsm.mask.strict_mask` (with ``two_pass``);
* ``brain_masks``: a BIDS derivatives folder of the user's
  ``sub-<l>[_ses-<l>]…_desc-brain_mask.nii[.gz]``, used instead of the automatic mask.

These options are kept when the masking method is overridden.

Two optional steps make the other maps of the acquisition (a preset may leave them out;
:func:`with_maps_options` fills them in):

* ``r2star``: ``{"method": ..., "params": {...}}`` of
  :func:`qsmflow.qsm.relaxometry.r2star` (``method`` one of
  :data:`qsmflow.qsm.relaxometry.METHODS`);
* ``swi``: ``{"enabled": true, "params": {...}, "minip_params": {...}}``, options of
  :func:`qsmflow.qsm.swi.swi` and :func:`qsmflow.qsm.swi.minimum_intensity_projection`
  (e.g. ``{"slab_mm": 8}``);
* ``chi_separation``: ``{"enabled": true, "params": {...}}``, options of
  :func:`qsmflow.qsm.chi_separation.chi_separation` (e.g. ``{"r2_hz": 14.1}``), and
  ``r2_maps``: a BIDS derivatives folder of ``sub-<l>[_ses-<l>]…_R2map.nii[.gz]`` (1/s),
  used instead of ``r2_hz``.
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

STEPS = ('masking', 'unwrapping', 'echo_combination', 'bf_removal', 'inversion', 'reference')
#: Steps a preset may leave out (their defaults come from the qsm/ function signatures).
OPTIONAL_STEPS = ('r2star', 'swi', 'chi_separation', 'clinical')

#: Options of a step that do not depend on its method (kept by :func:`with_overrides`).
STEP_OPTIONS = {'masking': ('brain', 'two_pass', 'strict_params', 'brain_masks')}


def available_presets() -> list[str]:
    """Names of the presets shipped with qsmflow."""
    folder = resources.files('qsmflow.data').joinpath('presets')
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith('.json'))


def load_preset(name_or_file: str = 'default') -> dict:
    """Load a shipped preset by name, or a user's JSON file by path.

    Raises
    ------
    ValueError
        For an unknown name, an unreadable file or a file missing a step.
    """
    path = Path(name_or_file)
    if path.suffix == '.json' or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f'cannot read preset file {path}: {exc.strerror}') from None
    elif name_or_file in available_presets():
        text = resources.files('qsmflow.data').joinpath('presets', f'{name_or_file}.json').read_text()
    else:
        raise ValueError(f'unknown preset {name_or_file!r}; choose one of '
                         f'{", ".join(available_presets())} or give a JSON file')
    try:
        preset = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'preset {name_or_file} is not valid JSON ({exc})') from None
    missing = [s for s in STEPS if s not in preset]
    if missing:
        raise ValueError(f'preset {name_or_file} lacks step(s) {", ".join(missing)}')
    return preset


def with_overrides(preset: dict, **methods) -> dict:
    """Copy of ``preset`` with the method of each named step replaced (``None`` keeps it).

    A new method's ``params`` are reset (the preset's were for another function); the same
    method keeps them. The method-independent options of the step (:data:`STEP_OPTIONS`,
    e.g. masking's ``two_pass``) are kept.

    Examples
    --------
    >>> p = {**load_preset('default'), 'bf_removal': {'method': 'pdf',
    ...                                               'params': {'erode_voxels': 1}}}
    >>> with_overrides(p, bf_removal='pdf')['bf_removal']['params']
    {'erode_voxels': 1}
    >>> with_overrides(p, bf_removal='vsharp')['bf_removal']
    {'method': 'vsharp', 'params': {}}
    """
    out = copy.deepcopy(preset)
    for step, method in methods.items():
        if method is not None:
            if step not in STEPS:
                raise ValueError(f'unknown pipeline step {step!r}')
            if out[step].get('method') == method:
                continue
            kept = {k: out[step][k] for k in STEP_OPTIONS.get(step, ()) if k in out[step]}
            out[step] = {'method': method, 'params': {}, **kept}
    return out


def with_masking_options(pipeline: dict, *, two_pass: bool | None = None,
                         brain_masks=None, brain: str | None = None) -> dict:
    """Copy of ``pipeline`` with masking's ``two_pass``, ``brain_masks`` and ``brain`` set.

    ``None`` keeps what the preset says (``--two-pass``/``--no-two-pass``,
    ``--brain-masks``, ``--brain-extraction``); ``brain_masks`` is stored as an absolute
    path.

    Examples
    --------
    >>> p = with_masking_options(load_preset('default'), two_pass=True)
    >>> p['masking']['two_pass'], 'brain_masks' in p['masking']
    (True, False)
    """
    out = copy.deepcopy(pipeline)
    if two_pass is not None:
        out['masking']['two_pass'] = bool(two_pass)
    if brain_masks is not None:
        out['masking']['brain_masks'] = str(Path(brain_masks).expanduser().absolute())
    if brain is not None:
        out['masking']['brain'] = brain
    return out


def with_maps_options(pipeline: dict, *, r2star_method: str | None = None,
                      swi: bool | None = None, minip_slab_mm: float | None = None,
                      chi_separation: bool | None = None, r2_hz: float | None = None,
                      r2_maps=None) -> dict:
    """Copy of ``pipeline`` with the ``r2star``, ``swi`` and ``chi_separation`` steps resolved.

    ``None`` keeps what the preset says; what neither says takes the default of the qsm/
    function (:func:`qsmflow.qsm.relaxometry.r2star`'s ``method``, SWI and χ-separation
    on). Used by ``--r2star-method``, ``--swi``/``--no-swi``, ``--minip-slab-mm``,
    ``--chi-separation``/``--no-chi-separation``, ``--r2-hz`` and ``--r2-map``
    (``r2_maps``: a folder, stored as an absolute path in ``chi_separation['r2_maps']``;
    each acquisition's file comes from pre-flight; it needs χ-separation on).

    Examples
    --------
    >>> p = with_maps_options(load_preset('default'), minip_slab_mm=12.0)
    >>> p['r2star']['method'], p['swi']['enabled'], p['swi']['minip_params']
    ('arlo', True, {'slab_mm': 12.0})
    >>> with_maps_options(p, swi=False)['swi']['enabled']
    False
    >>> with_maps_options(p, r2_hz=15)['chi_separation']
    {'enabled': True, 'params': {'r2_hz': 15.0}}
    """
    import inspect

    from qsmflow.qsm.relaxometry import METHODS, r2star

    out = copy.deepcopy(pipeline)
    r2 = dict(out.get('r2star') or {})
    default = inspect.signature(r2star).parameters['method'].default
    r2['method'] = r2star_method or r2.get('method') or default
    if r2['method'] not in METHODS:
        raise ValueError(f"unknown R2* method {r2['method']!r}; choose one of {METHODS}")
    r2.setdefault('params', {})
    sw = dict(out.get('swi') or {})
    sw['enabled'] = bool(sw.get('enabled', True) if swi is None else swi)
    sw.setdefault('params', {})
    sw['minip_params'] = dict(sw.get('minip_params') or {})
    if minip_slab_mm is not None:
        if not minip_slab_mm > 0:
            raise ValueError(f'the minIP slab must be positive (mm), got {minip_slab_mm}')
        sw['minip_params']['slab_mm'] = float(minip_slab_mm)
    cs = dict(out.get('chi_separation') or {})
    cs['enabled'] = bool(cs.get('enabled', True) if chi_separation is None else chi_separation)
    cs['params'] = dict(cs.get('params') or {})
    if r2_hz is not None:
        if not r2_hz >= 0:
            raise ValueError(f'R2 must be >= 0 (1/s), got {r2_hz}')
        cs['params']['r2_hz'] = float(r2_hz)
    if r2_maps is not None:
        cs['r2_maps'] = str(Path(r2_maps).expanduser().absolute())
    if cs.get('r2_maps') and not cs['enabled']:
        raise ValueError('--r2-map is an input of chi-separation: drop --no-chi-separation '
                         "(or the preset's chi_separation enabled: false), or drop --r2-map")
    out['r2star'], out['swi'], out['chi_separation'] = r2, sw, cs
    return out


def with_clinical_options(pipeline: dict, *, venography: bool | None = None,
                          foci: bool | None = None, oef: bool | None = None,
                          hematocrit: float | None = None,
                          mip_slab_mm: float | None = None) -> dict:
    """Copy of ``pipeline`` with its ``clinical`` step (issue 17) resolved: ``venography``,
    ``foci`` and ``oef`` (each off unless the flag or the preset turns it on),
    ``hematocrit`` (fraction, for the OEF; None: :data:`qsmflow.qsm.oef.DEFAULT_HEMATOCRIT`)
    and ``mip_slab_mm`` (venography MIP slab; None: the qsm/ default). Used by
    ``--venography``, ``--foci``, ``--oef``, ``--hematocrit`` and ``--mip-slab-mm``.

    Examples
    --------
    >>> p = with_clinical_options(load_preset('default'), foci=True, hematocrit=0.45)
    >>> p['clinical']
    {'venography': False, 'foci': True, 'oef': False, 'hematocrit': 0.45}
    >>> with_clinical_options(p, hematocrit=1.2)
    Traceback (most recent call last):
    ...
    ValueError: the haematocrit must be a fraction in (0, 1), got 1.2
    """
    out = copy.deepcopy(pipeline)
    cl = dict(out.get('clinical') or {})
    for key, value in (('venography', venography), ('foci', foci), ('oef', oef)):
        cl[key] = bool(cl.get(key, False) if value is None else value)
    if hematocrit is not None:
        if not 0 < hematocrit < 1:
            raise ValueError(f'the haematocrit must be a fraction in (0, 1), got {hematocrit}')
        cl['hematocrit'] = float(hematocrit)
    if mip_slab_mm is not None:
        if not mip_slab_mm > 0:
            raise ValueError(f'the MIP slab must be positive (mm), got {mip_slab_mm}')
        cl['mip_slab_mm'] = float(mip_slab_mm)
    out['clinical'] = cl
    return out
