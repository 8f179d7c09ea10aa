# SPDX-License-Identifier: Apache-2.0
"""Atlas-initialised segmentation of the nuclei on χ (issue "Deep nuclei on real anatomy",
item 2; :mod:`qsmflow.qsm.nuclei_segmentation`, ``--segment-nuclei``).

A synthetic case with a known answer: two adjacent nuclei of one χ (a nigra's pars compacta
and reticulata), a pallidum and a thalamus without iron contrast, on white matter; the
registered labels are 2 voxels off.
"""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np

from qsmflow.qsm.nuclei_segmentation import segment_nuclei

SHAPE = (40, 40, 40)
CHI = {1: 0.15, 2: 0.15, 3: 0.17, 4: 0.0}  # SNc, SNr, GP, thalamus (ppm); WM -0.03
NAMES = {1: 'L Substantia Nigra pars compacta', 2: 'L Substantia-Nigra-pars-reticulata',
         3: 'L Globus Pallidus externa', 4: 'Left Thalamus'}


def _truth(shift=0):
    z, y, x = np.indices(SHAPE)
    lab = np.zeros(SHAPE, np.int16)
    lab[(abs(z - 12 - shift) <= 4) & (abs(y - 12) <= 3) & (abs(x - 14) <= 5)] = 1
    lab[(abs(z - 12 - shift) <= 4) & (abs(y - 12) <= 3) & (abs(x - 25) <= 5)] = 2
    lab[((z - 28 - shift) ** 2 + (y - 28) ** 2 + (x - 20) ** 2) <= 30] = 3
    lab[((z - 28 - shift) ** 2 + (y - 12) ** 2 + (x - 28) ** 2) <= 25] = 4
    return lab


def _chi(lab, seed=0):
    chi = np.full(SHAPE, -0.03)
    for k, v in CHI.items():
        chi[lab == k] = v
    return chi + 0.005 * np.random.default_rng(seed).standard_normal(SHAPE)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_nuclei_move_onto_chi_and_same_chi_neighbours_split_by_the_atlas():
    truth = _truth()
    chi = _chi(truth)
    registered = _truth(shift=2)
    groups = {1: 0.15, 2: 0.15, 3: 0.16}
    out, record = segment_nuclei(chi, registered, np.ones(SHAPE, bool), (1, 1, 1),
                                 nuclei=[1, 2, 3], groups=groups)
    for k in (1, 2, 3):
        assert _dice(registered == k, truth == k) < 0.8
        assert _dice(out == k, truth == k) > 0.95, (k, _dice(out == k, truth == k))
        assert record[k]['segmented']
    # the border between the two nigral parts stays where the atlas put it (x = 19/20)
    assert not (out[truth == 1] == 2).any() and not (out[truth == 2] == 1).any()
    # the thalamus (no iron contrast) is not a nucleus here and keeps its labels
    assert ((out == 4) == (registered == 4)).all()
    # deterministic, bitwise
    again, _ = segment_nuclei(chi, registered, np.ones(SHAPE, bool), (1, 1, 1),
                              nuclei=[1, 2, 3], groups=groups)
    assert (again == out).all() and again.dtype == registered.dtype


def test_no_contrast_no_reach_and_mask():
    truth = _truth()
    registered = _truth(shift=2)
    # χ without any nucleus: nothing to segment on, every label stays
    flat = np.full(SHAPE, -0.03) + 0.005 * np.random.default_rng(1).standard_normal(SHAPE)
    out, record = segment_nuclei(flat, registered, np.ones(SHAPE, bool), (1, 1, 1),
                                 nuclei=[1, 2, 3])
    assert (out == registered).all() and not any(r['segmented'] for r in record.values())
    # the labels move at most reach_mm; outside the mask nothing changes
    chi = _chi(_truth(shift=-4))
    mask = np.ones(SHAPE, bool)
    mask[:, :, 30:] = False
    out, _ = segment_nuclei(chi, registered, mask, (1, 1, 1), nuclei=[1, 2, 3], reach_mm=1.0)
    assert (out[~mask] == registered[~mask]).all()
    from scipy import ndimage as ndi
    for k in (1, 2, 3):
        near = ndi.binary_dilation(registered == k, iterations=1)
        assert not ((out == k) & ~near).any()


def test_interface_records_the_segmentation(tmp_path):
    from qsmflow.interfaces.nuclei import SegmentNuclei
    from qsmflow.interfaces.regions import write_lut

    truth, registered = _truth(), _truth(shift=2)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nb.Nifti1Image(_chi(truth).astype(np.float32), aff).to_filename(tmp_path / 'chi.nii.gz')
    nb.Nifti1Image(np.ones(SHAPE, np.uint8), aff).to_filename(tmp_path / 'mask.nii.gz')
    nb.Nifti1Image(registered.astype(np.int32), aff).to_filename(tmp_path / 'dseg.nii.gz')
    (tmp_path / 'dseg.json').write_text(json.dumps({'RegistrationRefinement': {'Applied': 1}}))
    write_lut(NAMES, tmp_path / 'dseg.tsv')
    res = SegmentNuclei(in_dseg=str(tmp_path / 'dseg.nii.gz'), in_lut=str(tmp_path / 'dseg.tsv'),
                        in_chimap=str(tmp_path / 'chi.nii.gz'),
                        in_mask=str(tmp_path / 'mask.nii.gz')).run(cwd=str(tmp_path))
    out = np.asarray(nb.load(res.outputs.out_file).dataobj)
    assert _dice(out == 3, truth == 3) > 0.95
    meta = json.loads((tmp_path / 'segmented_dseg.json').read_text())
    assert meta['RegistrationRefinement'] == {'Applied': 1}  # kept
    rec = meta['NucleiSegmentation']
    assert rec['Settings']['ReachMm'] == 2.0
    assert set(rec['Nuclei']) == {NAMES[1], NAMES[2], NAMES[3]}  # not the thalamus


def test_regions_workflow_wires_the_segmentation():
    from qsmflow.workflows.regions import init_regions_wf

    wf = init_regions_wf(atlas='custom', output_dir='/out', entities={'subject': '01'},
                         segment=True)
    assert wf.get_node('segment_nuclei') is not None
    assert wf.get_node('ds_dseg_refined') is not None and wf.get_node('ds_dseg') is not None
    assert init_regions_wf(atlas='custom', output_dir='/out',
                           entities={'subject': '01'}).get_node('segment_nuclei') is None
