# SPDX-License-Identifier: Apache-2.0
"""Two-pass reconstruction (strict phase-quality mask, then the filled mask) and the
field-noise derivative: pure functions, a forward simulation, and the CLI on the phantom."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.qsm import bgremove, inversion
from qsmflow.qsm import mask as qmask
from qsmflow.qsm.kernels import dipole_kernel, irfft, rfft


# --- strict mask ----------------------------------------------------------------------------
def _ball(shape, centre, radius):
    g = np.indices(shape, dtype=np.float32)
    return sum((g[i] - c) ** 2 for i, c in enumerate(centre)) <= radius**2


def test_strict_mask_leaves_enclosed_unreliable_regions_as_holes():
    shape = (40, 40, 40)
    brain = _ball(shape, (20, 20, 20), 16)
    quality = np.ones(shape, np.float32)
    source = _ball(shape, (20, 20, 20), 3)
    quality[source] = 0.2
    filled = qmask.quality_mask(quality, brain)
    assert filled[source].all()  # the one-pass mask fills the hole back
    strict = qmask.strict_mask(quality, filled, (1, 1, 1), margin_mm=0)
    assert not strict[source].any() and (strict == (filled & ~source)).all()
    grown = qmask.strict_mask(quality, filled, (1, 1, 1), margin_mm=2)
    assert not grown[_ball(shape, (20, 20, 20), 4.0)].any()
    assert grown[~_ball(shape, (20, 20, 20), 5.5) & brain].all()
    assert not (grown & ~filled).any()


def test_strict_mask_threshold_and_errors():
    shape = (20, 20, 20)
    m = np.zeros(shape, bool)
    m[2:18, 2:18, 2:18] = True
    q = np.full(shape, 0.6, np.float32)
    assert qmask.strict_mask(q, m, (1, 1, 1), threshold=0.5).sum() == m.sum()
    with pytest.raises(ValueError, match='no mask voxel'):
        qmask.strict_mask(q, m, (1, 1, 1), threshold=0.7)
    with pytest.raises(ValueError, match='threshold'):
        qmask.strict_mask(q, m, (1, 1, 1), threshold=1.5)
    with pytest.raises(ValueError, match='margin'):
        qmask.strict_mask(q, m, (1, 1, 1), margin_mm=-1)


# --- combination ------------------------------------------------------------------------------
def test_combine_takes_strict_where_defined_and_aligned_filled_elsewhere():
    rng = np.random.default_rng(0)
    shape = (12, 12, 12)
    filled = np.zeros(shape, bool)
    filled[1:11, 1:11, 1:11] = True
    strict = filled.copy()
    strict[4:7, 4:7, 4:7] = False
    strict[0, 0, 0] = True  # outside the filled mask: ignored
    chi_s = rng.normal(0.0, 0.05, shape).astype(np.float32)
    chi_f = (chi_s - 0.3 + rng.normal(0.0, 0.001, shape)).astype(np.float32)
    out, offset = inversion.combine_two_pass(chi_s, chi_f, strict, filled)
    inner = strict & filled
    assert out.dtype == np.float32
    assert np.array_equal(out[inner], chi_s[inner])
    assert np.allclose(out[filled & ~strict], chi_f[filled & ~strict] + offset)
    assert offset == pytest.approx(0.3, abs=0.002)
    assert not out[~filled].any()
    raw, zero = inversion.combine_two_pass(chi_s, chi_f, strict, filled, align=False)
    assert zero == 0.0 and np.array_equal(raw[filled & ~strict], chi_f[filled & ~strict])
    with pytest.raises(ValueError, match='shapes'):
        inversion.combine_two_pass(chi_s[:-1], chi_f, strict, filled)
    with pytest.raises(ValueError, match='empty'):
        inversion.combine_two_pass(chi_s, chi_f, strict, np.zeros(shape, bool))


def test_two_pass_keeps_a_corrupted_source_from_streaking_into_tissue():
    """A strong source whose phase is unreliable (its field replaced by noise, as in a
    haemorrhage or calcification) streaks through a one-pass reconstruction; the strict
    pass treats it as outside the brain, so the tissue around it is reconstructed cleanly."""
    shape, vox = (64, 64, 64), (1.0, 1.0, 1.0)
    rng = np.random.default_rng(3)
    brain = _ball(shape, (32, 32, 32), 26)
    chi = np.zeros(shape, np.float32)
    for centre, r, value in (((24, 30, 32), 5, 0.1), ((40, 34, 30), 4, 0.15),
                             ((32, 22, 38), 4, -0.05)):
        chi[_ball(shape, centre, r)] = value
    source = _ball(shape, (34, 38, 40), 3)
    chi[source] = 1.5
    chi *= brain
    pad = tuple((n // 2, n // 2) for n in shape)
    big = np.pad(chi, pad)
    field = irfft(rfft(big) * dipole_kernel(big.shape, vox), big.shape)
    field = field[tuple(slice(p, p + n) for (p, _), n in zip(pad, shape))].astype(np.float32)
    field += rng.normal(0, 0.002, shape).astype(np.float32)
    field[source] = rng.normal(0, 0.5, int(source.sum()))  # unreliable phase: no information
    quality = np.where(source, 0.05, 0.98).astype(np.float32)

    def recon(mask):
        local, used = bgremove.pdf(field, mask, vox)
        return inversion.tv(local, used, vox), used

    chi_f, used_f = recon(brain)
    strict = qmask.strict_mask(quality, brain, vox)
    chi_s, used_s = recon(strict)
    combined, offset = inversion.combine_two_pass(chi_s, chi_f, used_s, used_f)
    rim = used_f & _ball(shape, (34, 38, 40), 12) & ~_ball(shape, (34, 38, 40), 5)

    def rim_error(x):
        err = (x - x[used_f].mean()) - (chi - chi[used_f].mean())
        return float(np.sqrt(np.mean(err[rim] ** 2)))

    one_pass, two_pass = rim_error(chi_f), rim_error(combined)
    assert two_pass < 0.5 * one_pass, (one_pass, two_pass)
    assert np.array_equal(combined[used_f & ~used_s], (chi_f + offset)[used_f & ~used_s])


# --- through the CLI on the phantom -------------------------------------------------------
def _preset(path, **masking):
    preset = {'description': 'test', 'masking': {'method': 'quality', 'params': {}, **masking},
              'unwrapping': {'method': 'romeo'}, 'echo_combination': {'method': 'wls'},
              'bf_removal': {'method': 'pdf', 'params': {}},
              'inversion': {'method': 'tv', 'params': {}}, 'reference': {'method': 'mean'}}
    path.write_text(json.dumps(preset))
    return path


def _run(bids_dir, root, name, preset):
    from qsmflow.cli import main

    out = root / name
    code = main([str(bids_dir), str(out), 'participant', '--nprocs', '1', '--skip-registration',
                 '--skip-bids-validation', '--preset', str(preset), '-w', str(root / f'work_{name}')])
    return code, out / 'sub-01' / 'anat'


def _img(path):
    return np.asarray(nb.load(path).dataobj)


@pytest.fixture(scope='module')
def runs(tiny_phantom, tmp_path_factory):
    bids_dir, _ = tiny_phantom
    root = tmp_path_factory.mktemp('twopass')
    one = _run(bids_dir, root, 'one', _preset(root / 'one.json'))
    two = _run(bids_dir, root, 'two', _preset(root / 'two.json', two_pass=True,
                                                 strict_params={'threshold': 0.9}))
    return {'one': one, 'two': two, 'truth': bids_dir.parent / 'truth' / 'sub-01' / 'anat'}


@pytest.mark.slow
def test_two_pass_run_records_both_passes_and_keeps_the_filled_mask(runs):
    (code1, one), (code2, two) = runs['one'], runs['two']
    assert code1 == 0 and code2 == 0
    meta = json.loads((two / 'sub-01_Chimap.json').read_text())
    steps = meta['QSMProcessing']
    names = [s['Step'] for s in steps]
    assert names == ['input', 'masking', 'unwrapping+echo-fit', 'phase-quality-masking',
                     'strict-masking', 'background-removal', 'dipole-inversion',
                     'background-removal', 'dipole-inversion', 'two-pass-combination',
                     'reference']
    assert [s.get('Pass') for s in steps if s['Step'] == 'dipole-inversion'] == ['strict',
                                                                                 'filled']
    strict_rec = steps[names.index('strict-masking')]
    assert strict_rec['Parameters']['threshold'] == 0.9 and strict_rec['VoxelsRemoved'] > 0
    comb = steps[names.index('two-pass-combination')]
    assert comb['VoxelsFromFilled'] > 0 and comb['Parameters'] == {'align': True}
    # the output mask is the generous one: the same as a one-pass run's
    mask1, mask2 = _img(one / 'sub-01_desc-brain_mask.nii.gz'), _img(two / 'sub-01_desc-brain_mask.nii.gz')
    assert np.array_equal(mask1, mask2)
    chi1, chi2 = _img(one / 'sub-01_Chimap.nii.gz'), _img(two / 'sub-01_Chimap.nii.gz')
    assert not np.array_equal(chi1, chi2) and not chi2[mask2 == 0].any()
    assert np.count_nonzero(chi2[mask2 > 0]) > 0.99 * np.count_nonzero(mask2)


@pytest.mark.slow
def test_field_noise_derivative_predicts_the_field_error(runs):
    """The stored standard error (ppm) matches the actual error of the fitted total field
    against the phantom's truth within a factor of two, where the phase is well behaved."""
    _, anat = runs['one']
    noise = _img(anat / 'sub-01_desc-noise_fieldmap.nii.gz').astype(float)
    side = json.loads((anat / 'sub-01_desc-noise_fieldmap.json').read_text())
    assert side['Units'] == 'ppm' and side['SkullStripped'] is True
    total = _img(anat / 'sub-01_desc-total_fieldmap.nii.gz').astype(float)
    truth = _img(runs['truth'] / 'sub-01_desc-total_fieldmap.nii.gz').astype(float)
    mask = _img(anat / 'sub-01_desc-brain_mask.nii.gz') > 0
    assert (noise[mask] > 0).all() and (noise >= 0).all()
    err = total - truth
    err -= np.median(err[mask])  # a constant field offset is not noise
    core = mask & (noise < np.percentile(noise[mask], 90))
    ratio = np.sqrt(np.mean(err[core] ** 2)) / np.sqrt(np.mean(noise[core] ** 2))
    assert 0.5 < ratio < 2.0, ratio


@pytest.mark.slow
def test_outputs_pass_bids_validator(runs):
    from qsmflow.bids.validator import find_validator, run_validator, validator_errors

    if find_validator() is None:
        pytest.skip('bids-validator-deno not installed')
    assert validator_errors(run_validator(runs['two'][1].parents[1])) == []
