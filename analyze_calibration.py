#!/usr/bin/env python3
"""Calibration analysis of a generation log (see --help, and calibrated_qa/analysis/cli.py)."""

import sys

from calibrated_qa.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
