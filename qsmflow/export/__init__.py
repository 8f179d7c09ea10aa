# SPDX-License-Identifier: Apache-2.0
"""Maps → DICOM series for PACS viewers (``qsmflow export-dicom``), with pydicom.

Modules: :mod:`~qsmflow.export.maps` (which maps, their display windows, finding them),
:mod:`~qsmflow.export.geometry` (NIfTI affine → DICOM slice geometry, 16-bit storage),
:mod:`~qsmflow.export.reference` (the source series to link to, de-identification),
:mod:`~qsmflow.export.dicom_series` (one map → one series) and :mod:`~qsmflow.export.run`
(the whole export).
"""
