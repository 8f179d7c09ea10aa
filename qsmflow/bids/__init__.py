# SPDX-License-Identifier: Apache-2.0
"""BIDS in and out: finding and checking inputs (``inputs``, ``preflight``), the user's
derivatives (``derivatives``: brain masks, segmentations), the output dataset
(``outputs``), atomic file writes (``atomic``) and input validation (``validator``).
Naming rules live as data in :mod:`qsmflow.bids_specs`."""
