# SPDX-License-Identifier: Apache-2.0
"""``register_images`` calls ``antsRegistration`` through ANTs' compiled library alone, with
the arguments it builds itself (:func:`qsmflow.interfaces.ants_calls.registration_args`):
its transforms must be those of antspyx's ``ants.registration`` with the same settings, bit
for bit, for every kind of registration qsmflow runs, and the ``ants`` package must stay
unimported in its process."""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: Short versions of the registrations qsmflow runs (the template pyramid, ``quick``'s
#: linear stages and SyN, the run-to-run rigid), to keep the test to seconds.
SETTINGS = {
    'SyNRA': {'type_of_transform': 'SyNRA', 'aff_metric': 'mattes', 'syn_metric': 'mattes',
              'reg_iterations': (10, 0), 'grad_step': 0.05, 'flow_sigma': 6, 'total_sigma': 3},
    'linear_then_SyNOnly': {
        'type_of_transform': 'SyNOnly', 'reg_iterations': (10, 0), 'grad_step': 0.05,
        'flow_sigma': 6, 'total_sigma': 3,
        'linear': ({'type_of_transform': 'Rigid', 'aff_metric': 'mattes',
                    'aff_iterations': (100,), 'levels_mm': (6.0,),
                    'aff_smoothing_sigmas': (2,)},
                   {'type_of_transform': 'Affine', 'aff_metric': 'mattes',
                    'aff_iterations': (100, 50), 'levels_mm': (6.0, 3.0),
                    'aff_smoothing_sigmas': (2, 1)})},
    'Rigid': {'type_of_transform': 'Rigid', 'aff_metric': 'mattes',
              'aff_iterations': (100, 50), 'levels_mm': (6.0, 3.0),
              'aff_smoothing_sigmas': (2, 1)},
}


def _with_antspyx(fixed_path, moving_path, out_dir, settings, fixed_mask):
    """The same registration through antspyx's own ``ants.registration`` (fresh process)."""
    from qsmflow.interfaces.ants_calls import _shrink_factors, prepare_ants

    prepare_ants(1)
    import ants

    fixed, moving = ants.image_read(fixed_path), ants.image_read(moving_path)
    fixed = fixed * ants.image_read(fixed_mask)
    settings = _shrink_factors(dict(settings), fixed.spacing)
    start = None
    for n, stage in enumerate(settings.pop('linear', ())):
        stage = _shrink_factors(dict(stage), fixed.spacing)
        if start is not None:
            stage['initial_transform'] = start
        start = ants.registration(fixed, moving, outprefix=f'{out_dir}/linear{n}_',
                                  **stage)['fwdtransforms']
    if start is not None:
        settings['initial_transform'] = start
    reg = ants.registration(fixed, moving, outprefix=f'{out_dir}/reg_', **settings)
    return [Path(p).read_bytes() if p.endswith('.mat') else
            np.asarray(nb.load(p).dataobj).tobytes()
            for p in reg['fwdtransforms'] + reg['invtransforms'][1:]]


def _with_qsmflow(fixed_path, moving_path, out_dir, settings, fixed_mask):
    from qsmflow.interfaces.ants_calls import register_images

    out = register_images(fixed_path, moving_path, out_dir, settings=settings,
                          fixed_mask=fixed_mask)
    keys = ('warp', 'affine', 'inverse_warp') if 'warp' in out else ('affine',)
    return [Path(out[k]).read_bytes() if k == 'affine' else
            np.asarray(nb.load(out[k]).dataobj).tobytes() for k in keys], 'ants' in sys.modules


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    from qsmflow.bench.registration import write_moving_head
    from qsmflow.phantom.head import make_head
    from qsmflow.phantom.template import write_template

    root = tmp_path_factory.mktemp('ants-calls')
    folder = write_template(root / 'tf', size='tiny')
    head = make_head(size='tiny', age_years=60.0)
    moving = root / 'moving.nii.gz'
    write_moving_head(head, moving)
    return (str(next(folder.glob('*_T1w.nii.gz'))), str(moving),
            str(next(folder.glob('*_desc-brain_mask.nii.gz'))))


@pytest.mark.parametrize('name', list(SETTINGS))
def test_same_transforms_as_antspyx_without_importing_it(images, tmp_path, name):
    from qsmflow.interfaces.ants_calls import in_fresh_process

    fixed, moving, mask = images
    for sub in ('antspyx', 'qsmflow'):
        (tmp_path / sub).mkdir()
    expected = in_fresh_process(_with_antspyx, fixed, moving, str(tmp_path / 'antspyx'),
                                SETTINGS[name], mask)
    got, imported = in_fresh_process(_with_qsmflow, fixed, moving, str(tmp_path / 'qsmflow'),
                                     SETTINGS[name], mask)
    assert len(got) == len(expected) == (1 if name == 'Rigid' else 3)
    assert all(a == b for a, b in zip(got, expected))
    assert not imported


def _refine_with_antspyx(prior_path, chi_path, transforms, out_dir, settings):
    """The χ-driven refinement through antspyx's own functions (fresh process)."""
    from qsmflow.interfaces.ants_calls import _correlation, prepare_ants

    prepare_ants(1)
    import ants

    fixed = ants.image_read(prior_path)
    moving = ants.apply_transforms(fixed, ants.image_read(chi_path), transforms,
                                   interpolator='linear')
    reg = ants.registration(fixed, moving, outprefix=f'{out_dir}/refine_', **settings)
    inv = [p for p in reg['invtransforms'] if p.endswith('.nii.gz')]
    from qsmflow.atlases.chi_prior import near_nuclei

    near = near_nuclei(fixed.numpy(), fixed.spacing)
    return (np.asarray(nb.load(inv[0]).dataobj).tobytes(),
            _correlation(fixed.numpy()[near], moving.numpy()[near]),
            _correlation(fixed.numpy()[near], reg['warpedmovout'].numpy()[near]))


def _refine_with_qsmflow(prior_path, chi_path, transforms, out_dir, settings):
    from qsmflow.interfaces.ants_calls import refine_chi

    out = refine_chi(prior_path, chi_path, transforms, out_dir, settings=settings)
    return ((np.asarray(nb.load(out['inverse_warp']).dataobj).tobytes(),
             out['correlation_before'], out['correlation_after']), 'ants' in sys.modules)


def test_refinement_same_as_antspyx_without_importing_it(images, tmp_path):
    from qsmflow.interfaces.ants_calls import in_fresh_process, register_images

    fixed, moving, mask = images
    for sub in ('rigid', 'antspyx', 'qsmflow'):
        (tmp_path / sub).mkdir()
    affine = in_fresh_process(register_images, fixed, moving, str(tmp_path / 'rigid'),
                              settings=SETTINGS['Rigid'], fixed_mask=mask)['affine']
    settings = {'type_of_transform': 'SyNOnly', 'initial_transform': 'Identity',
                'syn_metric': 'CC', 'syn_sampling': 2, 'reg_iterations': (5, 0),
                'grad_step': 0.1, 'flow_sigma': 8, 'total_sigma': 4}
    expected = in_fresh_process(_refine_with_antspyx, fixed, moving, [affine],
                                str(tmp_path / 'antspyx'), settings)
    got, imported = in_fresh_process(_refine_with_qsmflow, fixed, moving, [affine],
                                     str(tmp_path / 'qsmflow'), settings)
    assert got == expected
    assert not imported


def test_brain_margin_crops_the_fixed_image_and_keeps_the_warps_on_its_grid(images, tmp_path):
    """``brain_margin_mm`` (the default pyramid's): the registration runs on the masked
    template cropped to the mask's box grown by the margin; the warps come back on the
    template's whole grid, zero outside the box, equal inside it to those of the same
    registration to the cropped template, and they move the atlas labels exactly as those."""
    from qsmflow.interfaces.ants_calls import (
        apply_to_reference, brain_box, in_fresh_process, register_images)

    fixed, moving, mask = images
    settings = {**SETTINGS['SyNRA'], 'brain_margin_mm': 6.0}
    grid, mask_img = nb.load(fixed), nb.load(mask)
    box = brain_box(np.asarray(mask_img.dataobj) > 0, grid.header.get_zooms()[:3], 6.0)
    assert all(s.stop - s.start < n for s, n in zip(box, grid.shape)), box  # it crops
    cropped = tmp_path / 'cropped'
    cropped.mkdir()
    grid.slicer[box].to_filename(cropped / 'fixed.nii.gz')
    mask_img.slicer[box].to_filename(cropped / 'mask.nii.gz')
    (tmp_path / 'margin').mkdir()
    got = in_fresh_process(register_images, fixed, moving, str(tmp_path / 'margin'),
                           settings=settings, fixed_mask=mask)
    plain = {k: v for k, v in settings.items() if k != 'brain_margin_mm'}
    ref = in_fresh_process(register_images, str(cropped / 'fixed.nii.gz'), moving,
                           str(cropped), settings=plain, fixed_mask=str(cropped / 'mask.nii.gz'))
    assert Path(got['affine']).read_bytes() == Path(ref['affine']).read_bytes()
    for key in ('warp', 'inverse_warp'):
        full, part = nb.load(got[key]), nb.load(ref[key])
        assert full.shape[:3] == grid.shape[:3] and np.allclose(full.affine, grid.affine)
        data = np.asarray(full.dataobj)
        assert np.array_equal(data[box], np.asarray(part.dataobj)), key
        data[box] = 0
        assert not data.any(), key
    labels = next(Path(fixed).parent.glob('*_atlas-Phantom_dseg.nii.gz'))
    moved = [in_fresh_process(apply_to_reference, moving, str(labels),
                              [xfm['affine'], xfm['inverse_warp']], [True, False],
                              'genericLabel', 1)[0] for xfm in (got, ref)]
    assert np.array_equal(*moved) and len(np.unique(moved[0])) > 5


def _apply_with_antspyx(reference, in_file, transforms, invert, interpolation):
    """qsmflow's former resampling: antspyx's own ``apply_transforms`` (fresh process)."""
    from qsmflow.interfaces.ants_calls import prepare_ants

    prepare_ants(1)
    import ants

    fixed = ants.image_read(reference)
    if fixed.dimension == 4:
        fixed = ants.slice_image(fixed, axis=3, idx=0)
    out = ants.apply_transforms(fixed, ants.image_read(in_file), transforms,
                                interpolator=interpolation, whichtoinvert=invert)
    return out.numpy(), ants.__version__


def _apply_with_qsmflow(reference, in_file, transforms, invert, interpolation):
    from qsmflow.interfaces.ants_calls import apply_to_reference

    return (apply_to_reference(reference, in_file, transforms, invert, interpolation, 1),
            'ants' in sys.modules)


def _apply_changed(reference, in_file, transforms, invert, interpolation, flag, value):
    """``resampling_args`` with the value after ``flag`` replaced by ``value``, through
    ANTs' library (fresh process): the check that every argument matters."""
    from qsmflow.interfaces.ants_calls import ants_library, prepare_ants, resampling_args

    prepare_ants(1)
    args = resampling_args(reference, in_file, 'changed.nii', transforms, invert,
                           interpolation)
    args[args.index(flag) + 1] = value
    assert ants_library().antsApplyTransforms(args) == 0
    return np.asarray(nb.load('changed.nii').dataobj).astype(np.float32)


@pytest.fixture(scope='module')
def resampling(images, tmp_path_factory):
    """The SyNRA transforms of ``images``, and the resamplings qsmflow runs with them (name:
    reference, moving image, transforms, inversion flags, interpolator)."""
    from qsmflow.interfaces.ants_calls import in_fresh_process, register_images

    fixed, moving, mask = images
    root = tmp_path_factory.mktemp('resampling')
    xfm = in_fresh_process(register_images, fixed, moving, str(root), settings=SETTINGS['SyNRA'],
                           fixed_mask=mask)
    labels = str(next(Path(fixed).parent.glob('*_atlas-Phantom_dseg.nii.gz')))
    img = nb.load(moving)  # a 4-D reference (a multi-echo magnitude): its first volume's grid
    stack = nb.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 2, axis=-1), img.affine,
                           img.header)
    stack.to_filename(root / 'reference_4d.nii.gz')
    atlas = nb.load(labels)  # labels stored as float64 (float32 holds them exactly)
    nb.Nifti1Image(np.asarray(atlas.dataobj).astype(np.float64), atlas.affine).to_filename(
        root / 'labels_float64.nii.gz')
    # a float64 map that float32 rounds, and an int16 map with NIfTI scaling: ANTs gets
    # their float32 values (antspyx's reading) from a copy
    moved = np.asarray(nb.load(moving).dataobj, np.float64)
    nb.Nifti1Image(moved / 3.0 + 1e-9, img.affine).to_filename(root / 'float64_inexact.nii.gz')
    scaled = nb.Nifti1Image(moved / 3.0, img.affine, dtype=np.int16)
    scaled.header.set_slope_inter(0.37, 0.5)
    scaled.to_filename(root / 'scaled_int16.nii.gz')
    to_native = [xfm['affine'], xfm['inverse_warp']], [True, False]
    return {
        'labels_genericLabel': (moving, labels, *to_native, 'genericLabel'),
        'labels_nearestNeighbor': (moving, labels, *to_native, 'nearestNeighbor'),
        'float64_labels': (moving, str(root / 'labels_float64.nii.gz'), *to_native,
                           'genericLabel'),
        'to_template_linear': (fixed, moving, [xfm['warp'], xfm['affine']], [False, False],
                               'linear'),
        'template_to_native_linear': (moving, fixed, *to_native, 'linear'),
        '4d_reference': (str(root / 'reference_4d.nii.gz'), fixed, *to_native, 'linear'),
        'float64_inexact': (fixed, str(root / 'float64_inexact.nii.gz'),
                            [xfm['warp'], xfm['affine']], [False, False], 'linear'),
        'scaled_int16': (fixed, str(root / 'scaled_int16.nii.gz'),
                         [xfm['warp'], xfm['affine']], [False, False], 'linear'),
    }


@pytest.mark.parametrize('name', ['labels_genericLabel', 'labels_nearestNeighbor',
                                  'float64_labels', 'to_template_linear',
                                  'template_to_native_linear', '4d_reference',
                                  'float64_inexact'])
def test_same_resampling_as_antspyx_without_importing_it(resampling, tmp_path, monkeypatch,
                                                          name):
    from qsmflow.interfaces.ants_calls import in_fresh_process

    monkeypatch.chdir(tmp_path)
    expected, version = in_fresh_process(_apply_with_antspyx, *resampling[name])
    (got, got_version), imported = in_fresh_process(_apply_with_qsmflow, *resampling[name])
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    assert got_version == version and not imported
    assert len(np.unique(got)) > 5  # not an empty or constant image
    assert [p.name for p in tmp_path.iterdir()] == []  # the scratch files are gone


@pytest.mark.parametrize('name,flag,value', [
    ('to_template_linear', '--float', '1'),  # single precision
    ('to_template_linear', '-f', '1'),  # default value outside the moving image
    ('to_template_linear', '-n', 'nearestNeighbor'),
    ('labels_genericLabel', '-t', 'AFFINE'),  # the affine not inverted
])
def test_resampling_differs_when_one_argument_changes(resampling, tmp_path, monkeypatch, name,
                                                      flag, value):
    from qsmflow.interfaces.ants_calls import in_fresh_process

    monkeypatch.chdir(tmp_path)
    case = resampling[name]
    value = case[2][0] if value == 'AFFINE' else value
    expected, _ = in_fresh_process(_apply_with_antspyx, *case)
    changed = in_fresh_process(_apply_changed, *case, flag, value)
    assert changed.shape == expected.shape and changed.tobytes() != expected.tobytes()


def test_scaled_moving_image_resampled_as_antspyx_up_to_its_rounding(resampling, tmp_path,
                                                                    monkeypatch):
    """NIfTI scaling is applied by nibabel (float64) before the float32 copy, by ITK on
    reading in antspyx: the same image up to float32 rounding, and the scratch copy is
    gone."""
    from qsmflow.interfaces.ants_calls import in_fresh_process

    monkeypatch.chdir(tmp_path)
    case = resampling['scaled_int16']
    expected, _ = in_fresh_process(_apply_with_antspyx, *case)
    (got, _), imported = in_fresh_process(_apply_with_qsmflow, *case)
    assert got.dtype == np.float32 and not imported and len(np.unique(got)) > 5
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())
    assert [p.name for p in tmp_path.iterdir()] == []


def test_resampling_refuses_what_it_does_not_do_as_antspyx(resampling, tmp_path):
    """Inputs it cannot resample as antspyx does are errors, not different results."""
    from qsmflow.interfaces.ants_calls import _moving_for_ants, resampling_args

    reference, labels, transforms, invert, _ = resampling['labels_genericLabel']
    args = reference, labels, str(tmp_path / 'out.nii'), transforms
    for bad in (dict(invert=invert, interpolation='bSpline'),
                dict(invert=[True, True], interpolation='linear'),  # a warp inverted
                dict(invert=[True], interpolation='linear')):
        with pytest.raises(ValueError):
            resampling_args(*args, **bad)
    assert resampling_args(*args, invert, 'linear')[-10:] == [
        '-z', '1', '-v', '0', '--float', '0', '-e', '0', '-f', '0']
    atlas = nb.load(labels)
    data = np.asarray(atlas.dataobj)
    nb.Nifti1Image(np.stack([data] * 2, axis=-1), atlas.affine).to_filename(tmp_path / '4d.nii')
    with pytest.raises(ValueError, match='moving image'):
        _moving_for_ants(str(tmp_path / '4d.nii'), tmp_path / 'copy.nii')
    # read as they are: int16 labels (without reading them), float64 that float32 holds
    assert _moving_for_ants(labels, tmp_path / 'copy.nii') == labels
    exact = resampling['float64_labels'][1]
    assert _moving_for_ants(exact, tmp_path / 'copy.nii') == exact
    # copied as float32: rounded float64, scaled int16
    for name in ('float64_inexact', 'scaled_int16'):
        given = resampling[name][1]
        copy = _moving_for_ants(given, tmp_path / f'{name}.nii')
        assert copy == str(tmp_path / f'{name}.nii')
        img = nb.load(copy)
        assert img.get_data_dtype() == np.float32
        assert np.array_equal(np.asarray(img.dataobj),
                              np.asarray(nb.load(given).dataobj).astype(np.float32))


class _ForgetfulANTs:
    """Stands in for ANTs' library: ``antsRegistration`` exits 0 and writes the affine, but
    writes the warps only from call number ``writes_warps_from`` on (ANTs ignores its own
    errors when a transform cannot be written: a full disk, say)."""

    def __init__(self, writes_warps_from):
        self.calls, self.writes_warps_from = 0, writes_warps_from

    def antsRegistration(self, args):
        self.calls += 1
        out = args[args.index('--output') + 1].strip('[]')
        Path(out + '0GenericAffine.mat').write_text('affine')
        if self.calls >= self.writes_warps_from:
            for name in ('1Warp.nii.gz', '1InverseWarp.nii.gz'):
                Path(out + name).write_text('warp')
        return 0


@pytest.mark.parametrize('writes_warps_from', [2, 3])
def test_transforms_ants_did_not_write_are_retried_then_named(tmp_path, monkeypatch,
                                                               writes_warps_from):
    """A registration whose warps ANTs silently failed to write runs once more; if they are
    still missing, the error names them, the folder and its free space."""
    from qsmflow.interfaces import ants_calls

    fake = _ForgetfulANTs(writes_warps_from)
    monkeypatch.setattr(ants_calls, 'ants_library', lambda: fake)
    prefix = str(tmp_path / 'reg_')
    moving = tmp_path / 'reg_moving.nii.gz'  # an input under the same prefix stays
    moving.write_text('moving')
    settings = dict(SETTINGS['SyNRA'])
    if writes_warps_from == 2:
        fwd, inv = ants_calls._run_registration('f.nii.gz', 'm.nii.gz', prefix, settings)
        assert fake.calls == 2
        assert [Path(p).name for p in fwd] == ['reg_1Warp.nii.gz', 'reg_0GenericAffine.mat']
        assert [Path(p).name for p in inv] == ['reg_0GenericAffine.mat', 'reg_1InverseWarp.nii.gz']
        assert moving.read_text() == 'moving'
    else:
        with pytest.raises(RuntimeError, match=r'without writing its warp, inverse warp in '
                                               r'.* MB free there\), twice'):
            ants_calls._run_registration('f.nii.gz', 'm.nii.gz', prefix, settings)
        assert fake.calls == 2
        assert moving.read_text() == 'moving'


def _print_then_fail(message):
    print(message, file=sys.stderr)
    raise RuntimeError('the call failed')


@pytest.mark.skipif(sys.version_info < (3, 11), reason='exception notes: Python 3.11')
def test_a_failed_call_carries_what_its_process_printed():
    """ANTs prints its reasons (a transform it could not write) to the process's stderr: a
    failed call's error carries the last lines of it."""
    from qsmflow.interfaces.ants_calls import in_fresh_process

    with pytest.raises(RuntimeError, match='the call failed') as err:
        in_fresh_process(_print_then_fail, "Can't write transform file reg_1Warp.nii.gz")
    assert "Can't write transform file reg_1Warp.nii.gz" in ' '.join(err.value.__notes__)
