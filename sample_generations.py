#!/usr/bin/env python3
"""Stratified samples of completions from chosen steps (see --help; calibrated_qa/analysis)."""

import sys

from calibrated_qa.analysis.cli import samples_main

if __name__ == "__main__":
    sys.exit(samples_main())
