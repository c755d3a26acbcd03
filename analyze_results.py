#!/usr/bin/env python
"""Analyze an experiment: checked tables, figures and models_evaluation_record.md.

  python analyze_results.py [--experiment default] [--allow-missing]

Thin wrapper; everything is in src/ftcompare/report/ (also `python -m ftcompare analyze`).
Exit status: 0 written; 1 a consistency check failed (one line per problem, nothing written); 2 usage error.
"""
import sys
from pathlib import Path

try:
    from ftcompare.report import main
except ImportError:  # not installed (`make setup` installs it): use the source tree next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from ftcompare.report import main

if __name__ == "__main__":
    raise SystemExit(main())
