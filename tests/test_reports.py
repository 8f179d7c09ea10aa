# SPDX-License-Identifier: Apache-2.0
"""Participant reports (``OUT_DIR/sub-<label>.html``) opened in headless Chromium: no console
error, every image there and drawn, the methods text complete; plus the methods and
consensus text on their own. The end-to-end outputs are the shared session runs
(``tests/conftest.py``): the tiny run with registration, atlas and segmentation, and the
two-participant phantom run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsmflow.reports import methods
from tests import chromium

#: Reportlets every acquisition has; registration adds its own.
ALWAYS = ('mask', 'totalfield', 'localfield', 'noise', 'chi', 'chitriplet')


def test_consensus_box_warns_about_what_the_run_does_not_follow():
    steps = [{'Step': 'input', 'EchoTime': [0.005, 0.010], 'MagneticFieldStrength': 3.0},
             {'Step': 'masking', 'Algorithm': 'qsmflow.qsm.mask.brain_mask', 'Parameters': {}},
             {'Step': 'unwrapping+echo-fit', 'Algorithm': 'qsmflow.qsm.echoes.estimate_field',
              'Parameters': {'unwrapping': 'laplacian', 'combination': 'wls'}},
             {'Step': 'background-removal', 'Algorithm': 'qsmflow.qsm.bgremove.vsharp',
              'Parameters': {'radii_mm': [5.0, 3.0]}},
             {'Step': 'dipole-inversion', 'Algorithm': 'qsmflow.qsm.inversion.tkd',
              'Parameters': {'threshold': 0.19}},
             {'Step': 'reference', 'Algorithm': 'qsmflow.qsm.reference.reference',
              'Parameters': {'method': 'mean'}, 'ReferenceValue': 0.001}]
    facts = methods.acquisition_facts(steps, {'MRAcquisitionType': '3D'}, (1.0, 1.0, 2.0),
                                      (64, 64, 32), '0.1.0')
    checks = dict((text.split(' (')[0], ok) for ok, text in
                  methods.consensus_checks(steps, facts))
    assert checks['at least 3 echoes'] is False and checks['3D acquisition'] is True
    assert checks['exact unwrapping, path or region growing'] is False
    assert checks['iterative inversion with a sparsity prior'] is False
    assert checks['isotropic voxels of at most 1 mm'] is False
    assert checks['monopolar readout'] is None  # not in the sidecars: cannot tell
    assert checks['SHARP-family or PDF background removal'] is True
    text, keys = methods.methods_paragraph(steps, facts, methods.reference_text(steps, {}))
    assert '5:5:10 ms (2 echoes)' in text and 'at 3 T' in text
    assert 'dipole-inversion: tkd (qsmflow.qsm.inversion.tkd; threshold=0.19) [tkd]' in text
    assert keys == ['nipype', 'laplacian_unwrap', 'sharp', 'vsharp', 'tkd']
    assert set(keys) <= set(methods.bibliography())


@pytest.fixture(scope='module')
def browser():
    reason = chromium.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        page = chromium.Page()
    except (chromium.BrowserError, OSError) as exc:
        pytest.skip(f'headless chromium unavailable: {exc}')
    yield page
    page.close()


def _check_reports(out: Path, browser, shots: Path, registration: bool) -> list[Path]:
    chimaps = sorted(p for p in out.glob('sub-*/**/anat/*_Chimap.nii.gz')
                     if '_space-' not in p.name and '_desc-' not in p.name)
    assert chimaps
    reports = sorted(out.glob('sub-*.html'))
    assert {r.stem for r in reports} == {c.name.split('_')[0] for c in chimaps}
    for report in reports:
        browser.open(report)
        assert browser.console_errors() == [], report
        images = browser.images()
        assert images and all(i['ok'] for i in images), [i for i in images if not i['ok']]
        for image in images:
            assert (out / image['src']).is_file()
        names = {Path(i['src']).stem.split('_desc-')[-1][:-len('_qsm')] for i in images}
        wanted = set(ALWAYS) | ({'registration', 'atlas'} if registration else set())
        assert wanted <= names, (report.name, names)
        text = browser.text()
        for chimap in (c for c in chimaps if c.name.startswith(report.stem + '_')
                       or c.name.startswith(report.stem + '_Chimap')):
            meta = json.loads(chimap.with_name(chimap.name.replace('.nii.gz', '.json'))
                              .read_text())
            for step in meta['QSMProcessing']:
                if step['Step'] == 'input':
                    te_ms = [round(t * 1000, 3) for t in step['EchoTime']]
                    assert methods._echo_text(te_ms) in text
                    assert f'at {step["MagneticFieldStrength"]:g} T' in text
                    continue
                assert f'{step["Step"]}: ' in text and step['Algorithm'] in text
                for name in (step.get('Parameters') or {}):
                    if name != 'return_info':
                        assert f'{name}=' in text, (step['Step'], name)
        for needle in ('2024 consensus', 'QC metrics', 'Errors and warnings', 'logs/sub-'):
            assert needle in text
        shot = browser.screenshot(shots / f'{report.stem}.png')
        assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 10_000
    return reports


@pytest.mark.slow
def test_reports_of_the_tiny_run_with_registration(tiny_linear_run, browser, tmp_path):
    assert tiny_linear_run['code'] == 0
    reports = _check_reports(tiny_linear_run['out'], browser, tmp_path, registration=True)
    text = reports[0].read_text()
    assert 'Regional table' in text and 'registration_nmi' in text
    print(f'screenshots: {tmp_path}')  # kept by pytest as the test's artefact


@pytest.mark.slow
def test_reports_of_the_phantom_cohort(e2e_run, browser, tmp_path):
    assert e2e_run['code'] == 0
    registered = any(e2e_run['out'].glob('sub-*/anat/*_space-*_Chimap.nii.gz'))
    _check_reports(e2e_run['out'], browser, tmp_path, registration=registered)


def test_a_participant_failing_preflight_gets_a_report_with_the_reason(tiny_phantom, tmp_path,
                                                                        run_cli):
    bids_dir, _ = tiny_phantom
    (tmp_path / 'masks').mkdir()
    proc = run_cli(bids_dir, tmp_path / 'out', 'participant', '--skip-bids-validation',
                   '--skip-registration', '--brain-masks', tmp_path / 'masks',
                   '-w', tmp_path / 'work')  # no mask there: pre-flight fails sub-01
    assert proc.returncode == 1
    page = (tmp_path / 'out' / 'sub-01.html').read_text()
    assert 'Failed:</b> no brain mask for sub-01 in --brain-masks' in page
    assert 'id="errors"' in page and '_Chimap' not in page
