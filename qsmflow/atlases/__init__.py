# SPDX-License-Identifier: Apache-2.0
"""Templates and atlases: templateflow access (``templateflow``), atlas and template files
(``specs``), the template-to-template transform cache (``transforms``), the run's atlas
options (``options``) and offline prefetch planning (``prefetch``). The registration
*workflows* live in :mod:`qsmflow.workflows.registration`."""
