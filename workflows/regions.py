# SPDX-License-Identifier: Apache-2.0
"""Regional susceptibility tables from atlas labels or a user segmentation."""
from __future__ import annotations

import re

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: Maps of :func:`workflows.qsm.init_qsm_wf` a regional table can average (output name →
#: input of :class:`qsmflow.interfaces.regions.RegionalStats`, which gives the columns
#: ``r2star_mean``, ``chi_para_mean``, ``chi_dia_mean``).
TABLE_MAPS = {'r2starmap': 'in_r2star', 'chimap_para': 'in_chi_para',
              'chimap_dia': 'in_chi_dia'}


def table_maps(outputs) -> tuple:
    """The outputs of an acquisition (:func:`workflows.outputs.qsm_outputs`) its tables
    average, in :data:`TABLE_MAPS` order.

    >>> table_maps(('chimap', 'mask', 'chimap_dia', 'r2starmap', 'swi'))
    ('r2starmap', 'chimap_dia')
    """
    return tuple(k for k in TABLE_MAPS if k in outputs)


def init_regions_wf(*, atlas: str, output_dir: str, entities: dict, erode: bool = False,
                    source: dict | None = None, store_dseg: bool = True, maps=(),
                    refined: bool = False, segment: bool = False,
                    atlas_files: tuple | None = None,
                    name: str = 'regions_wf') -> pe.Workflow:
    """Compute and store the regional χ table of one acquisition for one label set.

    The labels are on the native χ grid already (brought there by the inverse template
    transform or by nearest-neighbour resampling of a segmentation), so χ itself is never
    interpolated. Every region of the region set gets left, right and bilateral rows with
    voxel count, volume (mm³) and mean, median, SD, 5th and 95th percentile and 10 %-trimmed
    mean of χ (ppm), the share of boundary voxels, the labelled voxels and the share of them
    inside the brain mask; whole-brain and reference rows follow. With ``maps``, the mean R2*
    (1/s) and the mean χ⁺ and χ⁻ (ppm) over the same voxels follow as the last columns; a
    map the acquisition lacks has no column. Regions the brain mask empties are QC warnings;
    a table without a deep nucleus in the mask fails the step.

    Parameters
    ----------
    atlas : str
        Atlas name: a key of ``bids_specs/atlases.json`` (its region set is used) or any
        other label (one region per label of the lookup table).
    output_dir : str
        Root of the derivatives dataset.
    entities : dict
        BIDS entities of the acquisition.
    erode : bool
        Erode every label by one voxel against partial volume (never below
        :data:`qsmflow.qsm.regions.MIN_ERODED_VOXELS` voxels).
    source : dict, optional
        Provenance of the labels, copied to the table's JSON sidecar.
    atlas_files : (str, str or None), optional
        The atlas labels in their template and that template's brain mask (or its
        skull-stripped image): the labels' volumes are checked against the atlas's
        (:func:`qsmflow.qsm.region_qc.volume_qc`; a warning in the log and in the table's
        sidecar, ``QC.LabelVolumes``).
    store_dseg : bool
        Also store the native-space labels as ``_atlas-<atlas>_dseg.nii.gz`` + ``.tsv``.
    maps : sequence of str
        Keys of :data:`TABLE_MAPS` the acquisition has (:func:`table_maps`): inputs of the
        same names are added and averaged per region.
    refined : bool
        ``dseg`` are labels refined on χ
        (:func:`qsmflow.workflows.registration.init_atlas_labels_wf`): they are stored as
        ``_atlas-<atlas>_desc-refined_dseg`` and the labels of the registration alone
        (input ``dseg_atlas``) as ``_atlas-<atlas>_dseg``.
    segment : bool
        Segment the iron-rich nuclei of ``dseg`` on χ first
        (:class:`qsmflow.interfaces.nuclei.SegmentNuclei`, ``--segment-nuclei``); the table
        uses, and ``_desc-refined_dseg`` stores, the segmented labels (without ``refined``,
        ``_atlas-<atlas>_dseg`` stores the input labels).
    name : str
        Workflow name.

    Inputs
    ------
    chimap : str
        Referenced susceptibility map (ppm).
    mask : str
        Its brain mask.
    dseg, lut : str
        Labels on the χ grid (those of the table) and their ``dseg.tsv``.
    dseg_atlas : str
        With ``refined``: the unrefined labels.
    r2starmap, chimap_para, chimap_dia : str
        Those of ``maps``: R2* (1/s), χ⁺ and χ⁻ (ppm) on the χ grid.

    Outputs
    -------
    stats : str
        Stored ``_stats.tsv``.
    """
    from qsmflow.interfaces.bids import DerivativesSink, FileSink
    from qsmflow.interfaces.regions import RegionalStats
    from qsmflow.qsm.regions import MIN_ERODED_VOXELS

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (f'Regional susceptibility statistics were computed in native space '
                         f'for the labels of {atlas}'
                         + (' eroded by one voxel (regions that erosion would leave with fewer '
                            f'than {MIN_ERODED_VOXELS} voxels were kept whole)' if erode else '')
                         + '.')
    maps = _check_maps(maps)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        'chimap', 'mask', 'dseg', 'lut', *maps, *(['dseg_atlas'] if refined else [])]),
        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['stats']), name='outputnode')
    stats = pe.Node(RegionalStats(atlas=atlas, erode=erode, source=source or {}),
                    name='stats', mem_gb=0.5)
    if atlas_files:
        stats.inputs.in_atlas = atlas_files[0]
        if atlas_files[1]:
            stats.inputs.in_atlas_brain = atlas_files[1]
    ents = {**entities, 'atlas': _label(atlas)}
    ds_stats = pe.Node(FileSink(base_directory=output_dir, kind='stats', entities=ents),
                       name='ds_stats', run_without_submitting=True)
    ds_stats_json = pe.Node(FileSink(base_directory=output_dir, kind='stats_json',
                                     entities=ents), name='ds_stats_json',
                            run_without_submitting=True)
    labels = pe.Node(niu.IdentityInterface(fields=['dseg', 'dseg_atlas']), name='labels')
    if segment:
        from qsmflow.interfaces.nuclei import SegmentNuclei

        segment_nuclei = pe.Node(SegmentNuclei(), name='segment_nuclei', mem_gb=1.0)
        workflow.connect([
            (inputnode, segment_nuclei, [('dseg', 'in_dseg'), ('lut', 'in_lut'),
                                         ('chimap', 'in_chimap'), ('mask', 'in_mask')]),
            (segment_nuclei, labels, [('out_file', 'dseg')]),
            (inputnode, labels, [('dseg_atlas' if refined else 'dseg', 'dseg_atlas')]),
        ])  # fmt:skip
    else:
        workflow.connect([(inputnode, labels, [
            ('dseg', 'dseg'), *([('dseg_atlas', 'dseg_atlas')] if refined else [])])])
    workflow.connect([
        (inputnode, stats, [('chimap', 'in_file'), ('mask', 'in_mask'), ('lut', 'in_lut'),
                            *((m, TABLE_MAPS[m]) for m in maps)]),
        (labels, stats, [('dseg', 'in_dseg')]),
        (stats, ds_stats, [('out_tsv', 'in_file')]),
        (stats, ds_stats_json, [('out_json', 'in_file')]),
        (ds_stats, outputnode, [('out_file', 'stats')]),
    ])  # fmt:skip
    if store_dseg:
        stored = ([('dseg_atlas', 'dseg'), ('dseg', 'dseg_refined')] if refined or segment
                  else [('dseg', 'dseg')])
        for key, kind in stored:
            ds_dseg = pe.Node(DerivativesSink(base_directory=output_dir, kind=kind,
                                              entities=ents),
                              name=f'ds_{kind}', run_without_submitting=True)
            ds_lut = pe.Node(FileSink(base_directory=output_dir, kind=f'{kind}_lut',
                                      entities=ents),
                             name=f'ds_{kind}_lut', run_without_submitting=True)
            workflow.connect([
                (labels, ds_dseg, [(key, 'in_file')]),
                (inputnode, ds_lut, [('lut', 'in_file')]),
            ])  # fmt:skip
    return workflow


def init_segmentation_regions_wf(*, segmentation: str, lut: str, output_dir: str,
                                 entities: dict, erode: bool = False, maps=(),
                                 name: str = 'segmentation_regions_wf') -> pe.Workflow:
    """Regional table from a user segmentation in the scanner space of the acquisition.

    The segmentation may lie on any grid: it is resampled onto the χ grid by nearest
    neighbour through the two image affines (no registration).

    Parameters
    ----------
    segmentation, lut : str
        ``_dseg.nii[.gz]`` and its ``dseg.tsv`` (index, name).
    output_dir : str
        Root of the derivatives dataset.
    entities : dict
        BIDS entities of the acquisition.
    erode : bool
        Erode every region by one voxel.
    maps : sequence of str
        Keys of :data:`TABLE_MAPS` the acquisition has (see :func:`init_regions_wf`).
    name : str
        Workflow name.

    Inputs
    ------
    chimap, mask : str
        Referenced susceptibility map (ppm) and its brain mask.
    r2starmap, chimap_para, chimap_dia : str
        Those of ``maps`` (R2* in 1/s, χ⁺ and χ⁻ in ppm).
    """
    from qsmflow.interfaces.regions import ResampleSegmentation

    maps = _check_maps(maps)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=['chimap', 'mask', *maps]),
                        name='inputnode')
    resample = pe.Node(ResampleSegmentation(in_file=segmentation), name='resample')
    regions_wf = init_regions_wf(
        atlas='segmentations', output_dir=output_dir, entities=entities, erode=erode,
        source={'Source': 'user segmentation (--segmentations)', 'Segmentation': segmentation,
                'LookupTable': lut}, store_dseg=False, maps=maps)
    regions_wf.inputs.inputnode.lut = lut
    workflow.connect([
        (inputnode, resample, [('chimap', 'reference')]),
        (inputnode, regions_wf, [(f, f'inputnode.{f}') for f in ('chimap', 'mask', *maps)]),
        (resample, regions_wf, [('out_file', 'inputnode.dseg')]),
    ])  # fmt:skip
    return workflow


def _check_maps(maps) -> tuple:
    """``maps`` as a tuple in :data:`TABLE_MAPS` order; unknown names are an error.

    >>> _check_maps(['chimap_dia', 'r2starmap'])
    ('r2starmap', 'chimap_dia')
    >>> _check_maps(['swi'])
    Traceback (most recent call last):
    ValueError: maps a regional table cannot average: ['swi'] (known: r2starmap, chimap_para, \
chimap_dia)
    """
    unknown = sorted(set(maps) - set(TABLE_MAPS))
    if unknown:
        raise ValueError(f'maps a regional table cannot average: {unknown} (known: '
                         f'{", ".join(TABLE_MAPS)})')
    return table_maps(maps)


def _label(atlas: str) -> str:
    """BIDS label of an atlas name (alphanumerics only).

    >>> _label('MASSP20'), _label('my_atlas-v2')
    ('MASSP20', 'myatlasv2')
    """
    return re.sub(r'[^0-9a-zA-Z]', '', atlas)
