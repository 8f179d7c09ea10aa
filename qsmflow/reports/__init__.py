# SPDX-License-Identifier: Apache-2.0
"""Visual quality control: QC metrics, reportlets, methods text and the participant report.

``metrics`` (numpy QC numbers), ``reportlets`` (SVG/PNG figures with nireports/nilearn),
``methods`` (the methods paragraph and the 2024-consensus check from the sidecars),
``participant`` (``OUT_DIR/sub-<label>.html``, assembled after the run).
"""
