# SPDX-License-Identifier: Apache-2.0
"""The one atomic-write utility (:mod:`qsmflow.bids.atomic`) and its users."""
from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmflow.bids import atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.'))


def test_json_text_copy_and_nifti_appear_whole(tmp_path):
    atomic.write_json(tmp_path / 'a.json', {'x': np.float32(1.5), 'v': np.arange(2), 't': (1,)})
    assert json.loads((tmp_path / 'a.json').read_text()) == {'x': 1.5, 'v': [0, 1], 't': [1]}
    assert (tmp_path / 'a.json').read_text().endswith('}\n')
    atomic.write_text(tmp_path / '.bidsignore', 'x\n')
    assert (tmp_path / '.bidsignore').read_text() == 'x\n'
    atomic.copy_file(tmp_path / 'a.json', tmp_path / 'b.json')
    assert (tmp_path / 'b.json').read_bytes() == (tmp_path / 'a.json').read_bytes()
    img = nb.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    atomic.write_nifti(img, tmp_path / 'c.nii.gz')
    assert np.array_equal(nb.load(tmp_path / 'c.nii.gz').get_fdata(), img.get_fdata())
    assert _leftovers(tmp_path) == ['.bidsignore']


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / 'a.json'
    atomic.write_json(dest, {'old': 1})

    def fail(tmp):
        tmp.write_text('half')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic.replace_into(dest, fail)
    assert json.loads(dest.read_text()) == {'old': 1} and _leftovers(tmp_path) == []


def test_temporaries_are_hidden_and_match_the_staging_cleanup():
    """The staging folder removes ``.<prefix>_*`` leftovers of a killed run
    (:func:`qsmflow.execution.staging._stale_temporaries`)."""
    for name in ('sub-01_Chimap.nii.gz', 'sub-01_Chimap.json', 'sub-01_atlas-X_stats.tsv'):
        tmp = atomic.temporary_path(f'/out/{name}')
        assert tmp.name.startswith('.sub-01_') and tmp.parent.name == 'out'
    assert atomic.temporary_path('/o/x.nii.gz').name.endswith('.nii.gz')


def test_interfaces_write_sidecars_through_the_utility():
    from qsmflow.interfaces import base, bids

    assert base.write_json is atomic.write_json and bids.atomic_copy is atomic.copy_file
