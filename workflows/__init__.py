# SPDX-License-Identifier: Apache-2.0
"""Nipype workflow builders of qsmflow (installed as ``qsmflow.workflows``)."""
