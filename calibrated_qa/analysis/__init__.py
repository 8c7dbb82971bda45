"""Analysis of generation logs: one reader, step attribution, calibration metrics, plots, reports.

Pure numpy; matplotlib is imported only inside ``plots`` (Agg backend). The CLIs
``analyze_calibration.py`` and ``sample_generations.py`` at the repository root call ``cli``.

Modules: ``readers`` (this project's record schema), ``convert`` (the original recipe's formats
into that schema), ``steps`` (the run's shape, step / eval-round attribution, orchestrator
cross-check), ``metrics`` (the one definition of each metric), ``bootstrap`` (question-level
intervals), ``report`` (the files written to ``--out``), ``compare`` (several eval logs side by
side), ``plots``, ``samples`` (stratified completion samples), ``cli``. See docs/analysis.md.
"""
