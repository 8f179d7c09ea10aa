# SPDX-License-Identifier: Apache-2.0
"""Write derivatives into the BIDS output dataset with names from ``bids_specs``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits)

from qsmflow import bids_specs
from qsmflow.bids.atomic import copy_file as atomic_copy
from qsmflow.interfaces import base


class _FileSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='file to store')
    base_directory = traits.Str(mandatory=True, desc='root of the derivatives dataset')
    kind = traits.Str(mandatory=True, desc='output kind, a key of bids_specs/outputs.json')
    entities = traits.Dict(mandatory=True, desc='BIDS entities of the output')


class _SinkInputSpec(_FileSinkInputSpec):
    source_files = traits.List(traits.Str, desc='raw files this output derives from')
    bids_dir = traits.Str(desc='root of the raw dataset (for relative Sources)')


class _SinkOutputSpec(TraitedSpec):
    out_file = traits.Str(desc='path of the stored file')


class FileSink(SimpleInterface):
    """Copy a file (table, sidecar, lookup table, transform) to its BIDS name, atomically."""

    input_spec = _FileSinkInputSpec
    output_spec = _SinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        self._results['out_file'] = str(self._store())
        return runtime

    def _store(self) -> Path:
        dest = bids_specs.output_path(self.inputs.base_directory, self.inputs.kind,
                                      self.inputs.entities)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(self.inputs.in_file, dest)
        return dest


class DerivativesSink(FileSink):
    """Copy an image and its provenance sidecar to its BIDS-derivatives name, atomically."""

    input_spec = _SinkInputSpec

    def _run_interface(self, runtime):
        dest = self._store()
        meta = _read(base.sidecar_of(self.inputs.in_file))
        meta.update(bids_specs.load('outputs')['outputs'][self.inputs.kind]['meta'])
        if self.inputs.source_files:
            root = Path(self.inputs.bids_dir) if self.inputs.bids_dir else None
            meta['Sources'] = [_bids_uri(f, root) for f in self.inputs.source_files]
        base.write_json(base.sidecar_of(dest), _ordered(meta))
        self._results['out_file'] = str(dest)
        return runtime


def _read(path) -> dict:
    if os.path.exists(path):
        with open(path) as fobj:
            return json.load(fobj)
    return {}


def _bids_uri(path, root) -> str:
    if root is not None:
        try:
            return f'bids:raw:{Path(path).absolute().relative_to(root.absolute())}'
        except ValueError:
            pass
    return Path(path).absolute().as_uri()


def _ordered(meta: dict) -> dict:
    """BIDS keys first, then qsmflow's provenance (easier to read)."""
    head = {k: v for k, v in meta.items() if not k.startswith('QSM')}
    head.update({k: v for k, v in meta.items() if k.startswith('QSM')})
    return head
