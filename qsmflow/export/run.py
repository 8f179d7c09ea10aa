# SPDX-License-Identifier: Apache-2.0
"""``qsmflow export-dicom OUT_DIR DICOM_OUT``: the native maps of a qsmflow derivatives
folder as DICOM series, end to end.

Finds the maps (:func:`qsmflow.export.maps.find_maps`), reads the reference series when
given (:func:`qsmflow.export.reference.read_reference`) and writes one series per map
(:func:`qsmflow.export.dicom_series.write_series`) into
``DICOM_OUT/<map file name without extension>/IM<nnnn>.dcm``. Each series folder is
replaced as a whole; exporting the same maps again gives the same files.
"""
from __future__ import annotations

from pathlib import Path

from qsmflow.errors import InputError
from qsmflow.export import dicom_series, maps, reference


def export_dicom(out_dir, dicom_out, reference_series=None, deidentify=False,
                 names=maps.MAP_NAMES, participant=None, session=None, log=print) -> list:
    """Export the maps ``names`` below ``out_dir`` as DICOM series into ``dicom_out``.

    Parameters
    ----------
    out_dir : str or Path
        qsmflow derivatives folder.
    dicom_out : str or Path
        Folder to write the series into (created).
    reference_series : str or Path, optional
        Folder of the source DICOM series: the exported series join its study.
    deidentify : bool
        Leave out the patient's identity (see :mod:`qsmflow.export.reference`).
    names : sequence of str
        ``--maps`` names (:data:`qsmflow.export.maps.MAP_NAMES`).
    participant, session : str, optional
        Labels (with or without ``sub-``/``ses-``) to export only these.

    Returns
    -------
    list of (FoundMap, Path, int)
        Each exported map, its series folder and number of files.

    Raises
    ------
    InputError
        Bad folders, no maps found, a reference series with maps of several participants.
    """
    out_dir, dicom_out = Path(out_dir), Path(dicom_out)
    if not out_dir.is_dir():
        raise InputError(f'{out_dir}: not a folder; give the qsmflow output folder (OUT_DIR '
                         'of qsmflow participant)')
    if dicom_out.resolve().is_relative_to(out_dir.resolve()):
        raise InputError(f'{dicom_out}: DICOM_OUT must not lie inside OUT_DIR {out_dir} '
                         '(a derivatives dataset); choose another folder')
    participant = participant.removeprefix('sub-') if participant else None
    session = session.removeprefix('ses-') if session else None
    found = maps.find_maps(out_dir, names, participant, session)
    if not found:
        which = f' of sub-{participant}' if participant else ''
        raise InputError(f'{out_dir}: no native {", ".join(names)} maps{which} found '
                         '(sub-*/[ses-*/]anat/*_Chimap.nii.gz, ...); give the output folder '
                         'of qsmflow participant')
    ref = None
    if reference_series is not None:
        visits = sorted({(f.entities['sub'], f.entities.get('ses', '')) for f in found})
        if len(visits) > 1:
            raise InputError(f'{reference_series}: one reference series but maps of '
                             f'{len(visits)} participants/sessions in {out_dir}; pass '
                             '--participant-label (and --session-label)')
        ref = reference.read_reference(reference_series)
    if ref is not None:
        _check_same_grid(found, ref, reference_series)
    base = 100 * ref.series_number if ref is not None and ref.series_number else 9000
    exported = []
    for n, item in enumerate(found, start=1):
        dest = dicom_out / item.stem
        dest.parent.mkdir(parents=True, exist_ok=True)
        count = dicom_series.write_series(item, dest, base + n, ref, deidentify)
        log(f'qsmflow export-dicom: {item.path.name} -> {dest} ({count} slices, series '
            f'{base + n})')
        exported.append((item, dest, count))
    return exported


def _check_same_grid(found, ref, folder) -> None:
    """The maps must lie in the reference series' slice planes (a map of another
    acquisition, or of another patient, must not join that study)."""
    from qsmflow.export.geometry import slice_geometry

    for item in found:
        data, affine = dicom_series.load_map(item)
        try:
            geom = slice_geometry(affine, data.shape)
        except ValueError:
            continue  # write_series reports it
        why = reference.check_geometry(ref, geom.orientation, geom.positions)
        if why:
            raise InputError(f'{item.path.name}: {why} ({folder}); give the DICOM series the '
                             'maps were reconstructed from as --reference-series')
