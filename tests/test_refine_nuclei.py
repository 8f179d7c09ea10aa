# SPDX-License-Identifier: Apache-2.0
"""χ-driven refinement of the atlas labels (issue "Deep nuclei on real anatomy", item 1).

The atlas prior (:mod:`qsmflow.atlases.chi_prior`) and :class:`RefineNuclei` on a small
synthetic case with a known answer: the participant's nuclei lie 3 mm away from where the
(identity) magnitude registration puts the atlas, as small iron-rich nuclei do after a
registration driven by a T1w template in which they have little contrast.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmflow.atlases import chi_prior as cp

#: Nuclei of the synthetic atlas (1 mm grid, about their real sizes): index → (name,
#: centre in voxels, radii in voxels).
NUCLEI = {1: ('L Globus Pallidus externa', (30, 36, 30), (8, 4, 6)),
          2: ('R Globus Pallidus externa', (30, 14, 30), (8, 4, 6)),
          3: ('L Substantia Nigra pars compacta', (40, 30, 16), (6, 3, 3)),
          4: ('R Substantia Nigra pars compacta', (40, 20, 16), (6, 3, 3)),
          5: ('L Red Nucleus', (34, 28, 22), (3, 3, 3)),
          6: ('R Red Nucleus', (34, 22, 22), (3, 3, 3)),
          7: ('Left Thalamus', (20, 31, 34), (8, 5, 6))}
SHAPE, VOXEL_MM = (56, 50, 48), 1.0
#: How far (voxels, along x) the participant's nuclei lie from the registered atlas.
SHIFT = (3, 0, 0)


#: Shifts (voxels) of a participant whose left nuclei lie 3 mm off one way and whose right
#: nuclei lie 3 mm off the other way (10-20 mm apart): a local deformation, not a shift of
#: the whole midbrain.
OPPOSITE = {1: (3, 0, 0), 3: (3, 0, 0), 5: (3, 0, 0), 2: (-3, 0, 0), 4: (-3, 0, 0),
            6: (-3, 0, 0)}


def _atlas(shift=(0, 0, 0)) -> np.ndarray:
    """The atlas labels, each nucleus moved by ``shift`` (voxels), or by ``shift[index]``
    when ``shift`` is a dict (nuclei not in it stay)."""
    grid = np.indices(SHAPE).astype(float)
    labels = np.zeros(SHAPE, np.int16)
    for index, (_, centre, radii) in NUCLEI.items():
        move = shift.get(index, (0, 0, 0)) if isinstance(shift, dict) else shift
        r2 = sum(((grid[a] - centre[a] - move[a]) / radii[a]) ** 2 for a in range(3))
        labels[r2 <= 1] = index
    return labels


def test_prior_values_pick_the_iron_rich_nuclei_by_name():
    lut = {i: name for i, (name, _, _) in NUCLEI.items()}
    lut.update({8: 'left-subthalamic-nucleus', 9: 'Right_Dentate', 10: 'Lateral ventricle',
                11: 'caudate_left', 12: 'R Putamen', 0: 'background'})
    values = cp.prior_values(lut)
    assert values == {1: 0.16, 2: 0.16, 3: 0.15, 4: 0.15, 5: 0.115, 6: 0.115, 8: 0.115,
                      9: 0.115, 11: 0.065, 12: 0.055}


def test_prior_values_read_the_usual_abbreviations():
    """A custom atlas that names its nuclei as most papers do (GPe, SNc, STN, RN, DN, Pu,
    CIT168's Ca and STH) gets the same prior as one with full names; the hippocampal
    dentate gyrus, the hypothalamus and a thalamus get none."""
    lut = {1: 'GPe_L', 2: 'GPi_R', 3: 'SNc_left', 4: 'SNr-right', 5: 'RN_L', 6: 'STN_R',
           7: 'DN_L', 8: 'Pu_R', 9: 'L Ca', 10: 'R STH', 11: 'dentate gyrus', 12: 'CA1',
           13: 'Hypothalamus', 14: 'Tha_L'}
    assert cp.prior_values(lut) == {1: 0.16, 2: 0.16, 3: 0.15, 4: 0.15, 5: 0.115, 6: 0.115,
                                    7: 0.115, 8: 0.055, 9: 0.065, 10: 0.115}


def test_prior_needs_enough_nuclei_and_is_smooth_and_bounded():
    labels = _atlas()
    lut = {i: name for i, (name, _, _) in NUCLEI.items()}
    prior = cp.chi_prior(labels, lut, (VOXEL_MM,) * 3)
    assert prior.dtype == np.float32 and prior.shape == SHAPE
    assert 0.14 < prior[30, 36, 30] <= 0.16 and prior[20, 31, 34] == 0  # thalamus stays 0
    assert float(prior.min()) >= 0 and float(prior.max()) <= 0.16
    with pytest.raises(ValueError, match='2 iron-rich nuclei'):
        cp.chi_prior(np.where(labels <= 2, labels, 0), lut, (VOXEL_MM,) * 3)


def test_prior_box_pads_beyond_the_image_and_keeps_world_coordinates():
    prior = np.zeros((10, 10, 10), np.float32)
    prior[1:3, 4:6, 7:9] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10, 5, 0)
    start, stop = cp.prior_box(prior, (2, 2, 2), margin_mm=4)
    assert start == (-1, 2, 5) and stop == (5, 8, 11)
    box, box_affine = cp.crop_or_pad(prior, affine, start, stop)
    assert box.shape == (6, 6, 6) and box.sum() == prior.sum()
    # the same voxel has the same world position in both grids
    for ijk in np.argwhere(prior > 0):
        world = affine @ [*ijk, 1]
        local = np.linalg.solve(box_affine, world)[:3]
        assert box[tuple(np.rint(local).astype(int))] == 1


def _identity_transforms(tmp_path, reference: str) -> tuple[str, str, str]:
    """An identity ITK affine and zero displacement fields (native = atlas grid)."""
    from qsmflow.interfaces.registration import in_fresh_process

    return in_fresh_process(_write_identity, str(tmp_path), reference)


def _write_identity(folder, reference):
    import ants

    ref = ants.image_read(reference)
    affine = ants.create_ants_transform(transform_type='AffineTransform', dimension=3)
    ants.write_transform(affine, f'{folder}/affine.mat')
    zero = np.zeros((*ref.shape, 3), np.float32)
    field = ants.from_numpy(zero, origin=ref.origin, spacing=ref.spacing,
                            direction=ref.direction, has_components=True)
    ants.image_write(field, f'{folder}/warp.nii.gz')
    ants.image_write(field, f'{folder}/inverse_warp.nii.gz')
    return f'{folder}/affine.mat', f'{folder}/warp.nii.gz', f'{folder}/inverse_warp.nii.gz'


@pytest.fixture(scope='module')
def refined(tmp_path_factory):
    """Atlas on a 1 mm grid; the participant's nuclei :data:`SHIFT` (3 mm) off along x."""
    return _refine(tmp_path_factory.mktemp('refine'), SHIFT)


def _refine(tmp, shift, *, atlas_split: int = 1) -> dict:
    """:class:`RefineNuclei` and the labels it gives for a participant whose nuclei lie
    ``shift`` (:func:`_atlas`) off the identity registration; the atlas image has each
    voxel split into ``atlas_split``³ (the same labels on a finer grid)."""
    from nipype.pipeline import engine as pe

    from qsmflow.interfaces.base import sidecar_of
    from qsmflow.interfaces.regions import write_lut
    from qsmflow.interfaces.refinement import RefineNuclei
    from qsmflow.interfaces.registration import ApplyTransforms

    affine = np.diag([VOXEL_MM] * 3 + [1.0])
    atlas = tmp / 'atlas_dseg.nii.gz'
    fine = _atlas()
    for axis in range(3):
        fine = np.repeat(fine, atlas_split, axis=axis)
    fine_affine = np.diag([VOXEL_MM / atlas_split] * 3 + [1.0])
    fine_affine[:3, 3] = (1 / atlas_split - 1) * VOXEL_MM / 2  # the same voxel corners
    nb.Nifti1Image(fine, fine_affine).to_filename(atlas)
    lut = write_lut({i: name for i, (name, _, _) in NUCLEI.items()}, tmp / 'atlas_dseg.tsv')
    truth = _atlas(shift=shift)
    chi = np.zeros(SHAPE, np.float32)
    values = cp.prior_values({i: n for i, (n, _, _) in NUCLEI.items()})
    for index, value in values.items():
        chi[truth == index] = value - 0.02  # χ against another reference than the prior's
    chi += np.random.default_rng(0).normal(0, 0.01, SHAPE).astype(np.float32)
    chi_path = tmp / 'chi.nii.gz'
    nb.Nifti1Image(chi, affine).to_filename(chi_path)
    xfm_affine, warp, inverse_warp = _identity_transforms(tmp, str(chi_path))
    node = pe.Node(RefineNuclei(in_chimap=str(chi_path), atlas=str(atlas), lut=lut,
                                affine=xfm_affine, warp=warp, inverse_warp=inverse_warp,
                                meta={'Atlas': 'synthetic'}),
                   name='refine', base_dir=str(tmp))
    result = node.run().outputs
    apply = pe.Node(ApplyTransforms(in_file=str(atlas), reference=str(chi_path),
                                    transforms=result.transforms, invert=result.invert,
                                    meta=result.meta),
                    name='to_native', base_dir=str(tmp))
    apply.config = {'execution': {'remove_unnecessary_outputs': False}}  # keep the sidecar
    out = apply.run().outputs.out_file
    plain = pe.Node(ApplyTransforms(in_file=str(atlas), reference=str(chi_path),
                                    transforms=[xfm_affine, inverse_warp], invert=[True, False]),
                    name='plain', base_dir=str(tmp))
    return {'result': result, 'labels': np.asarray(nb.load(out).dataobj),
            'plain': np.asarray(nb.load(plain.run().outputs.out_file).dataobj),
            'truth': truth, 'sidecar': json.loads(Path(sidecar_of(out)).read_text())}


def test_refinement_moves_the_nuclei_onto_chi(refined):
    from qsmflow.qsm.regions import dice

    before = [dice(refined['plain'] == i, refined['truth'] == i) for i in range(1, 7)]
    after = [dice(refined['labels'] == i, refined['truth'] == i) for i in range(1, 7)]
    assert min(before) < 0.6  # 3 mm off: the red nuclei (3 mm radius) barely overlap
    assert min(after) > 0.75 and np.mean(after) > np.mean(before) + 0.2, (before, after)
    # the thalamus (no prior: not iron-rich) moves with the nuclei around it
    assert dice(refined['labels'] == 7, refined['truth'] == 7) > dice(
        refined['plain'] == 7, refined['truth'] == 7)


def test_refinement_lets_left_and_right_nuclei_move_apart(tmp_path):
    """At 1 mm the left nuclei 3 mm one way, the right ones 3 mm the other (:data:`OPPOSITE`).
    The refinement's total field must be free enough to move them apart
    (``FINE_LEVEL_TOTAL_SIGMA`` 3, step 0.3): measured 2026-12-07 mean Dice 0.885, red
    nuclei 0.78 / 0.77 (σ² 2: 0.932, 0.85 / 0.85); with the total-field variance 4 of before
    (step 0.2) 0.771, red nuclei 0.59 / 0.63. With the metric radius 1 of session 22
    (``FINE_LEVEL_CC_RADIUS``): 0.878, red nuclei 0.75 / 0.78; with the unsmoothed prior of
    session 23 (``FINE_LEVEL_PRIOR_SMOOTH_MM``): 0.890, red nuclei 0.76 / 0.80."""
    from qsmflow.qsm.regions import dice

    out = _refine(tmp_path, OPPOSITE)
    after = [dice(out['labels'] == i, out['truth'] == i) for i in range(1, 7)]
    assert min(after) > 0.70 and np.mean(after) > 0.85, after


def test_a_finer_atlas_is_refined_on_a_1mm_grid(tmp_path):
    """An atlas of 0.5 mm voxels (0.7 mm for CIT168's finer release) gets its prior on a
    1 mm grid (``PRIOR_MIN_VOXEL_MM``), the grid the refinement's settings were measured on,
    and its labels move onto χ as the 1 mm atlas's do."""
    from qsmflow.qsm.regions import dice

    out = _refine(tmp_path, SHIFT, atlas_split=2)
    assert out['sidecar']['RegistrationRefinement']['PriorVoxelMm'] == [1.0, 1.0, 1.0]
    before = [dice(out['plain'] == i, out['truth'] == i) for i in range(1, 7)]
    after = [dice(out['labels'] == i, out['truth'] == i) for i in range(1, 7)]
    assert min(after) > 0.75 and np.mean(after) > np.mean(before) + 0.2, (before, after)


def test_refinement_is_recorded_in_the_labels_sidecar(refined):
    result, record = refined['result'], refined['sidecar']['RegistrationRefinement']
    assert len(result.transforms) == 3 and result.invert == [True, False, False]
    assert record['Applied'] is True and record['Settings']['syn_metric'] == 'CC'
    assert record['PriorVoxelMm'] == [VOXEL_MM] * 3
    assert record['CorrelationAfter'] > record['CorrelationBefore'] + 0.1
    assert refined['sidecar']['Atlas'] == 'synthetic'


def test_atlas_without_nuclei_keeps_the_magnitude_registration(tmp_path):
    from nipype.pipeline import engine as pe

    from qsmflow.interfaces.regions import write_lut
    from qsmflow.interfaces.refinement import RefineNuclei

    affine = np.diag([VOXEL_MM] * 3 + [1.0])
    labels = np.where(_atlas() == 7, 7, 0).astype(np.int16)
    atlas, chi = tmp_path / 'atlas.nii.gz', tmp_path / 'chi.nii.gz'
    nb.Nifti1Image(labels, affine).to_filename(atlas)
    nb.Nifti1Image(np.zeros(SHAPE, np.float32), affine).to_filename(chi)
    lut = write_lut({7: 'Left Thalamus'}, tmp_path / 'atlas.tsv')
    xfm_affine, warp, inverse_warp = _identity_transforms(tmp_path, str(chi))
    result = pe.Node(RefineNuclei(in_chimap=str(chi), atlas=str(atlas), lut=lut,
                                  affine=xfm_affine, warp=warp, inverse_warp=inverse_warp),
                     name='refine', base_dir=str(tmp_path)).run().outputs
    assert result.transforms == [xfm_affine, inverse_warp]
    record = result.meta['RegistrationRefinement']
    assert record['Applied'] is False and 'iron-rich nuclei' in record['Reason']
