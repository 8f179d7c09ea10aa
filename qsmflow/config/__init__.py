# SPDX-License-Identifier: Apache-2.0
"""The run configuration (``settings``: :class:`RunConfig` and its sections, built once by
:func:`qsmflow.cli.config.config_from_args`) and the pipeline presets (``presets``)."""
from qsmflow.config.settings import (
    CustomAtlas, EngineConfig, MapsConfig, MasksConfig, PathsConfig, PipelineConfig,
    RegionsConfig, RunConfig, SelectionConfig)

__all__ = ['CustomAtlas', 'EngineConfig', 'MapsConfig', 'MasksConfig', 'PathsConfig',
           'PipelineConfig', 'RegionsConfig', 'RunConfig', 'SelectionConfig']
