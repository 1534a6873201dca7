"""benchmarks/common.py's timing: the "ms_median" every result file and README row reports."""

import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        return importlib.import_module("common")
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def _timed(common, monkeypatch, durations_ms, warmup=0):
    clock = []
    for k, d in enumerate(durations_ms):
        clock += [float(k), k + d / 1000]
    ticks = iter(clock)
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    calls = []
    result = common.time_ms(lambda: calls.append(1), "cpu", len(durations_ms), warmup)
    assert len(calls) == warmup + len(durations_ms)
    return result


@pytest.mark.parametrize("durations, median", [
    ([10, 40, 20, 30], 25.0),  # even count: the mean of the two middle times
    ([10, 30], 20.0),
    ([30, 10, 20], 20.0),
    ([7], 7.0),
])
def test_time_ms_reports_the_median_and_the_minimum(common, monkeypatch, durations, median):
    ms, ms_min = _timed(common, monkeypatch, durations, warmup=2)
    assert ms == pytest.approx(median) and ms_min == pytest.approx(min(durations))
