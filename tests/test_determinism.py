# SPDX-License-Identifier: Apache-2.0
"""Determinism: the same input gives bitwise identical outputs, whatever the plugin
(Linear, MultiProc) and the thread counts.

* End to end (tiny phantom, registration, atlas and segmentation tables): ``--nprocs 1``
  (Linear, one ITK thread per node) and ``--nprocs 2`` (MultiProc, two) agree byte for
  byte on every derivative: χ, masks, fields, ``space-*_Chimap``, transforms, native-space
  atlas labels, tables and sidecars.
* The reconstruction steps (numba loops, FFT workers, BLAS) give the same bits with one
  thread and with three.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_resume import (
    RUN_TIMEOUT_S, assert_same_outputs, derivative_files, qsmflow_command, run_to_end)

#: Every reconstruction function of ``qsmflow.qsm`` on the tiny oblique phantom; prints
#: ``{step: sha256 of the result}`` as JSON, with the thread counts actually in force.
STEPS_SCRIPT = r'''
import hashlib, json, os
import numba
import numpy as np
from scipy import fft as sfft
from qsmflow.phantom.bids import DEFAULT_B0_TESLA, DEFAULT_ECHO_TIMES_S, oblique_affine
from qsmflow.phantom.forward import simulate_megre
from qsmflow.phantom.head import make_head
from qsmflow.qsm import bgremove, echoes, inversion, kernels, mask, reference, threads
from qsmflow.qsm.brain_extraction import extract_brain

def digest(x):
    if isinstance(x, dict):
        return {k: digest(v) for k, v in sorted(x.items()) if isinstance(v, np.ndarray)}
    if isinstance(x, tuple):
        return [digest(v) for v in x]
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()

head = make_head(size='tiny')
vox = head.voxel_size_mm
b0 = kernels.b0_dir_from_affine(oblique_affine(head.labels.shape, vox, 15.0))
tes = list(DEFAULT_ECHO_TIMES_S)
mag, phase, _ = simulate_megre(head, tes, DEFAULT_B0_TESLA, b0, snr=100.0,
                               rng=np.random.default_rng(0))
limit = threads.limit(int(os.environ['QSMFLOW_TEST_THREADS']))
limit.__enter__()
out = {'threads': {'numba': numba.get_num_threads(), 'fft': sfft.get_workers()}}
out['brain_extraction'] = digest(extract_brain(np.sqrt((mag ** 2).sum(-1)), vox))
brain = mask.brain_mask(mag[..., 0], vox)
out['brain_mask'] = digest(brain)
fit = echoes.estimate_field(phase, brain, vox, mag, echo_times_s=tes,
                            b0_tesla=DEFAULT_B0_TESLA)
out['romeo+wls'] = digest(fit)
out['romeo+nlcomplex'] = digest(echoes.estimate_field(
    phase, brain, vox, mag, echo_times_s=tes, b0_tesla=DEFAULT_B0_TESLA,
    combination='nlcomplex'))
out['laplacian+wls'] = digest(echoes.estimate_field(
    phase, brain, vox, mag, echo_times_s=tes, b0_tesla=DEFAULT_B0_TESLA,
    unwrapping='laplacian'))
quality = mask.quality_map(phase, mag, brain, vox, echo_times_s=tes)
reliable = mask.quality_mask(quality, brain)
out['quality'] = digest((quality, reliable))
field = fit['field_ppm']
local, used = bgremove.pdf(field, reliable, vox, b0)
out['pdf'] = digest((local, used))
for name in ('vsharp', 'resharp', 'ismv', 'lbv'):
    out[name] = digest(getattr(bgremove, name)(field, reliable, vox, b0))
chis = {}
for name in inversion.METHODS:
    extra = ({'magnitude': mag[..., 0],
              'noise': echoes.hz_to_ppm(fit['noise_hz'], DEFAULT_B0_TESLA)}
             if name == 'medi' else {})
    chis[name] = getattr(inversion, name)(local, used, vox, b0, **extra)
    out[name] = digest(chis[name])
out['reference'] = digest(reference.reference(chis[inversion.DEFAULT_METHOD], used))
out['csf_mask'] = digest(mask.csf_mask(mag, used, vox, echo_times_s=tes))
print(json.dumps(out))
'''


def _steps_with_threads(n: int) -> dict:
    env = {'NUMBA_NUM_THREADS': str(n), 'QSMFLOW_TEST_THREADS': str(n),
           'OPENBLAS_NUM_THREADS': str(n), 'OMP_NUM_THREADS': str(n),
           'MKL_NUM_THREADS': str(n)}
    proc = subprocess.run([sys.executable, '-c', STEPS_SCRIPT], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh interpreters, each compiling and running every step
def test_reconstruction_steps_do_not_depend_on_thread_counts():
    """numba ``prange`` loops (gradients, the TV shrinkage and its norms), FFT workers and
    BLAS reductions: one thread and three give the same bits for every step and method."""
    one, three = _steps_with_threads(1), _steps_with_threads(3)
    assert one.pop('threads') == {'numba': 1, 'fft': 1}
    assert three.pop('threads') == {'numba': 3, 'fft': 3}
    differ = sorted(k for k in one if one[k] != three[k])
    assert not differ, f'results change with the thread count: {differ}'
    assert set(one) == set(three) and len(one) > 15


def test_thread_counts_are_not_part_of_the_node_hashes(tmp_path):
    """The ITK thread counts do not change the results, so they must not change Nipype's
    hashes either: a rerun with another ``--nprocs`` reuses registration and resampling."""
    from qsmflow.interfaces.registration import ApplyTransforms, RegisterToTemplate

    files = []
    for name in ('mag.nii.gz', 'mask.nii.gz', 'tpl.nii.gz', 'xfm.mat'):
        (tmp_path / name).write_bytes(name.encode())
        files.append(str(tmp_path / name))
    mag, msk, tpl, xfm = files

    def hashes(interface, **inputs):
        return {n: interface(nthreads=n, **inputs).inputs.get_hashval()[1] for n in (1, 4)}

    reg = hashes(RegisterToTemplate, in_magnitude=mag, in_mask=msk, template=tpl)
    app = hashes(ApplyTransforms, in_file=mag, reference=tpl, transforms=[xfm])
    assert reg[1] == reg[4] and app[1] == app[4]


@pytest.fixture(scope='module')
def two_runs(tiny_linear_run):
    """The same input through the Linear plugin (1 thread; the run shared with test_resume,
    see conftest.py) and MultiProc (2 processes, 2 threads per node), in separate work
    directories."""
    inputs, env = tiny_linear_run['inputs'], tiny_linear_run['env']
    root = inputs['root'] / 'determinism'
    root.mkdir()
    (root / 'nprocs1.log').symlink_to(tiny_linear_run['log'])
    codes = {1: tiny_linear_run['code']}
    codes[2] = run_to_end(qsmflow_command(inputs, root / 'nprocs2' / 'out',
                                          root / 'nprocs2' / 'work', 2),
                          env, root / 'nprocs2.log')
    return {'root': root, 'codes': codes, 'linear': tiny_linear_run['out'],
            'multiproc': root / 'nprocs2' / 'out'}


@pytest.mark.slow
def test_linear_and_multiproc_runs_are_bitwise_identical(two_runs):
    root = two_runs['root']
    for nprocs, code in two_runs['codes'].items():
        assert code == 0, (root / f'nprocs{nprocs}.log').read_text(errors='replace')[-3000:]
    names = {p.name for p in derivative_files(two_runs['linear'])}
    for name in ('sub-01_Chimap.nii.gz', 'sub-01_Chimap.json',
                 'sub-01_space-QSMPhantom_Chimap.nii.gz',
                 'sub-01_from-MEGRE_to-QSMPhantom_mode-image_desc-affine_xfm.mat',
                 'sub-01_from-MEGRE_to-QSMPhantom_mode-image_desc-warp_xfm.nii.gz',
                 'sub-01_from-QSMPhantom_to-MEGRE_mode-image_desc-warp_xfm.nii.gz',
                 'sub-01_atlas-Phantom_dseg.nii.gz', 'sub-01_atlas-Phantom_stats.tsv',
                 'sub-01_atlas-segmentations_stats.tsv'):
        assert name in names, f'{name} not produced: the comparison would miss it'
    assert_same_outputs(two_runs['linear'], two_runs['multiproc'])
