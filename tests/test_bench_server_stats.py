"""The confidence interval bench_server.py gives the target's verdict with."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_server import median_interval  # type: ignore[import-not-found]


def test_the_interval_of_the_median_is_read_off_the_binomial_ranks() -> None:
    # n = 75: P(Binomial(75, 1/2) <= 28) = 0.0185, <= 29 = 0.0320: the 29th smallest
    # to the 29th largest.
    assert median_interval([float(i) for i in range(75)]) == (28.0, 46.0)
    assert median_interval([float(i) for i in range(6)]) == (0.0, 5.0)  # 1/64 <= 0.025
    assert median_interval([float(i) for i in range(5)]) is None  # 1/32 > 0.025: too few


def test_the_interval_holds_the_true_median_about_95_times_in_100() -> None:
    rng = random.Random(7)
    held = 0
    for _ in range(2000):
        lo, hi = median_interval([rng.expovariate(1.0) for _ in range(75)])
        held += lo <= 0.6931471805599453 <= hi  # ln 2, the median of Exp(1)
    assert 0.935 <= held / 2000 <= 0.985
