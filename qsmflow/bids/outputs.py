# SPDX-License-Identifier: Apache-2.0
"""The derivatives dataset: its description, the files each acquisition must produce, and
the removal of a failed acquisition's partial outputs."""
from __future__ import annotations

from pathlib import Path

from qsmflow import __version__, bids_specs
from qsmflow.bids.atomic import write_json, write_text


def expected_outputs(acq, out_dir, pipeline: dict | None = None) -> list[Path]:
    """Derivative paths one acquisition must produce with ``pipeline`` (the resolved
    steps; None: the defaults, SWI on)."""
    from qsmflow.workflows.outputs import qsm_outputs

    kinds = qsm_outputs(pipeline, len(acq.echo_times_s))
    return [bids_specs.output_path(out_dir, k, acq.entities) for k in kinds]


def remove_partial_outputs(acq, out_dir) -> list[Path]:
    """Delete the derivatives (and sidecars) of a failed acquisition: no half-written set."""
    from qsmflow.interfaces.base import sidecar_of

    from qsmflow.workflows.outputs import ALL_OUTPUTS

    removed = []
    for path in (bids_specs.output_path(out_dir, k, acq.entities) for k in ALL_OUTPUTS):
        for item in (path, Path(sidecar_of(path))):
            if item.exists():
                item.unlink()
                removed.append(item)
    return removed


def init_output_dataset(out_dir: Path, bids_dir: Path) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` of the derivatives dataset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = {
        'Name': 'qsmflow outputs',
        'BIDSVersion': '1.10.0',
        'DatasetType': 'derivative',
        'GeneratedBy': [{'Name': 'qsmflow', 'Version': __version__,
                         'CodeURL': 'https://pypi.org/project/qsmflow/'}],
        'DatasetLinks': {'raw': bids_dir.absolute().as_uri()},
    }
    write_json(out_dir / 'dataset_description.json', desc)
    ignore = bids_specs.load('outputs')['bidsignore']
    write_text(out_dir / '.bidsignore', '\n'.join(ignore) + '\n')
