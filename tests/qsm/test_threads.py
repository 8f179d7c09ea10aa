# SPDX-License-Identifier: Apache-2.0
"""Thread control of qsmflow.qsm (:func:`qsmflow.qsm.threads.limit`).

* The context sets scipy.fft's workers and numba's thread count, and restores both.
* Results are bitwise the same with one thread and with two (masks, unwrapping + echo fit,
  PDF, TV), in one process.
* Slow: a 1 mm phantom participant run with ``--omp-nthreads 1`` uses one core (CPU time /
  wall time ≤ 1.05) and gives the same χ bits as a run with ``--omp-nthreads 2``.
"""

import functools
import hashlib
import os
import resource
import subprocess
import sys
import time

import numba
import numpy as np
import pytest
from scipy import fft as sfft

from qsmflow.qsm import threads


def test_limit_sets_and_restores_fft_workers_and_numba_threads():
    before = (sfft.get_workers(), numba.get_num_threads())
    with threads.limit(1) as n:
        assert n == 1
        assert (sfft.get_workers(), numba.get_num_threads()) == (1, 1)
        with threads.limit(2):
            assert sfft.get_workers() == 2
            assert numba.get_num_threads() == min(2, threads.available())
        assert (sfft.get_workers(), numba.get_num_threads()) == (1, 1)
    assert (sfft.get_workers(), numba.get_num_threads()) == before


def test_limit_restores_on_error_and_rejects_bad_counts():
    before = (sfft.get_workers(), numba.get_num_threads())
    with pytest.raises(RuntimeError), threads.limit(1):
        raise RuntimeError('inside')
    assert (sfft.get_workers(), numba.get_num_threads()) == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='thread count'), threads.limit(bad):
            pass
    with threads.limit(None) as n:
        assert n == (os.cpu_count() or 1)
        assert numba.get_num_threads() == min(n, threads.available())


def test_interfaces_take_num_threads_outside_the_hash():
    from qsmflow.interfaces.bgremove import RemoveBackground
    from qsmflow.interfaces.inversion import InvertDipole

    for interface in (RemoveBackground, InvertDipole):
        hashes = {n: interface(num_threads=n).inputs.get_hashval()[1] for n in (1, 4)}
        assert hashes[1] == hashes[4]


def _digest(x):
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _phantom():
    """The tiny phantom's 4-echo data (made once, outside the measured qsm calls)."""
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head

    head = make_head(size='tiny')
    vox, tes = head.voxel_size_mm, [0.004, 0.012, 0.020, 0.028]
    mag, phase, _ = simulate_megre(head, tes, 3.0, (0.1, 0.2, 1.0), snr=60.0,
                                   rng=np.random.default_rng(0))
    return vox, tes, mag, phase


def _chain():
    """The reconstruction steps of qsmflow.qsm on the phantom; digests of their results."""
    from qsmflow.qsm import bgremove, echoes, inversion, mask

    vox, tes, mag, phase = _phantom()
    out = {}
    brain = mask.brain_mask(mag[..., 0], vox)
    fit = echoes.estimate_field(phase, brain, vox, echo_times_s=tes, b0_tesla=3.0,
                                magnitude=mag)
    quality = mask.quality_map(phase, mag, brain, vox, echo_times_s=tes)
    reliable = mask.quality_mask(quality, brain)
    local, used = bgremove.pdf(fit['field_ppm'], reliable, vox, (0.1, 0.2, 1.0))
    out.update(brain=brain, unwrapped=fit['unwrapped'], field=fit['field_ppm'],
               quality=quality, reliable=reliable, pdf=local, pdf_mask=used,
               strict=mask.strict_mask(quality, reliable, vox),
               tv=inversion.tv(local, used, vox, (0.1, 0.2, 1.0), max_iter=20))
    return {k: _digest(v) for k, v in out.items()}


def test_results_do_not_depend_on_the_thread_count():
    with threads.limit(1):
        one = _chain()
    with threads.limit(2):
        two = _chain()
    assert one == two, sorted(k for k in one if one[k] != two[k])


def _thread_cpu_s() -> dict:
    """CPU time (s) of each thread of this process, by native thread id (Linux /proc)."""
    tick = os.sysconf('SC_CLK_TCK')
    out = {}
    for tid in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{tid}/stat') as fobj:
            fields = fobj.read().rsplit(')', 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='needs Linux /proc')
def _other_threads_cpu_s() -> tuple[float, float]:
    """CPU time (s) of the threads other than the caller, and of all threads, while the
    chain runs under ``limit(1)`` (after a warm-up run)."""
    import threading

    _chain()  # compile and warm up first
    main = threading.get_native_id()
    with threads.limit(1):
        before = _thread_cpu_s()
        _chain()
        after = _thread_cpu_s()
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    return sum(v for tid, v in used.items() if tid != main), sum(used.values())


_OTHER_THREADS_SCRIPT = (
    'import json; from tests.qsm.test_threads import _other_threads_cpu_s; '
    'print(json.dumps(_other_threads_cpu_s()))')


def test_one_thread_keeps_the_work_on_the_calling_thread():
    """Under limit(1) the FFT workers and numba's pool stay idle: whatever the machine's
    load, threads other than the caller get under 5 % of the CPU time of the chain (or
    0.1 s: clock ticks of 10 ms, stray BLAS helpers). Measured in a fresh interpreter, so
    that threads left running by other tests of this session do not count."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, '-c', _OTHER_THREADS_SCRIPT], cwd=root,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'NIPYPE_NO_ET': '1'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    others, total = (float(v) for v in proc.stdout.strip().splitlines()[-1][1:-1].split(','))
    assert others <= max(0.05 * total, 0.1), (others, total)


def _run(cmd, env, log):
    """Run ``cmd``; return (exit code, CPU time of the child and its children / wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, 'wb') as fobj:
        code = subprocess.run(cmd, env=env, stdout=fobj, stderr=subprocess.STDOUT,
                              timeout=3600).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, cpu / wall


@pytest.mark.slow  # two 1 mm participant runs (minutes each)
def test_one_thread_uses_one_core_and_gives_the_same_chimap(tmp_path):
    import nibabel as nb

    from qsmflow.phantom.bids import write_dataset

    write_dataset(tmp_path / 'rawdata', tmp_path / 'truth',
                  [{'participant_id': '01', 'age': 50, 'sex': 'F'}], size='full')
    env = {**os.environ, 'TEMPLATEFLOW_HOME': str(tmp_path / 'templateflow')}
    chis, ratios = {}, {}
    for n in (1, 2):
        out, work = tmp_path / f'out{n}', tmp_path / f'work{n}'
        cmd = [sys.executable, '-m', 'qsmflow', str(tmp_path / 'rawdata'), str(out),
               'participant', '-w', str(work), '--nprocs', '1', '--omp-nthreads', str(n),
               '--skip-registration', '--skip-bids-validation']
        code, ratios[n] = _run(cmd, env, tmp_path / f'run{n}.log')
        assert code == 0, (tmp_path / f'run{n}.log').read_text()[-3000:]
        (chi_file,) = out.glob('**/sub-01_Chimap.nii.gz')
        chis[n] = np.asarray(nb.load(chi_file).dataobj)
    print(f'CPU time / wall time: {ratios}')
    assert ratios[1] <= 1.05, ratios
    assert chis[1].tobytes() == chis[2].tobytes()


def test_vector_chunks_give_the_same_bits_for_any_thread_count():
    """The CG vector work (qsmflow.qsm._vector) over several fixed chunks: the same bits
    with 1 and 2 threads, and the inner product close to the float64 one."""
    from qsmflow.qsm import _vector

    rng = np.random.default_rng(3)
    n = 5 * _vector.CHUNK + 123
    a, b = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    results = []
    for n_threads in (1, 2):
        x, r, p = np.zeros(n, np.float32), a.copy(), b.copy()
        with threads.limit(n_threads):
            d = _vector.dot(a, b)
            rr = _vector.cg_step(x, r, p, b, 0.5)
            _vector.xpby(r, p, 0.25)
        results.append((d, rr, x, r, p))
    (d1, rr1, *v1), (d2, rr2, *v2) = results
    assert d1 == d2 and rr1 == rr2
    assert all(np.array_equal(u, w) for u, w in zip(v1, v2))
    assert d1 == pytest.approx(float(np.dot(a.astype(np.float64), b)), rel=1e-12)
    np.testing.assert_array_equal(v1[0], np.float32(0.5) * b)
    np.testing.assert_array_equal(v1[2], v1[1] + np.float32(0.25) * (b))


def test_root_sum_of_squares_slabs_give_the_one_shot_bits_for_any_thread_count():
    """brain_extraction.root_sum_of_squares runs its slabs on the thread pool: 1 and 2
    threads give the bits of the whole-array expression (several slabs, a short last one)."""
    from qsmflow.qsm.brain_extraction import root_sum_of_squares

    m = np.random.default_rng(5).random((21, 6, 5, 4), dtype=np.float32)
    ref = np.sqrt(np.sum(np.square(m, dtype=np.float64), axis=-1)).astype(np.float32)
    for n_threads in (1, 2):
        with threads.limit(n_threads):
            np.testing.assert_array_equal(root_sum_of_squares(m, slab=4), ref)


def test_block_mean_slabs_give_the_one_shot_bits_for_any_thread_count():
    """blocks.block_mean (the working-grid downsampling of brain extraction) in slabs of blocks on
    the thread pool: the bits of the whole-array mean with 1 and 2 threads."""
    from qsmflow.qsm.blocks import block_mean

    img = np.random.default_rng(6).random((37, 22, 19), dtype=np.float32)
    f = (3, 2, 2)
    n = [s // k for s, k in zip(img.shape, f)]
    ref = img[:n[0] * 3, :n[1] * 2, :n[2] * 2].reshape(
        n[0], 3, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))
    for n_threads in (1, 2):
        with threads.limit(n_threads):
            out = block_mean(img, f)
        assert out.dtype == ref.dtype
        np.testing.assert_array_equal(out, ref)


def test_romeo_edge_weights_in_slabs_match_a_whole_grid_pass_for_any_thread_count():
    """unwrap._edge_weights runs slabs of 8 planes on the thread pool, recomputing the
    edges that cross a slab's border: the bits of one whole-grid pass with 1 and 2 threads."""
    from qsmflow.qsm import unwrap
    from qsmflow.qsm._unwrap_components import _axis_pairs

    rng = np.random.default_rng(7)
    shape = (21, 6, 5)  # three slabs, the last one short
    ph, ph2 = (rng.uniform(-9, 9, shape).astype(np.float32) for _ in range(2))
    mag = rng.random(shape, dtype=np.float32)
    m = rng.random(shape) > 0.2
    mref = float(np.median(mag[m]))
    quality = np.zeros(shape, np.float32)
    ref_bins = np.full((3,) + shape, 255, np.uint8)
    for a in range(3):
        lo, hi = _axis_pairs(a)
        w = unwrap._axis_weights(a, 0, shape[0] - (a == 0), ph, m, mag, ph2, 1.5, mref)
        quality[lo] += w
        quality[hi] += w
        ref_bins[a][lo] = (np.float32(1) - w) ** 2 * np.float32(255) + np.float32(0.5)
    for n_threads in (1, 2):
        with threads.limit(n_threads):
            bins, q = unwrap._edge_weights(ph, m, mag, ph2, 1.5)
        np.testing.assert_array_equal(q, quality.ravel())
        np.testing.assert_array_equal(bins, ref_bins.reshape(3, -1))


@pytest.mark.parametrize('user', [None, 'ACTIVE'])
def test_numba_parallel_modules_get_the_passive_omp_wait_policy_first(user):
    """Importing a numba-parallel module directly (here _morphology, which does not import
    qsmflow.qsm.threads) runs qsmflow/qsm/__init__.py first, which sets OMP_WAIT_POLICY
    to PASSIVE before any OpenMP pool starts; a value the user set wins."""
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if user:
        env['OMP_WAIT_POLICY'] = user
    code = ('import os, qsmflow.qsm._morphology as m; '
            'print(os.environ.get("OMP_WAIT_POLICY"))')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == (user or 'PASSIVE')


def test_echo_gather_on_the_thread_pool_gives_the_same_array():
    """echoes.fit._gather_echoes gathers the echoes side by side: (N, V) echo-first."""
    from qsmflow.qsm.echoes.fit import _gather_echoes

    a = np.random.default_rng(8).random((6, 5, 4, 3), dtype=np.float32)
    idx = np.flatnonzero(a[..., 0] > 0.4)
    for n_threads in (1, 2):
        with threads.limit(n_threads):
            np.testing.assert_array_equal(_gather_echoes(a, idx), a.reshape(-1, 3)[idx].T)


def test_quality_curvature_slabs_match_a_whole_grid_pass_for_any_thread_count():
    """mask.quality's second-difference term in slabs of 8 planes on the thread pool (the
    centre voxels' neighbours may lie in the next slab): the bits of one whole-grid call."""
    from qsmflow.qsm._vector import slabwise
    from qsmflow.qsm.mask.quality import _curvature_slab

    rng = np.random.default_rng(9)
    img = rng.uniform(-3, 3, (21, 6, 5)).astype(np.float32)
    m = rng.random(img.shape) > 0.1
    ref = [np.zeros(img.shape, np.float32) for _ in range(2)]
    _curvature_slab(img, m, *ref, slice(0, img.shape[0]))
    assert ref[1].max() == 3  # some voxels have all three axes' triples in the mask
    for n_threads in (1, 2):
        out = [np.zeros(img.shape, np.float32) for _ in range(2)]
        with threads.limit(n_threads):  # three slabs, the last one short
            slabwise(lambda rows: _curvature_slab(img, m, *out, rows), img.shape[0], 8)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])


def test_quality_box_filter_in_slabs_gives_scipys_bits_for_any_thread_count():
    """mask.quality._box_filter (the quality map's box means) runs each axis's pass in
    slabs on the thread pool: the bits of scipy.ndimage.uniform_filter."""
    from scipy import ndimage as ndi

    from qsmflow.qsm.mask.quality import _box_filter

    x = np.random.default_rng(10).random((21, 17, 9), dtype=np.float32)
    ref = ndi.uniform_filter(x, (3, 7, 5))
    for n_threads in (1, 2):
        with threads.limit(n_threads):
            np.testing.assert_array_equal(_box_filter(x, (3, 7, 5)), ref)


def test_selection_gathers_and_scatters_as_boolean_indexing_for_any_thread_count():
    """_vector.Selection: arr[mask], out[mask] = values (3D and with a trailing axis) and
    np.nonzero(mask) by slabs of planes, the same arrays with 1 and 2 threads."""
    from qsmflow.qsm import _vector

    rng = np.random.default_rng(5)
    a = rng.random((19, 6, 5, 3), dtype=np.float32)
    mask = a[..., 0] > 0.3
    for n_threads in (1, 2):
        with threads.limit(n_threads):
            sel = _vector.Selection(mask, slab=4)
            assert sel.size == mask.sum()
            got = sel.gather(a[..., 1], np.float64)
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, a[..., 1][mask].astype(np.float64))
            out = np.zeros_like(a)
            sel.scatter(out, a[mask])
            np.testing.assert_array_equal(out, np.where(mask[..., None], a, 0))
            got = sel.nonzero()
            assert all(g.dtype == np.intp for g in got)
            np.testing.assert_array_equal(np.array(got), np.array(np.nonzero(mask)))


def test_estimate_field_continues_the_unwrapping_sums_with_fit_fields_bits(monkeypatch):
    """estimate_field's ROMEO + WLS path fits from the unwrapping's masked voxels, weights
    and line sums: the same bits as fit_field on unwrap_echoes' grid (magnitude, none;
    2 and 4 echoes; 1 and 2 threads, several chunks of voxels)."""
    from qsmflow.qsm import _vector
    from qsmflow.qsm.echoes import estimate_field, fit_field, unwrap_echoes
    from qsmflow.qsm.unwrap import wrap_phase

    monkeypatch.setattr(_vector, 'CHUNK', 4096)
    rng = np.random.default_rng(11)
    shape = (40, 44, 42)
    g = np.indices(shape, dtype=np.float32)
    te = np.array([0.004, 0.009, 0.014, 0.019])
    field = 30.0 * np.sin(g[0] / 9.0) + 0.5 * g[1] - 10.0
    phase = 0.7 + 2 * np.pi * field[..., None] * te + 0.2 * rng.standard_normal(shape + (4,))
    phase = wrap_phase(phase.astype(np.float32))
    mag = (rng.random(shape + (4,)) + 0.2).astype(np.float32)
    mask = ((g - 20.5) ** 2).sum(0) < 19.0 ** 2
    assert mask.sum() > 5 * _vector.CHUNK
    for n_echo, magnitude in ((4, mag), (4, None), (2, mag)):
        args = (phase[..., :n_echo], mask, (1.0, 1.0, 1.2))
        kw = dict(echo_times_s=te[:n_echo],
                  magnitude=None if magnitude is None else magnitude[..., :n_echo])
        for n_threads in (1, 2):
            with threads.limit(n_threads):
                got = estimate_field(*args, b0_tesla=3.0, **kw)
                unwrapped = unwrap_echoes(*args, **kw)
                want = fit_field(unwrapped, mask, **kw)
            assert got['unwrapped'].tobytes() == unwrapped.tobytes()
            for key, arr in zip(('field_hz', 'phase_offset_rad', 'noise_hz'), want):
                assert got[key].tobytes() == arr.tobytes(), (n_echo, n_threads, key)


def test_median_by_buckets_gives_numpys_value_and_type_for_any_thread_count(monkeypatch):
    """_vector.median against numpy.median: odd and even counts, ties, a narrow range, signed
    zeros, and a NaN or an infinity (numpy's answer), with 1, 2 and 3 threads."""
    from qsmflow.qsm import _vector

    monkeypatch.setattr(_vector, 'CHUNK', 1024)
    rng = np.random.default_rng(2)
    cases = [rng.standard_normal(20_001), rng.standard_normal(20_000), 3 * rng.random(9_000),
             np.round(4 * rng.random(10_000)) - 2, np.full(6_000, 3.25),
             np.concatenate([np.zeros(3_000), -np.zeros(3_001)]),
             1 + 1e-3 * rng.standard_normal(7_000)]
    cases = [c.astype(np.float32) for c in cases]
    for bad in (np.nan, np.inf, -np.inf):
        cases.append(cases[0].copy())
        cases[-1][5] = bad
    for n_threads in (1, 2, 3):
        with threads.limit(n_threads):
            for c in cases:
                got, want = _vector.median(c), np.median(c)
                assert type(got) is type(want), (n_threads, type(got))
                assert got.tobytes() == want.tobytes() or np.isnan(got) and np.isnan(want)
