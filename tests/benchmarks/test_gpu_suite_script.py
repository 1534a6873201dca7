"""benchmarks/run_gpu_suite.sh, driven by a stub interpreter (no torch, no GPU): the suite runs
rarely, on a rented GPU under a hard time limit, so what it runs must be right before it gets there.

The stub records every command (working directory, PYTHONPATH, arguments) and fails the runs it is
told to fail, so the shell logic is checked in well under a second."""

import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(ROOT, "benchmarks", "run_gpu_suite.sh")

STUB = """#!/usr/bin/env bash
# stand-in for python: log the call; "-c" is the suite's CUDA check
echo "$PWD|${PYTHONPATH:-}|$*" >> "$STUB_LOG"
if [ "$1" = -c ]; then exit "${STUB_CUDA_RC:-0}"; fi
case " $* " in *"$STUB_FAIL"*) [ -n "$STUB_FAIL" ] && exit 3 ;; esac
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(tmp_path, fail="", cuda_rc=0, interpreter=None):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = dict(os.environ, STUB_LOG=str(log), STUB_FAIL=fail, STUB_CUDA_RC=str(cuda_rc),
               PYTHONPATH="/somewhere/else")
    proc = subprocess.run(["bash", SUITE, interpreter or str(stub)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=60)
    calls = [line.split("|", 2) for line in log.read_text().splitlines()]
    return proc, calls


def test_runs_from_any_directory_with_the_repository_importable(tmp_path):
    # Started from elsewhere (here: tmp_path), every command runs in the repository root and can
    # import glip_d2 without it being installed (the GPU machine's Python has no glip_d2), and a
    # PYTHONPATH already set (e.g. to Detectron2's pure-Python part) is kept; an interpreter
    # given by a relative path is found from where the suite was started.
    proc, calls = _run(tmp_path, interpreter="./python")
    assert proc.returncode == 0, proc.stderr
    benches = [c for c in calls if "benchmarks/bench_" in c[2]]
    assert len(benches) == 11
    for cwd, pythonpath, _ in calls:
        assert os.path.realpath(cwd) == os.path.realpath(ROOT)
        parts = pythonpath.split(":")
        assert os.path.realpath(parts[0]) == os.path.realpath(ROOT) and "/somewhere/else" in parts
    # the GPU is asked for explicitly: without one, a run fails instead of measuring the CPU
    assert all("--device cuda" in c[2] for c in benches)
    assert calls[-1][2] == "benchmarks/make_table.py"
    # the compiled runs (minutes of compilation each) come after every other run, so a time
    # limit reached during compilation leaves the LVIS and training rows measured
    compiled = [k for k, c in enumerate(benches) if "--compile" in c[2]]
    assert len(compiled) == 2 and compiled == [len(benches) - 2, len(benches) - 1]


def test_a_failing_run_does_not_cost_the_others_or_the_tables(tmp_path):
    # One run that fails (an unsupported compile mode, out of memory, ...) must not throw away
    # the rest of the GPU time: the later runs and the table rebuild still happen, and the exit
    # status says that something failed.
    proc, calls = _run(tmp_path, fail="--compile default")
    assert proc.returncode != 0
    commands = [c[2] for c in calls]
    assert any("--vocab lvis" in c for c in commands)
    assert any("bench_train.py --device cuda --amp --attention sdpa" in c for c in commands)
    assert commands[-1] == "benchmarks/make_table.py"
    assert "--compile default" in proc.stderr  # the failed runs are named at the end


def test_stops_at_once_without_a_gpu(tmp_path):
    # On a machine whose torch sees no GPU nothing is measured (the CPU would take hours at
    # 800x1333 and overwrite the committed cpu_*.json results) and the tables stay as they are.
    proc, calls = _run(tmp_path, cuda_rc=1)
    assert proc.returncode != 0
    assert not [c for c in calls if "benchmarks/" in c[2]]
    assert "CUDA" in proc.stderr or "GPU" in proc.stderr
