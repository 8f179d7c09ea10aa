# SPDX-License-Identifier: Apache-2.0
"""Failed steps: one-line reasons from Nipype crash files."""
from __future__ import annotations


def crash_reason(acq, crash_files) -> str | None:
    """One-line reason from the first crash file of this acquisition's sub-workflow."""
    tag = f'{acq.name}_wf'
    for crash in crash_files:
        text = crash.read_text(errors='replace')
        if tag not in crash.name and tag not in text:
            continue
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.split(':')[0].endswith(('Error', 'Exception'))]
        node = next((ln.split(':', 1)[1].strip() for ln in lines if ln.startswith('Node:')), '?')
        reason = errors[-1] if errors else lines[-1]
        name, sep, text = reason.partition(':')
        if errors and '.' in name:  # 'qsmflow.interfaces.regions.XError: ...' → 'XError: ...'
            reason = name.rsplit('.', 1)[-1] + sep + text
        return f'{reason} (step {node.rsplit(".", 1)[-1]})'
    return None
