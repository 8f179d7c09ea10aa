# SPDX-License-Identifier: Apache-2.0
"""Running the workflow: engines and per-node resources (``engines``), progress and logs
(``progress``), staged publication of complete outputs (``staging``), crash reasons
(``crashes``) and the participant-level run itself (``runner``)."""
