# SPDX-License-Identifier: Apache-2.0
"""Checksums of the tiny demo's outputs, and how to re-record them.

``tests/test_checksums.py`` runs ``qsmflow demo DIR --size tiny --nprocs 1`` and compares
:func:`checksums` of ``DIR/qsmflow`` with ``demo_tiny.json`` beside this file. Bitwise
results are only comparable on the same numeric stack, so the file holds one record per
stack (the versions of :data:`STACK` and the CPU's SIMD features), and the test compares
with the record of the installed stack (it skips where there is none).

After a deliberate change of results (a new default algorithm, a fixed bug), re-record
from the repository root, and say why in the commit::

    python -m tests.checksums.record [--why 'brain mask: extract_brain by default']

That drops the records of other stacks (their bits are unknown after a change of results).
On another machine, with results unchanged (``tests/test_checksums.py`` passes where a
record exists), add that machine's stack beside the others::

    python -m tests.checksums.record --add-stack
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

#: The record compared by ``tests/test_checksums.py``.
RECORD = Path(__file__).with_name('demo_tiny.json')

#: The demo run the record is taken from (``qsmflow`` arguments; DIR is a new folder).
DEMO_ARGS = ('--size', 'tiny', '--nprocs', '1')

#: Distributions whose versions decide the bits of the results.
STACK = ('numpy', 'scipy', 'numba', 'antspyx', 'nibabel', 'nipype')

HOW = ('sha256 of (dtype, shape) + array bytes + float64 affine for NIfTIs; of the bytes '
       'for TSVs')


def checksums(root) -> dict:
    """``{relative path: sha256}`` of every derivative under ``root`` (the demo's
    ``DIR/qsmflow``): NIfTIs by their array data, dtype, shape and affine (not the header
    bytes or the gzip stream); ``.tsv``/``.h5``/``.mat``/``.txt`` files by their bytes.
    ``logs/`` and ``.staging/`` are left out, and so are sidecars and reports."""
    import nibabel as nb
    import numpy as np

    root = Path(root)
    out = {}
    for path in sorted(root.rglob('*')):
        rel = str(path.relative_to(root))
        if rel.startswith(('logs', '.staging')) or not path.is_file():
            continue
        if path.name.endswith(('.nii.gz', '.nii')):
            img = nb.load(path)
            arr = np.asanyarray(img.dataobj)
            digest = hashlib.sha256(str((arr.dtype.str, arr.shape)).encode() + arr.tobytes()
                                    + np.asarray(img.affine, '<f8').tobytes())
            out[rel] = digest.hexdigest()
        elif path.suffix in ('.tsv', '.h5', '.mat', '.txt'):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def stack_versions() -> dict:
    """Installed versions of :data:`STACK` (``None`` for one that is not installed), and the
    CPU's SIMD features as numpy detects them (``cpu``).

    The CPU is part of the stack: on 2026-12-05 the same versions of every package in
    :data:`STACK` gave other bits for the FFT-based Laplacian unwrapping and the field maps
    on an AMD EPYC with AVX-512 than on the machine the earlier record was taken on.
    """
    versions = {}
    for name in STACK:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions['cpu'] = cpu_features()
    return versions


def cpu_features() -> str:
    """The SIMD features numpy's runtime dispatch finds on this CPU, space-separated."""
    try:  # numpy >= 2
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x (setup.cfg allows numpy >= 1.24)
        from numpy.core._multiarray_umath import __cpu_features__

    return ' '.join(sorted(k for k, on in __cpu_features__.items() if on))


def run_demo(directory) -> int:
    """``qsmflow demo DIRECTORY --size tiny --nprocs 1`` in this process; the exit code."""
    from qsmflow.cli import main

    return main(['demo', str(directory), *DEMO_ARGS])


def demo_outputs(directory) -> Path:
    """Where :func:`run_demo` writes its derivatives."""
    return Path(directory) / 'qsmflow'


def _commit() -> str:
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown commit'


def records(path=RECORD) -> list:
    """The records of ``path``: one per stack (a file of the older one-record layout gives
    a list of one)."""
    data = json.loads(Path(path).read_text())
    return data['records'] if 'records' in data else [data]


def for_stack(stack: dict, path=RECORD):
    """The record of ``path`` taken with ``stack`` (:func:`stack_versions`), or None."""
    return next((r for r in records(path) if r['stack'] == stack), None)


def main(argv=None) -> int:
    """Run the tiny demo in a temporary folder and rewrite :data:`RECORD` (or add this
    stack's record to it)."""
    ap = argparse.ArgumentParser(prog='python -m tests.checksums.record',
                                 description=__doc__.split('\n\n')[0])
    ap.add_argument('--why', default='', help='the deliberate change of results (recorded)')
    ap.add_argument('--add-stack', action='store_true',
                    help="keep the other stacks' records and add (or replace) this stack's: "
                         'for a machine without one, when the results have not changed')
    ap.add_argument('--output', type=Path, default=RECORD, help=f'default: {RECORD}')
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='qsmflow-checksums-') as tmp:
        code = run_demo(Path(tmp) / 'demo')
        if code != 0:
            print(f'record: the demo failed (exit {code}); nothing recorded', file=sys.stderr)
            return 1
        outputs = checksums(demo_outputs(Path(tmp) / 'demo'))
    taken = f'qsmflow at {_commit()}' + (f' ({args.why})' if args.why else '')
    stack = stack_versions()
    record = {'taken_with': taken, 'stack': stack, 'how': HOW,
              'command': 'qsmflow demo DIR ' + ' '.join(DEMO_ARGS), 'outputs': outputs}
    kept = []
    if args.add_stack and args.output.exists():
        kept = [r for r in records(args.output) if r['stack'] != stack]
        for other in kept:  # same code, same demo: the same files on every stack
            if set(other['outputs']) != set(outputs):
                print('record: this stack produces other files than a recorded one '
                      f"({other['taken_with']}); re-record with --why instead",
                      file=sys.stderr)
                return 1
    args.output.write_text(json.dumps({'records': kept + [record]}, indent=1) + '\n')
    print(f'record: {len(outputs)} checksums written to {args.output} '
          f'({len(kept) + 1} stack(s))')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
