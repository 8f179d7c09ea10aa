# SPDX-License-Identifier: Apache-2.0
"""The real-anatomy phantom (:mod:`qsmflow.phantom.anatomy`) at 2 mm: truth consistency,
the known deformation, the field forward model and the noise level."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.phantom import anatomy as A
from qsmflow.phantom import anatomy_bids
from qsmflow.qsm.echoes import ppm_to_hz
from tests.realdata import CIT168, TEMPLATEFLOW_HOME

TEMPLATE = (TEMPLATEFLOW_HOME / 'tpl-MNI152NLin2009cAsym'
            / 'tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz')
CIT_DSEG = CIT168 / 'atlas-CIT168_desc-th50_dseg.nii.gz'
CIT_TSV = CIT168 / 'atlas-CIT168_dseg.tsv'

#: A 2 mm real-anatomy phantom built from the MNI template and CIT168 for the module, and a
#: forward simulation of it: about half a minute on 2 cores (``pytest tests/phantom`` runs it).
pytestmark = pytest.mark.slow

#: Nuclei (CIT168 left/right label pairs and the dentate) of at least 0.1 mL per side.
NUCLEI = {'putamen': (1, 2), 'caudate': (3, 4), 'gpe': (9, 10), 'gpi': (11, 12),
          'snc': (13, 14), 'red_nucleus': (15, 16), 'snr': (17, 18), 'stn': (31, 32),
          'dentate': (33, 34)}


@pytest.fixture(scope='module')
def anatomy():
    return A.template_anatomy(str(TEMPLATE), str(CIT_DSEG), str(CIT_TSV))


@pytest.fixture(scope='module')
def subject(anatomy):
    deform = A.random_deformation(7)
    phantom = A.subject_phantom(anatomy, deform, voxel_size_mm=2.0, tilt_deg=12.0)
    return phantom


def _centroid_mm(mask, affine):
    return affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]


def test_template_anatomy_truth(anatomy):
    vox_ml = anatomy.voxel_size_mm**3 / 1000
    assert 1.8 < anatomy.brain_mask.sum() * vox_ml / 1000 < 2.1  # L; measured 1.98
    cit = np.asarray(nb.load(CIT_DSEG).dataobj)
    for index in range(1, 33):
        ours, theirs = (anatomy.labels == index).sum(), (cit == index).sum()
        assert ours >= 0.9 * theirs, anatomy.label_names[index]  # kept inside the brain
        assert ours <= theirs
    for index in (33, 34):
        assert 0.6 < (anatomy.labels == index).sum() * vox_ml < 1.3  # dentate, mL
    assert set(np.unique(anatomy.tissue)) == set(A.TISSUE_LABELS)
    # χ per structure (ppm): the typical values, with the ±8 % smooth variation.
    for (left, right), value in (((9, 10), 0.17), ((15, 16), 0.12), ((1, 2), 0.06),
                                 ((33, 34), 0.12)):
        vals = anatomy.chi_ppm[np.isin(anatomy.labels, (left, right))]
        assert abs(vals.mean() - value) < 0.1 * value
        assert 0.005 < vals.std() / value < 0.08
    wm = anatomy.chi_ppm[anatomy.tissue == 3]
    assert -0.032 < np.median(wm) < -0.015
    # Air around the head and in cavities, bone negative, nothing of it in the brain.
    assert anatomy.chi_ppm[0, 0, 0] == pytest.approx(9.4)
    assert not (anatomy.brain_mask & np.isin(anatomy.tissue, (0, 6, 7, 8))).any()


def test_subject_shapes_and_volumes(anatomy, subject):
    assert subject.shape == (100, 116, 98)
    for name in ('chi_ppm', 'brain_chi_ppm', 'm0', 'r2star_hz', 'tissue', 'brain_mask'):
        assert getattr(subject, name).shape == subject.shape, name
    assert subject.voxel_size_mm == (2.0, 2.0, 2.0)
    assert not subject.brain_chi_ppm[~subject.brain_mask].any()
    scale3 = subject.deformation.scale ** 3
    for name, pair in NUCLEI.items():
        for index in pair:
            native_ml = (subject.labels == index).sum() * 8e-3
            mni_ml = (anatomy.labels == index).sum() * 1e-3
            assert native_ml > 0, name
            tol = 0.2 if mni_ml > 0.4 else 0.5  # small nuclei at 2 mm: coarse
            assert abs(native_ml / (mni_ml / scale3) - 1) < tol, (name, native_ml, mni_ml)
    assert 1.7 < subject.brain_mask.sum() * 8e-6 * scale3 < 2.2  # L


def test_deformation_moves_structures(anatomy, subject):
    deform = subject.deformation
    centre = anatomy.centre_mm
    shape = np.asarray(subject.shape)
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid_affine[:3, 3] = -(shape - 1) / 2 * 2.0
    moved = []
    for name, pair in NUCLEI.items():
        if name in ('snc', 'stn'):
            continue
        for index in pair:
            p = _centroid_mm(subject.labels == index, grid_affine)
            truth = _centroid_mm(anatomy.labels == index, anatomy.affine)
            mapped = deform.to_template_mm(p[None], centre)[0]
            assert np.linalg.norm(mapped - truth) < 1.5, name  # the labels follow the map
            moved.append(np.linalg.norm(p + centre - truth))
    assert max(moved) > 4.0  # rigid pose + scale + displacement really move the nuclei
    # The non-linear part alone stays within its set amplitude (3 mm) and is not zero.
    u = np.linalg.norm(deform.displacement_mm(subject.template_coords_mm[::4, ::4, ::4]
                                              - centre), axis=-1)
    assert u.max() < 3.0 + 0.5 and u.max() > 1.0
    # Seeded: the same seed gives the same map, another seed another one.
    assert A.random_deformation(7).as_dict() == deform.as_dict()
    assert A.random_deformation(8).rotation_deg != deform.rotation_deg


def _dipole_field(chi, vox, b0):
    """Field (ppm) by a plain numpy FFT with the dipole kernel written out (QSM_NOTES)."""
    pad = [(n // 2, n // 2) for n in chi.shape]
    big = np.pad(chi.astype(np.float64), pad)
    k = np.meshgrid(*[np.fft.fftfreq(n, d=vox) for n in big.shape], indexing='ij')
    k2 = sum(c**2 for c in k)
    kb = sum(c * b for c, b in zip(k, b0))
    with np.errstate(invalid='ignore', divide='ignore'):
        kernel = np.where(k2 > 0, 1 / 3 - kb**2 / k2, 0.0)
    field = np.fft.ifftn(np.fft.fftn(big) * kernel).real
    return field[tuple(slice(a, a + n) for (a, _), n in zip(pad, chi.shape))]


def test_field_forward_model_and_phase(subject):
    tes = (0.0045, 0.0095)
    mag, phase, truth = A.simulate_anatomy_megre(subject, tes, 3.0, snr=np.inf)
    b0 = truth['b0_dir']
    assert b0[2] == pytest.approx(np.cos(np.radians(12.0)))  # tilted slab
    expect = _dipole_field(subject.brain_chi_ppm, 2.0, b0)
    brain = subject.brain_mask
    err = truth['local_field_ppm'][brain] - expect[brain]
    assert np.abs(err).max() < 2e-3 * np.abs(expect[brain]).max()
    # Noise-free echo phase difference = 2π · field (Hz) · ΔTE, inside the brain.
    dphi = np.angle(np.exp(1j * (phase[..., 1] - phase[..., 0])))
    model = np.angle(np.exp(2j * np.pi * ppm_to_hz(truth['total_field_ppm'], 3.0)
                            * (tes[1] - tes[0])))
    diff = np.angle(np.exp(1j * (dphi - model)))[brain]
    assert np.abs(diff).max() < 1e-3
    # The background field (air, bone, outside the brain) dominates near the sinuses.
    assert np.abs(truth['background_field_ppm'][brain]).max() > 1.0
    # Magnitude: CSF brighter than WM, bone darker than scalp, air 0.
    m0 = mag[..., 0]
    assert np.median(m0[subject.tissue == 1]) > np.median(m0[subject.tissue == 3])
    assert np.median(m0[subject.tissue == 7]) < 0.5 * np.median(m0[subject.tissue == 6])
    assert m0[0, 0, 0] == 0


def test_noise_matches_snr(subject):
    tes = (0.0045,)
    clean_m, clean_p, _ = A.simulate_anatomy_megre(subject, tes, snr=np.inf)
    noisy_m, noisy_p, truth = A.simulate_anatomy_megre(subject, tes, snr=100.0, rng=3)
    sigma = float(clean_m[..., 0][subject.brain_mask].mean()) / 100
    assert truth['noise_sigma'] == pytest.approx(sigma, rel=1e-4)
    noise = noisy_m * np.exp(1j * noisy_p) - clean_m * np.exp(1j * clean_p)
    measured = np.concatenate([noise.real.ravel(), noise.imag.ravel()]).std()
    assert measured == pytest.approx(sigma, rel=0.02)


def test_write_dataset(tmp_path, anatomy):
    out = anatomy_bids.write_anatomy_dataset(tmp_path / 'bids', tmp_path / 'truth',
                                             template_t1w=TEMPLATE,
                                             cit168_dseg=CIT_DSEG, cit168_tsv=CIT_TSV,
                                             n_subjects=1, voxel_size_mm=2.0, seed=5,
                                             ages=[42])
    anat = tmp_path / 'bids' / 'sub-01' / 'anat'
    for n in range(1, 6):
        for part in ('mag', 'phase'):
            meta = json.loads((anat / f'sub-01_echo-{n}_part-{part}_MEGRE.json').read_text())
            assert meta['EchoTime'] == anatomy_bids.DEFAULT_ECHO_TIMES_S[n - 1]
            assert meta['MagneticFieldStrength'] == 3.0
    assert (tmp_path / 'bids' / 'participants.tsv').read_text().splitlines()[1] == 'sub-01\t42\tF'
    paths = out['participants']['sub-01']
    labels = np.asarray(nb.load(paths['dseg']).dataobj)
    assert set(np.unique(labels)) >= set(range(1, 17)) | {31, 32, 33, 34}
    assert 'R Dentate' in paths['dseg_tsv'].read_text()
    xfm = json.loads(paths['xfm'].read_text())
    assert xfm['rotation_deg'] == list(paths['deformation'].rotation_deg)
    atlas = out['atlas']
    atlas_img = nb.load(atlas['atlas'])
    assert set(np.unique(np.asarray(atlas_img.dataobj))) == set(range(35))
    assert nb.load(atlas['template_mask']).shape == nb.load(atlas['template']).shape
    assert out['seconds_per_subject'][0] < 60


def test_thick_skull_head_model_changes_only_the_head(anatomy):
    """The second head model (``thick-skull``): the same brain, a thicker skull, and a scalp
    and muscle darker than the brain at the first echo (the template head's are about as
    bright as grey matter)."""
    other = A.template_anatomy(str(TEMPLATE), str(CIT_DSEG), str(CIT_TSV), 'thick-skull')
    brain = anatomy.brain_mask
    assert (other.brain_mask == brain).all()
    for name in ('labels', 'chi_ppm', 'm0', 'r2star_hz'):
        assert (getattr(other, name)[brain] == getattr(anatomy, name)[brain]).all(), name
    vox_ml = anatomy.voxel_size_mm ** 3 / 1000
    bone, bone_other = ((a.tissue == 7).sum() * vox_ml for a in (anatomy, other))
    assert bone_other > 1.2 * bone  # mL of bone (measured 1.30x)
    te1 = anatomy_bids.DEFAULT_ECHO_TIMES_S[0]

    def signal(a, sel):
        return np.median((a.m0 * np.exp(-a.r2star_hz * te1))[sel])

    assert signal(anatomy, anatomy.tissue == 6) > 0.85 * signal(anatomy, brain)
    assert signal(other, other.tissue == 6) < 0.7 * signal(other, brain)
    # the skull thickened, not the scalp's dark outer layer: the true brain is no nearer
    # the head surface than in the template head (mask QC on a noise-free first echo)
    from qsmflow.qsm.brain_extraction import mask_qc

    mag = (other.m0 * np.exp(-other.r2star_hz * te1)).astype(np.float32)
    assert not mask_qc(brain, mag, (1.0, 1.0, 1.0))['LooksLikeHead']
    with pytest.raises(ValueError, match='head_model'):
        A.template_anatomy(str(TEMPLATE), str(CIT_DSEG), str(CIT_TSV), 'thin')
