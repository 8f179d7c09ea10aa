# SPDX-License-Identifier: Apache-2.0
"""One template registration per session: a run brought to its session's reference run.

Of the runs (and acquisitions) of a session, the first in sorted order is registered to the
template (:class:`qsmflow.interfaces.registration.RegisterToTemplate`); every other run's
brain-masked magnitude is registered rigidly to the reference run's
(:class:`RegisterToRun`, :data:`~qsmflow.interfaces.registration.RIGID_TO_RUN`: seeded and
single-threaded like every registration, so bitwise reproducible), and that rigid transform
is composed with the reference run's transforms (:class:`ThroughRun`): the result has the
form of a direct registration (an affine, a warp and an inverse warp), so labels,
refinement and template-space maps take it unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)

#: Where ITK keeps the centre of rotation in a ``.mat`` transform file.
_CENTRE_KEY = 'fixed'

def read_itk_affine(path) -> np.ndarray:
    """An ITK affine transform file (``.mat``, MATLAB v4, as antsRegistration and
    :func:`write_itk_affine` write it, single or double precision) as a 4×4 matrix acting on
    points (mm, ITK's LPS world).

    ITK stores the matrix ``M`` and translation ``t`` (12 parameters) and a centre ``c``
    apart: a point ``x`` goes to ``M (x − c) + t + c``. Read with ``scipy.io.loadmat``, the
    pair of the writer: ``ants.read_transform`` would need ANTs imported (hence a fresh
    process, :func:`qsmflow.interfaces.registration.in_fresh_process`, to multiply two
    matrices) and its parameter access is single precision (a double file would be rounded).

    Examples
    --------
    >>> import os, tempfile
    >>> h = np.eye(4); h[:3, 3] = (1.0, -2.0, 0.5)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_itk_affine(h, os.path.join(tmp, 'x.mat'))
    ...     bool(np.array_equal(read_itk_affine(os.path.join(tmp, 'x.mat')), h))
    True
    """
    from scipy.io import loadmat

    content = loadmat(str(path))
    keys = [k for k in content if not k.startswith('__') and k != _CENTRE_KEY]
    affine = ('AffineTransform_', 'MatrixOffsetTransformBase_')
    if len(keys) != 1 or not keys[0].startswith(affine):
        raise ValueError(f'{path}: not an ITK affine transform file (arrays: {sorted(content)})')
    params = content[keys[0]].ravel().astype(np.float64)
    centre = content[_CENTRE_KEY].ravel().astype(np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = params[:9].reshape(3, 3)
    matrix[:3, 3] = params[9:12] + centre - matrix[:3, :3] @ centre
    return matrix


def write_itk_affine(matrix: np.ndarray, path) -> None:
    """Write a 4×4 point transform (mm, LPS) as an ITK ``.mat`` file in double precision
    (centre at the origin).

    Not antspyx: its parameter setters (``set_parameters``, ``create_ants_transform``) pass
    the parameters through single precision (antspyx 0.6.3: 0.99 is stored as
    0.99000001), so a composed affine would lose its double precision and the written
    transform would no longer be the product of the two read ones.
    """
    from scipy.io import savemat

    params = np.concatenate([matrix[:3, :3].ravel(), matrix[:3, 3]])
    savemat(str(path), {'AffineTransform_double_3_3': params[:, None].astype(np.float64),
                        _CENTRE_KEY: np.zeros((3, 1))}, format='4')


def compose_affines(first, then, out_path) -> str:
    """One ITK affine file equal to ``first`` followed by ``then`` on points, i.e. to the
    ANTs transform list ``[first, then]``; return its path (double precision).

    The product of the two 4×4 matrices, not ``ants.compose_ants_transforms``: that returns
    an ITK ``CompositeTransform`` holding both affines (24 parameters, written as
    ``CompositeTransform_double_3_3``), not the one affine that the ``desc-affine`` output
    and the transform lists of the later steps take.
    """
    matrix = read_itk_affine(then) @ read_itk_affine(first)
    write_itk_affine(matrix, out_path)
    return str(out_path)


class _ToRunInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc='4D multi-echo magnitude, a.u.')
    in_mask = File(exists=True, mandatory=True, desc='brain mask of the magnitude')
    reference_magnitude = File(exists=True, mandatory=True,
                               desc='4D multi-echo magnitude of the reference run, a.u.')
    reference_mask = File(exists=True, mandatory=True, desc='brain mask of the reference run')
    # nohash: the result does not depend on it (see RegisterToTemplate)
    nthreads = traits.Int(1, usedefault=True, nohash=True,
                          desc='threads allowed; registration uses REGISTRATION_THREADS')
    fast = traits.Bool(False, usedefault=True,
                       desc='use all nthreads: faster, not bitwise reproducible')


class _ToRunOutputSpec(TraitedSpec):
    rigid = File(exists=True, desc='rigid transform, this run → the reference run (ITK .mat: '
                                   'points of the reference run to this run, mm)')
    moving = File(exists=True, desc='brain-masked combined magnitude of this run, a.u.')


class RegisterToRun(SimpleInterface):
    """Rigid registration of a run's brain-masked combined magnitude (a.u.) to its
    session's reference run (:data:`~qsmflow.interfaces.registration.RIGID_TO_RUN`)."""

    input_spec = _ToRunInputSpec
    output_spec = _ToRunOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.interfaces.registration import RIGID_TO_RUN, register, write_moving

        cwd = Path(runtime.cwd)
        moving = write_moving(self.inputs.in_magnitude, self.inputs.in_mask,
                              cwd / 'magnitude_combined.nii.gz')
        fixed = write_moving(self.inputs.reference_magnitude, self.inputs.reference_mask,
                             cwd / 'reference_combined.nii.gz')
        out = register(fixed, moving, runtime.cwd, nthreads=self.inputs.nthreads,
                       fast=self.inputs.fast, settings=RIGID_TO_RUN)
        self._results.update(rigid=out['affine'], moving=moving)
        return runtime


class _ThroughRunInputSpec(BaseInterfaceInputSpec):
    rigid = File(exists=True, mandatory=True,
                 desc='rigid transform this run → reference run (RegisterToRun)')
    affine = File(exists=True, mandatory=True, desc='affine reference run → template (.mat)')
    warp = File(exists=True, mandatory=True, desc='SyN warp reference run → template')
    inverse_warp = File(exists=True, mandatory=True, desc='inverse SyN warp')


class _ThroughRunOutputSpec(TraitedSpec):
    affine = File(exists=True, desc='affine this run → template: the rigid transform, then '
                                    "the reference run's affine (ITK .mat)")
    warp = File(exists=True, desc="SyN warp on the template grid (the reference run's), mm")
    inverse_warp = File(exists=True, desc="inverse SyN warp (the reference run's), mm")


class ThroughRun(SimpleInterface):
    """A run's transforms to a template through its session's reference run: the rigid
    transform to that run composed into its affine; the warps are the reference run's."""

    input_spec = _ThroughRunInputSpec
    output_spec = _ThroughRunOutputSpec

    def _run_interface(self, runtime):
        # ANTs point order (template → native): warp, the reference's affine, then the rigid
        affine = compose_affines(self.inputs.affine, self.inputs.rigid,
                                 Path(runtime.cwd) / 'affine.mat')
        self._results.update(affine=affine, warp=self.inputs.warp,
                             inverse_warp=self.inputs.inverse_warp)
        return runtime
