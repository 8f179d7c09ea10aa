# SPDX-License-Identifier: Apache-2.0
"""``qsmflow convert DICOM_DIR BIDS_DIR``: multi-echo GRE DICOM to BIDS (see
:mod:`qsmflow.convert`). Problems end in one line (:class:`qsmflow.errors.InputError`,
printed by :func:`qsmflow.cli.main.main`)."""
from __future__ import annotations

import sys

from qsmflow.cli.main import EXIT_FAILED, EXIT_OK


def run_convert(opts) -> int:
    """Convert; exit code 0 when a multi-echo GRE acquisition was written, else 1 (field
    maps alone are written, but are no input for qsmflow)."""
    from qsmflow.convert.run import convert_dicom

    result = convert_dicom(opts.dicom_dir, opts.bids_dir, opts.participant_label,
                           opts.session_label)
    converted = sum(r['status'] == 'converted' for r in result['rows'])
    fieldmaps = sum(r['status'] == 'fieldmap' for r in result['rows'])
    skipped = len(result['rows']) - converted - fieldmaps
    print(f'qsmflow convert: sub-{result["subject"]}: {converted} acquisition(s) converted, '
          + (f'{fieldmaps} field map(s) written to fmap/, ' if fieldmaps else '')
          + f'{skipped} skipped; summary: {result["summary"]}')
    if not converted:
        print(f'qsmflow: error: {opts.dicom_dir}: no multi-echo GRE series with phase per '
              f'echo found (see {result["summary"]}); export the magnitude and phase '
              'images of every echo', file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
