# SPDX-License-Identifier: Apache-2.0
"""``qsmflow convert``: real Philips and Siemens DICOM (tests/data), synthetic vendor-style
DICOM of the phantom (tests/dicom_synth.py), and the vendor phase conventions."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmflow.convert import series, vendor_phase
from qsmflow.convert.dcm2niix import run_dcm2niix
from qsmflow.convert.run import convert_dicom
from tests import realdata
from tests.dicom_synth import rewrite, write_series

PHILIPS_DICOM = realdata.DATA / 'dicom_philips_gre'
SIEMENS_FIELDMAP = realdata.DATA / 'dicom_siemens_fieldmap'
PHILIPS_TES_S = (0.0023, 0.0046)
PHILIPS_FILES = ('classic', 'enhanced')


def _sidecar(path) -> dict:
    return json.loads(Path(str(path).replace('.nii.gz', '.json')).read_text())


def _tree(root) -> dict:
    """``{relative path: sha256}`` of every file below ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob('*')) if p.is_file()}


# --- real DICOM ---------------------------------------------------------------------------

@pytest.mark.parametrize('kind', PHILIPS_FILES)
def test_philips_dicom_converts_to_megre(tmp_path, run_cli, kind):
    """Classic and enhanced Philips DICOM (.dcm.gz): 2 echoes, TE in s, phase in rad, the
    same images as the dcm2niix reference, no identifying sidecar keys."""
    bids = tmp_path / 'bids'
    res = run_cli('convert', PHILIPS_DICOM / kind, bids, '--participant-label', 'philips')
    assert res.returncode == 0, res.stderr
    assert 'converted: 2 echoes (2.3,4.6 ms), mag/phase, phase: radians' in res.stdout
    anat = bids / 'sub-philips' / 'anat'
    names = sorted(p.name for p in anat.glob('*.nii.gz'))
    assert names == [f'sub-philips_echo-{e}_part-{p}_MEGRE.nii.gz' for e in (1, 2)
                     for p in ('mag', 'phase')]
    ref = realdata.PHILIPS_HEAD / '2001_WIP_fcMRI_Field_Mapping_cl_'
    for echo, te in zip((1, 2), PHILIPS_TES_S):
        for part, suffix in (('mag', ''), ('phase', '_ph')):
            path = anat / f'sub-philips_echo-{echo}_part-{part}_MEGRE.nii.gz'
            meta = _sidecar(path)
            assert meta['EchoTime'] == te and meta['EchoNumber'] == echo
            assert meta['MagneticFieldStrength'] == 3 and meta['Manufacturer'] == 'Philips'
            assert not {'PatientID', 'PatientName', 'PatientBirthDate'} & set(meta)
            img = nb.load(path)
            data = np.asarray(img.dataobj, dtype=np.float64)
            expected = np.asarray(nb.load(f'{ref}e{echo}{suffix}.nii.gz').dataobj, float)
            assert np.allclose(img.affine, nb.load(f'{ref}e{echo}.nii.gz').affine, atol=1e-3)
            if part == 'phase':
                assert meta['Units'] == 'rad'
                assert -np.pi <= data.min() and data.max() < np.pi
                assert np.abs(np.angle(np.exp(1j * (data - expected)))).max() < 1e-5
            else:
                assert np.array_equal(data, expected)
    rows = (bids / 'sourcedata' / 'qsmflow_convert' / 'sub-philips_summary.tsv').read_text()
    assert rows.splitlines()[1].split('\t')[:5] == ['2001', 'WIP fcMRI Field Mapping',
                                                     'converted', '2', '2.3,4.6']


def test_philips_dicom_end_to_end(tmp_path, run_cli):
    """The converted real Philips DICOM runs through qsmflow participant, and its maps go
    back to DICOM (export-dicom) with the chi grid and values."""
    bids, out = tmp_path / 'bids', tmp_path / 'out'
    assert run_cli('convert', PHILIPS_DICOM / 'classic', bids, '--participant-label',
                   'philips').returncode == 0
    res = run_cli(bids, out, 'participant', '--skip-bids-validation', '--skip-registration',
                  '--nprocs', '1', '-w', tmp_path / 'work')
    assert res.returncode == 0, res.stderr
    assert '2 echoes (2.3, 4.6 ms), 3 T, 80x80x53 voxels of 3x3x3 mm, mag/phase, ' in res.stdout
    anat = out / 'sub-philips' / 'anat'
    mask = np.asarray(nb.load(anat / 'sub-philips_desc-brain_mask.nii.gz').dataobj) > 0
    assert 900 <= mask.sum() * 27 / 1000 <= 1800
    chi = np.asarray(nb.load(anat / 'sub-philips_Chimap.nii.gz').dataobj, dtype=float)
    assert np.isfinite(chi).all() and np.abs(np.percentile(chi[mask], [1, 99])).max() < 1.0
    # ... and back to the scanner: every native map as a DICOM series in the source study,
    # which dcm2niix reads back onto the chi grid
    res = run_cli('export-dicom', out, tmp_path / 'dicom', '--reference-series',
                  PHILIPS_DICOM / 'classic')
    assert res.returncode == 0, res.stderr
    series_dirs = sorted(p.name for p in (tmp_path / 'dicom').iterdir())
    assert series_dirs == sorted(f'sub-philips_{s}' for s in (
        'Chimap', 'desc-paramagnetic_Chimap', 'desc-diamagnetic_Chimap', 'R2starmap',
        'T2starmap', 'desc-swi_swi', 'desc-minip_swi'))
    back = tmp_path / 'back'
    sidecars = run_dcm2niix(tmp_path / 'dicom' / 'sub-philips_Chimap', back)
    img = nb.load(sidecars[0].with_name(sidecars[0].name[:-5] + '.nii.gz'))
    assert np.allclose(img.affine, nb.load(anat / 'sub-philips_Chimap.nii.gz').affine,
                       atol=1e-3)
    assert np.abs(np.asarray(img.dataobj, dtype=float) - chi).max() < 1e-4


def test_siemens_fieldmap_is_written_as_fmap_not_megre(tmp_path, run_cli):
    """The Siemens XA30 two-echo field map (magnitude of each echo + phase difference) is
    written in the BIDS fmap form (phasediff in rad with EchoTime1/EchoTime2, magnitude1/2),
    never as MEGRE; with no multi-echo GRE in the folder the exit code is still 1."""
    bids = tmp_path / 'bids'
    res = run_cli('convert', SIEMENS_FIELDMAP, bids, '--participant-label', 'fm')
    assert res.returncode == 1
    assert res.stderr.count('\n') == 1 and 'no multi-echo GRE series' in res.stderr
    assert 'Traceback' not in res.stderr
    assert '1 field map(s) written to fmap/' in res.stdout
    assert not list(bids.rglob('*MEGRE*'))
    fmap = bids / 'sub-fm' / 'fmap'
    assert sorted(p.name for p in fmap.iterdir()) == [
        f'sub-fm_{s}.{e}' for s in ('magnitude1', 'magnitude2', 'phasediff')
        for e in ('json', 'nii.gz')]
    diff = _sidecar(fmap / 'sub-fm_phasediff.nii.gz')
    assert (diff['EchoTime1'], diff['EchoTime2']) == (0.01, 0.01246)
    assert diff['Units'] == 'rad' and 'EchoTime' not in diff and 'PatientID' not in diff
    assert 'scanner integers' in diff['PhaseConversion']
    assert [_sidecar(fmap / f'sub-fm_magnitude{e}.nii.gz')['EchoTime'] for e in (1, 2)] == \
        [0.01, 0.01246]
    rad = np.asarray(nb.load(fmap / 'sub-fm_phasediff.nii.gz').dataobj, np.float64)
    assert -np.pi - 1e-6 <= rad.min() < -3 and 3 < rad.max() < np.pi
    mag1 = nb.load(fmap / 'sub-fm_magnitude1.nii.gz')
    assert mag1.shape == rad.shape and np.allclose(mag1.affine, nb.load(
        fmap / 'sub-fm_phasediff.nii.gz').affine)
    table = (bids / 'sourcedata' / 'qsmflow_convert' / 'sub-fm_summary.tsv').read_text()
    assert '9001,9002,10001\tgre_field_mapping\tfieldmap\t2\t10,12.46' in table
    assert (bids / 'dataset_description.json').is_file()
    assert not list((bids / 'sourcedata' / 'qsmflow_convert').glob('.staging*'))


@pytest.mark.parametrize('stem, coil', [('10_1_c3', True), ('10_1_cH1', True),
                                         ('11_2_cH12_ph', True), ('10_1', False),
                                         ('10_1_ph', False)])
def test_single_coil_images_are_set_aside(tmp_path, stem, coil):
    """dcm2niix names single-coil images _c<coil> (Siemens: _c3, _cH1; before the part
    suffix): they are skipped as uncombined coil images, never taken as combined data."""
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
            tmp_path / f'{stem}.nii.gz')
    (tmp_path / f'{stem}.json').write_text(json.dumps({'EchoTime': 0.004, 'SeriesNumber': 10,
                                                       'ImageType': ['ORIGINAL', 'M']}))
    images, skipped = series.read_images(tmp_path)
    assert (len(skipped), len(images)) == ((1, 0) if coil else (0, 1))
    if coil:
        assert 'uncombined coil image' in skipped[0].reason


def test_fieldmap_without_first_magnitude_is_skipped():
    diff = _image('phase', 2, 0.006, 11, EchoTime1=0.004, EchoTime2=0.006)
    fieldmaps, rest, skipped = series.find_fieldmaps([diff, _image('mag', 2, 0.006)])
    assert fieldmaps == [] and rest == [] and 'without a magnitude image' in skipped[0].reason


# --- synthetic vendor DICOM of the phantom ------------------------------------------------

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """The tiny phantom's BIDS (one participant) and its arrays."""
    from qsmflow.phantom.bids import write_dataset
    from tests.variants import read_phantom

    root = tmp_path_factory.mktemp('convert_tiny')
    write_dataset(root / 'raw', root / 'truth', [{'participant_id': '01', 'age': 50,
                                                  'sex': 'F'}], size='tiny')
    return root, read_phantom(root / 'raw')


@pytest.fixture(scope='module')
def vendor_dicom(tiny, tmp_path_factory):
    """``vendor -> DICOM folder`` of the tiny phantom in each vendor's style."""
    _, (mag, phase, affine, meta) = tiny
    root = tmp_path_factory.mktemp('vendor_dicom')
    return {v: write_series(root / v, mag, phase, affine, meta['EchoTime'], v,
                            compress=(v == 'siemens'))
            for v in ('siemens', 'ge', 'philips')}


@pytest.mark.parametrize('vendor', ['siemens', 'ge', 'philips'])
def test_synthetic_vendor_dicom_converts(tiny, vendor_dicom, tmp_path, vendor):
    """Echo count, TEs in s and the phase (or complex signal) of every echo come back."""
    _, (mag, phase, affine, meta) = tiny
    result = convert_dicom(vendor_dicom[vendor], tmp_path / 'bids', '01', log=lambda _: None)
    anat = tmp_path / 'bids' / 'sub-01' / 'anat'
    parts = ('real', 'imag') if vendor == 'ge' else ('mag', 'phase')
    assert len(result['files']) == 10
    for e, te in enumerate(meta['EchoTime'], start=1):
        brain = mag[..., e - 1] > 0.2 * mag[..., e - 1].max()
        files = [anat / f'sub-01_echo-{e}_part-{p}_MEGRE.nii.gz' for p in parts]
        assert all(f.is_file() for f in files)
        assert _sidecar(files[1])['EchoTime'] == pytest.approx(te, abs=1e-9)
        assert _sidecar(files[1])['EchoNumber'] == e
        first, second = (np.asarray(nb.load(f).dataobj, dtype=np.float64) for f in files)
        assert np.allclose(nb.load(files[0]).affine, affine, atol=1e-4)
        got = np.angle(first + 1j * second) if vendor == 'ge' else second
        diff = np.angle(np.exp(1j * (got - phase[..., e - 1])))[brain]
        assert np.abs(diff).max() < 0.01  # 12-bit / int16 quantisation only
        if vendor != 'ge':
            assert _sidecar(files[1])['Units'] == 'rad'
    note = result['rows'][0]['phase']
    assert {'siemens': 'scanner integers -4096..4094', 'philips': 'radians',
            'ge': 'slice chopping undone'}[vendor] in note
    assert ('polarity inverted' in note) == (vendor == 'ge')


def test_echoes_are_numbered_by_time_without_echo_numbers(tiny, vendor_dicom, tmp_path):
    """Without EchoNumbers dcm2niix still writes one file per echo time (names ...a, ...b,
    no EchoNumber): the echoes come out numbered by echo time, each with its phase."""
    _, (mag, phase, affine, meta) = tiny
    dicom = rewrite(vendor_dicom['siemens'], tmp_path / 'dicom', drop_echo_numbers=True)
    result = convert_dicom(dicom, tmp_path / 'bids', '01', log=lambda _: None)
    assert result['rows'][0]['echoes'] == '5' and len(result['files']) == 10
    anat = tmp_path / 'bids' / 'sub-01' / 'anat'
    for e, te in enumerate(meta['EchoTime'], start=1):
        path = anat / f'sub-01_echo-{e}_part-phase_MEGRE.nii.gz'
        assert _sidecar(path)['EchoTime'] == pytest.approx(te, abs=1e-9)
        assert _sidecar(path)['EchoNumber'] == e
        brain = mag[..., e - 1] > 0.2 * mag[..., e - 1].max()
        got = np.asarray(nb.load(path).dataobj, dtype=np.float64)
        assert np.abs(np.angle(np.exp(1j * (got - phase[..., e - 1]))))[brain].max() < 0.01


def _in_orientation(path, affine):
    """The image at ``path`` with its axes permuted/flipped (no resampling) to the
    orientation of ``affine``; its affine must then equal ``affine``."""
    img = nb.load(path)
    img = img.as_reoriented(nb.orientations.ornt_transform(nb.io_orientation(img.affine),
                                                           nb.io_orientation(affine)))
    assert np.allclose(img.affine, affine, atol=1e-3)
    return np.asarray(img.dataobj, dtype=np.float64)


@pytest.mark.parametrize('vendor', ['philips', 'ge'])
def test_parts_stacked_in_4d_are_split(tiny, vendor_dicom, tmp_path, vendor):
    """Magnitude and phase with one ImageType: dcm2niix stacks them in one 4D file per
    echo; convert splits them into 3D files by their values (magnitude >= 0, phase signed
    within one cycle). Real/imaginary (GE) cannot be told apart that way: skipped, with
    the reason."""
    _, (mag, phase, affine, meta) = tiny
    dicom = rewrite(vendor_dicom[vendor], tmp_path / 'dicom',
                    image_type=['ORIGINAL', 'PRIMARY', 'OTHER'])
    bids = tmp_path / 'bids'
    result = convert_dicom(dicom, bids, '01', log=lambda _: None)
    if vendor == 'ge':
        assert result['files'] == [] and len(result['rows']) == 5
        assert all('not one magnitude and one signed phase' in r['files_or_reason']
                   for r in result['rows'])
        return
    assert result['rows'][0]['echoes'] == '5' and len(result['files']) == 10
    anat = bids / 'sub-01' / 'anat'
    for e in range(1, 6):
        brain = mag[..., e - 1] > 0.2 * mag[..., e - 1].max()
        files = [anat / f'sub-01_echo-{e}_part-{p}_MEGRE.nii.gz' for p in ('mag', 'phase')]
        got_mag, got_phase = (_in_orientation(f, affine) for f in files)
        assert got_phase.shape == mag.shape[:3]
        assert 'volume' in _sidecar(files[1])['QsmflowSplitFrom']
        assert np.abs(np.angle(np.exp(1j * (got_phase - phase[..., e - 1]))))[brain].max() \
            < 0.01
        ratio = got_mag[brain] / mag[..., e - 1][brain]
        assert np.ptp(ratio) < 0.01 * ratio.mean()  # magnitude up to one scale


def test_convert_is_idempotent_and_stays_inside(vendor_dicom, tmp_path, run_cli):
    """A second run writes the same bytes; nothing appears outside BIDS_DIR; no staging
    folder is left behind."""
    bids = tmp_path / 'out' / 'bids'
    args = ('convert', vendor_dicom['siemens'], bids, '--participant-label', 'sub-01',
            '--session-label', 'ses-a')
    assert run_cli(*args).returncode == 0
    first = _tree(bids)
    assert run_cli(*args).returncode == 0
    assert _tree(bids) == first
    assert sorted(os.listdir(tmp_path)) == ['out'] and os.listdir(tmp_path / 'out') == ['bids']
    assert 'sub-01/ses-a/anat/sub-01_ses-a_echo-5_part-phase_MEGRE.nii.gz' in first
    assert not [k for k in first if '.staging' in k or '.tmp' in k]
    assert (bids / 'participants.tsv').read_text() == 'participant_id\nsub-01\n'


# --- errors: one line, the file and the fix -----------------------------------------------

@pytest.mark.parametrize('case', ['missing', 'empty', 'label', 'inside'])
def test_convert_errors_are_one_line(tmp_path, run_cli, case):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('not DICOM')
    args = {'missing': (tmp_path / 'nope', tmp_path / 'bids'),
            'empty': (empty, tmp_path / 'bids'),
            'label': (empty, tmp_path / 'bids', '--participant-label', 'a_b'),
            'inside': (empty, tmp_path)}[case]
    res = run_cli('convert', *args)
    assert res.returncode == 2
    assert res.stderr.startswith('qsmflow: error: ') and res.stderr.count('\n') == 1
    assert {'missing': 'not a folder', 'empty': 'no DICOM files found',
            'label': 'letters and digits', 'inside': 'must not contain'}[case] in res.stderr


def test_convert_usage_errors(run_cli):
    assert run_cli('convert', '--help').returncode == 0
    assert run_cli('convert').returncode == 2


# --- vendor conventions and grouping on arrays / sidecars ---------------------------------

def test_siemens_integers_to_rad_exact():
    stored = np.arange(-4096, 4096, 2, dtype=float).reshape(16, 16, 16)
    rad, note = vendor_phase.phase_to_rad(stored, 'SIEMENS')
    assert np.allclose(rad, stored * np.pi / 4096, atol=1e-6) and 'integers' in note


def test_ge_chopping_and_polarity_are_undone():
    rng = np.random.default_rng(0)
    z = np.exp(1j * np.cumsum(rng.normal(0, 0.05, (6, 5, 8, 2)), axis=2))
    stored = np.conj(z) * np.where(np.arange(8) % 2, -1, 1)[None, None, :, None]
    re_, im_, notes = vendor_phase.fix_complex(stored.real, stored.imag, 'GE MEDICAL SYSTEMS')
    assert np.allclose(re_ + 1j * im_, z, atol=1e-6) and len(notes) == 2
    re_, im_, notes = vendor_phase.fix_complex(z.real, z.imag, 'SIEMENS')
    assert np.allclose(re_ + 1j * im_, z, atol=1e-6) and notes == []


def _image(part, echo, te, series_number=10, protocol='gre', **meta):
    return series.Image(Path(f'{series_number}_{echo}_{part}.nii.gz'),
                        {'SeriesNumber': series_number, 'ProtocolName': protocol,
                         'ScanningSequence': 'GR', **meta}, part, echo, te, (4, 4, 4), np.eye(4))


def test_grouping_pairs_series_and_splits_runs():
    """Siemens magnitude and phase series pair up; a repeated protocol gives two runs."""
    images = [_image(p, e, 0.004 * e, s + (p == 'phase')) for s in (10, 20)
              for p in ('mag', 'phase') for e in (1, 2, 3)]
    found, skipped = series.find_acquisitions(images)
    assert skipped == [] and [a.run for a in found] == [1, 2]
    assert [a.series for a in found] == [[10, 11], [20, 21]]
    assert found[0].echo_times_s == pytest.approx([0.004, 0.008, 0.012])


@pytest.mark.parametrize('case, reason', [
    ('mag_only', 'magnitude only'),
    ('single', 'single echo'),
    ('phase_diff', 'not multi-echo GRE phase per echo'),
    ('missing_phase', 'mag echoes [1, 2, 3] but phase echoes [1, 2]'),
    ('epi', 'not a gradient-echo acquisition'),
])
def test_non_megre_groups_are_skipped_with_a_reason(case, reason):
    images = {
        'mag_only': [_image('mag', e, 0.004 * e) for e in (1, 2)],
        'single': [_image(p, 1, 0.004) for p in ('mag', 'phase')],
        'phase_diff': [_image('mag', 1, 0.004), _image('mag', 2, 0.006),
                       _image('phase', 2, 0.006, 11)],
        'missing_phase': [_image('mag', e, 0.004 * e) for e in (1, 2, 3)]
        + [_image('phase', e, 0.004 * e) for e in (1, 2)],
        'epi': [_image(p, e, 0.004 * e, ScanningSequence='EP') for p in ('mag', 'phase')
                for e in (1, 2)],
    }[case]
    found, skipped = series.find_acquisitions(images)
    assert found == [] and len(skipped) == 1 and reason in skipped[0].reason


# --- round trip: phantom -> vendor DICOM -> convert -> reconstruct ------------------------

def _participant(run_cli, bids, out):
    res = run_cli(bids, out, 'participant', '--skip-bids-validation', '--skip-registration',
                  '--no-swi', '--nprocs', '1', '-w', out.parent / f'{out.name}_work')
    assert res.returncode == 0, res.stderr
    anat = out / 'sub-01' / 'anat'
    chi = np.asarray(nb.load(anat / 'sub-01_Chimap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / 'sub-01_desc-brain_mask.nii.gz').dataobj) > 0
    return chi, mask, res.stdout


def _qc_row(out):
    from qsmflow.reports.qc_table import read_row

    return read_row(out / 'sub-01' / 'anat' / 'sub-01_desc-qc_metrics.tsv')


def _deep_gm(truth_anat):
    from qsmflow.phantom.head import DEEP_GM

    labels = np.asarray(nb.load(truth_anat / 'sub-01_desc-phantom_dseg.nii.gz').dataobj)
    lut = dict((n, int(i)) for i, n in (line.split('\t')[:2] for line in (
        truth_anat / 'sub-01_desc-phantom_dseg.tsv').read_text().splitlines()[1:]))
    return {f'{r}_{s}': labels == lut[f'{r}_{s}'] for r in DEEP_GM for s in ('left', 'right')}


@pytest.fixture(scope='module')
def phantom_chi(tiny, tmp_path_factory, run_cli_module):
    """χ and mask of qsmflow on the phantom's own BIDS, and the deep-GM regions."""
    root, _ = tiny
    chi, mask, _ = _participant(run_cli_module, root / 'raw',
                                tmp_path_factory.mktemp('ref') / 'o')
    return chi, mask, _deep_gm(root / 'truth' / 'sub-01' / 'anat')


@pytest.fixture(scope='module')
def run_cli_module():
    """``run_cli`` for module fixtures (output not captured)."""
    import subprocess

    from qsmflow.cli import main

    def run(*args):
        argv = [str(a) for a in args]
        return subprocess.CompletedProcess(['qsmflow', *argv], main(argv), '', '')
    return run


@pytest.mark.parametrize('vendor', ['siemens', 'ge', 'philips'])
def test_round_trip_gives_the_phantoms_chi(phantom_chi, vendor_dicom, tmp_path, run_cli,
                                           vendor):
    """Phantom → vendor-style DICOM → convert → reconstruct: deep-GM χ means within
    0.002 ppm of the reconstruction of the phantom's own BIDS, with the right sign
    (deep GM above the brain mean)."""
    ref_chi, ref_mask, regions = phantom_chi
    bids = tmp_path / 'bids'
    assert run_cli('convert', vendor_dicom[vendor], bids, '--participant-label',
                   '01').returncode == 0
    chi, mask, stdout = _participant(run_cli, bids, tmp_path / 'out')
    assert 'phase polarity looks inverted' not in stdout
    assert _qc_row(tmp_path / 'out')['phase_polarity_inverted'] == 0
    assert (mask != ref_mask).sum() <= 0.01 * ref_mask.sum()
    diffs, means = {}, {}
    for name, roi in regions.items():
        roi = roi & mask & ref_mask
        means[name] = chi[roi].mean()
        diffs[name] = chi[roi].mean() - ref_chi[roi].mean()
    print(vendor, 'deep-GM differences (ppm):', {k: round(float(v), 5) for k, v in diffs.items()})
    assert max(abs(d) for d in diffs.values()) <= 0.002, diffs
    assert all(chi[regions[n] & mask].mean() > chi[mask].mean()
               for n in means if n.split('_')[0] in ('putamen', 'globus', 'caudate')), means


def test_round_trip_without_ge_polarity_fix_inverts_chi(phantom_chi, vendor_dicom, tmp_path,
                                                        run_cli, monkeypatch):
    """The control: GE data converted without the polarity fix give deep GM below the brain
    mean (the sign the check above catches), and pre-flight warns that the polarity looks
    inverted."""
    _, _, regions = phantom_chi
    monkeypatch.setattr(vendor_phase, 'INVERTED_POLARITY', ())
    bids = tmp_path / 'bids'
    assert run_cli('convert', vendor_dicom['ge'], bids, '--participant-label',
                   '01').returncode == 0
    assert 'polarity' not in _sidecar(bids / 'sub-01' / 'anat' /
                                      'sub-01_echo-1_part-imag_MEGRE.nii.gz')['PhaseConversion']
    chi, mask, stdout = _participant(run_cli, bids, tmp_path / 'out')
    assert 'WARNING: phase polarity looks inverted' in stdout  # pre-flight noticed
    qc = _qc_row(tmp_path / 'out')  # and the QC table carries it
    assert qc['phase_polarity_inverted'] == 1 and qc['phase_polarity_score'] < 0
    for name in ('putamen_left', 'globus_pallidus_left', 'caudate_left'):
        assert chi[regions[name] & mask].mean() < chi[mask].mean() - 0.02


# --- uncombined receive coils ---------------------------------------------------------------

def _write_coils(bids_src, bids, mag, phase, affine, n_coils=4):
    """The phantom's echoes as ``n_coils`` uncombined coils: smooth sensitivities and strong,
    spatially varying phase offsets (several rad across the head)."""
    import shutil

    shutil.copytree(bids_src, bids, ignore=shutil.ignore_patterns('sub-*'))
    anat = bids / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in mag.shape[:3]],
                                indexing='ij'), -1)
    src = Path(bids_src) / 'sub-01' / 'anat'
    for c in range(n_coils):
        angle = 2 * np.pi * c / n_coils
        centre = np.array([1.3 * np.cos(angle), 1.3 * np.sin(angle), 0.0])
        sens = np.exp(-np.sum((grid - centre) ** 2, -1) / 2.0)
        offset = 1.5 * c + 3.0 * grid @ np.array([np.cos(angle), np.sin(angle), 0.5]) \
            + 2.0 * np.sum(grid ** 2, -1) * (-1) ** c
        for e in range(mag.shape[-1]):
            z = mag[..., e] * sens * np.exp(1j * (phase[..., e] + offset))
            for part, data in (('mag', np.abs(z)), ('phase', np.angle(z))):
                name = f'sub-01_rec-uncombined_coil-{c + 1:02d}_echo-{e + 1}_part-{part}_MEGRE'
                nb.Nifti1Image(data.astype(np.float32), affine).to_filename(
                    anat / f'{name}.nii.gz')
                shutil.copy(src / f'sub-01_echo-{e + 1}_part-{part}_MEGRE.json',
                            anat / f'{name}.json')
    return bids


def test_uncombined_coils_give_the_phantoms_chi(phantom_chi, tiny, tmp_path, run_cli):
    """4 uncombined coils of the phantom → MCPC-3D-S in the run → the χ of the combined
    phantom: deep-GM means within 0.005 ppm; the χ sidecar records the combination."""
    root, (mag, phase, affine, _) = tiny
    ref_chi, ref_mask, regions = phantom_chi
    bids = _write_coils(root / 'raw', tmp_path / 'bids', mag, phase, affine)
    out = tmp_path / 'out'
    res = run_cli(bids, out, 'participant', '--skip-bids-validation', '--skip-registration',
                  '--no-swi', '--nprocs', '1', '-w', tmp_path / 'work')
    assert res.returncode == 0, res.stderr
    anat = out / 'sub-01' / 'anat'
    chi = np.asarray(nb.load(anat / 'sub-01_rec-uncombined_Chimap.nii.gz').dataobj, float)
    mask = np.asarray(nb.load(anat / 'sub-01_rec-uncombined_desc-brain_mask.nii.gz').dataobj) > 0
    diffs = {n: chi[r & mask & ref_mask].mean() - ref_chi[r & mask & ref_mask].mean()
             for n, r in regions.items()}
    print('coils deep-GM differences (ppm):', {k: round(float(v), 5) for k, v in diffs.items()})
    assert max(abs(d) for d in diffs.values()) <= 0.005, diffs
    steps = _sidecar(anat / 'sub-01_rec-uncombined_Chimap.nii.gz')['QSMProcessing']
    combo = next(s for s in steps if s['Step'] == 'coil-combination')
    assert combo['NumberOfCoils'] == 4 and combo['Algorithm'].endswith('combine_coils_mcpc3ds')


def test_a_coil_on_another_grid_fails_pre_flight_with_one_line(tiny, tmp_path):
    from qsmflow.bids.inputs import find_acquisitions
    from qsmflow.bids.preflight import preflight

    root, (mag, phase, affine, _) = tiny
    bids = _write_coils(root / 'raw', tmp_path / 'bids', mag[:, :, :20], phase[:, :, :20],
                        affine, n_coils=2)
    bad = next((bids / 'sub-01' / 'anat').glob('*_coil-02_echo-3_part-phase_MEGRE.nii.gz'))
    nb.Nifti1Image(np.zeros((5, 5, 5), np.float32), affine).to_filename(bad)
    acqs, failures = find_acquisitions(bids)
    preflight(acqs, failures, log=lambda line: None)
    assert acqs == {} and failures['01'].startswith(f'{bad}: shape (5, 5, 5) differs')


def test_compare_refuses_uncombined_coils_with_one_line(tiny, tmp_path, run_cli):
    root, (mag, phase, affine, _) = tiny
    bids = _write_coils(root / 'raw', tmp_path / 'bids', mag[:, :, :20], phase[:, :, :20],
                        affine, n_coils=2)
    (tmp_path / 'seg').mkdir()
    res = run_cli('compare', bids, tmp_path / 'o', '--pipelines', 'default', 'consensus',
                  '--segmentations', tmp_path / 'seg', '--skip-bids-validation')
    assert res.returncode != 0
    assert 'uncombined coils (coil-<n>) are not supported by compare' in res.stdout + res.stderr
