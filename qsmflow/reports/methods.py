# SPDX-License-Identifier: Apache-2.0
"""Methods text and 2024-consensus check of one acquisition, from its sidecars.

Everything here reads what the steps recorded (``QSMProcessing`` of the published
sidecars, the raw sidecar, the image header): the text names each step's algorithm with
every numeric parameter, the acquisition's facts the consensus asks to report, and the
citations (``qsmflow/data/boilerplate.bib``) of each method used.
"""
from __future__ import annotations

import re
from importlib import resources

#: Algorithm (last part of the qsm function name, or a parameter value) → bib keys.
CITATIONS = {
    'romeo': ('romeo',), 'laplacian': ('laplacian_unwrap',), 'nlcomplex': ('nlfit',),
    'pdf': ('pdf',), 'vsharp': ('sharp', 'vsharp'), 'resharp': ('resharp',), 'lbv': ('lbv',),
    'ismv': ('ismv',), 'tv': ('tv_admm',), 'rts': ('rts',), 'medi': ('medi',),
    'ndi': ('ndi',), 'ilsqr': ('ilsqr',), 'lsqr': ('vsharp',), 'tkd': ('tkd',),
    'arlo': ('arlo',), 'swi': ('clearswi',), 'chi_separation': ('chisep',),
}
#: Inversions the consensus recommends (iterative, with a sparsity prior).
SPARSE_INVERSIONS = ('tv', 'medi', 'rts', 'ndi')
#: Background-field removals the consensus recommends (SHARP family, PDF).
RECOMMENDED_BGREMOVE = ('pdf', 'vsharp', 'resharp')


def acquisition_facts(steps: list, raw: dict, zooms_mm, shape, version: str) -> dict:
    """Facts of the acquisition: field, echo times (s), TR, voxel size, matrix, vendor.

    >>> f = acquisition_facts([{'Step': 'input', 'EchoTime': [0.004, 0.012, 0.02],
    ...     'MagneticFieldStrength': 3.0}], {'RepetitionTime': 0.03}, (1, 1, 2), (9, 9, 9), '1')
    >>> f['te_ms'], f['uniform_spacing'], f['isotropic']
    ([4.0, 12.0, 20.0], True, False)
    """
    inp = next((s for s in steps if s.get('Step') == 'input'), {})
    te = [float(t) for t in inp.get('EchoTime') or raw.get('EchoTime') or []]
    te_ms = [round(t * 1000, 3) for t in te]
    diffs = [b - a for a, b in zip(te_ms, te_ms[1:])]
    return {
        'field_t': inp.get('MagneticFieldStrength', raw.get('MagneticFieldStrength')),
        'te_ms': te_ms, 'n_echoes': len(te_ms),
        'uniform_spacing': bool(diffs) and max(diffs) - min(diffs) < 0.01,
        'tr_s': raw.get('RepetitionTime'), 'flip_deg': raw.get('FlipAngle'),
        'acq_type': raw.get('MRAcquisitionType'),
        'vendor': ' '.join(str(raw[k]) for k in ('Manufacturer', 'ManufacturersModelName')
                           if raw.get(k)),
        'partial_fourier': raw.get('PartialFourier'),
        'readout': raw.get('ReadoutPolarity') or raw.get('MultiEchoReadout'),
        'voxel_mm': [round(float(z), 3) for z in zooms_mm],
        'isotropic': max(zooms_mm) - min(zooms_mm) < 0.01, 'matrix': list(shape)[:3],
        'b0_dir': inp.get('B0Direction'), 'layout': inp.get('InputLayout'),
        'parts': inp.get('ComplexParts'), 'version': version,
    }


def _echo_text(te_ms: list) -> str:
    """``TE1:ΔTE:TEmax`` in ms (or the list when unequally spaced).

    >>> _echo_text([4.0, 12.0, 20.0]), _echo_text([3.0, 5.0, 11.0]), _echo_text([7.0])
    ('4:8:20 ms (3 echoes)', '3, 5, 11 ms (3 echoes)', '7 ms (1 echo)')
    """
    n = len(te_ms)
    plural = f'({n} echo{"es" if n != 1 else ""})'
    diffs = [b - a for a, b in zip(te_ms, te_ms[1:])]
    if diffs and max(diffs) - min(diffs) < 0.01:
        return f'{te_ms[0]:g}:{diffs[0]:g}:{te_ms[-1]:g} ms {plural}'
    return f'{", ".join(f"{t:g}" for t in te_ms)} ms {plural}'


def _value(v) -> str:
    if v is None:
        return 'auto'
    if isinstance(v, float):
        return f'{v:.4g}'
    if isinstance(v, (list, tuple)):
        return '[' + ', '.join(_value(x) for x in v) + ']'
    return str(v)


def step_text(step: dict) -> tuple[str, list]:
    """One step as ``name: algorithm (param=value, …)`` and its citation keys.

    >>> step_text({'Step': 'background-removal', 'Algorithm': 'qsmflow.qsm.bgremove.pdf',
    ...            'Parameters': {'tol': 0.001, 'max_iter': 30}})
    ('background-removal: pdf (qsmflow.qsm.bgremove.pdf; tol=0.001, max_iter=30)', ['pdf'])
    """
    if step.get('Step') == 'resampling':  # the template registration's record
        return (f'registration to the template: {step.get("Software")}, rigid, affine '
                '(Mattes mutual information) and SyN of the brain-masked magnitude; chi '
                f'resampled with interpolation={step.get("Interpolation")}', ['syn'])
    algo = step.get('Algorithm') or 'n/a'
    short = algo.rsplit('.', 1)[-1]
    params = dict(step.get('Parameters') or {})
    params.pop('return_info', None)
    keys = list(CITATIONS.get(short, ()))
    for value in params.values():
        if isinstance(value, str):
            keys += [k for k in CITATIONS.get(value, ()) if k not in keys]
    reg = step.get('Regularisation') or {}
    if reg.get('lam') is not None:
        params['lam'] = f'{reg["lam"]:.4g} (chosen: {reg.get("criterion", "")})'
        if reg.get('shell_weight') is not None:
            params['shell_weight'] = f'{reg["shell_weight"]:.3g} (chosen)'
        strength = (reg.get('reweighting') or {}).get('strength')
        if strength:  # the reweighted second pass ran
            params['reweight'] = (f'{strength:.3g} (a second, reweighted pass: '
                                  f'{reg["reweighting"].get("criterion", "")})')
            keys.append('reweighted_l1')
    text = ', '.join(f'{k}={_value(v)}' for k, v in params.items())
    return f'{step.get("Step")}: {short} ({algo}{"; " + text if text else ""})', keys


def methods_paragraph(steps: list, facts: dict, reference: dict | None = None) -> tuple:
    """The methods paragraph (plain text) and its citation keys, in order of use."""
    f = facts
    parts = [f'Multi-echo gradient-echo data ({f["acq_type"] or "acquisition type not stated"}'
             f'{", " + f["vendor"] if f["vendor"] else ""}) at {_value(f["field_t"])} T, '
             f'echo times {_echo_text(f["te_ms"])}, TR '
             f'{_value(f["tr_s"] * 1000) + " ms" if f["tr_s"] else "not stated"}, voxel size '
             f'{" x ".join(f"{v:g}" for v in f["voxel_mm"])} mm, matrix '
             f'{" x ".join(str(m) for m in f["matrix"])}'
             f'{", flip angle " + _value(f["flip_deg"]) + " deg" if f["flip_deg"] else ""}, '
             f'were reconstructed with qsmflow {f["version"]} (Nipype [nipype]), B0 direction '
             f'{_value(f["b0_dir"])} in voxel axes (from the image affine).']
    keys = ['nipype']
    for step in steps:
        if step.get('Step') == 'input':
            continue
        text, cites = step_text(step)
        parts.append(text + (' [' + ', '.join(cites) + ']' if cites else '') + '.')
        keys += [k for k in cites if k not in keys]
    if reference:
        parts.append(reference['text'])
    return ' '.join(parts), keys


def reference_text(steps: list, rows: dict) -> dict | None:
    """The reference statement: method, value, and the mean ± SD of χ in the reference
    region against the whole brain (``rows``: ``{'reference': (mean, sd), 'whole_brain':
    (mean, sd)}`` from a regional table, may be empty)."""
    ref = next((s for s in steps if s.get('Step') == 'reference'), None)
    if ref is None:
        return None
    method = (ref.get('Parameters') or {}).get('method')
    text = (f'Chi was referenced to the {"whole-brain mean" if method == "mean" else method} '
            f'(value subtracted {_value(ref.get("ReferenceValue"))} ppm')
    if 'reference' in rows and 'whole_brain' in rows:
        (rm, rs), (wm, ws) = rows['reference'], rows['whole_brain']
        rm, wm = round(rm, 4) + 0.0, round(wm, 4) + 0.0  # no '-0.0000'
        text += (f'; chi in the reference region {rm:.4f} ± {rs:.4f} ppm, whole brain '
                 f'{wm:.4f} ± {ws:.4f} ppm')
    return {'method': method, 'text': text + ').'}


def consensus_checks(steps: list, facts: dict) -> list[tuple[bool | None, str]]:
    """``(follows, why)`` per 2024-consensus recommendation (None: cannot tell)."""
    algo = {s.get('Step'): s for s in steps}

    def short(name):
        return str((algo.get(name) or {}).get('Algorithm', '')).rsplit('.', 1)[-1]

    fit = (algo.get('unwrapping+echo-fit') or {}).get('Parameters') or {}
    field = facts['field_t'] or 3.0
    te_max = facts['te_ms'][-1] if facts['te_ms'] else 0.0
    te_goal = 30.0 * 3.0 / float(field)
    pf = facts['partial_fourier']
    out = [
        (facts['acq_type'] == '3D' if facts['acq_type'] else None,
         f'3D acquisition (MRAcquisitionType: {facts["acq_type"] or "not stated"})'),
        (facts['n_echoes'] >= 3, f'at least 3 echoes ({facts["n_echoes"]})'),
        (facts['uniform_spacing'] if facts['n_echoes'] > 2 else None,
         'uniform echo spacing'),
        (te_max >= te_goal, f'last echo near the tissue T2* ({te_max:g} ms; aimed at '
                            f'>= {te_goal:.0f} ms at {field:g} T)'),
        (facts['isotropic'] and max(facts['voxel_mm']) <= 1.0,
         f'isotropic voxels of at most 1 mm ({" x ".join(f"{v:g}" for v in facts["voxel_mm"])} '
         'mm)'),
        (None if not facts['readout'] else str(facts['readout']).lower().startswith('mono'),
         f'monopolar readout ({facts["readout"] or "not stated in the sidecars"})'),
        (None if pf in (None, '') else float(pf) >= 1.0,
         f'no partial Fourier ({"not stated" if pf in (None, "") else pf})'),
        (fit.get('unwrapping') != 'laplacian' if fit else None,
         f'exact unwrapping, path or region growing ({fit.get("unwrapping", "n/a")})'),
        (fit.get('combination') in ('wls', 'nlcomplex') if fit else None,
         f'weighted or nonlinear echo combination ({fit.get("combination", "n/a")})'),
        ('phase-quality-masking' in algo or 'strict-masking' in algo,
         'brain mask with phase-quality exclusion'
         + ('' if 'phase-quality-masking' in algo else
            ' (not applied: ' + ('a given mask is used as it is)' if short('masking') ==
                                 'user-supplied' or (algo.get('masking') or {}).get(
                                     'Algorithm') == 'user-supplied' else 'magnitude only)'))),
        (short('background-removal') in RECOMMENDED_BGREMOVE,
         f'SHARP-family or PDF background removal ({short("background-removal")})'),
        (short('dipole-inversion') in SPARSE_INVERSIONS,
         f'iterative inversion with a sparsity prior ({short("dipole-inversion")})'),
        ('reference' in algo, 'reference stated, whole-brain mean recorded'),
    ]
    return out


def bibliography() -> dict:
    """``{key: formatted reference}`` from ``qsmflow/data/boilerplate.bib``."""
    text = resources.files('qsmflow.data').joinpath('boilerplate.bib').read_text()
    out = {}
    for key, body in re.findall(r'@\w+\{(\w+),(.*?)\}\s*(?=@|\Z)', text, flags=re.S):
        fields = dict(re.findall(r'(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}', body))
        clean = {k: re.sub(r'[{}]', '', v).replace('--', '-').replace('$\\chi$', 'χ')
                 for k, v in fields.items()}
        authors = clean.get('author', '').split(' and ')
        who = authors[0] + (' et al.' if len(authors) > 1 else '')
        out[key] = (f'{who} {clean.get("title", "")}. {clean.get("journal", "")} '
                    f'{clean.get("year", "")};{clean.get("volume", "")}:{clean.get("pages", "")}. '
                    f'doi:{clean.get("doi", "")}')
    return out

