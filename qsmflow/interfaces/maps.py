# SPDX-License-Identifier: Apache-2.0
"""Other maps of the same multi-echo GRE: R2*/T2* (relaxometry), SWI and its minIP,
χ-separation."""
from __future__ import annotations

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm import chi_separation, relaxometry, swi, threads
from qsmflow.qsm.kernels import b0_dir_from_affine

LOGGER = base.LOGGER


class _R2StarInputSpec(base.StepInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_mask = File(exists=True, mandatory=True, desc='brain mask (voxels fitted)')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    method = traits.Either(None, traits.Enum(*relaxometry.METHODS), default=None,
                           usedefault=True,
                           desc='R2* estimator of qsmflow.qsm.relaxometry.r2star (None: its '
                                'default); ARLO with unequally spaced echoes falls back to '
                                "'loglinear', recorded")
    params = traits.Dict(usedefault=True, desc='keyword options of relaxometry.r2star')


class _R2StarOutputSpec(TraitedSpec):
    out_r2star = File(exists=True, desc='R2* in 1/s (0 outside the mask)')
    out_t2star = File(exists=True, desc='T2* in s (0 outside the mask)')
    out_s0 = File(exists=True, desc='signal extrapolated to TE = 0, magnitude units')
    out_reliable = File(exists=True, desc='voxels of the mask with a reliable fit (uint8)')


class R2StarMap(SimpleInterface):
    """Fit R2* (1/s), T2* (s) and S0 to the multi-echo magnitude inside the brain mask."""

    input_spec = _R2StarInputSpec
    output_spec = _R2StarOutputSpec

    def _run_interface(self, runtime):
        mag, img = base.load(self.inputs.in_magnitude)
        mask_data, mimg = base.load(self.inputs.in_mask)
        params = dict(self.inputs.params)
        if self.inputs.method is not None:
            params['method'] = self.inputs.method
        extra = {}
        tes = list(self.inputs.echo_times)
        if params.get('method', 'arlo') == 'arlo' and len(tes) >= 3 \
                and not relaxometry.equally_spaced(tes):
            params['method'] = 'loglinear'
            extra['Fallback'] = ('ARLO needs equally spaced echoes; the weighted log-linear '
                                 'fit was used')
            LOGGER.warning('R2*: echoes not equally spaced (%s s): log-linear fit instead of '
                           'ARLO', tes)
        with threads.limit(self.inputs.num_threads):
            fit = relaxometry.r2star(mag, mask_data > 0, echo_times_s=tes, **params)
        inside = mask_data > 0
        qc = {'NoiseSigma': fit['noise_sigma'],
              'UnreliableVoxels': int((inside & ~fit['reliable']).sum()),
              'MaskVoxels': int(inside.sum()),
              'MedianR2starHz': float(np.median(fit['r2star_hz'][inside]))}
        steps = base.read_steps(self.inputs.in_magnitude, self.inputs.in_mask)
        steps.append(base.step('r2star-fit', relaxometry.r2star, params, QC=qc, **extra))
        for key, name, unit, dtype in (('out_r2star', 'r2star_hz', '1/s', np.float32),
                                       ('out_t2star', 't2star_s', 's', np.float32),
                                       ('out_s0', 's0', 'arbitrary', np.float32),
                                       ('out_reliable', 'reliable', None, np.uint8)):
            out = fname_presuffix('relaxometry.nii.gz', suffix=f'_{name}', newpath=runtime.cwd)
            self._results[key] = base.save(fit[name], mimg, out, dtype=dtype, steps=steps,
                                           meta={'Units': unit} if unit else {})
        return runtime


class _SWIInputSpec(base.StepInputSpec):
    in_field = File(exists=True, mandatory=True, desc='local field in ppm of B0')
    in_field_mask = File(exists=True, mandatory=True, desc='mask of the local field')
    in_magnitude = File(exists=True, mandatory=True, desc='4D magnitude (x, y, z, echo), a.u.')
    in_r2star = File(exists=True, desc='R2* map in 1/s (median in the mask weights the echoes)')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    b0_tesla = traits.Float(mandatory=True, desc='main field strength in T')
    params = traits.Dict(usedefault=True, desc='keyword options of qsmflow.qsm.swi.swi')


class _SWIOutputSpec(TraitedSpec):
    out_swi = File(exists=True, desc='susceptibility-weighted image, magnitude units')
    out_phase_mask = File(exists=True, desc='SWI phase mask in [0, 1]')


class SWI(SimpleInterface):
    """CLEAR-SWI-style SWI: T2*-weighted echo combination × phase mask of the local field."""

    input_spec = _SWIInputSpec
    output_spec = _SWIOutputSpec

    def _run_interface(self, runtime):
        field, _ = base.load(self.inputs.in_field)
        mask = base.load(self.inputs.in_field_mask)[0] > 0
        mag, img = base.load(self.inputs.in_magnitude)
        params = dict(self.inputs.params)
        r2 = None
        if isdefined(self.inputs.in_r2star):
            r2 = base.load(self.inputs.in_r2star)[0]
        with threads.limit(self.inputs.num_threads):
            res = swi.swi(field, mag, mask, echo_times_s=list(self.inputs.echo_times),
                          b0_tesla=self.inputs.b0_tesla, r2star_hz=r2, **params)
        paths = [self.inputs.in_field, self.inputs.in_magnitude] + (
            [self.inputs.in_r2star] if r2 is not None else [])
        steps = base.read_steps(*paths)
        steps.append(base.step('swi', swi.swi, params, EchoWeights=res['echo_weights'],
                               PhaseEchoTime=res['phase_te_s'],
                               ReferenceR2starHz=res['r2star_ref_hz'],
                               R2starSource='R2* map (median in the mask)' if r2 is not None
                               else 'log-linear fit of the magnitude (median in the mask)'))
        ref = img.slicer[..., 0] if mag.ndim == 4 else img
        for key, name, unit in (('out_swi', 'swi', 'arbitrary'),
                                ('out_phase_mask', 'phase_mask', 'dimensionless')):
            out = fname_presuffix('swi.nii.gz', suffix=f'_{name}', newpath=runtime.cwd)
            self._results[key] = base.save(res[name], ref, out, steps=steps,
                                           meta={'Units': unit})
        return runtime


class _MinIPInputSpec(base.StepInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image to project (e.g. SWI)')
    in_reference = File(exists=True, desc="image whose header's slice_dim names the "
                                          "acquisition's slice axis (default: in_file's)")
    params = traits.Dict(usedefault=True, desc='keyword options of '
                                               'qsmflow.qsm.swi.minimum_intensity_projection')


class _MinIPOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='minimum-intensity projection on the grid of in_file')


class MinIP(SimpleInterface):
    """Minimum-intensity projection over slabs (mm) along the acquisition's slice axis."""

    input_spec = _MinIPInputSpec
    output_spec = _MinIPOutputSpec

    def _run_interface(self, runtime):
        data, img = base.load(self.inputs.in_file)
        ref = img
        if isdefined(self.inputs.in_reference):
            import nibabel as nb

            ref = nb.load(self.inputs.in_reference)
        axis = swi.slice_axis_from_affine(img.affine, ref.header.get_dim_info()[2])
        params = {'slice_axis': axis, **self.inputs.params}
        with threads.limit(self.inputs.num_threads):
            mip = swi.minimum_intensity_projection(data, base.voxel_size(img), **params)
        steps = base.read_steps(self.inputs.in_file)
        steps.append(base.step('minimum-intensity-projection',
                               swi.minimum_intensity_projection, params))
        out = fname_presuffix('swi.nii.gz', suffix='_minip', newpath=runtime.cwd)
        self._results['out_file'] = base.save(mip, img, out, steps=steps,
                                              meta={'Units': 'arbitrary'})
        return runtime


class _ChiSeparationInputSpec(base.StepInputSpec):
    in_field = File(exists=True, mandatory=True, desc='local field in ppm of B0')
    in_mask = File(exists=True, mandatory=True, desc='mask of the local field (brain)')
    in_chi = File(exists=True, desc='χ in ppm of the local field, before referencing (the '
                                    "dipole inversion's output; default: a TV inversion)")
    in_r2star = File(exists=True, mandatory=True, desc='R2* map in 1/s')
    in_r2 = File(exists=True, desc="the user's spin-echo R2 map in 1/s (--r2-map), any grid "
                                   'of the scanner space (resampled linearly through the '
                                   'affines); replaces params r2_hz')
    b0_tesla = traits.Float(mandatory=True, desc='main field strength in T')
    params = traits.Dict(usedefault=True, desc='keyword options of '
                                               'qsmflow.qsm.chi_separation.chi_separation '
                                               '(e.g. r2_hz in 1/s)')


class _ChiSeparationOutputSpec(TraitedSpec):
    out_para = File(exists=True, desc='paramagnetic susceptibility χ⁺ ≥ 0 in ppm')
    out_dia = File(exists=True, desc='diamagnetic susceptibility χ⁻ ≤ 0 in ppm')


class ChiSeparation(SimpleInterface):
    """χ-separation: paramagnetic and diamagnetic χ (ppm) from the local field and R2*.

    With ``in_r2`` the spin-echo R2 is that map (:func:`r2_map_on_grid`) and a scalar
    ``params['r2_hz']`` is dropped (recorded as ``R2HzOverridden``); the sidecar's
    ``R2Source`` names the file.
    """

    input_spec = _ChiSeparationInputSpec
    output_spec = _ChiSeparationOutputSpec

    def _run_interface(self, runtime):
        field, img = base.load(self.inputs.in_field)
        mask = base.load(self.inputs.in_mask)[0] > 0
        r2star = base.load(self.inputs.in_r2star)[0]
        chi = base.load(self.inputs.in_chi)[0] if isdefined(self.inputs.in_chi) else None
        b0_dir = b0_dir_from_affine(img.affine)
        params = dict(self.inputs.params)
        r2_rec = {}
        if isdefined(self.inputs.in_r2):
            overridden = params.pop('r2_hz', None)
            fill = chi_separation.default_r2_hz(self.inputs.b0_tesla) if overridden is None \
                else float(overridden)
            r2_map, r2_rec = r2_map_on_grid(self.inputs.in_r2, img, mask, fill)
            r2_rec['R2HzOverridden'] = overridden
        with threads.limit(self.inputs.num_threads):
            res = chi_separation.chi_separation(
                field, r2star, mask, base.voxel_size(img), b0_dir,
                b0_tesla=self.inputs.b0_tesla, chi_ppm=chi,
                **({**params, 'r2_hz': r2_map} if r2_rec else params))
        info = res['info']
        if r2_rec:
            info['r2_source'] = str(self.inputs.in_r2)
        steps = base.read_steps(*[p for p in (self.inputs.in_field, self.inputs.in_r2star,
                                              self.inputs.in_chi) if isdefined(p)])
        steps.append(base.step(
            'chi-separation', chi_separation.chi_separation,
            {**params, 'chi_ppm': 'in_chi' if chi is not None else None},
            B0Direction=b0_dir.tolist(), RelaxometricConstantHzPerPpm=info['dr_hz_per_ppm'],
            R2Hz=info['r2_hz'], R2Source=info['r2_source'], ChiSource=info['chi_source'],
            Iterations=info['iterations'], TVWeight=info['lam'], **r2_rec,
            QC={'UnreliableR2primeShare': info['unreliable_r2prime']}))
        for key, name in (('out_para', 'chi_para_ppm'), ('out_dia', 'chi_dia_ppm')):
            out = fname_presuffix('chisep.nii.gz', suffix=f'_{name}', newpath=runtime.cwd)
            self._results[key] = base.save(res[name], img, out, steps=steps,
                                           meta={'Units': 'ppm'})
        return runtime


def r2_map_on_grid(path, ref_img, mask, fill_hz: float) -> tuple:
    """The user's R2 map (1/s) on the grid of ``ref_img`` and its provenance record.

    The map is resampled trilinearly through the two affines
    (:func:`qsmflow.qsm.regions.resample_linear`, only its positive finite voxels count)
    when its grid differs from ``ref_img``'s. Voxels of ``mask`` where it has no value
    (outside its field of view or its own mask: 0, negative or NaN) take ``fill_hz``.

    Returns
    -------
    (ndarray of float32, dict)
        The map and ``R2Map`` (path), ``R2MapResampled`` (None when on the grid) and
        ``R2MapFilledShare`` (share of ``mask`` filled with ``fill_hz``, ``R2MapFillHz``).

    Raises
    ------
    ValueError
        For a map with several volumes.
    """
    import nibabel as nb

    from qsmflow.qsm.regions import resample_linear

    img = nb.load(str(path))
    if len(img.shape) > 3 and int(np.prod(img.shape[3:])) != 1:
        raise ValueError(f'R2 map {path} has {int(np.prod(img.shape[3:]))} volumes; '
                         'give a 3D map')
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    valid = np.isfinite(data) & (data > 0)
    same = tuple(data.shape) == tuple(ref_img.shape[:3]) and np.allclose(
        img.affine, ref_img.affine, atol=1e-3)
    if same:
        r2 = np.where(valid, data, np.nan).astype(np.float32)
    else:
        r2 = resample_linear(data, img.affine, ref_img.affine, ref_img.shape[:3], valid=valid)
    missing = mask & ~np.isfinite(r2)
    r2 = np.where(np.isfinite(r2), r2, np.float32(fill_hz)).astype(np.float32)
    rec = {'R2Map': str(path),
           'R2MapResampled': None if same else 'trilinear through the image affines '
                                               '(no registration)',
           'R2MapFilledShare': float(missing.sum() / max(int(mask.sum()), 1)),
           'R2MapFillHz': float(fill_hz)}
    return r2, rec
