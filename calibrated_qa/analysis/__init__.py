"""Analysis of generation logs: readers, step attribution, calibration metrics, plots, reports.

Pure numpy; matplotlib is imported only inside ``plots`` (Agg backend). The CLIs
``analyze_calibration.py`` and ``sample_generations.py`` at the repository root are thin wrappers.

Modules: ``metrics`` (the one definition of each metric), ``readers`` (the three input formats),
``steps`` (step / eval-round attribution, orchestrator cross-check, prime-rl config),
``bootstrap`` (question-level intervals), ``aggregate`` (per-step tables, self-ensemble),
``plots``, ``report`` (the files written to ``--out``), ``compare`` (several eval logs side by
side), ``samples`` (stratified completion samples).
"""
