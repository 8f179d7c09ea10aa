# SPDX-License-Identifier: Apache-2.0
"""The pre-flight memory estimate of each reconstruction node (``mem_gb``) against a real
measurement: every node of the default chain run in a fresh process on the 3 mm phantom,
its resident memory sampled with psutil (:mod:`qsmflow.bench.nodes`)."""
import pytest

pytest.importorskip('psutil')


@pytest.mark.slow
def test_node_memory_estimates_match_a_psutil_measurement(tmp_path):
    from qsmflow.bench.nodes import measure

    rows = measure('tiny', folder=tmp_path)
    assert [r['node'] for r in rows] == ['load_megre', 'brain_mask', 'field_fit',
                                         'quality_mask', 'bg_removal', 'inversion',
                                         'reference']
    for row in rows:
        assert row['measured_gb'] > 0.05, row
        assert abs(row['estimated_gb'] / row['measured_gb'] - 1) <= 0.25, row


def test_estimate_grows_with_the_grid_and_keeps_unmeasured_methods_generous():
    from qsmflow.execution.memory import node_mem_gb

    full, hires = 144 * 176 * 144, 240 * 293 * 240
    assert node_mem_gb('field_fit', hires, 5) > node_mem_gb('field_fit', full, 5)
    assert node_mem_gb('field_fit', full, 5) > node_mem_gb('field_fit', full, 1)
    assert node_mem_gb('inversion', full, method='medi') > node_mem_gb('inversion', full)
    assert node_mem_gb('inversion', full, method='tv') == node_mem_gb('inversion', full)
