# SPDX-License-Identifier: Apache-2.0
"""Regional susceptibility tables from atlas labels or a user segmentation."""
from __future__ import annotations

import re

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe


def init_regions_wf(*, atlas: str, output_dir: str, entities: dict, erode: bool = False,
                    source: dict | None = None, store_dseg: bool = True,
                    name: str = 'regions_wf') -> pe.Workflow:
    """Compute and store the regional χ table of one acquisition for one label set.

    The labels are on the native χ grid already (brought there by the inverse template
    transform or by nearest-neighbour resampling of a segmentation), so χ itself is never
    interpolated. Every region of the region set gets left, right and bilateral rows with
    voxel count, volume (mm³) and mean, median, SD, 5th and 95th percentile and 10 %-trimmed
    mean of χ (ppm), the share of boundary voxels, the labelled voxels and the share of them
    inside the brain mask; whole-brain and reference rows follow. Regions the brain mask
    empties are QC warnings; a table without a deep nucleus in the mask fails the step.

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
    store_dseg : bool
        Also store the native-space labels as ``_atlas-<atlas>_dseg.nii.gz`` + ``.tsv``.
    name : str
        Workflow name.

    Inputs
    ------
    chimap : str
        Referenced susceptibility map (ppm).
    mask : str
        Its brain mask.
    dseg, lut : str
        Labels on the χ grid and their ``dseg.tsv``.

    Outputs
    -------
    stats : str
        Stored ``_stats.tsv``.
    """
    from qsmflow.interfaces.bids import DerivativesSink
    from qsmflow.interfaces.regions import FileSink, RegionalStats
    from qsmflow.qsm.regions import MIN_ERODED_VOXELS

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (f'Regional susceptibility statistics were computed in native space '
                         f'for the labels of {atlas}'
                         + (' eroded by one voxel (regions that erosion would leave with fewer '
                            f'than {MIN_ERODED_VOXELS} voxels were kept whole)' if erode else '')
                         + '.')
    inputnode = pe.Node(niu.IdentityInterface(fields=['chimap', 'mask', 'dseg', 'lut']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['stats']), name='outputnode')
    stats = pe.Node(RegionalStats(atlas=atlas, erode=erode, source=source or {}),
                    name='stats', mem_gb=0.5)
    ents = {**entities, 'atlas': _label(atlas)}
    ds_stats = pe.Node(FileSink(base_directory=output_dir, kind='stats', entities=ents),
                       name='ds_stats', run_without_submitting=True)
    ds_stats_json = pe.Node(FileSink(base_directory=output_dir, kind='stats_json',
                                     entities=ents), name='ds_stats_json',
                            run_without_submitting=True)
    workflow.connect([
        (inputnode, stats, [('chimap', 'in_file'), ('mask', 'in_mask'), ('dseg', 'in_dseg'),
                            ('lut', 'in_lut')]),
        (stats, ds_stats, [('out_tsv', 'in_file')]),
        (stats, ds_stats_json, [('out_json', 'in_file')]),
        (ds_stats, outputnode, [('out_file', 'stats')]),
    ])  # fmt:skip
    if store_dseg:
        ds_dseg = pe.Node(DerivativesSink(base_directory=output_dir, kind='dseg', entities=ents),
                          name='ds_dseg', run_without_submitting=True)
        ds_lut = pe.Node(FileSink(base_directory=output_dir, kind='dseg_lut', entities=ents),
                         name='ds_lut', run_without_submitting=True)
        workflow.connect([
            (inputnode, ds_dseg, [('dseg', 'in_file')]),
            (inputnode, ds_lut, [('lut', 'in_file')]),
        ])  # fmt:skip
    return workflow


def init_segmentation_regions_wf(*, segmentation: str, lut: str, output_dir: str,
                                 entities: dict, erode: bool = False,
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
    name : str
        Workflow name.

    Inputs
    ------
    chimap, mask : str
        Referenced susceptibility map (ppm) and its brain mask.
    """
    from qsmflow.interfaces.regions import ResampleSegmentation

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=['chimap', 'mask']), name='inputnode')
    resample = pe.Node(ResampleSegmentation(in_file=segmentation), name='resample')
    regions_wf = init_regions_wf(
        atlas='segmentations', output_dir=output_dir, entities=entities, erode=erode,
        source={'Source': 'user segmentation (--segmentations)', 'Segmentation': segmentation,
                'LookupTable': lut}, store_dseg=False)
    regions_wf.inputs.inputnode.lut = lut
    workflow.connect([
        (inputnode, resample, [('chimap', 'reference')]),
        (inputnode, regions_wf, [('chimap', 'inputnode.chimap'), ('mask', 'inputnode.mask')]),
        (resample, regions_wf, [('out_file', 'inputnode.dseg')]),
    ])  # fmt:skip
    return workflow


def _label(atlas: str) -> str:
    """BIDS label of an atlas name (alphanumerics only).

    >>> _label('MASSP20'), _label('my_atlas-v2')
    ('MASSP20', 'myatlasv2')
    """
    return re.sub(r'[^0-9a-zA-Z]', '', atlas)
