# SPDX-License-Identifier: Apache-2.0
"""The participant report ``OUT_DIR/sub-<label>.html`` (fMRIPrep's place).

Assembled after the participant-level run from what the workflow published: one section
per acquisition (session/acq/run) with its reportlets (``sub-<l>/figures/``), QC metrics,
regional tables, a methods paragraph and the 2024-consensus check generated from the
sidecars and a link to the time each step took (``logs/<name>_steptimes.tsv``, from the
log), then the participant's warnings and errors with the path of the log. The page is
self-contained (relative links only, no script, no web font, readable offline) and the
same, byte for byte, for the same outputs.
"""
from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

from qsmflow import __version__
from qsmflow.reports import methods, qc_table, reportlets

_CSS = ('body{font-family:sans-serif;max-width:1150px;margin:auto;padding:0 1em;color:#222}'
        'h2{border-bottom:2px solid #468;margin-top:2em}table{border-collapse:collapse;'
        'font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;'
        'text-align:left}figure{margin:1em 0}figure img{max-width:100%;background:#000}'
        'figure object{width:100%;max-width:720px;'
        'background:#000}figcaption{font-size:12px;color:#444}.box{border:1px solid #999;'
        'padding:.5em 1em;background:#f6f6f0}.warn{color:#a40}.ok{color:#060}.na{color:#777}'
        '.methods{font-size:13px;line-height:1.45}pre{font-size:11px;white-space:pre-wrap}')


def write_participant_report(out_dir, subject: str, *, bids_dir=None,
                             error: str | None = None) -> Path:
    """Write ``out_dir/sub-<subject>.html``; return its path."""
    from qsmflow.bids.atomic import write_text
    from qsmflow.execution.progress import log_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f'sub-{subject}.html'
    chimaps = find_chimaps(out_dir, subject)
    log = log_path(out_dir, subject)
    run_lines = _last_run(log)
    body = [f'<h1>qsmflow report: sub-{html.escape(subject)}</h1>',
            f'<p>qsmflow {html.escape(__version__)}; {len(chimaps)} acquisition(s): '
            + ', '.join(f'<a href="#{_prefix(c)}">{_prefix(c)}</a>' for c in chimaps)
            + '.</p>']
    if error:
        body.append(f'<p class="box warn"><b>Failed:</b> {html.escape(error)}</p>')
    for chimap in chimaps:
        body += _section(out_dir, chimap, bids_dir, run_lines)
    body += _errors(out_dir, log, run_lines, error)
    page = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>qsmflow: sub-{html.escape(subject)}</title><style>{_CSS}</style></head>'
            '<body>\n' + '\n'.join(body) + '\n</body></html>\n')
    write_text(path, page)
    return path


def write_participant_reports(out_dir, subjects, failures: dict, *, bids_dir=None) -> list:
    """:func:`write_participant_report` for each of ``subjects`` (``failures``:
    ``{subject: reason}``); a report that cannot be written is a warning, never a failed
    run (the maps are published already)."""
    import sys

    written = []
    for subject in subjects:
        try:
            written.append(write_participant_report(out_dir, subject, bids_dir=bids_dir,
                                                     error=failures.get(subject)))
        except (OSError, ValueError, KeyError) as exc:
            print(f'qsmflow: warning: sub-{subject}: report not written: {exc}',
                  file=sys.stderr)
    if written:
        print(f'qsmflow: participant report(s): {", ".join(str(p) for p in written)}')
    return written


def find_chimaps(out_dir, subject: str) -> list[Path]:
    """The native χ maps (one per acquisition) of ``subject`` under ``out_dir``."""
    root = Path(out_dir) / f'sub-{subject}'
    return sorted(p for p in root.glob('**/anat/*_Chimap.nii.gz')
                  if '_space-' not in p.name and '_desc-' not in p.name)


def _prefix(chimap: Path) -> str:
    return chimap.name[:-len('_Chimap.nii.gz')]


def _section(out_dir: Path, chimap: Path, bids_dir, run_lines: list) -> list[str]:
    import nibabel as nb

    prefix = _prefix(chimap)
    meta = json.loads(chimap.with_name(prefix + '_Chimap.json').read_text())
    steps = _all_steps(chimap.parent, prefix, meta)
    img = nb.load(chimap)
    facts = methods.acquisition_facts(steps, _raw_sidecar(meta, bids_dir, out_dir),
                                      img.header.get_zooms()[:3], img.shape,
                                      meta.get('QSMFlowVersion', __version__))
    tables = sorted(chimap.parent.glob(prefix + '_atlas-*_stats.tsv'))
    rows = _reference_rows(tables[0]) if tables else {}
    text, keys = methods.methods_paragraph(steps, facts, methods.reference_text(steps, rows))
    out = [f'<h2 id="{prefix}">{html.escape(prefix)}</h2>',
           '<h3>Acquisition</h3>', _facts_table(facts)]
    out += ['<h3>Reportlets</h3>'] + _figures(out_dir, chimap, prefix)
    qc_path = chimap.with_name(prefix + '_desc-qc_metrics.tsv')
    if qc_path.exists():
        out += ['<h3>QC metrics</h3>', _qc_table(out_dir, qc_path)]
    for table in tables:
        out += [f'<h3>Regional table: {html.escape(table.name)}</h3>',
                _regional_table(out_dir, table)]
    bib = methods.bibliography()
    out += ['<h3>Methods</h3>', f'<p class="methods">{html.escape(text)}</p>',
            '<ul class="methods">' + ''.join(
                f'<li>[{k}] {html.escape(bib[k])}</li>' for k in keys if k in bib) + '</ul>']
    out += ['<h3>2024 consensus (Magn Reson Med 2024;91:1834, doi:10.1002/mrm.30006)</h3>',
            _consensus_box(methods.consensus_checks(steps, facts))]
    out += _timings(out_dir, run_lines, prefix)
    return out


def _all_steps(folder: Path, prefix: str, meta: dict) -> list:
    """Steps of χ, then those only the other maps of the acquisition record (R2*, SWI,
    χ-separation, the template resampling), without repeats."""
    steps = list(meta.get('QSMProcessing', []))
    names = {s.get('Step') for s in steps}
    others = [folder / f'{prefix}_{s}.json' for s in (
        'R2starmap', 'desc-swi_swi', 'desc-minip_swi', 'desc-paramagnetic_Chimap')]
    others += sorted(folder.glob(f'{prefix}_space-*_Chimap.json'))
    for side in others:
        if side.exists():
            for step in json.loads(side.read_text()).get('QSMProcessing', []):
                if step.get('Step') not in names:
                    steps.append(step)
                    names.add(step.get('Step'))
    return steps


def _raw_sidecar(meta: dict, bids_dir, out_dir: Path) -> dict:
    """Sidecar of the raw phase (or first) image the χ map came from (``{}`` if unread)."""
    if bids_dir is None:
        desc = out_dir / 'dataset_description.json'
        raw = json.loads(desc.read_text()).get('DatasetLinks', {}).get('raw', '') \
            if desc.exists() else ''
        bids_dir = raw[len('file://'):] if raw.startswith('file://') else None
    sources = [s for s in meta.get('Sources', []) if s.startswith('bids:raw:')]
    sources.sort(key=lambda s: 'part-phase' not in s)
    for src in sources[:1]:
        if bids_dir is None:
            break
        side = Path(bids_dir) / re.sub(r'\.nii(\.gz)?$', '.json', src[len('bids:raw:'):])
        if side.exists():
            return json.loads(side.read_text())
    return {}


def _facts_table(f: dict) -> str:
    rows = [('field strength', f'{f["field_t"]} T'),
            ('echo times', methods._echo_text(f['te_ms'])),
            ('repetition time', f'{f["tr_s"] * 1000:g} ms' if f['tr_s'] else 'not stated'),
            ('voxel size', ' x '.join(f'{v:g}' for v in f['voxel_mm']) + ' mm'),
            ('matrix', ' x '.join(str(m) for m in f['matrix'])),
            ('acquisition', f['acq_type'] or 'not stated'),
            ('scanner', f['vendor'] or 'not stated'),
            ('input', f'{f["layout"]}, {f["parts"]}')]
    return _table(None, rows)


def _figures(out_dir: Path, chimap: Path, prefix: str) -> list[str]:
    folder = chimap.parent.parent / 'figures'
    out = []
    for name in reportlets.ORDER:
        found = [p for p in (folder / f'{prefix}_desc-{name}_qsm.png',
                             folder / f'{prefix}_desc-{name}_qsm.svg') if p.exists()]
        if not found:
            continue
        rel = html.escape(found[0].relative_to(out_dir).as_posix())
        tag = (f'<object type="image/svg+xml" data="{rel}" aria-label="{name}"></object>'
               if found[0].suffix == '.svg' else f'<img src="{rel}" alt="{name}">')
        out.append(f'<figure id="{prefix}-{name}">{tag}<figcaption><b>{name}</b>: '
                   f'{html.escape(reportlets.caption(name))}</figcaption></figure>')
    return out


def _qc_table(out_dir: Path, path: Path) -> str:
    row = qc_table.read_row(path)
    meta = json.loads(path.with_suffix('.json').read_text())
    rows = [(k, 'n/a' if v != v else f'{v:.4g}', meta.get(k, {}).get('Units', ''),
             meta.get(k, {}).get('Description', '')) for k, v in row.items()]
    link = html.escape(path.relative_to(out_dir).as_posix())
    return (f'<p><a href="{link}">{html.escape(path.name)}</a> (described in its JSON '
            'sidecar)</p>' + _table(('metric', 'value', 'units', 'what'), rows))


def _regional_table(out_dir: Path, path: Path) -> str:
    with open(path, newline='') as fobj:
        data = list(csv.DictReader(fobj, delimiter='\t'))
    cohort = _cohort_z(out_dir, path)
    cols = ['region', 'hemisphere', 'n_voxels', 'mean', 'median', 'std', 'mask_coverage']
    head = cols + (['cohort z'] if cohort else [])
    rows = [[r.get(c, '') for c in cols] + ([cohort.get((r['region'], r['hemisphere']), '')]
                                           if cohort else []) for r in data]
    return _table(head, rows)


def _cohort_z(out_dir: Path, table: Path) -> dict:
    """``{(region, hemisphere): z}`` of this table's participant from the group level's
    ``cohort_long.tsv`` when it exists (``{}`` otherwise)."""
    long = out_dir / 'group' / 'cohort_long.tsv'
    if not long.exists():
        return {}
    atlas = re.search(r'_atlas-([0-9A-Za-z]+)_', table.name)
    subject = table.name.split('_')[0][len('sub-'):]
    out = {}
    with open(long, newline='') as fobj:
        for r in csv.DictReader(fobj, delimiter='\t'):
            if (r.get('participant_id', '').removeprefix('sub-') == subject and atlas
                    and r.get('atlas') == atlas.group(1)):
                out[(r['region'], r['hemisphere'])] = r.get('z', '')
    return out


def _reference_rows(table: Path) -> dict:
    with open(table, newline='') as fobj:
        rows = {r['region']: (float(r['mean']), float(r['std']))
                for r in csv.DictReader(fobj, delimiter='\t')
                if r['region'] in ('reference', 'whole_brain')}
    return rows


def _consensus_box(checks) -> str:
    items = []
    for follows, text in checks:
        cls, mark = {True: ('ok', 'follows'), False: ('warn', 'does not follow'),
                     None: ('na', 'cannot tell')}[follows]
        items.append(f'<li class="{cls}">{mark}: {html.escape(text)}</li>')
    n_off = sum(1 for f, _ in checks if f is False)
    return (f'<div class="box"><p>{n_off} recommendation(s) not followed (a warning, not a '
            f'failure).</p><ul>{"".join(items)}</ul></div>')


def _last_run(log: Path) -> list[str]:
    """Lines of the latest run in a participant's log."""
    if not log.exists():
        return []
    lines = log.read_text(errors='replace').splitlines()
    starts = [i for i, ln in enumerate(lines) if '=== qsmflow' in ln and 'run started' in ln]
    return lines[starts[-1]:] if starts else lines


_STEP = re.compile(r'^\[(\d+):(\d\d):(\d\d)\] (\S+): (\S+) (started|finished|FAILED)$')


def step_times(lines: list, prefix: str) -> dict:
    """``{step: seconds}`` from the start/finish lines of acquisition ``prefix``.

    >>> step_times(['[0:00:01] sub-01: qsm_wf.a started', '[0:00:04] sub-01: qsm_wf.a finished'],
    ...            'sub-01')
    {'qsm_wf.a': 3}
    """
    started, out = {}, {}
    for line in lines:
        match = _STEP.match(line)
        if not match or match.group(4) != prefix:
            continue
        secs = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + int(match.group(3))
        if match.group(6) == 'started':
            started[match.group(5)] = secs
        elif match.group(5) in started:
            out[match.group(5)] = secs - started.pop(match.group(5))
    return out


def _timings(out_dir: Path, lines: list, prefix: str) -> list[str]:
    """Write the run time of each step of ``prefix`` (latest run, from the log) into
    ``logs/<prefix>_steptimes.tsv`` and link it. The times stay out of the page itself, and
    the page says the same whatever the engine reported (graph plugins and steps reused
    from the work directory give no times: a header-only table), so that a rerun or
    another engine gives the same page, byte for byte."""
    from qsmflow.bids.atomic import write_text

    path = out_dir / 'logs' / f'{prefix}_steptimes.tsv'
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(step_times(lines, prefix).items(), key=lambda kv: (-kv[1], kv[0]))
    write_text(path, 'step\tseconds\n' + ''.join(f'{k}\t{v}\n' for k, v in rows))
    rel = html.escape(path.relative_to(out_dir).as_posix())
    return [f'<p>Run time per step of the latest run, as far as the engine reported it (from '
            f'the log, 1 s resolution; steps reused from the work directory are not timed): '
            f'<a href="{rel}">{rel}</a>.</p>']


def _errors(out_dir: Path, log: Path, lines: list, error: str | None) -> list[str]:
    # without the elapsed-time stamps: the page does not change between identical runs
    flagged = [re.sub(r'^\[[0-9:]+\] ', '', ln) for ln in lines
               if re.search(r'WARNING|FAILED|Error', ln)]
    rel = html.escape(log.relative_to(out_dir).as_posix()) if log.exists() else ''
    out = ['<h2 id="errors">Errors and warnings</h2>',
           f'<p>Log: <a href="{rel}">{rel}</a></p>' if rel else '<p>No log.</p>']
    if error:
        out.append(f'<p class="warn">{html.escape(error)}</p>')
    out.append('<pre>' + html.escape('\n'.join(flagged)) + '</pre>' if flagged
               else '<p class="ok">None in the latest run.</p>')
    return out


def _table(head, rows) -> str:
    th = ''.join(f'<th>{html.escape(str(h))}</th>' for h in head or ())
    body = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in r) + '</tr>'
                   for r in rows)
    return f'<table>{"<tr>" + th + "</tr>" if th else ""}{body}</table>'
