"""Analysis of generation logs: one reader, step attribution, calibration metrics, plots, reports.

The modules and their roles: docs/analysis.md.
"""
