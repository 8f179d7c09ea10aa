# SPDX-License-Identifier: Apache-2.0
"""``qsmflow compare``: many reconstruction pipelines over a cohort, on pydra.

``pipelines`` resolves ``--pipelines``/``--grid`` into step choices (the config layer's
presets and overrides), ``steps`` runs each reconstruction step through the participant
level's Nipype interface (the same ``qsmflow.qsm`` functions, the same numbers),
``engine`` is the only module that knows pydra (the workflow split over acquisitions ×
pipelines, its tasks, the workers), ``tables`` makes the tidy table, the between-pipeline
spread and the pairwise ICCs, ``report`` the figures and the HTML page, and ``run`` ties
them together (inputs, labels, outputs in ``OUT_DIR/compare/``).
"""

#: Engines of ``qsmflow compare --plugin``: pydra's concurrent-futures and SLURM workers.
PLUGINS = ('cf', 'slurm')
