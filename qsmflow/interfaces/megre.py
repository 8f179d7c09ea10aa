# SPDX-License-Identifier: Apache-2.0
"""Read a multi-echo GRE acquisition into 4D magnitude and phase (rad).

The files of each part are read in order and their volumes concatenated, so one 3D file
per echo and one 4D file holding every echo (or any mix) give the same result. Files whose
BIDS name says ``part-real``/``part-imag`` hold the complex signal; they are converted to
magnitude and phase.
"""
from __future__ import annotations

import re

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from qsmflow.interfaces import base
from qsmflow.qsm.kernels import b0_dir_from_affine
from qsmflow.qsm.phase import complex_to_mag_phase, to_radians, zero_nonfinite


class _LoadMEGREInputSpec(BaseInterfaceInputSpec):
    mag_files = traits.List(File(exists=True), mandatory=True,
                            desc='magnitude (or part-real) files, one 3D per echo or one 4D')
    phase_files = traits.List(File(exists=True), mandatory=True,
                              desc='phase (or part-imag) files, one 3D per echo or one 4D')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times in s')
    b0_tesla = traits.Float(mandatory=True, desc='main field strength in T')
    phase_units = traits.Either(None, traits.Str, default=None, usedefault=True,
                                desc='BIDS Units of the phase ("rad", "arbitrary" or None)')


class _LoadMEGREOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc='4D magnitude (x, y, z, echo), arbitrary units')
    phase = File(exists=True, desc='4D phase (x, y, z, echo) in rad, wrapped to [-pi, pi)')
    echo_times = traits.List(traits.Float, desc='echo times in s')
    b0_tesla = traits.Float(desc='main field strength in T')
    b0_dir = traits.List(traits.Float, desc='B0 unit vector in voxel index axes (from affine)')


class LoadMEGRE(SimpleInterface):
    """Stack magnitude and phase (rad) of every echo into 4D float32 images."""

    input_spec = _LoadMEGREInputSpec
    output_spec = _LoadMEGREOutputSpec

    def _run_interface(self, runtime):
        ref = nb.load(self.inputs.mag_files[0])
        n_echo = len(self.inputs.echo_times)
        # two float32 stacks, converted in place: 8 bytes per voxel and echo at the peak
        mag = read_volumes(self.inputs.mag_files, n_echo)
        phase = read_volumes(self.inputs.phase_files, n_echo)
        real_imag = part_of(self.inputs.mag_files[0]) == 'real'
        if real_imag:
            complex_to_mag_phase(mag, phase, out=(mag, phase))
        else:
            to_radians(phase, self.inputs.phase_units, out=phase)
        mag, phase, n_bad = zero_nonfinite(mag, phase, copy=False)
        b0_dir = b0_dir_from_affine(ref.affine)
        rec = input_record(self.inputs, b0_dir, real_imag, n_bad)
        steps = [*base.read_steps(self.inputs.phase_files[0]), rec]  # e.g. coil combination
        for key in ('magnitude', 'phase'):
            out = fname_presuffix('megre.nii.gz', suffix=f'_{key}', newpath=runtime.cwd)
            self._results[key] = base.save(mag if key == 'magnitude' else phase, ref, out,
                                           steps=steps)
            mag = None  # written: freed before the phase is
        self._results.update(echo_times=list(self.inputs.echo_times),
                             b0_tesla=self.inputs.b0_tesla, b0_dir=b0_dir.tolist())
        return runtime


def part_of(path) -> str | None:
    """BIDS ``part`` entity of a file name.

    >>> part_of('/d/sub-01_echo-1_part-real_MEGRE.nii.gz')
    'real'
    """
    match = re.search(r'_part-([a-zA-Z0-9]+)_', str(path).rsplit('/', 1)[-1])
    return match.group(1) if match else None


def read_volumes(files, n_volumes: int) -> np.ndarray:
    """Concatenate the 3D/4D volumes of ``files`` into one (X, Y, Z, n_volumes) float32 array.

    The array is allocated once and filled file by file (one 4D file is the array itself),
    so that at most one file's data is held besides it. Non-finite values are kept (see
    :func:`qsmflow.qsm.phase.zero_nonfinite`).
    """
    imgs = [nb.load(path) for path in files]
    for path, img in zip(files[1:], imgs[1:]):
        if img.shape[:3] != imgs[0].shape[:3]:
            raise ValueError(f'{path}: grid {img.shape[:3]} differs from {imgs[0].shape[:3]} '
                             f'of {files[0]}; all echoes must share one grid')
    counts = [int(np.prod(img.shape[3:])) for img in imgs]
    if sum(counts) != n_volumes:
        raise ValueError(f'{sum(counts)} volumes in {files[0]}... but {n_volumes} echo times')
    if len(imgs) == 1:
        data = np.asarray(imgs[0].dataobj, dtype=np.float32)
        return data.reshape(data.shape[:3] + (n_volumes,))
    out = np.empty(imgs[0].shape[:3] + (n_volumes,), np.float32)
    start = 0
    for img, count in zip(imgs, counts):
        data = np.asarray(img.dataobj, dtype=np.float32)
        out[..., start:start + count] = data.reshape(data.shape[:3] + (count,))
        start += count
        del data
    return out


def input_record(inputs, b0_dir, real_imag: bool, n_bad: int) -> dict:
    """Provenance record of the input step (echo times in s, B0 in T)."""
    n_echo = len(inputs.echo_times)
    rec = {'Step': 'input', 'EchoTime': list(inputs.echo_times), 'NumberOfEchoes': n_echo,
           'MagneticFieldStrength': inputs.b0_tesla, 'B0Direction': b0_dir.tolist(),
           'InputLayout': '3D file per echo' if len(inputs.mag_files) == n_echo > 1
           else ('single echo' if n_echo == 1 else '4D file, one volume per echo'),
           'ComplexParts': 'real/imag (converted to magnitude/phase)' if real_imag
           else 'mag/phase',
           'PhaseUnits': 'rad (from real/imag)' if real_imag
           else (inputs.phase_units or 'from value range')}
    if n_echo == 1:
        rec['SingleEcho'] = True
        rec['FieldEstimation'] = ('single echo: field = unwrapped phase / (2 pi TE); the '
                                  'echo-independent phase offset cannot be separated')
    if n_bad:
        rec['NonFiniteVoxelsZeroed'] = n_bad
    return rec
