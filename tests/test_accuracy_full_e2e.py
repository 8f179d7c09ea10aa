# SPDX-License-Identifier: Apache-2.0
"""Issue-level accuracy from raw BIDS: the full-size 1 mm phantom, B0 tilted 15°, SNR 100,
5 echoes, through the command line and Nipype with the default pipeline."""
from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from qsmflow.phantom.head import DEEP_GM

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
    from qsmflow.cli import main
    from qsmflow.phantom.bids import write_dataset

    root = tmp_path_factory.mktemp('full1mm')
    write_dataset(root / 'rawdata', root / 'truth',
                  [{'participant_id': '01', 'age': 50, 'sex': 'F'}],
                  size='full', oblique_deg=15.0, snr=100.0)
    # In this process (Linear plugin); on failure pytest shows the run's captured output.
    code = main([str(root / 'rawdata'), str(root / 'out'), 'participant',
                 '--skip-registration', '--nprocs', '1', '-w', str(root / 'work')])
    assert code == 0
    return root


def test_full_phantom_deep_gm_error_at_most_13_ppb(full_run):
    """Mean absolute deep-GM contrast error ≤ 0.013 ppm, no nucleus beyond 0.02 ppm
    (measured 2026-12-06: 0.0103 mean, 0.0157 the worst, every nucleus high; 0.0036 with the
    weight floor of 5e-4 and one TV pass). On this ellipsoid head the background removal
    makes the deep grey matter read about +0.009 ppm high, which one-pass TV's own loss of
    contrast hid in part; TV's reweighted second pass removes that loss
    (``tests/qsm/test_tv_reweighting.py``)."""
    anat, truth_anat = full_run / 'out/sub-01/anat', full_run / 'truth/sub-01/anat'
    chi = np.asarray(nb.load(anat / 'sub-01_Chimap.nii.gz').dataobj, dtype=float)
    mask = np.asarray(nb.load(anat / 'sub-01_desc-brain_mask.nii.gz').dataobj) > 0
    truth = np.asarray(nb.load(truth_anat / 'sub-01_Chimap.nii.gz').dataobj, dtype=float)
    labels = np.asarray(nb.load(truth_anat / 'sub-01_desc-phantom_dseg.nii.gz').dataobj)
    lut = {}
    for line in (truth_anat / 'sub-01_desc-phantom_dseg.tsv').read_text().splitlines()[1:]:
        idx, name = line.split('\t')[:2]
        lut[name] = int(idx)
    errors = {}
    for region in DEEP_GM:
        for side in ('left', 'right'):
            roi = (labels == lut[f'{region}_{side}']) & mask
            errors[f'{region}_{side}'] = ((chi[roi].mean() - chi[mask].mean())
                                          - (truth[roi].mean() - truth[mask].mean()))
    print('deep-GM errors (ppm):', {k: round(float(v), 4) for k, v in errors.items()})
    assert float(np.mean(np.abs(list(errors.values())))) <= 0.013, errors
    assert float(np.max(np.abs(list(errors.values())))) <= 0.02, errors
