# SPDX-License-Identifier: Apache-2.0
"""The run configuration and the pipeline presets (``presets``)."""
