"""Example budgets for the property tests: the CI size, times LAB_HYPOTHESIS_SCALE for a long search.

    LAB_HYPOTHESIS_RANDOM=1 LAB_HYPOTHESIS_SCALE=40 python3 lab.py test -k "property or chunk or never_raises"

CI draws the same examples every run (the "lab" profile in conftest); a long random search before a release
finds what those miss, and each counterexample it finds stays in its test as an @example.
"""

from __future__ import annotations

import os


def examples(ci_budget: int) -> int:
    """`ci_budget` examples, scaled by LAB_HYPOTHESIS_SCALE (default 1)."""
    return ci_budget * max(1, int(os.environ.get("LAB_HYPOTHESIS_SCALE", "1")))
