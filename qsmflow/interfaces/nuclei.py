# SPDX-License-Identifier: Apache-2.0
"""Atlas-initialised segmentation of the iron-rich nuclei on χ (``--segment-nuclei``)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec)

from qsmflow.interfaces import base


class _SegmentNucleiInputSpec(BaseInterfaceInputSpec):
    in_dseg = File(exists=True, mandatory=True, desc='atlas labels on the chi grid')
    in_lut = File(exists=True, mandatory=True, desc='their dseg.tsv (index, name)')
    in_chimap = File(exists=True, mandatory=True, desc='susceptibility map (ppm)')
    in_mask = File(exists=True, mandatory=True, desc='brain mask')


class _SegmentNucleiOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='labels with the nuclei segmented on chi')


class SegmentNuclei(SimpleInterface):
    """Move the atlas labels of the iron-rich nuclei onto the χ (ppm) contrast
    (:func:`qsmflow.qsm.nuclei_segmentation.segment_nuclei`); the nuclei are the labels
    :func:`qsmflow.atlases.chi_prior.prior_values` names, grouped by typical χ. The labels'
    sidecar keeps what it had and adds ``NucleiSegmentation`` (method, settings, per
    nucleus the class statistics and voxel counts)."""

    input_spec = _SegmentNucleiInputSpec
    output_spec = _SegmentNucleiOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.atlases.chi_prior import prior_values
        from qsmflow.interfaces.regions import _read_json, read_lut
        from qsmflow.qsm import nuclei_segmentation as ns

        chi, img = base.load(self.inputs.in_chimap)
        dseg_img = nb.load(self.inputs.in_dseg)
        labels = np.asarray(dseg_img.dataobj).astype(np.int32)
        mask = base.load(self.inputs.in_mask)[0] > 0
        lut = read_lut(self.inputs.in_lut)
        groups = prior_values(lut)
        out, record = ns.segment_nuclei(chi, labels, mask, base.voxel_size(img),
                                        nuclei=sorted(groups), groups=groups)
        meta = _read_json(base.sidecar_of(self.inputs.in_dseg))
        steps = meta.pop('QSMProcessing', [])
        meta['NucleiSegmentation'] = {
            'Method': 'atlas-initialised Gaussian mixture on chi (nucleus vs surroundings, '
                      'logistic atlas prior of the signed distance to the registered label)',
            'Settings': {'ReachMm': ns.REACH_MM, 'PriorWidthMm': ns.PRIOR_WIDTH_MM,
                         'RingMm': ns.RING_MM, 'Iterations': ns.ITERATIONS,
                         'MinSdPpm': ns.MIN_SD_PPM, 'MinContrast': ns.MIN_CONTRAST},
            'Nuclei': {lut.get(k, str(k)): v for k, v in record.items()}}
        self._results['out_file'] = base.save(
            out, dseg_img, Path(runtime.cwd) / 'segmented_dseg.nii.gz', dtype=np.int32,
            steps=steps, meta=meta)
        return runtime

