# SPDX-License-Identifier: Apache-2.0
"""``qsmflow export-dicom OUT_DIR DICOM_OUT``: the maps as DICOM series (see
:mod:`qsmflow.export`). Problems end in one line (:class:`qsmflow.errors.InputError`,
printed by :func:`qsmflow.cli.main.main`)."""
from __future__ import annotations

from qsmflow.cli.main import EXIT_OK


def run_export_dicom(opts) -> int:
    """Export; exit code 0 (errors are raised as InputError: exit code 2)."""
    from qsmflow.export.run import export_dicom

    done = export_dicom(opts.out_dir, opts.dicom_out, opts.reference_series, opts.deidentify,
                        tuple(opts.maps), opts.participant_label, opts.session_label)
    print(f'qsmflow export-dicom: {len(done)} series ({sum(n for _, _, n in done)} files) '
          f'in {opts.dicom_out}')
    return EXIT_OK
