# SPDX-License-Identifier: Apache-2.0
"""Group level: cohort tables, age-normative models, z-scores, plots and a summary page.

* :mod:`~qsmflow.group.normative`: the saturating-exponential age model (pure numpy);
* :mod:`~qsmflow.group.cohort`: participant tables → long and wide cohort tables;
* :mod:`~qsmflow.group.plots` and :mod:`~qsmflow.group.report`: PNG figures and HTML;
* :mod:`~qsmflow.group.run`: ``qsmflow BIDS_DIR OUT_DIR group``.
"""
