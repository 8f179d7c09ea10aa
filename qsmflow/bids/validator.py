# SPDX-License-Identifier: Apache-2.0
"""Input validation with bids-validator-deno (when installed): one-line error summaries."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from qsmflow.errors import InputError


def find_validator() -> str | None:
    """Path of the ``bids-validator-deno`` executable, if installed."""
    beside = Path(sys.executable).parent / 'bids-validator-deno'
    return str(beside) if beside.exists() else shutil.which('bids-validator-deno')


def run_validator(path) -> dict:
    """Run bids-validator-deno on ``path``; return its parsed JSON report."""
    exe = find_validator()
    if exe is None:
        raise FileNotFoundError('bids-validator-deno is not installed')
    proc = subprocess.run([exe, str(path), '--json'], capture_output=True, text=True,
                          timeout=600)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f'bids-validator-deno failed: {proc.stderr.strip()[:300]}') from None


def validator_errors(report: dict) -> list[dict]:
    """The error-level issues of a validator report."""
    return [i for i in report['issues']['issues'] if i.get('severity') == 'error']


def validate_input(bids_dir: Path) -> None:
    """Validate the input dataset; raise :class:`InputError` with a summary on errors."""
    if find_validator() is None:
        print('qsmflow: warning: bids-validator-deno not installed; input not validated '
              '(pip install bids-validator-deno)', file=sys.stderr)
        return
    errors = validator_errors(run_validator(bids_dir))
    if errors:
        codes = sorted({e['code'] for e in errors})
        first = errors[0]
        raise InputError(
            f'{bids_dir} fails BIDS validation with {len(errors)} error(s) '
            f'({", ".join(codes[:5])}; first: {first.get("location", "")}); '
            'fix them (run bids-validator-deno for details) or pass --skip-bids-validation')
