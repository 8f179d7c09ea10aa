# SPDX-License-Identifier: Apache-2.0
"""Peak memory of each reconstruction node, measured against its pre-flight estimate
(``python -m qsmflow.bench.nodes [--size full]``).

Each node of the default chain (:func:`workflows.qsm.init_qsm_wf`: load, brain mask,
field fit, phase-quality mask, PDF, TV, reference) runs its Nipype interface in a fresh
Python process, as a Nipype worker does, on the forward-simulated phantom (written as
one NIfTI per echo); the resident memory of that process is sampled with :mod:`psutil`
every 10 ms and its peak compared with :func:`qsmflow.execution.memory.node_mem_gb`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: One node in a fresh process: ``sys.argv[1]`` module, ``[2]`` class, ``[3]`` JSON inputs;
#: prints the outputs as JSON.
_RUN_NODE = ('import importlib, json, sys; '
             'cls = getattr(importlib.import_module(sys.argv[1]), sys.argv[2]); '
             'res = cls(**json.loads(sys.argv[3])).run(); '
             'print(json.dumps({k: v for k, v in res.outputs.get().items() '
             'if isinstance(v, (str, float, int, list))}))')


def peak_rss_of(cmd, cwd, interval_s: float = 0.01) -> tuple[int, str]:
    """Run ``cmd``; return ``(peak resident bytes sampled with psutil, stdout)``."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(interval_s)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f'{" ".join(cmd[3:5])} failed: {err.strip()[-400:]}')
    return peak, out


def run_node(module: str, name: str, inputs: dict, cwd) -> tuple[int, dict]:
    """One interface in a fresh process: ``(peak RSS bytes, outputs)``."""
    peak, out = peak_rss_of([sys.executable, '-c', _RUN_NODE, module, name,
                             json.dumps(inputs)], cwd)
    return peak, json.loads(out.strip().splitlines()[-1])


def measure(size: str = 'full', folder=None) -> list[dict]:
    """Run the default chain node by node on the realistic phantom of ``size``; one row
    per node: ``node``, ``measured_gb``, ``estimated_gb``."""
    import nibabel as nb
    import numpy as np

    from qsmflow.bench.steps import simulated
    from qsmflow.execution.memory import node_mem_gb
    from qsmflow.phantom.bids import DEFAULT_B0_TESLA

    data = simulated('realistic', size)
    n_vox, n_echoes = int(np.prod(data['mag'].shape[:3])), len(data['tes'])
    rows = []
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp = Path(tmp)
        files = {'mag': [], 'phase': []}
        for kind in files:
            for n in range(n_echoes):
                path = tmp / f'{kind}{n + 1}.nii.gz'
                nb.Nifti1Image(data[kind][..., n], data['affine']).to_filename(path)
                files[kind].append(str(path))
        del data['mag'], data['phase']
        common = {'echo_times': data['tes']}
        chain = [
            ('load_megre', 'megre', 'LoadMEGRE', lambda o: {
                'mag_files': files['mag'], 'phase_files': files['phase'],
                'b0_tesla': DEFAULT_B0_TESLA, 'phase_units': 'rad', **common}),
            ('brain_mask', 'masking', 'BrainMask', lambda o: {'in_magnitude': o['magnitude']}),
            ('field_fit', 'field', 'EstimateField', lambda o: {
                'in_magnitude': o['magnitude'], 'in_phase': o['phase'],
                'in_mask': o['brain'], 'b0_tesla': DEFAULT_B0_TESLA, **common}),
            ('quality_mask', 'masking', 'QualityMask', lambda o: {
                'in_magnitude': o['magnitude'], 'in_phase': o['phase'],
                'in_mask': o['brain'], **common}),
            ('bg_removal', 'bgremove', 'RemoveBackground', lambda o: {
                'in_file': o['out_field'], 'in_mask': o['reliable']}),
            ('inversion', 'inversion', 'InvertDipole', lambda o: {
                'in_file': o['out_file'], 'in_mask': o['out_mask']}),
            ('reference', 'reference', 'ReferenceChi', lambda o: {
                'in_file': o['chi'], 'in_mask': o['out_mask']}),
        ]
        outputs = {}
        for node, module, name, inputs in chain:
            work = tmp / node
            work.mkdir()
            peak, out = run_node(f'qsmflow.interfaces.{module}', name, inputs(outputs), work)
            if node == 'brain_mask':
                out = {'brain': out['out_mask']}
            elif node == 'quality_mask':
                out = {'reliable': out['out_mask']}
            elif node == 'inversion':
                out = {'chi': out['out_file']}
            outputs.update(out)
            rows.append({'node': node, 'measured_gb': peak / 1e9,
                         'estimated_gb': node_mem_gb(node, n_vox, n_echoes)})
    return rows


def main(argv=None) -> int:
    """Print measured and estimated peak memory per node; 0."""
    parser = argparse.ArgumentParser(prog='python -m qsmflow.bench.nodes')
    parser.add_argument('--size', choices=['tiny', 'small', 'full', 'hires'], default='full')
    opts = parser.parse_args(argv)
    if importlib.util.find_spec('psutil') is None:
        print('python -m qsmflow.bench.nodes needs psutil: pip install psutil',
              file=sys.stderr)
        return 2
    print(f'{"node":<14}{"measured GB":>12}{"estimated GB":>13}{"error":>8}')
    for row in measure(opts.size):
        err = row['estimated_gb'] / row['measured_gb'] - 1
        print(f'{row["node"]:<14}{row["measured_gb"]:12.3f}{row["estimated_gb"]:13.3f}'
              f'{100 * err:+7.0f}%', flush=True)
    return 0


if __name__ == '__main__':  # pragma: no cover
    raise SystemExit(main())
