# SPDX-License-Identifier: Apache-2.0
"""The conversion summary: one row per series group found, converted (``converted``:
multi-echo GRE; ``fieldmap``: BIDS ``fmap``) or skipped and why.

Written as ``sourcedata/qsmflow_convert/sub-<l>[_ses-<l>]_summary.tsv`` inside the BIDS
dataset (``sourcedata/`` is outside the validator's and qsmflow's view) and printed.
"""
from __future__ import annotations

from pathlib import Path

from qsmflow.bids.atomic import write_text

COLUMNS = ('series', 'protocol', 'status', 'echoes', 'echo_times_ms', 'parts', 'manufacturer',
           'phase', 'files_or_reason')


def converted_row(acq, files, note) -> dict:
    """Summary row of a converted acquisition."""
    return {'series': ','.join(str(s) for s in acq.series), 'protocol': acq.protocol,
            'status': 'converted', 'echoes': str(len(acq.echoes)),
            'echo_times_ms': ','.join(f'{1e3 * t:g}' for t in acq.echo_times_s),
            'parts': '/'.join(acq.parts), 'manufacturer': acq.manufacturer, 'phase': note,
            'files_or_reason': f'{len(files)} files, e.g. {Path(files[0]).name}'}


def fieldmap_row(fm, files, note) -> dict:
    """Summary row of a field map written in the BIDS ``fmap`` form."""
    return {'series': ','.join(str(s) for s in fm.series), 'protocol': fm.protocol,
            'status': 'fieldmap', 'echoes': '2',
            'echo_times_ms': ','.join(f'{1e3 * t:g}' for t in fm.echo_times_s),
            'parts': 'phasediff/' + '/'.join(f'magnitude{e}' for e in sorted(fm.magnitudes)),
            'manufacturer': fm.manufacturer, 'phase': note,
            'files_or_reason': f'{len(files)} files in fmap/ (not multi-echo GRE phase per '
                               f'echo), e.g. {Path(files[0]).name}'}


def skipped_row(skip) -> dict:
    """Summary row of a skipped group."""
    return {'series': ','.join(str(s) for s in skip.series), 'protocol': skip.protocol,
            'status': 'skipped', 'echoes': '', 'echo_times_ms': '', 'parts': '',
            'manufacturer': '', 'phase': '', 'files_or_reason': skip.reason}


def summary_path(bids_dir, subject: str, session: str | None) -> Path:
    """Where the summary table of one participant (and session) goes.

    Examples
    --------
    >>> summary_path('/b', '01', 'pre').as_posix()
    '/b/sourcedata/qsmflow_convert/sub-01_ses-pre_summary.tsv'
    """
    stem = f'sub-{subject}' + (f'_ses-{session}' if session else '')
    return Path(bids_dir) / 'sourcedata' / 'qsmflow_convert' / f'{stem}_summary.tsv'


def write_summary(path, rows) -> Path:
    """Write the rows as a TSV table (tabs and newlines in values become spaces)."""
    def cell(value):
        return ' '.join(str(value).split()) or 'n/a'

    lines = ['\t'.join(COLUMNS)] + ['\t'.join(cell(r[c]) for c in COLUMNS) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, '\n'.join(lines) + '\n')


def format_rows(rows) -> list[str]:
    """Human-readable lines of the summary, one per row.

    Examples
    --------
    >>> format_rows([{'series': '9', 'protocol': 'fm', 'status': 'skipped',
    ...               'files_or_reason': 'magnitude only'}])
    ['series 9 (fm): skipped: magnitude only']
    """
    out = []
    for r in rows:
        if r['status'] == 'fieldmap':
            out.append(f'series {r["series"]} ({r["protocol"]}): field map: EchoTime1/2 '
                       f'{r["echo_times_ms"]} ms, {r["parts"]}, phase: {r["phase"]}; '
                       f'{r["files_or_reason"]}')
        elif r['status'] == 'converted':
            out.append(f'series {r["series"]} ({r["protocol"]}): converted: {r["echoes"]} '
                       f'echoes ({r["echo_times_ms"]} ms), {r["parts"]}, phase: {r["phase"]}; '
                       f'{r["files_or_reason"]}')
        else:
            out.append(f'series {r["series"]} ({r["protocol"]}): skipped: '
                       f'{r["files_or_reason"]}')
    return out
