# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench``: time and memory of each reconstruction step on the phantom.

Every step runs on the same forward-simulated head phantom (default: the realistic head
— bright fat scalp, skull, neck, air cavities, veins — on the full 1 mm grid, 144×176×144,
5 echoes, SNR 35, oblique B0; ``--phantom default``: the demo's ellipsoid head, SNR 100)
exactly as the pipeline calls it. The TV weight the default inversion chooses from the
data is printed with the time the choice takes. Reported per
step of the default chain (brain mask, unwrapping + echo fit, phase-quality mask, PDF,
TV, reference), of the other maps (R2*/T2*, SWI, minIP; with their share of the default
reconstruction and the R2* error per region) and of the alternatives: wall time (best of
``--repeat``), peak memory allocated by the step (numpy arrays, through
:mod:`tracemalloc`), and accuracy against the phantom truth where it applies; then
the process's peak resident memory and the time of one rfftn/irfftn pair of the padded
grid (the floor of any FFT-based step).
"""
from __future__ import annotations

import gc
import os
import platform
import resource
import time
import tracemalloc

import numpy as np


def _timed(label, func, repeat, rows):
    best, result = np.inf, None
    for _ in range(repeat):
        gc.collect()
        tracemalloc.start()
        t0 = time.perf_counter()
        result = func()
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        best = min(best, elapsed)
    rows.append([label, best, peak / 1e9])
    print(f'  {label:<34}{best:8.2f} s {peak / 1e9:8.2f} GB', flush=True)
    return result


def run_steps(opts) -> int:
    """Time every reconstruction step (``qsmflow bench`` options ``opts``) on every core
    (:func:`qsmflow.qsm.threads.limit`); returns 0."""
    from qsmflow.qsm import threads

    with threads.limit(None):
        return _run_steps(opts)


def _run_steps(opts) -> int:
    from qsmflow.phantom.bids import DEFAULT_B0_TESLA
    from qsmflow.phantom.head import DEEP_GM
    import numba
    from scipy import fft as sfft

    from qsmflow.qsm import (
        bgremove, device, echoes, inversion, kernels, mask, metrics, reference)
    from qsmflow.qsm.inversion.regularisation import choose_shell_weight, choose_tv_weight

    size = opts.size or 'full'
    data = simulated(opts.phantom, size, opts.snr, opts.oblique)
    head, mag, phase, snr = data['head'], data['mag'], data['phase'], data['snr']
    vox, affine, b0_dir, tes = data['vox'], data['affine'], data['b0_dir'], data['tes']
    print(f'qsmflow bench: {opts.phantom} phantom {size} {head.labels.shape} at {vox} mm, '
          f'{len(tes)} echoes, SNR {snr:g}, B0 tilt {opts.oblique} deg')
    print(f'  machine: {platform.machine()}, {os.cpu_count()} CPUs, '
          f'python {platform.python_version()}, threads {sfft.get_workers()} '
          f'(FFT workers; numba {numba.get_num_threads()})')
    dev = opts.device
    print(f'  device: {device.used(dev)} (PDF, V-SHARP, RESHARP, TKD, Tikhonov, TV, RTS; torch '
          f'{device.torch_version()})' if device.used(dev) != 'cpu' else '  device: cpu (numpy)')
    print(f'  {"step":<34}{"time":>10} {"peak alloc":>11}')
    rows = []
    timed = lambda label, func: _timed(label, func, opts.repeat, rows)  # noqa: E731
    out = default_chain({'mag': mag, 'phase': phase}, vox, b0_dir, tes, timed, device=dev)
    brain, fit, reliable = out['brain'], out['fit'], out['reliable']
    local, used, chi = out['local'], out['used'], out['chi']
    total = sum(r[1] for r in rows)
    print(f'  {"whole reconstruction (default)":<34}{total:8.2f} s')
    _time_maps(mag, local, used, brain, vox, tes, affine, head, opts.repeat, rows, total,
               chi=chi, b0_dir=b0_dir)
    t0 = time.perf_counter()
    weight = choose_tv_weight(local, used)
    shell = choose_shell_weight(weight['sigma_ppm'])
    print(f'  TV weight chosen from the data: lam {weight["lam"]:.2e} ppm·mm '
          f'({weight["criterion"]}; field noise {weight["sigma_ppm"]:.4f} ppm), shell prior '
          f'weight {shell:.2f}, chosen in {time.perf_counter() - t0:.2f} s (part of the '
          'inversion time above)')

    print('  other methods:')
    _timed('V-SHARP', lambda: bgremove.vsharp(fit['field_ppm'], reliable, vox, b0_dir,
                                              device=dev), opts.repeat, rows)
    for name in ('resharp', 'lbv', 'ismv'):
        if hasattr(bgremove, name):
            func = getattr(bgremove, name)
            _timed(name, lambda func=func: func(fit['field_ppm'], reliable, vox, b0_dir),
                   opts.repeat, rows)
    _timed('unwrap (romeo) + echo fit (nlcomplex)', lambda: echoes.estimate_field(
        phase, brain, vox, mag, echo_times_s=tes, b0_tesla=DEFAULT_B0_TESLA,
        combination='nlcomplex'), opts.repeat, rows)
    csf = _timed('CSF mask (reference csf)', lambda: mask.csf_mask(
        mag, used, vox, echo_times_s=tes), opts.repeat, rows)
    _timed('reference (csf)', lambda: reference.reference(chi, used, method='csf', ref_mask=csf),
           opts.repeat, rows)
    _timed('unwrap (laplacian) + echo fit', lambda: echoes.estimate_field(
        phase, brain, vox, mag, echo_times_s=tes, b0_tesla=DEFAULT_B0_TESLA,
        unwrapping='laplacian'), opts.repeat, rows)
    eroded = used
    methods = opts.methods or [m for m in ('tkd', 'tikhonov', 'tv', 'rts', 'ilsqr', 'medi', 'ndi')
                               if hasattr(inversion, m)]
    labels = head.labels
    ids = [i for i, n in head.label_names.items() if n.rsplit('_', 1)[0] in DEEP_GM]
    chi_true = np.where(eroded, truth_chi(head), 0)
    for name in methods:
        extra = {}
        if name == 'medi':
            extra = {'magnitude': mag[..., 0],
                     'noise': echoes.hz_to_ppm(fit['noise_hz'], DEFAULT_B0_TESLA)}
        func = getattr(inversion, name)
        extra.update(device.step_kwargs(func, dev))
        est = _timed(f'inversion {name}', lambda func=func, kw=extra: func(
            local, eroded, vox, b0_dir, **kw), opts.repeat, rows)
        print(f'      RMSE {metrics.rmse(est, chi_true, eroded):6.1f} %   deep-GM error '
              f'{metrics.deep_gm_error(est, chi_true, labels, ids, eroded):.4f} ppm')

    shape = kernels.padded_shape(tuple(s.stop - s.start for s in kernels.bounding_box(eroded)),
                                 8)
    x = np.zeros(shape, np.float32)
    _timed(f'FFT pair floor {shape}', lambda: kernels.irfft(kernels.rfft(x), shape),
           max(opts.repeat, 3), rows)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f'  peak resident memory of the benchmark process: {peak_rss:.2f} GB')
    return 0


#: Voxel size (mm) of the ``hires`` benchmark: the phantom's field of view on a
#: 240×293×240 grid (16.9 M voxels).
HIRES_MM = 0.6


def simulated(phantom: str, size: str, snr=None, oblique_deg: float = 15.0) -> dict:
    """The benchmark's input: the ``phantom`` ('realistic' or 'default') of ``size`` (a
    preset of :data:`qsmflow.phantom.head.SIZES` or ``'hires'``, :data:`HIRES_MM`),
    forward-simulated (default echoes and field, SNR ``snr`` or the phantom's, B0 tilted
    by ``oblique_deg``, noise seed 0). Returns ``head``, ``mag``, ``phase``, ``snr``,
    ``vox``, ``affine``, ``b0_dir`` and ``tes``."""
    from qsmflow.phantom.bids import DEFAULT_B0_TESLA, DEFAULT_ECHO_TIMES_S, oblique_affine
    from qsmflow.phantom.forward import simulate_megre
    from qsmflow.phantom.head import make_head
    from qsmflow.phantom.realistic import (
        DEFAULT_REALISTIC_SNR, realistic_head, simulate_realistic_megre)
    from qsmflow.qsm import kernels

    realistic = phantom == 'realistic'
    grid = {'voxel_size_mm': HIRES_MM} if size == 'hires' else {'size': size}
    head = (realistic_head(**grid) if realistic
            else make_head(**grid, chi_separation=True))
    snr = snr or (DEFAULT_REALISTIC_SNR if realistic else 100.0)
    vox = head.voxel_size_mm
    affine = oblique_affine(head.labels.shape, vox, oblique_deg)
    b0_dir = kernels.b0_dir_from_affine(affine)
    simulate = simulate_realistic_megre if realistic else simulate_megre
    mag, phase, _ = simulate(head, DEFAULT_ECHO_TIMES_S, DEFAULT_B0_TESLA, b0_dir, snr=snr,
                             rng=np.random.default_rng(0))
    return {'head': head, 'mag': mag, 'phase': phase, 'snr': snr, 'vox': vox,
            'affine': affine, 'b0_dir': b0_dir, 'tes': list(DEFAULT_ECHO_TIMES_S)}


def default_chain(inputs: dict, vox, b0_dir, tes, timed, *, keep: bool = True,
                  device: str = 'cpu') -> dict:
    """The default reconstruction chain as the pipeline runs it, each step through
    ``timed(label, func)`` (which calls ``func`` and returns its result).

    ``inputs`` holds the echoes, ``mag`` and ``phase`` (X, Y, Z, N). Returns the
    intermediate results: ``brain``, ``fit`` (``field_ppm`` and ``noise_hz`` of
    :func:`~qsmflow.qsm.echoes.estimate_field`), ``reliable``, ``local``, ``used``,
    ``chi``, ``chi_ref``. With ``keep=False`` only ``chi`` and ``chi_ref``: each result is
    dropped as soon as no later step reads it, as in the pipeline, whose nodes hold only
    their own inputs (the peak memory of the chain is then that of its steps); the echoes
    too are then removed from ``inputs`` once the last step that reads them (the
    phase-quality mask) is done, so that they are freed where the caller holds them
    nowhere else. ``device``: where PDF and the inversion compute
    (:mod:`qsmflow.qsm.device`).
    """
    from qsmflow.phantom.bids import DEFAULT_B0_TESLA
    from qsmflow.qsm import bgremove, echoes, inversion, mask, reference

    mag, phase = inputs['mag'], inputs['phase']
    res = {}
    res['brain'] = timed('brain extraction + QC', lambda: _extract_and_check(mag, vox))
    fit = timed('unwrap (romeo) + echo fit (wls)', lambda: echoes.estimate_field(
        phase, res['brain'], vox, mag, echo_times_s=tes, b0_tesla=DEFAULT_B0_TESLA,
        return_unwrapped=keep))
    # what the pipeline's field node hands on: the offset and the field in Hz stay in that
    # node (8 bytes per voxel less); it does not use the unwrapped echoes
    res['fit'] = {key: fit[key] for key in ('field_ppm', 'noise_hz') if keep or key != 'noise_hz'}
    del fit
    res['reliable'] = timed('phase-quality mask', lambda: mask.quality_mask(mask.quality_map(
        phase, mag, res['brain'], vox, echo_times_s=tes), res['brain']))
    if not keep:  # no later step reads the echoes
        del mag, phase, inputs['mag'], inputs['phase']
    res['local'], res['used'] = timed('PDF', lambda: bgremove.pdf(
        res['fit']['field_ppm'], res['reliable'], vox, b0_dir, device=device))
    if not keep:
        del res['brain'], res['fit'], res['reliable']
    res['chi'] = timed(f'inversion default ({inversion.DEFAULT_METHOD})', lambda: inversion.invert(
        res['local'], res['used'], vox, b0_dir, device=device))
    res['chi_ref'] = timed('reference (mean)', lambda: reference.reference(
        res['chi'], res['used']))[0]
    if not keep:
        del res['local'], res['used']
    return res


def _time_maps(mag, local, used, brain, vox, tes, affine, head, repeat, rows, total, *,
               chi, b0_dir):
    """Time the default R2*/T2*, SWI, minIP and χ-separation steps; print their share of
    ``total``, the R2* error per region against the phantom's truth and, where the phantom
    has the para/dia truth, the χ⁺/χ⁻ errors."""
    from qsmflow.phantom.bids import DEFAULT_B0_TESLA
    from qsmflow.qsm import chi_separation, relaxometry, swi

    start = len(rows)
    fit = _timed('R2*/T2* (arlo)', lambda: relaxometry.r2star(mag, brain, echo_times_s=tes),
                 repeat, rows)
    out = _timed('SWI', lambda: swi.swi(local, mag, used, echo_times_s=tes,
                                        b0_tesla=DEFAULT_B0_TESLA,
                                        r2star_hz=fit['r2star_hz']), repeat, rows)
    axis = swi.slice_axis_from_affine(affine)
    _timed('minIP (8 mm)', lambda: swi.minimum_intensity_projection(
        out['swi'], vox, slice_axis=axis), repeat, rows)
    sep = _timed('chi-separation', lambda: chi_separation.chi_separation(
        local, fit['r2star_hz'], used, vox, b0_dir, b0_tesla=DEFAULT_B0_TESLA, chi_ppm=chi),
        repeat, rows)
    maps = sum(r[1] for r in rows[start:])
    print(f'  {"maps together (R2*, SWI, minIP, chi-sep)":<34}{maps:8.2f} s = '
          f'{100 * maps / total:.0f} % of the reconstruction')
    if getattr(head, 'chi_para_ppm', None) is not None:
        errs = []
        for region in ('white_matter', 'putamen', 'globus_pallidus', 'substantia_nigra'):
            roi = head.roi(region) & used
            para = sep['chi_para_ppm'][roi].mean() - head.chi_para_ppm[roi].mean()
            dia = sep['chi_dia_ppm'][roi].mean() - head.chi_dia_ppm[roi].mean()
            errs.append(f'{region} {para:+.4f}/{dia:+.4f}')
        print(f'      chi+/chi- error (ppm, default R2): {", ".join(errs)}')
    errors = []
    for region in ('white_matter', 'putamen', 'globus_pallidus'):
        roi = head.roi(region)
        error = fit['r2star_hz'][roi].mean() / head.r2star_hz[roi].mean() - 1
        errors.append(f'{region} {100 * error:+.1f} %')
    print(f'      R2* error: {", ".join(errors)}')


def _extract_and_check(mag, vox):
    """The default brain mask as the pipeline makes it: extraction from the root sum of
    squares of the echoes, then its QC."""
    from qsmflow.qsm.brain_extraction import extract_brain, mask_qc, root_sum_of_squares

    rss = root_sum_of_squares(mag)
    brain = extract_brain(rss, vox)
    del rss
    mask_qc(brain, mag[..., 0], vox)
    return brain


def truth_chi(head):
    """Brain-tissue χ of the phantom (ppm), 0 outside the brain."""
    return head.brain_chi_ppm.astype(np.float32)
