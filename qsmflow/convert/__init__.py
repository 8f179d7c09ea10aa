# SPDX-License-Identifier: Apache-2.0
"""DICOM → BIDS multi-echo GRE conversion (``qsmflow convert``), with dcm2niix.

Modules: :mod:`~qsmflow.convert.dcm2niix` (staging the DICOM files and running dcm2niix),
:mod:`~qsmflow.convert.series` (finding the multi-echo GRE acquisitions in its sidecars),
:mod:`~qsmflow.convert.vendor_phase` (Siemens, Philips and GE phase conventions),
:mod:`~qsmflow.convert.bids_writer` (BIDS names and files), :mod:`~qsmflow.convert.summary`
(what was converted and skipped) and :mod:`~qsmflow.convert.run` (the whole conversion).
"""
