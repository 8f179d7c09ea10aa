# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench``: reconstruction steps on the phantom (``steps``), whole-cohort runs
(``cohort``) and registration (``registration``)."""
