"""benchmarks.unit_costs: the ingest figure is the median of rounds in which the two sides take turns.

A small run of the ingest figure against the real stack (Postgres and Redis of the test session), and the
median's choice as a pure unit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from benchmarks.unit_costs import median_round
from tests.conftest import ROOT


def test_the_median_round_is_the_one_whose_ratio_is_in_the_middle():
    rounds = [(3.0, 1.0), (1.0, 1.0), (2.0, 1.0)]
    assert median_round(rounds) == (2.0, 1.0)
    assert median_round([(4.0, 2.0), (9.0, 3.0)]) == (4.0, 2.0)  # of two, the lower
    assert median_round([(5.0, 1.0)]) == (5.0, 1.0)


def test_a_small_run_prints_the_ingest_figure_with_each_rounds_ratio(services, tmp_path):
    env = os.environ | {"DATABASE_URL": services[0], "REDIS_URL": services[1]}
    done = subprocess.run([sys.executable, "-m", "benchmarks.unit_costs", "--only", "ingest", "--idle", "20",
                           "--posts", "60", "--rate", "60", "--rounds", "2", "--e2e-doses", "0", "--port", "18420"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figure = re.search(r"ingest CPU per desk POST \(20 idle sessions\)\s+([\d.]+) us\s+reference\s+([\d.]+) us"
                       r"\s+ratio\s+([\d.]+)", done.stdout)
    assert figure and float(figure.group(1)) > 0 and float(figure.group(2)) > 0, done.stdout
    rounds = re.search(r"the median of 2 rounds, each side in turn; each round's ratio: ([\d.]+), ([\d.]+)",
                       done.stdout)
    assert rounds, done.stdout
    assert figure.group(3) == min(rounds.groups(), key=float)  # the median of two is the lower


def test_rounds_and_posts_out_of_their_ranges_are_refused_naming_the_option():
    for option, value in (("--rounds", "11"), ("--rounds", "0"), ("--posts", "20001")):
        done = subprocess.run([sys.executable, "-m", "benchmarks.unit_costs", option, value], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and option in done.stderr
